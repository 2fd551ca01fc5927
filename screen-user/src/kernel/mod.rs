//! The kernel side of smtp-screen: loading the XDP program, pinning its maps and link, and
//! reading and writing the maps; and the hand-off relay's sockhash program ([`relay`]).
//!
//! # Minimum kernel version
//!
//! 5.11 (XDP links, BTF-defined maps, `bpf_ktime_get_coarse_ns` in the program), on an
//! architecture with efficient unaligned access (x86-64, arm64): the object is built to read
//! packet fields at any alignment, which the verifier checks only where such access is slow
//! (see `build.rs`).

pub mod bpffs;
pub mod clock;
pub mod loader;
pub mod maps;
pub mod netlink;
pub mod relay;
pub mod stats;
pub mod table;

use screen_common::{DenyAction, MAX_PORTS, ScreenConfig};
use serde::Deserialize;

pub use loader::{AttachMode, Attachment, KernelError, ScreenProgram};
pub use maps::{DynamicEntry, ListChange, Maps, MapsError, StaticList};

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

/// The XDP object built by `build.rs`, embedded so that the binary is all an operator installs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/screen-ebpf.o"));

/// Has `loader` create every map of the XDP program as small as the kernel allows, for a load
/// of the object that does not run that program (the relay's, and the one that pins the maps
/// behind its global data) instead of at their pinned sizes.
fn xdp_maps_at_their_smallest(loader: &mut aya::EbpfLoader<'_>) {
    for name in screen_common::map_name::ALL {
        loader.map_max_entries(name, 1);
    }
}

/// The program's configuration record for these settings, keeping the list slots of
/// `previous` (which slot is live is state, not configuration).
pub fn screen_config(
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

/// Writes the settings into the loaded program's configuration record, with an IPv4 table
/// rebuilt from the live lists, warning when the IPv6 prefix changes under existing dynamic
/// entries (their keys no longer match).
pub fn configure(
    maps: &mut Maps,
    ports: &[u16],
    action: KernelAction,
    v6_prefix_len: u32,
) -> Result<ScreenConfig, MapsError> {
    let previous = maps.config()?;
    let configured = maps.is_configured()?;
    let mut config = screen_config(ports, action, v6_prefix_len, configured.then_some(previous));
    if configured && previous.v6_prefix_len != v6_prefix_len {
        let v6_entries = maps
            .dynamic_entries()?
            .iter()
            .filter(|e| e.net.addr().is_ipv6())
            .count();
        if v6_entries > 0 {
            tracing::warn!(
                old = previous.v6_prefix_len,
                new = v6_prefix_len,
                v6_entries,
                "IPv6 deny prefix changed; existing IPv6 dynamic entries keep their old keys until they expire"
            );
        }
    }
    maps.rebuild_v4_table(&mut config)?;
    maps.set_config(&config)?;
    Ok(config)
}
