//! `smtp-screen dnsbl check ADDR`: asks every configured list about one address and shows how
//! the daemon would score it.

use std::{net::IpAddr, path::Path, sync::Arc, time::Duration};

use anyhow::bail;

use super::ConfigArgs;
use crate::{
    config::Config,
    dnsbl::{Dnsbl, DnsblLog, ListResult, Verdict, query_name},
    duration,
    settings::Settings,
};

/// Prints the lookups' own log lines (listings, warnings) as the daemon would log them.
struct Stderr;

impl DnsblLog for Stderr {
    fn info(&self, line: &str) {
        eprintln!("smtp-screen: {line}");
    }

    fn warning(&self, line: &str) {
        eprintln!("smtp-screen: warning: {line}");
    }
}

pub(crate) fn check(addr: IpAddr, args: &ConfigArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let dir = args.config.parent().unwrap_or(Path::new("/"));
    let settings = Settings::new(&config, dir)?;
    let Some(lists) = settings.dnsbl else {
        bail!("{}: dnsbl_sites names no list", args.config.display());
    };
    let thresholds = settings.screen.early.thresholds;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let dnsbl = Dnsbl::new(lists, Arc::new(Stderr))?;
        let query = dnsbl.start(addr);
        let deadline = tokio::time::Instant::now() + config.dnsbl_timeout + Duration::from_secs(1);
        let score = query.wait_all(deadline).await;
        let results = query.results();
        for (domain, result) in dnsbl.sites().domains().iter().zip(&results) {
            let answer = match result {
                ListResult::Listed { addrs, ttl } => format!(
                    "listed as {} (ttl {})",
                    addrs
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(" "),
                    duration::Display(*ttl)
                ),
                ListResult::NotListed { .. } => "not listed".into(),
                ListResult::Failed => "lookup failed (counts as not listed)".into(),
                ListResult::Pending => "no answer in time".into(),
                ListResult::Suspended => "suspended".into(),
            };
            println!("{}: {answer}", query_name(addr, domain));
            let addrs: &[std::net::Ipv4Addr] = match result {
                ListResult::Listed { addrs, .. } => addrs,
                _ => &[],
            };
            for site in dnsbl.sites().sites().iter().filter(|s| &s.domain == domain) {
                let matched = !addrs.is_empty() && site.matches(addrs);
                println!(
                    "  {site}: {}",
                    if matched {
                        format!("matches, weight {}", site.weight)
                    } else {
                        "no match".to_string()
                    }
                );
            }
        }
        let verdict = match score.verdict(&thresholds, false) {
            Verdict::Listed { rank, name } => format!(
                "listed (rank {rank} >= dnsbl_threshold {}), reply names {name}",
                thresholds.threshold
            ),
            Verdict::Allowlisted { ttl } => format!(
                "allowlisted by DNSWL (rank <= {}), for {}",
                thresholds.allowlist_threshold,
                duration::Display(ttl)
            ),
            Verdict::Clean { ttl } => format!(
                "passes (rank below dnsbl_threshold {}), for {}",
                thresholds.threshold,
                duration::Display(ttl)
            ),
        };
        println!("score {} for {addr}: {verdict}", score.rank);
        Ok(())
    })
}
