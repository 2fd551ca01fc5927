//! `smtp-screen unload`: detach everywhere and remove every pin.

use std::path::Path;

use crate::kernel::link;

pub(crate) fn run(pin_dir: &Path) -> anyhow::Result<()> {
    if std::fs::metadata(pin_dir).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
        println!("nothing loaded ({} does not exist)", pin_dir.display());
        return Ok(());
    }
    let detached = link::unload(pin_dir)?;
    for iface in &detached {
        println!("{iface}: detached");
    }
    println!("removed {}", pin_dir.display());
    Ok(())
}
