//! `smtp-screen run`: the daemon.

use std::path::Path;

use super::RunArgs;
use crate::{config::Config, daemon, privileges};

pub(crate) fn run(pin_dir: &Path, args: &RunArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    // Before the runtime starts its threads, which inherit what this sets.
    privileges::forgo_exec_privileges()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(daemon::run(config, &args.config, pin_dir))
}
