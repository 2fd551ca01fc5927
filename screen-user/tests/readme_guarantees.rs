//! The README's "What the kernel layer will never do" names, for each guarantee, the tests
//! that show it. Every test it names must exist, so that the list cannot drift from the suite:
//! `e2e_daemon::name` is a test in `tests/tests/e2e_daemon.rs`, `screen::deny_policy::tests::name`
//! one in screen-user's `screen/deny_policy.rs` (or its sibling `tests.rs`), and a path ending
//! in `tests` is a test module that must exist.

use std::{
    fs,
    path::{Path, PathBuf},
};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("screen-user lives in the workspace")
        .to_path_buf()
}

/// The section's text, up to the next heading.
fn section() -> String {
    let readme = fs::read_to_string(workspace().join("README.md")).expect("README.md");
    let (_, after) = readme
        .split_once("### What the kernel layer will never do\n")
        .expect("README.md has the section");
    let end = after.find("\n#").unwrap_or(after.len());
    after[..end].to_string()
}

/// Every test path the section names: code spans of `a::b` words.
fn named_tests(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| {
            span.contains("::")
                && span
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        })
        .map(str::to_string)
        .collect()
}

/// The files a test path may live in, and the function it names (`None`: a module).
fn candidates(path: &str) -> (Vec<PathBuf>, Option<String>) {
    let root = workspace();
    let mut parts: Vec<&str> = path.split("::").collect();
    let suite = root.join("tests/tests").join(format!("{}.rs", parts[0]));
    if suite.exists() {
        return (vec![suite], parts.get(1).map(|s| s.to_string()));
    }
    let function = match parts.last() {
        Some(&"tests") => None,
        _ => parts.pop().map(str::to_string),
    };
    if parts.last() == Some(&"tests") {
        parts.pop();
    }
    let module = root.join("screen-user/src").join(parts.join("/"));
    let files = vec![
        module.with_extension("rs"),
        module.join("mod.rs"),
        module.join("tests.rs"),
    ];
    (files, function)
}

#[test]
fn every_test_the_guarantees_name_exists() {
    let text = section();
    let named = named_tests(&text);
    assert!(
        named.len() >= 9,
        "the section names too few tests: {named:?}"
    );
    let mut missing = Vec::new();
    for path in &named {
        let (files, function) = candidates(path);
        let found = files
            .iter()
            .any(|file| match (&function, fs::read_to_string(file)) {
                (Some(name), Ok(source)) => source.contains(&format!("fn {name}(")),
                (None, Ok(source)) => {
                    source.contains("#[test]") || source.contains("#[tokio::test")
                }
                (_, Err(_)) => false,
            });
        if !found {
            missing.push(path.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "the README names tests that do not exist: {missing:?}"
    );
}

#[test]
fn a_misspelt_test_is_caught() {
    let (files, function) = candidates("e2e_daemon::no_such_test_anywhere");
    assert_eq!(function.as_deref(), Some("no_such_test_anywhere"));
    let source = fs::read_to_string(&files[0]).unwrap();
    assert!(!source.contains("fn no_such_test_anywhere("));
    let (files, function) = candidates("screen::deny_guard::tests");
    assert_eq!(function, None);
    assert!(
        files
            .iter()
            .any(|f| f.ends_with("screen/deny_guard/tests.rs"))
    );
}
