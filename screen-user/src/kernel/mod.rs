//! The kernel side of smtp-screen, one file per kernel object: the XDP program ([`program`])
//! and its links ([`link`]), put in place by one load sequence ([`attach`]); the maps it reads
//! (static lists in [`lists`], dynamic deny entries in [`dynamic`], the IPv4 table in
//! [`v4_table`], the configuration record in [`settings`]) and writes ([`stats`]), grouped open
//! in [`Maps`], their pins checked against the shared layout ([`layout`]); and the hand-off
//! relay's sockhash program ([`relay`]). The load sequence warns about interfaces that carry
//! other hosts' traffic ([`forwarding`]).
//!
//! # Minimum kernel version
//!
//! 5.11 (XDP links, BTF-defined maps, `bpf_ktime_get_coarse_ns` in the program), on an
//! architecture with efficient unaligned access (x86-64, arm64): the object is built to read
//! packet fields at any alignment, which the verifier checks only where such access is slow
//! (see `build.rs`).

pub(crate) mod attach;
pub(crate) mod batch;
pub mod bpffs;
pub mod clock;
pub mod dynamic;
pub(crate) mod forwarding;
pub mod layout;
pub mod link;
pub(crate) mod lists;
pub(crate) mod maps;
pub mod netlink;
pub(crate) mod program;
pub(crate) mod relay;
pub(crate) mod settings;
pub mod stats;
pub mod v4_table;

pub(crate) use attach::{KernelError, LoadRequest, load_and_attach};
pub use layout::LayoutError;
pub use link::{AttachMode, Attachment, LinkError};
pub use lists::{ListChange, ListsError, StaticList};
pub use maps::{MapAccess, Maps, MapsError, configure};
pub use program::{LoadError, OBJECT, ScreenProgram};
pub use settings::{KernelAction, SettingsError};

/// A map operation that failed, naming the map: every kernel object's error carries one.
#[derive(Debug, thiserror::Error)]
#[error("map {name}: {source}")]
pub struct MapFailure {
    pub name: &'static str,
    #[source]
    pub source: aya::maps::MapError,
}
