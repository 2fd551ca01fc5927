//! The README's tree of the source files is the map a newcomer reads first: every source file
//! of the workspace is on it, every file it names exists, and every module says what it owns in
//! its `//!` lines.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

/// The crates' source folders, as the tree's sections name them.
const SECTIONS: &[&str] = &[
    "screen-common/src/",
    "screen-ebpf/src/",
    "screen-user/src/",
    "screen-user/tests/",
    "tests/",
    "xtask/src/",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("screen-user lives in the workspace")
        .to_path_buf()
}

/// The code block under `### The tree`.
fn tree() -> String {
    let readme = fs::read_to_string(workspace().join("README.md")).expect("README.md");
    let (_, after) = readme
        .split_once("### The tree")
        .expect("README.md has a `### The tree` section");
    let (_, block) = after.split_once("```\n").expect("the tree is a code block");
    let (block, _) = block.split_once("```").expect("the code block ends");
    block.to_string()
}

/// The part of the tree that describes one source folder.
fn section(tree: &str, folder: &str) -> String {
    let lines: Vec<&str> = tree.lines().collect();
    let start = lines
        .iter()
        .position(|line| line.starts_with(folder))
        .unwrap_or_else(|| panic!("the tree has no section {folder}"));
    let end = lines[start + 1..]
        .iter()
        .position(|line| SECTIONS.iter().any(|s| line.starts_with(s)))
        .map_or(lines.len(), |n| start + 1 + n);
    lines[start..end].join("\n")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Unit tests beside their module (`foo/tests.rs`) belong to it and need no line of their own.
fn is_sibling_tests(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "tests.rs")
}

/// The words of the tree's text: file names without `.rs`, folder names without `/`.
fn words(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '/'))
        .flat_map(|word| word.split('/'))
        .map(|word| word.trim_end_matches(".rs").trim_matches('.').to_string())
        .filter(|word| !word.is_empty())
        .collect()
}

#[test]
fn every_source_file_is_on_the_readme_tree() {
    let tree = tree();
    let root = workspace();
    let mut missing = Vec::new();
    for folder in SECTIONS {
        let named = words(&section(&tree, folder));
        let mut files = Vec::new();
        rust_files(&root.join(folder), &mut files);
        for file in files.iter().filter(|f| !is_sibling_tests(f)) {
            let stem = file
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default();
            let parent = file
                .parent()
                .and_then(Path::file_name)
                .and_then(|s| s.to_str())
                .unwrap_or_default();
            // A folder's mod.rs is the folder; the test and bench binaries are their folders.
            let covered = named.contains(stem)
                || (stem == "mod" && named.contains(parent))
                || (matches!(parent, "tests" | "benches") && *folder == "tests/")
                    && named.contains(parent);
            if !covered {
                missing.push(
                    file.strip_prefix(&root)
                        .unwrap_or(file)
                        .display()
                        .to_string(),
                );
            }
        }
    }
    assert!(
        missing.is_empty(),
        "README.md's tree (### The tree) does not name: {missing:?}"
    );
}

#[test]
fn every_file_the_readme_tree_names_exists() {
    let tree = tree();
    let root = workspace();
    let mut absent = Vec::new();
    for folder in SECTIONS {
        let text = section(&tree, folder);
        let mut files = Vec::new();
        rust_files(&root.join(folder), &mut files);
        let stems: BTreeSet<String> = files
            .iter()
            .filter_map(|f| f.file_stem().and_then(|s| s.to_str()).map(String::from))
            .collect();
        for word in text.split_whitespace() {
            let word = word.trim_matches(|c: char| c == ',' || c == '(' || c == ')');
            for name in word.split('/') {
                if let Some(stem) = name.strip_suffix(".rs")
                    && !stems.contains(stem)
                {
                    absent.push(format!("{folder}: {name}"));
                }
            }
        }
    }
    assert!(
        absent.is_empty(),
        "README.md's tree names files that do not exist: {absent:?}"
    );
}

#[test]
fn every_module_says_what_it_owns() {
    let root = workspace();
    let mut silent = Vec::new();
    for folder in SECTIONS {
        let mut files = Vec::new();
        rust_files(&root.join(folder), &mut files);
        for file in files.iter().filter(|f| !is_sibling_tests(f)) {
            let text = fs::read_to_string(file).expect("a source file");
            if !text.trim_start().starts_with("//!") {
                silent.push(
                    file.strip_prefix(&root)
                        .unwrap_or(file)
                        .display()
                        .to_string(),
                );
            }
        }
    }
    assert!(silent.is_empty(), "no `//!` at the top of: {silent:?}");
}
