//! Checks pinned maps against the layout screen-common defines ([`screen_common::map_layout`])
//! before they are reused. aya reopens a pin whatever its type and sizes (cilium/ebpf refuses
//! with `ErrMapIncompatible`), and a program bound to a map of another layout would misread
//! every entry, so a load refuses such a pin, but for counters of an earlier layout, which hold
//! no state and are replaced.

use std::path::{Path, PathBuf};

use aya::maps::{MapError, MapInfo, MapType};
use screen_common::map_layout::{self, MapLayout};

/// An error checking the pins of the program.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The pin could not be read.
    #[error("cannot inspect pinned map {path}: {source}")]
    InspectPin {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    /// The pin is of another layout.
    #[error(
        "pinned map {path} does not match this version ({what}); \
         run `smtp-screen unload` to remove the old maps (their entries are lost)"
    )]
    IncompatiblePin { path: PathBuf, what: String },
}

/// aya's name for a map type of the layout.
const fn aya_type(map_type: map_layout::MapType) -> MapType {
    match map_type {
        map_layout::MapType::Array => MapType::Array,
        map_layout::MapType::LruHash => MapType::LruHash,
        map_layout::MapType::LpmTrie => MapType::LpmTrie,
    }
}

/// What the kernel says about a map, as far as its layout goes.
#[derive(Clone, Copy, Debug)]
struct Found {
    map_type: MapType,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
}

/// How `found` differs from `layout`, one phrase per difference.
fn differences(layout: &MapLayout, found: &Found) -> Vec<String> {
    let map_type = aya_type(layout.map_type);
    let mut wrong = Vec::new();
    if found.map_type != map_type {
        wrong.push(format!("type {:?}, expected {map_type:?}", found.map_type));
    }
    if found.key_size != layout.key_size {
        wrong.push(format!(
            "key size {}, expected {}",
            found.key_size, layout.key_size
        ));
    }
    if found.value_size != layout.value_size {
        wrong.push(format!(
            "value size {}, expected {}",
            found.value_size, layout.value_size
        ));
    }
    if found.max_entries != layout.max_entries {
        wrong.push(format!(
            "max entries {}, expected {}",
            found.max_entries, layout.max_entries
        ));
    }
    // The daemon writes the IPv4 tables through a shared mapping, for one.
    if found.flags & layout.flags != layout.flags {
        wrong.push(format!(
            "flags {:#x}, expected {:#x} set",
            found.flags, layout.flags
        ));
    }
    wrong
}

/// Compares the kernel's description of the map pinned as `name` with the layout this build
/// expects; the error says every difference.
pub fn check(name: &str, info: &MapInfo) -> Result<(), String> {
    let layout = map_layout::of(name).ok_or_else(|| format!("no layout for map {name}"))?;
    let found = Found {
        map_type: info.map_type().map_err(|e| e.to_string())?,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
        flags: info.map_flags(),
    };
    let wrong = differences(&layout, &found);
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join(", "))
    }
}

/// A pin of an earlier layout that holds no state, which a load replaces.
#[derive(Debug)]
pub(crate) struct Outdated {
    pub(crate) path: PathBuf,
    /// How it differs.
    pub(crate) what: String,
}

/// Checks every pin of the program under `pin_dir`, the previous layout's configuration copy
/// included. Refuses a pin of another layout, but for the counters, which are returned to be
/// replaced once every other pin has passed.
pub(crate) fn check_pin_dir(pin_dir: &Path) -> Result<Option<Outdated>, LayoutError> {
    let mut outdated = None;
    for layout in map_layout::ALL
        .into_iter()
        .chain([map_layout::OLD_CONFIG_GLOBAL])
    {
        let path = pin_dir.join(layout.name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|source| LayoutError::InspectPin {
            path: path.clone(),
            source,
        })?;
        match check(layout.name, &info) {
            Ok(()) => {}
            Err(what) if layout.name == screen_common::map_name::STATS => {
                outdated = Some(Outdated { path, what });
            }
            Err(what) => return Err(LayoutError::IncompatiblePin { path, what }),
        }
    }
    Ok(outdated)
}

/// Whether the map pinned at `path` as `name` is of an earlier layout; a missing or unreadable
/// pin is not.
pub(crate) fn is_outdated(name: &str, path: &Path) -> bool {
    MapInfo::from_pin(path).is_ok_and(|info| check(name, &info).is_err())
}

#[cfg(test)]
mod tests {
    use screen_common::map_name;

    use super::*;

    /// What the kernel reports for a map created exactly as `layout` says.
    fn as_created(layout: &MapLayout) -> Found {
        Found {
            map_type: aya_type(layout.map_type),
            key_size: layout.key_size,
            value_size: layout.value_size,
            max_entries: layout.max_entries,
            flags: layout.flags,
        }
    }

    fn layout(name: &str) -> MapLayout {
        map_layout::of(name).expect("a pinned map")
    }

    #[test]
    fn a_map_made_to_the_layout_matches_it() {
        for layout in map_layout::ALL {
            assert!(differences(&layout, &as_created(&layout)).is_empty());
        }
    }

    #[test]
    fn every_difference_is_named() {
        let dyn_v4 = layout(map_name::DYN_DENY_V4);
        let found = Found {
            map_type: MapType::Hash,
            key_size: 8,
            max_entries: 16,
            ..as_created(&dyn_v4)
        };
        assert_eq!(
            differences(&dyn_v4, &found).join(", "),
            "type Hash, expected LruHash, key size 8, expected 4, max entries 16, expected 1048576"
        );
        let stats = layout(map_name::STATS);
        let found = Found {
            map_type: MapType::PerCpuArray,
            value_size: 88,
            ..as_created(&stats)
        };
        assert_eq!(
            differences(&stats, &found),
            [
                "type PerCpuArray, expected Array",
                &format!("value size 88, expected {}", stats.value_size)
            ]
        );
    }

    #[test]
    fn required_flags_must_be_set_and_others_may_be() {
        let table = layout(map_name::TABLE_V4[0]);
        let found = Found {
            flags: 0,
            ..as_created(&table)
        };
        assert_eq!(
            differences(&table, &found),
            ["flags 0x0, expected 0x400 set"]
        );
        let found = Found {
            flags: table.flags | 1 << 3,
            ..as_created(&table)
        };
        assert!(differences(&table, &found).is_empty());
    }
}
