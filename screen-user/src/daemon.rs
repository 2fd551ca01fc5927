//! The daemon: keeps the XDP program loaded and configured on the configured interfaces and
//! sweeps expired dynamic deny entries.
//!
//! Everything it sets up in the kernel is pinned, so stopping or restarting the daemon leaves
//! the filter and every dynamic entry in place; `smtp-screen unload` removes them.

use std::path::Path;

use tokio::signal::unix::{SignalKind, signal};

use crate::{
    config::Config,
    kernel::{self, Maps, ScreenProgram, bpffs, clock},
};

/// Runs until SIGTERM or SIGINT.
pub async fn run(config: Config, pin_dir: &Path) -> anyhow::Result<()> {
    bpffs::prepare_pin_dir(pin_dir)?;
    let mut program = {
        let _lock = bpffs::PinDirLock::acquire(pin_dir)?;
        let mut program = ScreenProgram::load(pin_dir)?;
        let mut maps = Maps::from_pins(pin_dir)?;
        kernel::configure(
            &mut maps,
            &config.protected_ports,
            config.kernel_action,
            config.deny_v6_prefix,
        )?;
        for iface in &config.interfaces {
            program.attach(iface, config.xdp_mode, false)?;
        }
        program
    };
    let prog_id = program.program_id()?;
    tracing::info!(
        prog_id,
        pin_dir = %pin_dir.display(),
        interfaces = ?config.interfaces,
        mode = config.xdp_mode.as_str(),
        ports = ?config.protected_ports,
        action = ?config.kernel_action,
        "smtp-screen started"
    );

    let mut maps = Maps::from_pins(pin_dir)?;
    let mut sweep = tokio::time::interval(
        config
            .deny_sweep_interval
            .max(std::time::Duration::from_secs(1)),
    );
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = sweep.tick() => {
                match maps.sweep_expired(clock::monotonic_ns()) {
                    Ok(0) => {}
                    Ok(swept) => tracing::info!(swept, "expired dynamic deny entries removed"),
                    Err(e) => tracing::warn!("sweeping dynamic deny entries: {e}"),
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stopping; the XDP filter stays attached (smtp-screen unload removes it)");
    Ok(())
}
