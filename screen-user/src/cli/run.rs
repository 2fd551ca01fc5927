//! `smtp-screen run`: the daemon.

use std::path::Path;

use super::RunArgs;
use crate::{config::Config, daemon};

pub(crate) fn run(pin_dir: &Path, args: &RunArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(daemon::run(config, &args.config, pin_dir))
}
