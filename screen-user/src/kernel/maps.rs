//! Typed access to the program's maps, whether just loaded or reopened from their pins.
//!
//! # Minimum kernel version
//!
//! 4.20 for iterating LPM tries from userspace, 5.5 for the mmap-able IPv4 tables.

use std::{
    collections::BTreeMap,
    io,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, MapInfo, lpm_trie::Key},
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use screen_common::{
    DenyEntry, DynKeyV4, DynKeyV6, Origin, PrefixEntry, ScreenConfig, Stat, map_name, mask_v6,
};

use crate::kernel::{
    clock, loader,
    stats::StatsMap,
    table::{MappedTable, V4Table},
};

/// An error while reading or writing one of the program's maps.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    /// The map is not in the object or the pin directory.
    #[error("map {name} not found (is the program loaded? try `smtp-screen load`)")]
    Missing { name: &'static str },
    /// Opening a pinned map failed.
    #[error("cannot open pinned map {path}: {source}")]
    OpenPin {
        path: String,
        #[source]
        source: MapError,
    },
    /// A map operation failed.
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    /// The IPv6 dynamic deny map is keyed by a prefix longer than the one given.
    #[error(
        "{net} is wider than the IPv6 dynamic deny prefix /{configured}; \
         deny it without --ttl (a static entry) or give a /{configured} or longer"
    )]
    DynamicTooWide { net: IpNet, configured: u32 },
    /// IPv4 dynamic entries are single addresses.
    #[error(
        "{net}: IPv4 dynamic deny entries are single addresses (/32); deny a prefix without --ttl"
    )]
    DynamicV4Prefix { net: IpNet },
    /// The entry to delete is not there.
    #[error("{net} is not in the {list} list")]
    NotListed { net: IpNet, list: &'static str },
    /// The pins are of an earlier layout, whose program this version cannot steer.
    #[error(
        "{path} is of an older smtp-screen's layout; run `smtp-screen load` (or restart the \
         daemon) to upgrade the loaded program in place, keeping every entry"
    )]
    OldLayout { path: PathBuf },
    /// Reading or writing the counters failed.
    #[error("map {name}: {source}")]
    Stats {
        name: &'static str,
        #[source]
        source: io::Error,
    },
    /// The map is not an array.
    #[error("map {name} is not an array")]
    NotAnArray { name: &'static str },
    /// Mapping an IPv4 table into memory failed.
    #[error("cannot map {name} into memory (it must be created with BPF_F_MMAPABLE): {source}")]
    MapTable {
        name: &'static str,
        #[source]
        source: io::Error,
    },
}

type Result<T> = std::result::Result<T, MapsError>;

/// Which static list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StaticList {
    Allow,
    Deny,
}

impl StaticList {
    /// `allow` or `deny`, as on the command line.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }

    const fn other(self) -> Self {
        match self {
            Self::Allow => Self::Deny,
            Self::Deny => Self::Allow,
        }
    }

    /// The list's live slot in `config`.
    fn slot(self, config: &ScreenConfig) -> usize {
        let slot = match self {
            Self::Allow => config.allow_slot,
            Self::Deny => config.deny_slot,
        };
        (slot & 1) as usize
    }

    fn set_slot(self, config: &mut ScreenConfig, slot: usize) {
        match self {
            Self::Allow => config.allow_slot = slot as u32,
            Self::Deny => config.deny_slot = slot as u32,
        }
    }
}

/// The content of one slot of a static list: prefix → origin.
type ListContent = BTreeMap<IpNet, u32>;

/// What one change of a static list wrote: its cost, which the tests check and the benchmark
/// reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListChange {
    /// Trie entries inserted, updated or deleted in the slot that became live.
    pub trie_writes: usize,
    /// Words of the IPv4 table that differed from what the idle table held.
    pub table_words: usize,
}

/// A dynamic deny entry as the CLI shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DynamicEntry {
    /// `/32` for IPv4, the configured prefix for IPv6.
    pub net: IpNet,
    pub entry: DenyEntry,
}

impl DynamicEntry {
    /// Time left before the program ignores the entry; `None` once expired.
    pub fn remaining(&self, now_ns: u64) -> Option<Duration> {
        self.entry
            .expires_ns
            .checked_sub(now_ns)
            .filter(|&left| left > 0)
            .map(Duration::from_nanos)
    }
}

type Trie4 = LpmTrie<MapData, [u8; 4], PrefixEntry>;
type Trie6 = LpmTrie<MapData, [u8; 16], PrefixEntry>;

/// Every map of the program.
pub struct Maps {
    allow_v4: [Trie4; 2],
    allow_v6: [Trie6; 2],
    deny_v4: [Trie4; 2],
    deny_v6: [Trie6; 2],
    dyn_v4: HashMap<MapData, DynKeyV4, DenyEntry>,
    dyn_v6: HashMap<MapData, DynKeyV6, DenyEntry>,
    /// The configuration the program reads: its global data, pinned as `scr_config`.
    config: Array<MapData, ScreenConfig>,
    /// The previous layout's copy of the configuration (`scr_config_live`), while its program
    /// may still run on an interface: the record that program reads, so read and written
    /// first.
    old_config: Option<Array<MapData, ScreenConfig>>,
    /// The counters the program writes: its global data, pinned as `scr_stats`.
    stats: StatsMap,
    tables_v4: [MappedTable; 2],
}

/// The counters' map, `name` in the object or the pin directory.
fn stats_map(name: &'static str, map: Map) -> Result<StatsMap> {
    let Map::Array(data) = map else {
        return Err(MapsError::NotAnArray { name });
    };
    StatsMap::new(data).map_err(|source| MapsError::Stats { name, source })
}

fn typed<T>(name: &'static str, map: Map) -> Result<T>
where
    T: TryFrom<Map, Error = MapError>,
{
    T::try_from(map).map_err(|source| MapsError::Map { name, source })
}

impl Maps {
    /// Opens the maps pinned under `pin_dir`.
    pub fn from_pins(pin_dir: &Path) -> Result<Self> {
        let open = |name: &'static str| {
            let path = pin_dir.join(name);
            if !path.exists() {
                return Err(MapsError::Missing { name });
            }
            let data = MapData::from_pin(&path).map_err(|source| MapsError::OpenPin {
                path: path.display().to_string(),
                source,
            })?;
            Map::from_map_data(data).map_err(|source| MapsError::Map { name, source })
        };
        // Pins of an earlier layout hold counters this version cannot read, and their program
        // reads a configuration record this version would not write.
        let stats = pin_dir.join(map_name::STATS);
        if let Ok(info) = MapInfo::from_pin(&stats)
            && loader::check_layout(map_name::STATS, &info).is_err()
        {
            return Err(MapsError::OldLayout { path: stats });
        }
        let mut maps = Self::build(open)?;
        // Loaded over the previous layout, with its program still attached somewhere: that
        // program reads the copy, so the copy is written too.
        if pin_dir.join(map_name::OLD_CONFIG_GLOBAL_PIN).exists() {
            let old = open(map_name::OLD_CONFIG_GLOBAL_PIN)?;
            maps.old_config = Some(typed(map_name::OLD_CONFIG_GLOBAL_PIN, old)?);
        }
        Ok(maps)
    }

    /// Takes the maps out of a loaded object (tests and benchmarks load without pins).
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self> {
        let mut take = |name| ebpf.take_map(name).ok_or(MapsError::Missing { name });
        let mut maps = Self::build(&mut take)?;
        // Without pins the BTF maps and the global data the program uses are separate maps;
        // the global data is the one to read and write.
        maps.config = typed(map_name::CONFIG_GLOBAL, take(map_name::CONFIG_GLOBAL)?)?;
        maps.stats = stats_map(map_name::STATS_GLOBAL, take(map_name::STATS_GLOBAL)?)?;
        Ok(maps)
    }

    fn build(mut open: impl FnMut(&'static str) -> Result<Map>) -> Result<Self> {
        let mut trie4 = |name| -> Result<Trie4> { typed(name, open(name)?) };
        let allow_v4 = [trie4(map_name::ALLOW_V4[0])?, trie4(map_name::ALLOW_V4[1])?];
        let deny_v4 = [trie4(map_name::DENY_V4[0])?, trie4(map_name::DENY_V4[1])?];
        let mut trie6 = |name| -> Result<Trie6> { typed(name, open(name)?) };
        let allow_v6 = [trie6(map_name::ALLOW_V6[0])?, trie6(map_name::ALLOW_V6[1])?];
        let deny_v6 = [trie6(map_name::DENY_V6[0])?, trie6(map_name::DENY_V6[1])?];
        let mut table = |name| -> Result<MappedTable> {
            let Map::Array(data) = open(name)? else {
                return Err(MapsError::NotAnArray { name });
            };
            MappedTable::new(data).map_err(|source| MapsError::MapTable { name, source })
        };
        let tables_v4 = [table(map_name::TABLE_V4[0])?, table(map_name::TABLE_V4[1])?];
        Ok(Self {
            allow_v4,
            allow_v6,
            deny_v4,
            deny_v6,
            dyn_v4: typed(map_name::DYN_DENY_V4, open(map_name::DYN_DENY_V4)?)?,
            dyn_v6: typed(map_name::DYN_DENY_V6, open(map_name::DYN_DENY_V6)?)?,
            config: typed(map_name::CONFIG, open(map_name::CONFIG)?)?,
            old_config: None,
            stats: stats_map(map_name::STATS, open(map_name::STATS)?)?,
            tables_v4,
        })
    }

    /// The program's configuration record.
    pub fn config(&self) -> Result<ScreenConfig> {
        let (map, name) = match &self.old_config {
            Some(old) => (old, map_name::OLD_CONFIG_GLOBAL_PIN),
            None => (&self.config, map_name::CONFIG),
        };
        map.get(&0, 0)
            .map_err(|source| MapsError::Map { name, source })
    }

    /// Replaces the configuration record, in one map update (two while the previous layout's
    /// copy is pinned: the copy first).
    pub fn set_config(&mut self, config: &ScreenConfig) -> Result<()> {
        if let Some(old) = &mut self.old_config {
            old.set(0, config, 0).map_err(|source| MapsError::Map {
                name: map_name::OLD_CONFIG_GLOBAL_PIN,
                source,
            })?;
        }
        self.config
            .set(0, config, 0)
            .map_err(|source| MapsError::Map {
                name: map_name::CONFIG,
                source,
            })
    }

    /// Whether the configuration record was ever written (ports all zero means no).
    pub fn is_configured(&self) -> Result<bool> {
        Ok(self.config()?.ports.iter().any(|&port| port != 0))
    }

    fn live_slot(&self, list: StaticList) -> Result<usize> {
        Ok(list.slot(&self.config()?))
    }

    fn tries(&mut self, list: StaticList) -> (&mut [Trie4; 2], &mut [Trie6; 2], [&'static str; 4]) {
        match list {
            StaticList::Allow => (
                &mut self.allow_v4,
                &mut self.allow_v6,
                [
                    map_name::ALLOW_V4[0],
                    map_name::ALLOW_V4[1],
                    map_name::ALLOW_V6[0],
                    map_name::ALLOW_V6[1],
                ],
            ),
            StaticList::Deny => (
                &mut self.deny_v4,
                &mut self.deny_v6,
                [
                    map_name::DENY_V4[0],
                    map_name::DENY_V4[1],
                    map_name::DENY_V6[0],
                    map_name::DENY_V6[1],
                ],
            ),
        }
    }

    /// Adds `net` to a static list (or gives it a new origin).
    pub fn add_static(
        &mut self,
        list: StaticList,
        net: IpNet,
        origin: Origin,
    ) -> Result<ListChange> {
        self.change_static(list, |content| {
            content.insert(net, origin as u32);
            Ok(())
        })
    }

    /// Removes exactly `net` from a static list.
    pub fn remove_static(&mut self, list: StaticList, net: IpNet) -> Result<ListChange> {
        self.change_static(list, |content| match content.remove(&net) {
            Some(_) => Ok(()),
            None => Err(MapsError::NotListed {
                net,
                list: list.as_str(),
            }),
        })
    }

    /// The live entries of a static list.
    pub fn static_entries(&mut self, list: StaticList) -> Result<Vec<(IpNet, PrefixEntry)>> {
        let slot = self.live_slot(list)?;
        let content = self.slot_content(list, slot)?;
        Ok(content
            .into_iter()
            .map(|(net, origin)| (net, PrefixEntry { origin }))
            .collect())
    }

    /// Replaces a whole static list. `nets` must be valid prefixes (no host bits), which the
    /// list parser guarantees.
    pub fn replace_static(
        &mut self,
        list: StaticList,
        nets: &[IpNet],
        origin: Origin,
    ) -> Result<ListChange> {
        self.change_static(list, |content| {
            *content = nets.iter().map(|&net| (net, origin as u32)).collect();
            Ok(())
        })
    }

    /// Changes a static list without the program ever seeing half of the change, or a table
    /// that disagrees with the tries: writes the new content into the idle slot of the list's
    /// tries, builds the IPv4 table of both lists into the idle table, and makes both live in
    /// one write of the configuration record. The slots that were live keep the previous
    /// content, so the next change writes only its difference.
    fn change_static(
        &mut self,
        list: StaticList,
        change: impl FnOnce(&mut ListContent) -> Result<()>,
    ) -> Result<ListChange> {
        let mut config = self.config()?;
        let live = list.slot(&config);
        let idle = 1 - live;
        let mut wanted = self.slot_content(list, live)?;
        change(&mut wanted)?;
        let held = self.slot_content(list, idle)?;
        let trie_writes = self.write_difference(list, idle, &held, &wanted)?;
        list.set_slot(&mut config, idle);

        let other = list.other();
        let other_content = self.slot_content(other, other.slot(&config))?;
        let (allow, deny) = match list {
            StaticList::Allow => (&wanted, &other_content),
            StaticList::Deny => (&other_content, &wanted),
        };
        let table_words = self.stage_v4_table(&mut config, allow, deny);
        self.set_config(&config)?;
        Ok(ListChange {
            trie_writes,
            table_words,
        })
    }

    /// Builds the IPv4 table of the static lists that `config` makes live and stages it for
    /// `config`, which the caller then writes. Loading and configuring do this so that a table
    /// map created after the lists (a new version over old pins) starts out agreeing with them.
    pub fn rebuild_v4_table(&mut self, config: &mut ScreenConfig) -> Result<usize> {
        config.v4_table_slot = self.config()?.v4_table_slot;
        let allow = self.slot_content(StaticList::Allow, StaticList::Allow.slot(config))?;
        let deny = self.slot_content(StaticList::Deny, StaticList::Deny.slot(config))?;
        Ok(self.stage_v4_table(config, &allow, &deny))
    }

    /// Writes the table of these lists into the table slot `config` does not use, and points
    /// `config` at it. Returns how many words changed.
    fn stage_v4_table(
        &mut self,
        config: &mut ScreenConfig,
        allow: &ListContent,
        deny: &ListContent,
    ) -> usize {
        let table = V4Table::build(v4_nets(allow), v4_nets(deny));
        let idle = 1 - (config.v4_table_slot & 1) as usize;
        let changed = self.tables_v4[idle].write(&table);
        config.v4_table_slot = idle as u32;
        changed
    }

    /// The state of `addr`'s bucket in the live IPv4 table ([`screen_common::v4_table`]).
    pub fn v4_table_state(&mut self, addr: Ipv4Addr) -> Result<u64> {
        let live = (self.config()?.v4_table_slot & 1) as usize;
        Ok(self.tables_v4[live].state(addr))
    }

    /// Every entry of one slot of a static list, both families.
    fn slot_content(&mut self, list: StaticList, slot: usize) -> Result<ListContent> {
        let (v4, v6, names) = self.tries(list);
        let mut out = ListContent::new();
        for item in v4[slot].iter() {
            let (key, value) = item.map_err(|source| MapsError::Map {
                name: names[slot],
                source,
            })?;
            let net = Ipv4Net::new(Ipv4Addr::from(key.data()), key.prefix_len() as u8)
                .expect("the kernel keeps IPv4 prefix lengths within 32");
            out.insert(IpNet::V4(net), value.origin);
        }
        for item in v6[slot].iter() {
            let (key, value) = item.map_err(|source| MapsError::Map {
                name: names[2 + slot],
                source,
            })?;
            let net = Ipv6Net::new(Ipv6Addr::from(key.data()), key.prefix_len() as u8)
                .expect("the kernel keeps IPv6 prefix lengths within 128");
            out.insert(IpNet::V6(net), value.origin);
        }
        Ok(out)
    }

    /// Turns slot `slot` of a list from `held` into `wanted`; returns how many entries it
    /// wrote or deleted.
    fn write_difference(
        &mut self,
        list: StaticList,
        slot: usize,
        held: &ListContent,
        wanted: &ListContent,
    ) -> Result<usize> {
        let mut writes = 0;
        for net in held.keys().filter(|net| !wanted.contains_key(net)) {
            remove_prefix(self.tries(list), slot, *net)?;
            writes += 1;
        }
        for (&net, &origin) in wanted {
            if held.get(&net) != Some(&origin) {
                insert_prefix(self.tries(list), slot, net, origin)?;
                writes += 1;
            }
        }
        Ok(writes)
    }

    /// Adds or refreshes a dynamic deny entry for `net` that expires after `ttl`.
    pub fn add_dynamic(
        &mut self,
        net: IpNet,
        ttl: Duration,
        origin: Origin,
        failures: u32,
    ) -> Result<DynamicEntry> {
        let entry = DenyEntry {
            expires_ns: clock::monotonic_ns().saturating_add(ttl.as_nanos() as u64),
            origin: origin as u32,
            failures,
        };
        let net = self.dynamic_key_net(net)?;
        match net {
            IpNet::V4(n) => self
                .dyn_v4
                .insert(
                    DynKeyV4 {
                        addr: n.addr().octets(),
                    },
                    entry,
                    0,
                )
                .map_err(|source| MapsError::Map {
                    name: map_name::DYN_DENY_V4,
                    source,
                })?,
            IpNet::V6(n) => self
                .dyn_v6
                .insert(
                    DynKeyV6 {
                        addr: n.addr().octets(),
                    },
                    entry,
                    0,
                )
                .map_err(|source| MapsError::Map {
                    name: map_name::DYN_DENY_V6,
                    source,
                })?,
        }
        Ok(DynamicEntry { net, entry })
    }

    /// The network a dynamic entry for `net` covers: IPv4 /32, IPv6 masked to the configured
    /// prefix. Rejects prefixes wider than that.
    pub fn dynamic_key_net(&self, net: IpNet) -> Result<IpNet> {
        match net {
            IpNet::V4(n) if n.prefix_len() != 32 => Err(MapsError::DynamicV4Prefix { net }),
            IpNet::V4(_) => Ok(net),
            IpNet::V6(n) => {
                let configured = self.config()?.v6_prefix_len.min(128);
                if u32::from(n.prefix_len()) < configured {
                    return Err(MapsError::DynamicTooWide { net, configured });
                }
                let addr = Ipv6Addr::from(mask_v6(n.addr().octets(), configured));
                Ok(IpNet::V6(
                    Ipv6Net::new(addr, configured as u8).expect("prefix length within 128"),
                ))
            }
        }
    }

    /// Removes the dynamic deny entry covering `net`.
    pub fn remove_dynamic(&mut self, net: IpNet) -> Result<()> {
        let key_net = self.dynamic_key_net(net)?;
        let (result, name) = match key_net {
            IpNet::V4(n) => (
                self.dyn_v4.remove(&DynKeyV4 {
                    addr: n.addr().octets(),
                }),
                map_name::DYN_DENY_V4,
            ),
            IpNet::V6(n) => (
                self.dyn_v6.remove(&DynKeyV6 {
                    addr: n.addr().octets(),
                }),
                map_name::DYN_DENY_V6,
            ),
        };
        match result {
            Ok(()) => Ok(()),
            Err(MapError::KeyNotFound) => Err(MapsError::NotListed {
                net,
                list: "dynamic deny",
            }),
            Err(source) => Err(MapsError::Map { name, source }),
        }
    }

    /// Every dynamic deny entry, expired ones included.
    pub fn dynamic_entries(&self) -> Result<Vec<DynamicEntry>> {
        let prefix = self.config()?.v6_prefix_len.min(128) as u8;
        let mut out = Vec::new();
        for item in self.dyn_v4.iter() {
            let (key, entry) = item.map_err(|source| MapsError::Map {
                name: map_name::DYN_DENY_V4,
                source,
            })?;
            let net = Ipv4Net::new(Ipv4Addr::from(key.addr), 32).expect("/32 is valid");
            out.push(DynamicEntry {
                net: IpNet::V4(net),
                entry,
            });
        }
        for item in self.dyn_v6.iter() {
            let (key, entry) = item.map_err(|source| MapsError::Map {
                name: map_name::DYN_DENY_V6,
                source,
            })?;
            let net = Ipv6Net::new(Ipv6Addr::from(key.addr), prefix).expect("prefix within 128");
            out.push(DynamicEntry {
                net: IpNet::V6(net),
                entry,
            });
        }
        out.sort_by_key(|e| e.net);
        Ok(out)
    }

    /// Deletes the dynamic entries that expired before `now_ns`; returns how many went.
    pub fn sweep_expired(&mut self, now_ns: u64) -> Result<usize> {
        let mut swept = 0;
        let stale_v4: Vec<DynKeyV4> = self
            .dyn_v4
            .iter()
            .filter_map(|item| item.ok())
            .filter(|(_, entry)| entry.expires_ns <= now_ns)
            .map(|(key, _)| key)
            .collect();
        for key in stale_v4 {
            // Gone already (LRU eviction or a concurrent delete) is fine.
            if self.dyn_v4.remove(&key).is_ok() {
                swept += 1;
            }
        }
        let stale_v6: Vec<DynKeyV6> = self
            .dyn_v6
            .iter()
            .filter_map(|item| item.ok())
            .filter(|(_, entry)| entry.expires_ns <= now_ns)
            .map(|(key, _)| key)
            .collect();
        for key in stale_v6 {
            if self.dyn_v6.remove(&key).is_ok() {
                swept += 1;
            }
        }
        Ok(swept)
    }

    /// Counters summed over all CPUs, indexed by [`Stat`].
    pub fn counters(&self) -> Result<[u64; Stat::COUNT as usize]> {
        let record = self.stats.read().map_err(|source| MapsError::Stats {
            name: map_name::STATS,
            source,
        })?;
        Ok(record.totals())
    }

    /// Number of entries in each map, by map name (the live and idle slots both count).
    pub fn fill_levels(&self) -> Vec<(&'static str, usize)> {
        vec![
            (map_name::ALLOW_V4[0], self.allow_v4[0].keys().count()),
            (map_name::ALLOW_V4[1], self.allow_v4[1].keys().count()),
            (map_name::ALLOW_V6[0], self.allow_v6[0].keys().count()),
            (map_name::ALLOW_V6[1], self.allow_v6[1].keys().count()),
            (map_name::DENY_V4[0], self.deny_v4[0].keys().count()),
            (map_name::DENY_V4[1], self.deny_v4[1].keys().count()),
            (map_name::DENY_V6[0], self.deny_v6[0].keys().count()),
            (map_name::DENY_V6[1], self.deny_v6[1].keys().count()),
            (map_name::DYN_DENY_V4, self.dyn_v4.keys().count()),
            (map_name::DYN_DENY_V6, self.dyn_v6.keys().count()),
        ]
    }
}

/// The IPv4 prefixes of a list's content.
fn v4_nets(content: &ListContent) -> impl Iterator<Item = &Ipv4Net> + Clone {
    content.keys().filter_map(|net| match net {
        IpNet::V4(n) => Some(n),
        IpNet::V6(_) => None,
    })
}

fn insert_prefix(
    (v4, v6, names): (&mut [Trie4; 2], &mut [Trie6; 2], [&'static str; 4]),
    slot: usize,
    net: IpNet,
    origin: u32,
) -> Result<()> {
    let value = PrefixEntry { origin };
    match net {
        IpNet::V4(n) => v4[slot]
            .insert(
                &Key::new(n.prefix_len().into(), n.addr().octets()),
                value,
                0,
            )
            .map_err(|source| MapsError::Map {
                name: names[slot],
                source,
            }),
        IpNet::V6(n) => v6[slot]
            .insert(
                &Key::new(n.prefix_len().into(), n.addr().octets()),
                value,
                0,
            )
            .map_err(|source| MapsError::Map {
                name: names[2 + slot],
                source,
            }),
    }
}

/// Deletes `net` from a slot; one that is gone already is fine.
fn remove_prefix(
    (v4, v6, names): (&mut [Trie4; 2], &mut [Trie6; 2], [&'static str; 4]),
    slot: usize,
    net: IpNet,
) -> Result<()> {
    let (result, name) = match net {
        IpNet::V4(n) => (
            v4[slot].remove(&Key::new(n.prefix_len().into(), n.addr().octets())),
            names[slot],
        ),
        IpNet::V6(n) => (
            v6[slot].remove(&Key::new(n.prefix_len().into(), n.addr().octets())),
            names[2 + slot],
        ),
    };
    match result {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(source) => Err(MapsError::Map { name, source }),
    }
}
