//! `smtp-screen load`: load the program, pin it, attach it, configure it.

use std::path::Path;

use anyhow::{Context as _, bail};

use super::LoadArgs;
use crate::{
    config,
    kernel::{
        self, Maps, ScreenProgram,
        bpffs::{self, PinDirLock},
        link,
    },
};

pub fn run(pin_dir: &Path, args: &LoadArgs) -> anyhow::Result<()> {
    if let Err(why) = config::check_ports(&args.ports) {
        bail!("--port: {why}");
    }
    if let Err(why) = config::check_v6_prefix(args.v6_prefix) {
        bail!("--v6-prefix: {why}");
    }
    for iface in &args.ifaces {
        kernel::netlink::if_index(iface)?;
    }
    let fresh = std::fs::metadata(pin_dir).is_err();
    bpffs::prepare_pin_dir(pin_dir)?;
    let lock = PinDirLock::acquire(pin_dir)?;
    let result = load_and_attach(pin_dir, args);
    if result.is_err() && fresh {
        // Nothing was there before: leave nothing behind.
        drop(lock);
        let _ = link::unload(pin_dir);
    }
    result
}

fn load_and_attach(pin_dir: &Path, args: &LoadArgs) -> anyhow::Result<()> {
    let mut program = ScreenProgram::load(pin_dir)?;
    let mut maps = Maps::from_pins(pin_dir)?;
    let settings = kernel::configure(&mut maps, &args.ports, args.action, args.v6_prefix)?;
    let prog_id = program.program_id()?;
    for iface in &args.ifaces {
        link::attach(program.xdp()?, pin_dir, iface, args.mode, args.force)
            .with_context(|| format!("loading on {iface}"))?;
        println!(
            "{iface}: attached in {} mode (program id {prog_id}), ports {:?}, action {:?}",
            args.mode.as_str(),
            settings
                .ports
                .iter()
                .filter(|&&p| p != 0)
                .collect::<Vec<_>>(),
            args.action,
        );
    }
    program.retire_old_layout()?;
    Ok(())
}
