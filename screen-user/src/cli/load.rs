//! `smtp-screen load`: load the program, pin it, configure it, attach it.

use std::path::Path;

use anyhow::bail;

use super::LoadArgs;
use crate::{
    config,
    kernel::{self, KernelError, LoadRequest},
};

pub(crate) fn run(pin_dir: &Path, args: &LoadArgs) -> anyhow::Result<()> {
    if let Err(why) = config::check_ports(&args.ports) {
        bail!("--port: {why}");
    }
    if let Err(why) = config::check_v6_prefix(args.v6_prefix) {
        bail!("--v6-prefix: {why}");
    }
    let request = LoadRequest {
        ifaces: &args.ifaces,
        mode: args.mode,
        force: args.force,
        ports: &args.ports,
        action: args.action,
        v6_prefix_len: args.v6_prefix,
    };
    let loaded = kernel::load_and_attach(pin_dir, &request, |iface, loaded| {
        println!(
            "{iface}: attached in {} mode (program id {}), ports {:?}, action {:?}",
            args.mode.as_str(),
            loaded.prog_id,
            loaded
                .config
                .ports
                .iter()
                .filter(|&&p| p != 0)
                .collect::<Vec<_>>(),
            args.action,
        );
    });
    match loaded {
        Ok(_) => Ok(()),
        Err(KernelError::Attach { iface, source }) => {
            Err(anyhow::Error::new(*source).context(format!("loading on {iface}")))
        }
        Err(other) => Err(other.into()),
    }
}
