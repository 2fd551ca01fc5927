//! `smtp-screen cache list|del|flush`: the temporary allowlist, edited while the daemon is
//! stopped (the database is locked while the daemon runs).

use std::path::Path;

use super::CacheCommand;
use crate::{
    allowlist::{AllowlistCache, CacheOptions},
    config::Config,
    test_state::Test,
};

pub(crate) fn run(cmd: CacheCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cmd {
            CacheCommand::List(args) => {
                let cache = open(&args.config).await?;
                for (addr, times) in cache.list() {
                    let fields: Vec<String> = Test::ALL
                        .iter()
                        .map(|t| format!("{}={}", t.name(), times.get(*t)))
                        .collect();
                    println!("{addr} {}", fields.join(" "));
                }
                cache.close().await?;
            }
            CacheCommand::Del { addr, args } => {
                let cache = open(&args.config).await?;
                let existed = cache.delete(addr).await?;
                cache.close().await?;
                if !existed {
                    anyhow::bail!("{addr} is not in the temporary allowlist");
                }
                println!("{addr} deleted");
            }
            CacheCommand::Flush(args) => {
                let cache = open(&args.config).await?;
                let count = cache.flush_all().await?;
                cache.close().await?;
                println!("{count} records deleted");
            }
        }
        Ok(())
    })
}

async fn open(config: &Path) -> anyhow::Result<AllowlistCache> {
    let config = Config::load(config)?;
    Ok(AllowlistCache::open(&config.state_dir, CacheOptions::default()).await?)
}
