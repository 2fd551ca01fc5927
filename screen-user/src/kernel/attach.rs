//! The load sequence, one function for `smtp-screen load` and the daemon: check the
//! interfaces, prepare and lock the pin directory, load the program over its pins, configure
//! it, attach it to each interface, and retire the previous layout's configuration copy once
//! nothing runs that layout's program. A load that fails over a pin directory that did not
//! exist before leaves nothing behind.

use std::path::Path;

use screen_common::ScreenConfig;

use super::{
    Maps, MapsError,
    bpffs::{self, BpffsError, PinDirLock},
    forwarding,
    link::{self, AttachMode, LinkError},
    maps,
    netlink::{self, NetlinkError},
    program::{LoadError, ScreenProgram},
    settings::KernelAction,
};

/// An error in the load sequence.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KernelError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Maps(#[from] MapsError),
    /// Attaching to one interface failed. The message is the cause's, which names the
    /// interface where it can; `iface` is for a caller that says which interface it was at.
    #[error("{source}")]
    Attach {
        iface: String,
        #[source]
        source: Box<LinkError>,
    },
}

/// What to load where: the interfaces, how to attach, and the settings to configure.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LoadRequest<'a> {
    pub(crate) ifaces: &'a [String],
    pub(crate) mode: AttachMode,
    /// Replace a program another owner attached through netlink.
    pub(crate) force: bool,
    /// Protected destination ports.
    pub(crate) ports: &'a [u16],
    pub(crate) action: KernelAction,
    /// Prefix length IPv6 dynamic deny entries are keyed by.
    pub(crate) v6_prefix_len: u32,
}

/// The program loaded, configured and attached. The maps written in the load are closed with
/// it: a holder opens them again with the access it needs ([`Maps::from_pins_with`]).
pub(crate) struct Loaded {
    /// The configuration record as written.
    pub(crate) config: ScreenConfig,
    /// The program's kernel id.
    pub(crate) prog_id: u32,
}

/// Loads the program under `pin_dir`, configures it and attaches it to every interface of
/// `request`, calling `attached` after each. The program itself stays loaded through its
/// pinned links.
pub(crate) fn load_and_attach(
    pin_dir: &Path,
    request: &LoadRequest<'_>,
    attached: impl FnMut(&str, &Loaded),
) -> Result<Loaded, KernelError> {
    for iface in request.ifaces {
        netlink::if_index(iface)?;
    }
    for warning in forwarding::warnings(forwarding::SysRoots::host(), request.ifaces) {
        tracing::warn!("{warning}");
    }
    let fresh = std::fs::metadata(pin_dir).is_err();
    bpffs::prepare_pin_dir(pin_dir)?;
    let lock = PinDirLock::acquire(pin_dir)?;
    let result = load_locked(pin_dir, request, attached);
    if result.is_err() && fresh {
        // Nothing was there before: leave nothing behind.
        drop(lock);
        let _ = link::unload(pin_dir);
    }
    result
}

/// The sequence's steps that change the pins, under the pin directory's lock.
fn load_locked(
    pin_dir: &Path,
    request: &LoadRequest<'_>,
    mut attached: impl FnMut(&str, &Loaded),
) -> Result<Loaded, KernelError> {
    let mut program = ScreenProgram::load(pin_dir)?;
    let mut maps = Maps::from_pins(pin_dir)?;
    let config = maps::configure(
        &mut maps,
        request.ports,
        request.action,
        request.v6_prefix_len,
    )?;
    let prog_id = program.program_id()?;
    drop(maps);
    let loaded = Loaded { config, prog_id };
    for iface in request.ifaces {
        link::attach(program.xdp()?, pin_dir, iface, request.mode, request.force).map_err(
            |source| KernelError::Attach {
                iface: iface.clone(),
                source: Box::new(source),
            },
        )?;
        attached(iface, &loaded);
    }
    program.retire_old_layout()?;
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_interface_is_refused_before_anything_is_pinned() {
        let pin_dir =
            std::env::temp_dir().join(format!("smtp-screen-attach-{}", std::process::id()));
        let ifaces = ["lo".to_string(), "no-such-if0".to_string()];
        let request = LoadRequest {
            ifaces: &ifaces,
            mode: AttachMode::Generic,
            force: false,
            ports: &[25],
            action: KernelAction::Drop,
            v6_prefix_len: 64,
        };
        let mut attached = Vec::new();
        let result = load_and_attach(&pin_dir, &request, |iface, _| {
            attached.push(iface.to_string())
        });
        assert!(matches!(
            result,
            Err(KernelError::Netlink(NetlinkError::UnknownInterface(ref name))) if name == "no-such-if0"
        ));
        assert!(attached.is_empty());
        assert!(!pin_dir.exists(), "nothing is created");
    }

    #[test]
    fn an_attach_error_reads_as_its_cause() {
        let error = KernelError::Attach {
            iface: "eth0".into(),
            source: Box::new(LinkError::NoLink {
                iface: "eth0".into(),
            }),
        };
        let cause = std::error::Error::source(&error).expect("the link error");
        assert_eq!(error.to_string(), cause.to_string());
    }
}
