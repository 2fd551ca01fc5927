//! `smtp-screen status`: what is attached where, the counters and how full the maps are.

use std::path::Path;

use screen_common::{DenyAction, Stat, map_layout, map_name};

use crate::{
    config::Config,
    kernel::{Maps, link},
    paths,
};

pub(crate) fn run(pin_dir: &Path, config: Option<&Path>) -> anyhow::Result<()> {
    if let Some(config) = config {
        dnsbl_status(config)?;
        if std::fs::metadata(pin_dir).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
            println!(
                "kernel layer: not loaded ({} does not exist)",
                pin_dir.display()
            );
            return Ok(());
        }
    }
    super::require_loaded(pin_dir)?;
    let maps = Maps::from_pins(pin_dir)?;
    let config = maps.config()?;
    println!("pin directory: {}", pin_dir.display());

    println!("interfaces:");
    let attachments = link::attachments(pin_dir)?;
    if attachments.is_empty() {
        println!("  (none)");
    }
    for a in &attachments {
        let mode = a.mode.map_or("not attached", |m| m.as_str());
        let index = a.ifindex.map_or("gone".to_string(), |i| i.to_string());
        println!(
            "  {:<16} ifindex {index:<6} mode {mode:<8} program id {:<6} link id {}",
            a.iface, a.prog_id, a.link_id
        );
    }

    let ports: Vec<String> = config
        .ports
        .iter()
        .filter(|&&p| p != 0)
        .map(u16::to_string)
        .collect();
    let action = if config.action == DenyAction::Rst as u32 {
        "rst"
    } else {
        "drop"
    };
    println!(
        "config: ports {}, action {action}, IPv6 dynamic prefix /{}, live allow slot {}, live deny slot {}, live IPv4 table {}",
        if ports.is_empty() {
            "(none)".to_string()
        } else {
            ports.join(" ")
        },
        config.v6_prefix_len,
        config.allow_slot,
        config.deny_slot,
        map_name::TABLE_V4[(config.v4_table_slot & 1) as usize]
    );

    println!("counters:");
    let counters = maps.counters()?;
    for stat in Stat::ALL {
        println!("  {:<14} {}", stat.name(), counters[stat as usize]);
    }

    println!("maps:");
    for (name, count) in maps.fill_levels() {
        let capacity = map_layout::of(name).map_or(0, |layout| layout.max_entries);
        let live = live_marker(name, config.allow_slot, config.deny_slot);
        println!("  {name:<16} {count:>8} / {capacity:<8}{live}");
    }
    Ok(())
}

fn live_marker(name: &str, allow_slot: u32, deny_slot: u32) -> &'static str {
    let slot_of = |pair: [&str; 2]| pair.iter().position(|n| *n == name);
    let live = [map_name::ALLOW_V4, map_name::ALLOW_V6]
        .into_iter()
        .find_map(slot_of)
        .map(|slot| slot as u32 == allow_slot)
        .or_else(|| {
            [map_name::DENY_V4, map_name::DENY_V6]
                .into_iter()
                .find_map(slot_of)
                .map(|slot| slot as u32 == deny_slot)
        });
    match live {
        Some(true) => " (live)",
        Some(false) => " (idle)",
        None => "",
    }
}

fn dnsbl_status(config: &Path) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    let path = paths::dnsbl_status(&config.state_dir);
    println!("dns lists:");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.is_empty() => {
            for line in text.lines() {
                println!("  {line}");
            }
        }
        Ok(_) => println!("  (none written yet)"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!(
                "  (no {}: the daemon has not run with dnsbl_sites)",
                path.display()
            )
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
    }
    Ok(())
}
