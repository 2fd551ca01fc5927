//! `smtp-screen deny …` and `smtp-screen allow …`: the static lists (both) and the dynamic
//! deny entries.

use std::path::Path;

use anyhow::bail;
use ipnet::IpNet;
use screen_common::{Origin, STATIC_MAX_ENTRIES};

use super::{AllowCommand, DenyCommand};
use crate::{
    duration,
    kernel::{Maps, StaticList, bpffs::PinDirLock, clock},
    prefixes,
};

fn open(pin_dir: &Path) -> anyhow::Result<Maps> {
    super::require_loaded(pin_dir)?;
    Ok(Maps::from_pins(pin_dir)?)
}

fn origin_name(value: u32) -> &'static str {
    Origin::from_u32(value).map_or("unknown", Origin::as_str)
}

pub(crate) fn deny(pin_dir: &Path, cmd: DenyCommand) -> anyhow::Result<()> {
    let mut maps = open(pin_dir)?;
    match cmd {
        DenyCommand::Add { prefix, ttl: None } => {
            let _lock = PinDirLock::acquire(pin_dir)?;
            maps.add_static(StaticList::Deny, prefix, Origin::Operator)?;
            println!("{prefix} static deny");
        }
        DenyCommand::Add {
            prefix,
            ttl: Some(ttl),
        } => {
            if ttl.is_zero() {
                bail!("--ttl 0 would expire at once; give a positive time (e.g. 1h)");
            }
            let _lock = PinDirLock::acquire(pin_dir)?;
            let entry = maps.add_dynamic(prefix, ttl, Origin::Operator, 1)?;
            println!("{} dynamic deny for {}", entry.net, duration::Display(ttl));
        }
        DenyCommand::Del { prefix } => {
            let _lock = PinDirLock::acquire(pin_dir)?;
            remove_deny(&mut maps, prefix)?;
            println!("{prefix} removed");
        }
        DenyCommand::List => {
            print_static(&mut maps, StaticList::Deny)?;
            let now = clock::monotonic_ns();
            for e in maps.dynamic_entries()? {
                let ttl = match e.remaining(now) {
                    Some(left) => format!("ttl={}s", left.as_secs().max(1)),
                    None => "expired".to_string(),
                };
                println!(
                    "{} dynamic {ttl} origin={} failures={}",
                    e.net,
                    origin_name(e.entry.origin),
                    e.entry.failures
                );
            }
        }
        DenyCommand::Load { file } => load(pin_dir, &mut maps, StaticList::Deny, &file)?,
    }
    Ok(())
}

/// Removes `prefix` from the static list and the dynamic map, wherever it is.
fn remove_deny(maps: &mut Maps, prefix: IpNet) -> anyhow::Result<()> {
    let from_static = maps.remove_static(StaticList::Deny, prefix).map(drop);
    let covers_dynamic = maps.dynamic_key_net(prefix).is_ok();
    let from_dynamic = covers_dynamic.then(|| maps.remove_dynamic(prefix));
    match (from_static, from_dynamic) {
        (Ok(()), _) | (_, Some(Ok(()))) => Ok(()),
        (Err(e), None | Some(Err(_))) => Err(e.into()),
    }
}

pub(crate) fn allow(pin_dir: &Path, cmd: AllowCommand) -> anyhow::Result<()> {
    let mut maps = open(pin_dir)?;
    match cmd {
        AllowCommand::Add { prefix } => {
            let _lock = PinDirLock::acquire(pin_dir)?;
            maps.add_static(StaticList::Allow, prefix, Origin::Operator)?;
            println!("{prefix} allow");
        }
        AllowCommand::Del { prefix } => {
            let _lock = PinDirLock::acquire(pin_dir)?;
            maps.remove_static(StaticList::Allow, prefix)?;
            println!("{prefix} removed");
        }
        AllowCommand::List => print_static(&mut maps, StaticList::Allow)?,
        AllowCommand::Load { file } => load(pin_dir, &mut maps, StaticList::Allow, &file)?,
    }
    Ok(())
}

fn print_static(maps: &mut Maps, list: StaticList) -> anyhow::Result<()> {
    for (net, entry) in maps.static_entries(list)? {
        println!("{net} static origin={}", origin_name(entry.origin));
    }
    Ok(())
}

fn load(pin_dir: &Path, maps: &mut Maps, list: StaticList, file: &Path) -> anyhow::Result<()> {
    // Parse everything first: a bad line changes nothing.
    let nets = prefixes::read_list(file, STATIC_MAX_ENTRIES as usize)?;
    let _lock = PinDirLock::acquire(pin_dir)?;
    maps.replace_static(list, &nets, Origin::ListFile)?;
    println!(
        "{}: {} prefixes now make up the {} list",
        file.display(),
        nets.len(),
        list.as_str()
    );
    Ok(())
}
