//! Every runtime path smtp-screen uses, in one place: the BPF filesystem and the pins under
//! it, the configuration, the state directory and the files in it, and the sockets it talks to.

use std::path::{Path, PathBuf};

/// Where the BPF filesystem is mounted (and where the daemon mounts it when nothing is).
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// Where the maps and links are pinned, unless `--pin-dir` says otherwise.
pub(crate) const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/smtp-screen";

/// Environment variable that overrides the pin directory (as `--pin-dir` does).
pub(crate) const PIN_DIR_ENV: &str = "SMTP_SCREEN_PIN_DIR";

/// The name of an interface's XDP link pin in the pin directory is this and the interface.
pub(crate) const LINK_PIN_PREFIX: &str = "link_";

/// The kernel's list of the CPUs it may ever bring up, which sizes the per-CPU counters.
pub const POSSIBLE_CPUS: &str = "/sys/devices/system/cpu/possible";

/// The configuration file of a packaged install.
pub(crate) const DEFAULT_CONFIG: &str = "/etc/smtp-screen/smtp-screen.toml";

/// Where the temporary allowlist database lives, unless `state_dir` says otherwise.
pub(crate) const DEFAULT_STATE_DIR: &str = "/var/lib/smtp-screen";

/// The temporary allowlist's database file inside `state_dir`.
pub(crate) const ALLOWLIST_FILE: &str = "allowlist.redb";

/// The file in `state_dir` where the daemon keeps each DNS list's health and hit counts for
/// `smtp-screen status --config FILE`.
pub(crate) const DNSBL_STATUS_FILE: &str = "dnsbl.status";

/// Postfix's smtpd `pass` service, where `handoff = "postfix"` sends passed clients.
pub(crate) const DEFAULT_POSTFIX_PASS_SOCKET: &str = "/var/spool/postfix/private/smtpd";

/// Where syslog listens on Linux.
pub(crate) const SYSLOG_SOCKET: &str = "/dev/log";

/// The DNSBL status file of a state directory.
pub(crate) fn dnsbl_status(state_dir: &Path) -> PathBuf {
    state_dir.join(DNSBL_STATUS_FILE)
}

/// The temporary allowlist's database of a state directory.
pub(crate) fn allowlist_db(state_dir: &Path) -> PathBuf {
    state_dir.join(ALLOWLIST_FILE)
}
