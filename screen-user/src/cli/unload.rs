//! `smtp-screen unload`: detach everywhere and remove every pin.

use std::path::Path;

use crate::kernel::loader;

pub fn run(pin_dir: &Path) -> anyhow::Result<()> {
    if !pin_dir.exists() {
        println!("nothing loaded ({} does not exist)", pin_dir.display());
        return Ok(());
    }
    let detached = loader::unload(pin_dir)?;
    for iface in &detached {
        println!("{iface}: detached");
    }
    println!("removed {}", pin_dir.display());
    Ok(())
}
