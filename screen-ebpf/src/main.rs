//! The smtp-screen XDP program, and the hand-off relay's stream verdict program.
//!
//! Screens TCP SYNs (without ACK) to the protected ports: a source in the static allow list
//! passes, a source in the static deny list or with an unexpired dynamic deny entry is dropped
//! (or answered with RST+ACK through `XDP_TX`), everything else passes. Any frame the parser
//! cannot read to the end of its TCP header is passed, never dropped.
//!
//! - `maps`: every map, and the configuration and counters as global data with their BTF maps
//! - `parse`: the wire headers and the bounds-checked cursor that reads them, to a `Syn`
//! - `screen`: the `#[xdp]` entry, the verdict on a SYN and the counters it keeps
//! - `rst`: the RST+ACK reply built in place of a denied SYN, for `XDP_TX`
//! - `relay`: the hand-off relay's stream verdict program
//!
//! Dependencies run one way: `screen` uses `parse`, `maps` and `rst`; `rst` uses `parse`;
//! `relay` uses `maps`.
//!
//! # Minimum kernel version
//!
//! 5.11: BTF-defined maps, LPM tries, LRU hashes, XDP links (5.10) and
//! `bpf_ktime_get_coarse_ns` (5.11). An architecture with efficient unaligned access
//! (x86-64, arm64): header fields are read at any alignment (`screen-user/build.rs`). The relay
//! needs 5.15 (see `relay`).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod relay;
#[cfg(target_arch = "bpf")]
mod rst;
#[cfg(target_arch = "bpf")]
mod screen;

/// Host builds of the workspace compile this crate too; the program only exists for BPF.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(all(target_arch = "bpf", not(test)))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves the program never gets here.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
