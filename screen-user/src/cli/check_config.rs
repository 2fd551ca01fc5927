//! `smtp-screen check-config FILE`: everything the daemon would refuse, without starting it.

use std::path::Path;

use crate::{config::Config, settings::Settings};

pub(crate) fn run(file: &Path) -> anyhow::Result<()> {
    let config = Config::load(file)?;
    let dir = file.parent().unwrap_or(Path::new("/"));
    let settings = Settings::new(&config, dir)?;
    for warning in &settings.warnings {
        eprintln!("smtp-screen: warning: {warning}");
    }
    println!("{}: ok", file.display());
    Ok(())
}
