//! The program's settings: the configuration record it reads as its global data
//! ([`ScreenConfig`]: the protected ports, what to do with a denied SYN, the prefix IPv6 dynamic
//! deny entries are keyed by, and which slot of each static list and of the IPv4 table is live),
//! the map that holds it, and writing the operator's settings into it.

use aya::maps::{Array, MapData};
use screen_common::{DenyAction, MAX_PORTS, ScreenConfig, map_name};
use serde::Deserialize;

use super::MapFailure;

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

/// An error reading or writing the configuration record.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Map(#[from] MapFailure),
}

/// The map holding the configuration record: `scr_config`, which the program reads as its
/// global data, and while the previous layout's program may still run on an interface, that
/// layout's copy (`scr_config_live`), the record that program reads.
pub(crate) struct SettingsRecord {
    config: Array<MapData, ScreenConfig>,
    /// Read and written first: a change reaches the previous program before this one.
    old_config: Option<Array<MapData, ScreenConfig>>,
}

impl SettingsRecord {
    pub(crate) fn new(
        config: Array<MapData, ScreenConfig>,
        old_config: Option<Array<MapData, ScreenConfig>>,
    ) -> Self {
        Self { config, old_config }
    }

    /// The record the programs read.
    pub(crate) fn get(&self) -> Result<ScreenConfig, SettingsError> {
        let (map, name) = match &self.old_config {
            Some(old) => (old, map_name::OLD_CONFIG_GLOBAL_PIN),
            None => (&self.config, map_name::CONFIG),
        };
        map.get(&0, 0)
            .map_err(|source| MapFailure { name, source }.into())
    }

    /// Replaces the record, in one map update (two while the previous layout's copy is
    /// pinned: the copy first).
    pub(crate) fn set(&mut self, config: &ScreenConfig) -> Result<(), SettingsError> {
        if let Some(old) = &mut self.old_config {
            old.set(0, config, 0).map_err(|source| MapFailure {
                name: map_name::OLD_CONFIG_GLOBAL_PIN,
                source,
            })?;
        }
        self.config.set(0, config, 0).map_err(|source| {
            MapFailure {
                name: map_name::CONFIG,
                source,
            }
            .into()
        })
    }

    /// Whether the record was ever written (ports all zero means no).
    pub(crate) fn is_configured(&self) -> Result<bool, SettingsError> {
        Ok(self.get()?.ports.iter().any(|&port| port != 0))
    }
}

/// The program's configuration record for these settings, keeping the list slots of
/// `previous` (which slot is live is state, not configuration).
pub(crate) fn screen_config(
    ports: &[u16],
    action: KernelAction,
    v6_prefix_len: u32,
    previous: Option<ScreenConfig>,
) -> ScreenConfig {
    let mut config = ScreenConfig::new();
    config.ports = [0; MAX_PORTS];
    for (slot, port) in config.ports.iter_mut().zip(ports) {
        *slot = *port;
    }
    config.action = match action {
        KernelAction::Drop => DenyAction::Drop as u32,
        KernelAction::Rst => DenyAction::Rst as u32,
    };
    config.v6_prefix_len = v6_prefix_len;
    if let Some(previous) = previous {
        config.allow_slot = previous.allow_slot;
        config.deny_slot = previous.deny_slot;
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_holds_the_settings_and_keeps_the_live_slots() {
        let mut previous = ScreenConfig::new();
        previous.allow_slot = 1;
        previous.deny_slot = 1;
        previous.v4_table_slot = 1;
        previous.ports = [587; MAX_PORTS];
        let config = screen_config(&[25, 465], KernelAction::Rst, 48, Some(previous));
        assert_eq!(config.ports, [25, 465, 0, 0, 0, 0, 0, 0]);
        assert_eq!(config.action, DenyAction::Rst as u32);
        assert_eq!(config.v6_prefix_len, 48);
        assert_eq!((config.allow_slot, config.deny_slot), (1, 1));
        // The table slot is the table's to choose when it is rebuilt.
        assert_eq!(config.v4_table_slot, 0);
    }

    #[test]
    fn a_first_record_starts_from_slot_0() {
        let config = screen_config(&[25], KernelAction::Drop, 64, None);
        assert_eq!(config.ports, [25, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(config.action, DenyAction::Drop as u32);
        assert_eq!((config.allow_slot, config.deny_slot), (0, 0));
        assert!(config.protects(25) && !config.protects(0));
    }
}
