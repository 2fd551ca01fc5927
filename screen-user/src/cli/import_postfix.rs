//! `smtp-screen import-postfix`: Postfix's postscreen settings turned into an smtp-screen
//! configuration. The configuration goes to standard output (or `--output`); what could not
//! be translated, and the master.cf edits, go to standard error.

use std::{
    fs::OpenOptions,
    io::{self, Read as _, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{
    access_list::DiskFiles,
    config::Config,
    import_postfix::{self, MAX_INPUT_BYTES, MasterCf, Postconf},
};

pub(crate) fn run(
    postconf_output: Option<&Path>,
    output: Option<&Path>,
    master_cf: Option<&Path>,
) -> anyhow::Result<()> {
    let postconf = match postconf_output {
        Some(path) => Postconf::parse(&path.display().to_string(), &read_input(path)?)?,
        None => Postconf::parse("postconf -n", &run_postconf()?)?,
    };
    let master = match master_cf {
        Some(path) => Some(MasterCf::parse(
            &path.display().to_string(),
            &read_input(path)?,
        )?),
        None => None,
    };
    // Table paths in Postfix settings are absolute; a relative one is taken from here.
    let import = import_postfix::import(&postconf, master.as_ref(), &DiskFiles::new("."));
    // The translation never writes what the daemon would refuse; should it ever, say so
    // before anyone installs the file.
    if let Err(e) = Config::parse(Path::new("<generated>"), &import.toml) {
        bail!("the generated configuration does not load ({e}); please report this");
    }
    match output {
        Some(path) => write_new(path, &import.toml)?,
        None => io::stdout()
            .write_all(import.toml.as_bytes())
            .context("cannot write the configuration")?,
    }
    let mut stderr = io::stderr().lock();
    for finding in &import.untranslated {
        writeln!(stderr, "smtp-screen: not translated: {finding}")?;
    }
    for finding in &import.caveats {
        writeln!(stderr, "smtp-screen: note: {finding}")?;
    }
    if !import.untranslated.is_empty() || !import.caveats.is_empty() {
        writeln!(stderr)?;
    }
    stderr.write_all(import.master_cf_advice.as_bytes())?;
    Ok(())
}

/// At most [`MAX_INPUT_BYTES`] (and one more, so that the parser can tell it is too long).
fn read_input(path: &Path) -> anyhow::Result<Vec<u8>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_INPUT_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(bytes)
}

/// Runs `postconf -n`; its warnings go to our standard error as they come.
fn run_postconf() -> anyhow::Result<Vec<u8>> {
    let mut child = Command::new("postconf")
        .arg("-n")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot run postconf -n (is Postfix installed? --postconf-output FILE reads saved output)")?;
    let mut bytes = Vec::new();
    let read = child
        .stdout
        .take()
        .expect("stdout is piped")
        .take(MAX_INPUT_BYTES as u64 + 1)
        .read_to_end(&mut bytes);
    if read.is_err() || bytes.len() > MAX_INPUT_BYTES {
        // Do not wait for a postconf that still has more to say.
        let _ = child.kill();
    }
    let status = child.wait().context("postconf -n")?;
    read.context("cannot read the output of postconf -n")?;
    if bytes.len() <= MAX_INPUT_BYTES && !status.success() {
        bail!("postconf -n failed ({status})");
    }
    Ok(bytes)
}

/// Writes a new file, readable by root and its group only (keyed DNSBL query domains are
/// secrets). An existing file is left alone.
fn write_new(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(path)
        .with_context(|| {
            format!(
                "cannot create {} (an existing file is never replaced)",
                path.display()
            )
        })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command as Verb};

    /// A fresh directory for one test's files.
    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("smtp-screen-import-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn parses_the_verb() {
        let cli = Cli::try_parse_from([
            "smtp-screen",
            "import-postfix",
            "--postconf-output",
            "/tmp/postconf.txt",
            "--output",
            "/etc/smtp-screen/smtp-screen.toml",
            "--master-cf",
            "/etc/postfix/master.cf",
        ])
        .unwrap();
        let Verb::ImportPostfix {
            postconf_output,
            output,
            master_cf,
        } = cli.command
        else {
            panic!("not import-postfix");
        };
        assert_eq!(postconf_output, Some(PathBuf::from("/tmp/postconf.txt")));
        assert_eq!(
            output,
            Some(PathBuf::from("/etc/smtp-screen/smtp-screen.toml"))
        );
        assert_eq!(master_cf, Some(PathBuf::from("/etc/postfix/master.cf")));
        let cli = Cli::try_parse_from(["smtp-screen", "import-postfix"]).unwrap();
        assert!(matches!(
            cli.command,
            Verb::ImportPostfix {
                postconf_output: None,
                output: None,
                master_cf: None
            }
        ));
    }

    #[test]
    fn writes_a_new_file_that_loads_and_never_replaces_one() {
        let dir = scratch("write");
        let input = dir.join("postconf.txt");
        let master = dir.join("master.cf");
        let output = dir.join("smtp-screen.toml");
        std::fs::write(
            &input,
            "postscreen_greet_action = enforce\npostscreen_cache_map = btree:/x\n",
        )
        .unwrap();
        std::fs::write(&master, "smtp inet n - y - 1 postscreen\n").unwrap();
        run(Some(&input), Some(&output), Some(&master)).unwrap();
        let config = Config::load(&output).unwrap();
        assert_eq!(config.greet_action, crate::test_state::TestAction::Enforce);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&output).unwrap().permissions(),
        );
        assert_eq!(mode & 0o077 & !0o040, 0, "{mode:o}");
        std::fs::write(&output, "kept").unwrap();
        let err = run(Some(&input), Some(&output), None).unwrap_err();
        assert!(err.to_string().contains("never replaced"), "{err}");
        assert_eq!(std::fs::read_to_string(&output).unwrap(), "kept");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_input_files_are_errors() {
        let dir = scratch("bad");
        let big = dir.join("big.txt");
        std::fs::write(&big, vec![b'#'; MAX_INPUT_BYTES + 10]).unwrap();
        let bytes = read_input(&big).unwrap();
        assert_eq!(
            bytes.len(),
            MAX_INPUT_BYTES + 1,
            "read no further than needed"
        );
        let err = run(Some(&big), Some(&dir.join("out.toml")), None).unwrap_err();
        assert!(err.to_string().contains("more than"), "{err}");
        let garbage = dir.join("garbage.txt");
        std::fs::write(&garbage, b"\x00\x01\x02").unwrap();
        let err = run(Some(&garbage), Some(&dir.join("out.toml")), None).unwrap_err();
        assert!(
            err.to_string().contains("line 1: control character"),
            "{err}"
        );
        let err = run(Some(&dir.join("missing")), None, None).unwrap_err();
        assert!(err.to_string().starts_with("cannot read"), "{err}");
        assert!(!dir.join("out.toml").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
