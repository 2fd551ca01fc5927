//! Every runtime path smtp-screen uses, in one place.

/// Where the maps and links are pinned, unless `--pin-dir` says otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/smtp-screen";

/// The configuration file of a packaged install.
pub const DEFAULT_CONFIG: &str = "/etc/smtp-screen/smtp-screen.toml";

/// Environment variable that overrides the pin directory (as `--pin-dir` does).
pub const PIN_DIR_ENV: &str = "SMTP_SCREEN_PIN_DIR";

/// Where the temporary allowlist database lives, unless `state_dir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/smtp-screen";

/// Postfix's smtpd `pass` service, where `handoff = "postfix"` sends passed clients.
pub const DEFAULT_POSTFIX_PASS_SOCKET: &str = "/var/spool/postfix/private/smtpd";
