//! The layout of every map the XDP program pins: its type, key and value sizes, capacity and
//! the flags it is created with, one entry per name of [`map_name::ALL`].
//!
//! The program declares its maps with the types, limits and flags these entries are built from;
//! userspace checks a pinned map against its entry before reusing it, because the kernel
//! reopens a pin whatever its layout, and a program bound to a map of another layout would
//! misread every entry.

use core::mem::size_of;

use crate::{
    DYN_V4_MAX_ENTRIES, DYN_V6_MAX_ENTRIES, DenyEntry, DynKeyV4, DynKeyV6, LpmKeyV4, LpmKeyV6,
    PrefixEntry, STATIC_MAX_ENTRIES, ScreenConfig, StatsRecord, map_name, v4_table,
};

/// The kind of a map, numbered as the kernel's `enum bpf_map_type`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapType {
    /// `BPF_MAP_TYPE_ARRAY`.
    Array = 2,
    /// `BPF_MAP_TYPE_LRU_HASH`.
    LruHash = 9,
    /// `BPF_MAP_TYPE_LPM_TRIE`.
    LpmTrie = 11,
}

/// `BPF_F_NO_PREALLOC`: the kernel creates an LPM trie only with it.
pub const BPF_F_NO_PREALLOC: u32 = 1;

/// What the kernel reports about a map, as far as the program depends on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapLayout {
    /// The map's name, which is also its pin's file name.
    pub name: &'static str,
    pub map_type: MapType,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes.
    pub value_size: u32,
    pub max_entries: u32,
    /// Flags the map is created with; a pinned map must have at least these.
    pub flags: u32,
}

/// An LPM trie of a static list: the key is the prefix length (`u32`) followed by `data`
/// address bytes.
const fn static_trie(name: &'static str, data: usize) -> MapLayout {
    MapLayout {
        name,
        map_type: MapType::LpmTrie,
        key_size: (size_of::<u32>() + data) as u32,
        value_size: size_of::<PrefixEntry>() as u32,
        max_entries: STATIC_MAX_ENTRIES,
        flags: BPF_F_NO_PREALLOC,
    }
}

/// A dynamic deny map keyed by `key` bytes.
const fn dynamic_deny(name: &'static str, key: usize, max_entries: u32) -> MapLayout {
    MapLayout {
        name,
        map_type: MapType::LruHash,
        key_size: key as u32,
        value_size: size_of::<DenyEntry>() as u32,
        max_entries,
        flags: 0,
    }
}

/// An array indexed by a `u32`.
const fn array(name: &'static str, value: usize, max_entries: u32, flags: u32) -> MapLayout {
    MapLayout {
        name,
        map_type: MapType::Array,
        key_size: size_of::<u32>() as u32,
        value_size: value as u32,
        max_entries,
        flags,
    }
}

/// An IPv4 direct table: `u64` words, mapped into the daemon's memory.
const fn table(name: &'static str) -> MapLayout {
    array(name, size_of::<u64>(), v4_table::WORDS, v4_table::MAP_FLAGS)
}

/// Every pinned map of the XDP program, in the order of [`map_name::ALL`].
pub const ALL: [MapLayout; 14] = [
    static_trie(map_name::ALLOW_V4[0], size_of::<LpmKeyV4>()),
    static_trie(map_name::ALLOW_V4[1], size_of::<LpmKeyV4>()),
    static_trie(map_name::ALLOW_V6[0], size_of::<LpmKeyV6>()),
    static_trie(map_name::ALLOW_V6[1], size_of::<LpmKeyV6>()),
    static_trie(map_name::DENY_V4[0], size_of::<LpmKeyV4>()),
    static_trie(map_name::DENY_V4[1], size_of::<LpmKeyV4>()),
    static_trie(map_name::DENY_V6[0], size_of::<LpmKeyV6>()),
    static_trie(map_name::DENY_V6[1], size_of::<LpmKeyV6>()),
    dynamic_deny(
        map_name::DYN_DENY_V4,
        size_of::<DynKeyV4>(),
        DYN_V4_MAX_ENTRIES,
    ),
    dynamic_deny(
        map_name::DYN_DENY_V6,
        size_of::<DynKeyV6>(),
        DYN_V6_MAX_ENTRIES,
    ),
    array(map_name::CONFIG, size_of::<ScreenConfig>(), 1, 0),
    array(map_name::STATS, size_of::<StatsRecord>(), 1, 0),
    table(map_name::TABLE_V4[0]),
    table(map_name::TABLE_V4[1]),
];

/// The previous layout's pin of the configuration section ([`map_name::OLD_CONFIG_GLOBAL_PIN`]),
/// which a load still takes the record from.
pub const OLD_CONFIG_GLOBAL: MapLayout = array(
    map_name::OLD_CONFIG_GLOBAL_PIN,
    size_of::<ScreenConfig>(),
    1,
    0,
);

/// The layout of the map pinned as `name`, if the program pins one by that name.
pub fn of(name: &str) -> Option<MapLayout> {
    ALL.into_iter()
        .chain([OLD_CONFIG_GLOBAL])
        .find(|layout| layout.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pinned_map_has_a_layout_in_name_order() {
        for (layout, name) in ALL.iter().zip(map_name::ALL) {
            assert_eq!(layout.name, name);
            assert_eq!(of(name), Some(*layout));
        }
        assert_eq!(of(map_name::OLD_CONFIG_GLOBAL_PIN), Some(OLD_CONFIG_GLOBAL));
        assert_eq!(of(map_name::CONFIG_GLOBAL), None);
        assert_eq!(of(map_name::RELAY_SOCKS), None);
    }

    // A change here is a change of the pinned-map schema: old pins are then refused.
    #[test]
    fn layouts_are_the_pinned_schema() {
        let sizes = |name| {
            let layout = of(name).expect("a pinned map");
            (
                layout.map_type,
                layout.key_size,
                layout.value_size,
                layout.max_entries,
            )
        };
        assert_eq!(
            sizes(map_name::DENY_V4[1]),
            (MapType::LpmTrie, 8, 4, STATIC_MAX_ENTRIES)
        );
        assert_eq!(
            sizes(map_name::ALLOW_V6[0]),
            (MapType::LpmTrie, 20, 4, STATIC_MAX_ENTRIES)
        );
        assert_eq!(
            sizes(map_name::DYN_DENY_V6),
            (MapType::LruHash, 16, 16, DYN_V6_MAX_ENTRIES)
        );
        assert_eq!(sizes(map_name::CONFIG), (MapType::Array, 4, 36, 1));
        assert_eq!(
            sizes(map_name::STATS),
            (MapType::Array, 4, 128 * crate::STATS_MAX_CPUS as u32, 1)
        );
        assert_eq!(
            sizes(map_name::TABLE_V4[0]),
            (MapType::Array, 4, 8, 524_288)
        );
        assert_eq!(
            of(map_name::TABLE_V4[1]).map(|l| l.flags),
            Some(v4_table::MAP_FLAGS)
        );
        assert_eq!(
            of(map_name::DYN_DENY_V4).map(|l| l.flags),
            Some(0),
            "LRU hashes are preallocated"
        );
    }
}
