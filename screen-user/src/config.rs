//! The daemon's configuration file (TOML).
//!
//! Each option is documented once, here, next to its field; `smtp-screen.example.toml` at the
//! top of the repository is checked against these defaults by the tests.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer};

use crate::{duration, kernel::AttachMode};

/// A configuration file that cannot be used, with the place of the mistake.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// What XDP does with a SYN from a denied source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KernelAction {
    /// Drop the SYN: the client times out.
    #[default]
    Drop,
    /// Answer with TCP RST+ACK: the client sees "connection refused" at once.
    Rst,
}

/// The daemon's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Interfaces the XDP SYN screen is attached to. Empty: no kernel screening.
    pub interfaces: Vec<String>,
    /// `native` (in the driver, fastest) or `generic` (any interface). Never guessed.
    pub xdp_mode: AttachMode,
    /// Destination ports whose SYNs XDP screens (at most 8).
    #[serde(deserialize_with = "ports")]
    pub protected_ports: Vec<u16>,
    /// `drop` (silent) or `rst` (refuse at once) for SYNs from denied sources.
    pub kernel_action: KernelAction,
    /// Prefix length that IPv6 dynamic deny entries cover (one customer is usually a /64).
    #[serde(deserialize_with = "v6_prefix")]
    pub deny_v6_prefix: u32,
    /// How often expired dynamic deny entries are removed from the kernel maps.
    #[serde(deserialize_with = "time_value")]
    pub deny_sweep_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            xdp_mode: AttachMode::Native,
            protected_ports: vec![screen_common::ScreenConfig::SMTP_PORT],
            kernel_action: KernelAction::Drop,
            deny_v6_prefix: screen_common::ScreenConfig::DEFAULT_V6_PREFIX_LEN,
            deny_sweep_interval: Duration::from_secs(60),
        }
    }
}

fn time_value<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    duration::parse(&text).map_err(serde::de::Error::custom)
}

fn ports<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u16>, D::Error> {
    let ports = Vec::<u16>::deserialize(d)?;
    check_ports(&ports).map_err(serde::de::Error::custom)?;
    Ok(ports)
}

/// Ports must be 1..=65535, at most [`screen_common::MAX_PORTS`], at least one.
pub fn check_ports(ports: &[u16]) -> Result<(), String> {
    if ports.is_empty() {
        return Err("at least one port must be protected".into());
    }
    if ports.len() > screen_common::MAX_PORTS {
        return Err(format!(
            "{} ports given; XDP protects at most {}",
            ports.len(),
            screen_common::MAX_PORTS
        ));
    }
    if ports.contains(&0) {
        return Err("port 0 is not a port".into());
    }
    Ok(())
}

fn v6_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let len = u32::deserialize(d)?;
    check_v6_prefix(len).map_err(serde::de::Error::custom)?;
    Ok(len)
}

/// IPv6 dynamic deny prefixes from /16 (a whole provider) to /128 (one address).
pub fn check_v6_prefix(len: u32) -> Result<(), String> {
    if !(16..=128).contains(&len) {
        return Err(format!("IPv6 deny prefix /{len} is outside /16../128"));
    }
    Ok(())
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses configuration text; `path` only names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(1);
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                message: e.message().to_string(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/smtp-screen.toml"), text)
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn reads_every_option() {
        let config = parse(
            r#"
            interfaces = ["eth0", "eth1"]
            xdp_mode = "generic"
            protected_ports = [25, 587]
            kernel_action = "rst"
            deny_v6_prefix = 56
            deny_sweep_interval = "5m"
            "#,
        )
        .unwrap();
        assert_eq!(config.interfaces, ["eth0", "eth1"]);
        assert_eq!(config.xdp_mode, AttachMode::Generic);
        assert_eq!(config.protected_ports, [25, 587]);
        assert_eq!(config.kernel_action, KernelAction::Rst);
        assert_eq!(config.deny_v6_prefix, 56);
        assert_eq!(config.deny_sweep_interval, Duration::from_secs(300));
    }

    #[test]
    fn errors_name_file_line_and_problem() {
        let cases = [
            (
                "interfaces = []\nbogus_option = 1\n",
                2,
                "unknown field `bogus_option`",
            ),
            (
                "\n\ndeny_sweep_interval = \"5 minutes\"\n",
                3,
                "invalid time value",
            ),
            ("xdp_mode = \"fast\"\n", 1, "unknown variant `fast`"),
            ("protected_ports = []\n", 1, "at least one port"),
            ("protected_ports = [1,2,3,4,5,6,7,8,9]\n", 1, "at most 8"),
            ("protected_ports = [70000]\n", 1, ""),
            ("deny_v6_prefix = 8\n", 1, "outside /16../128"),
            (
                "kernel_action = \"reject\"\n",
                1,
                "unknown variant `reject`",
            ),
            ("interfaces = [\n", 2, ""),
        ];
        for (text, line, what) in cases {
            let err = parse(text).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("/etc/smtp-screen.toml:{line}: ")),
                "{text:?}: {msg}"
            );
            assert!(msg.contains(what), "{text:?}: {msg}");
        }
    }

    #[test]
    fn example_config_matches_the_defaults_it_documents() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../smtp-screen.example.toml");
        let config = Config::load(&path).unwrap();
        assert_eq!(config.interfaces, ["lo"]);
        assert_eq!(config.xdp_mode, AttachMode::Generic);
        assert_eq!(config.protected_ports, Config::default().protected_ports);
        assert_eq!(config.kernel_action, Config::default().kernel_action);
        assert_eq!(config.deny_v6_prefix, Config::default().deny_v6_prefix);
        assert_eq!(
            config.deny_sweep_interval,
            Config::default().deny_sweep_interval
        );
    }
}
