//! `smtp-screen cache list|del|flush` on a real allowlist database, through the binary.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use screen_user::{
    allowlist::{AllowlistCache, CacheOptions},
    test_state::TestTimes,
};

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("cache-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn config(&self) -> PathBuf {
        let path = self.0.join("smtp-screen.toml");
        std::fs::write(
            &path,
            format!("state_dir = \"{}\"\n", self.0.join("state").display()),
        )
        .unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn smtp_screen(args: &[&str], config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_smtp-screen"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

async fn seed(state_dir: &Path, records: &[(&str, TestTimes)]) {
    let cache = AllowlistCache::open(state_dir, CacheOptions::default())
        .await
        .unwrap();
    for (addr, times) in records {
        cache.record(addr.parse::<IpAddr>().unwrap(), *times);
    }
    cache.flush().await.unwrap();
    cache.close().await.unwrap();
}

#[tokio::test]
async fn lists_deletes_and_flushes_records() {
    let scratch = Scratch::new("edit");
    let config = scratch.config();
    let times: TestTimes = "1795400132;1795313852;1;1;1".parse().unwrap();
    seed(
        &scratch.0.join("state"),
        &[("192.0.2.1", times), ("2001:db8::7", times)],
    )
    .await;

    let list = stdout(&smtp_screen(&["cache", "list"], &config));
    assert_eq!(
        list,
        "192.0.2.1 pregreet=1795400132 dnsbl=1795313852 pipelining=1 non_smtp_command=1 bare_newline=1\n\
         2001:db8::7 pregreet=1795400132 dnsbl=1795313852 pipelining=1 non_smtp_command=1 bare_newline=1\n"
    );

    let del = stdout(&smtp_screen(&["cache", "del", "192.0.2.1"], &config));
    assert_eq!(del, "192.0.2.1 deleted\n");
    let list = stdout(&smtp_screen(&["cache", "list"], &config));
    assert!(
        list.starts_with("2001:db8::7 ") && list.lines().count() == 1,
        "{list}"
    );

    let missing = smtp_screen(&["cache", "del", "192.0.2.1"], &config);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("192.0.2.1 is not in the temporary allowlist"),
        "{err}"
    );

    let flush = stdout(&smtp_screen(&["cache", "flush"], &config));
    assert_eq!(flush, "1 records deleted\n");
    assert_eq!(stdout(&smtp_screen(&["cache", "list"], &config)), "");
}

#[tokio::test]
async fn refuses_while_the_database_is_in_use() {
    let scratch = Scratch::new("busy");
    let config = scratch.config();
    // Another holder of the database, as the running daemon is.
    let held = AllowlistCache::open(&scratch.0.join("state"), CacheOptions::default())
        .await
        .unwrap();
    let output = smtp_screen(&["cache", "list"], &config);
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("stop it first"), "{err}");
    held.close().await.unwrap();
}
