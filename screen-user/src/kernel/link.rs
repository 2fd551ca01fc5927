//! The program's XDP links, each pinned as `<pin_dir>/link_<iface>` so that filtering outlives
//! the process that attached it: attaching (an interface this pin directory already filters
//! gets the new program swapped into its link atomically, so an upgrade or restart leaves no
//! moment without the filter), refusing another owner's program unless forced, listing the
//! attachments, and unloading everything.
//!
//! # Minimum kernel version
//!
//! 5.9 for XDP links (`bpf_link_create`); older kernels attach through netlink only, which
//! cannot be pinned.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::programs::{
    ProgramError, Xdp, XdpMode,
    links::{self, FdLink, PinnedLink},
    xdp::XdpLink,
};

use super::{
    bpffs,
    netlink::{self, NetlinkError, XdpAttachMode},
};
use crate::paths::LINK_PIN_PREFIX;

/// How to attach: chosen by the operator, never guessed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// In the driver, before an skb exists: the fast path.
    Native,
    /// In the stack after skb allocation: works on every interface, costs more.
    Generic,
}

impl AttachMode {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
        }
    }

    const fn xdp_mode(self) -> XdpMode {
        match self {
            Self::Native => XdpMode::Driver,
            Self::Generic => XdpMode::Skb,
        }
    }

    const fn netlink_mode(self) -> XdpAttachMode {
        match self {
            Self::Native => XdpAttachMode::Native,
            Self::Generic => XdpAttachMode::Generic,
        }
    }
}

/// An error attaching, listing or removing the program's links.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(
        "{iface} already has XDP program id {prog_id} attached in {mode} mode by another owner \
         (not this pin directory); refusing to replace it (--force replaces a program attached \
         through netlink)"
    )]
    ForeignProgram {
        iface: String,
        prog_id: u32,
        mode: &'static str,
    },
    #[error(
        "{iface}: XDP program id {prog_id} is held by a BPF link (another smtp-screen pin \
         directory, libxdp or bpftool); the kernel does not detach links through netlink, so \
         remove it with its owner (e.g. `smtp-screen --pin-dir DIR unload`)"
    )]
    HeldByLink { iface: String, prog_id: u32 },
    #[error(
        "{iface} is attached in {current} mode; `smtp-screen unload` first (or --force) to \
         attach in {wanted} mode"
    )]
    ModeMismatch {
        iface: String,
        current: &'static str,
        wanted: &'static str,
    },
    #[error("attaching to {iface} in {mode} mode: {source}")]
    Attach {
        iface: String,
        mode: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error(
        "the kernel attached {iface} without a BPF link (older than 5.9?), which cannot be pinned"
    )]
    NoLink { iface: String },
    #[error("pinned link {path}: {source}")]
    Link {
        path: PathBuf,
        #[source]
        source: links::LinkError,
    },
    #[error("pinning link {path}: {source}")]
    PinLink {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("cannot read pin directory {path}: {source}")]
    ReadPinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("removing {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One interface the program is attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub(crate) iface: String,
    /// `None` when the interface is gone.
    pub(crate) ifindex: Option<u32>,
    /// How the kernel reports the attachment now (`None`: nothing attached).
    pub(crate) mode: Option<XdpAttachMode>,
    pub(crate) link_id: u32,
    pub(crate) prog_id: u32,
}

/// Where the link for `iface` is pinned.
pub(crate) fn link_pin_path(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(format!("{LINK_PIN_PREFIX}{iface}"))
}

/// The interface whose link is pinned under the file name `name`, if it is a link's.
fn link_iface(name: &str) -> Option<&str> {
    name.strip_prefix(LINK_PIN_PREFIX)
}

fn attach_error(iface: &str, mode: AttachMode, source: ProgramError) -> LinkError {
    LinkError::Attach {
        iface: iface.to_string(),
        mode: mode.as_str(),
        source,
    }
}

fn remove_pin(path: &Path) -> Result<(), LinkError> {
    bpffs::remove_pin(path).map_err(|source| LinkError::Remove {
        path: path.to_path_buf(),
        source,
    })
}

/// Attaches the loaded `program` to `iface` in `mode` and pins the link under `pin_dir`. An
/// interface this pin directory already filters gets the new program swapped into its link
/// atomically. Another program on the interface is replaced only with `force`, and only if
/// it was attached through netlink.
pub(crate) fn attach(
    program: &mut Xdp,
    pin_dir: &Path,
    iface: &str,
    mode: AttachMode,
    force: bool,
) -> Result<(), LinkError> {
    let index = netlink::if_index(iface)?;
    let link_path = link_pin_path(pin_dir, iface);
    let current = netlink::xdp_attachment(index)?;

    if link_path.exists() {
        let pinned = PinnedLink::from_pin(&link_path).map_err(|source| LinkError::Link {
            path: link_path.clone(),
            source,
        })?;
        let ours = FdLink::from(pinned);
        let current_mode = current.map(|c| c.mode);
        match current_mode {
            Some(m) if m == mode.netlink_mode() => {
                let link = XdpLink::try_from(ours).map_err(|source| LinkError::Link {
                    path: link_path.clone(),
                    source,
                })?;
                let id = program
                    .attach_to_link(link)
                    .map_err(|source| attach_error(iface, mode, source))?;
                // The pin keeps the link; this process needs no descriptor for it.
                drop(program.take_link(id));
                tracing::info!(
                    iface,
                    mode = mode.as_str(),
                    "XDP program replaced in pinned link"
                );
                return Ok(());
            }
            Some(m) if !force => {
                return Err(LinkError::ModeMismatch {
                    iface: iface.to_string(),
                    current: m.as_str(),
                    wanted: mode.as_str(),
                });
            }
            _ => {
                // A stale pin (interface re-created) or a forced mode change.
                drop(ours);
                remove_pin(&link_path)?;
            }
        }
    }

    if let Some(existing) = netlink::xdp_attachment(index)? {
        if !force {
            return Err(LinkError::ForeignProgram {
                iface: iface.to_string(),
                prog_id: existing.prog_id,
                mode: existing.mode.as_str(),
            });
        }
        tracing::warn!(
            iface,
            prog_id = existing.prog_id,
            mode = existing.mode.as_str(),
            "--force: detaching the XDP program already on the interface"
        );
        match netlink::detach_xdp(index, existing.mode) {
            Err(NetlinkError::Io { source, .. }) if source.raw_os_error() == Some(libc::EBUSY) => {
                return Err(LinkError::HeldByLink {
                    iface: iface.to_string(),
                    prog_id: existing.prog_id,
                });
            }
            result => result?,
        }
    }

    let id = program
        .attach_to_if_index(index, mode.xdp_mode())
        .map_err(|source| attach_error(iface, mode, source))?;
    let link = program
        .take_link(id)
        .map_err(|source| attach_error(iface, mode, source))?;
    let fd_link = FdLink::try_from(link).map_err(|_| LinkError::NoLink {
        iface: iface.to_string(),
    })?;
    fd_link
        .pin(&link_path)
        .map_err(|source| LinkError::PinLink {
            path: link_path.clone(),
            source,
        })?;
    tracing::info!(iface, mode = mode.as_str(), "XDP program attached");
    Ok(())
}

/// The entries of the pin directory; none when it does not exist.
fn pin_entries(pin_dir: &Path) -> Result<Vec<std::fs::DirEntry>, LinkError> {
    match std::fs::read_dir(pin_dir) {
        Ok(entries) => Ok(entries.flatten().collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(LinkError::ReadPinDir {
            path: pin_dir.to_path_buf(),
            source,
        }),
    }
}

/// The interfaces with a pinned link, and what the kernel says about each.
pub(crate) fn attachments(pin_dir: &Path) -> Result<Vec<Attachment>, LinkError> {
    let mut out = Vec::new();
    for entry in pin_entries(pin_dir)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(iface) = link_iface(&name) else {
            continue;
        };
        let path = entry.path();
        let link = PinnedLink::from_pin(&path).map_err(|source| LinkError::Link {
            path: path.clone(),
            source,
        })?;
        let info = FdLink::from(link)
            .info()
            .map_err(|source| LinkError::Link { path, source })?;
        let ifindex = netlink::if_index(iface).ok();
        let mode = match ifindex {
            Some(index) => netlink::xdp_attachment(index)?.map(|a| a.mode),
            None => None,
        };
        out.push(Attachment {
            iface: iface.to_string(),
            ifindex,
            mode,
            link_id: info.id(),
            prog_id: info.program_id(),
        });
    }
    out.sort_by(|a, b| a.iface.cmp(&b.iface));
    Ok(out)
}

/// Detaches every pinned link and removes every pin and the pin directory. Returns the
/// interfaces that were detached.
pub fn unload(pin_dir: &Path) -> Result<Vec<String>, LinkError> {
    let mut detached = Vec::new();
    for entry in pin_entries(pin_dir)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if let Some(iface) = link_iface(&name) {
            // Dropping the last descriptor of an unpinned link detaches the program.
            match PinnedLink::from_pin(&path) {
                Ok(link) => {
                    drop(link.unpin().map_err(|source| LinkError::Remove {
                        path: path.clone(),
                        source,
                    })?);
                }
                Err(_) => remove_pin(&path)?,
            }
            detached.push(iface.to_string());
        } else {
            remove_pin(&path)?;
        }
    }
    match std::fs::remove_dir(pin_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(LinkError::Remove {
                path: pin_dir.to_path_buf(),
                source,
            });
        }
    }
    detached.sort();
    Ok(detached)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_pinned_by_interface_name() {
        let path = link_pin_path(Path::new("/sys/fs/bpf/smtp-screen"), "eth0");
        assert_eq!(path, Path::new("/sys/fs/bpf/smtp-screen/link_eth0"));
        let name = path.file_name().and_then(|n| n.to_str()).unwrap();
        assert_eq!(link_iface(name), Some("eth0"));
        assert_eq!(link_iface("scr_config"), None);
        assert_eq!(link_iface("scr_dyn_v4"), None);
    }

    #[test]
    fn unloading_nothing_is_not_an_error() {
        let missing = Path::new("/nonexistent/smtp-screen-pins");
        assert_eq!(unload(missing).unwrap(), Vec::<String>::new());
        assert_eq!(attachments(missing).unwrap(), []);
    }

    #[test]
    fn modes_map_to_the_kernels_words() {
        assert_eq!(AttachMode::Native.as_str(), "native");
        assert_eq!(AttachMode::Generic.as_str(), "generic");
        assert_eq!(
            AttachMode::Native.netlink_mode().as_str(),
            AttachMode::Native.as_str()
        );
        assert_eq!(
            AttachMode::Generic.netlink_mode().as_str(),
            AttachMode::Generic.as_str()
        );
        assert!(matches!(AttachMode::Generic.xdp_mode(), XdpMode::Skb));
        assert!(matches!(AttachMode::Native.xdp_mode(), XdpMode::Driver));
    }
}
