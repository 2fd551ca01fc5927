//! The program's maps, opened together from their pins or taken out of a freshly loaded object:
//! the static lists ([`lists`](super::lists)), the dynamic deny entries
//! ([`dynamic`]), the configuration record ([`settings`](super::settings)), the
//! counters ([`stats`](super::stats)) and the IPv4 tables ([`v4_table`](super::v4_table)). Each
//! behaviour lives with its object; what is here opens them and hands each the configuration
//! record where it needs it.
//!
//! The operator's commands and the load open every map read-write ([`MapAccess::Full`]). The
//! daemon, once the program is loaded, holds write access to the dynamic deny entries alone
//! ([`MapAccess::DynamicDeny`]): the static lists, the configuration record, the counters and
//! the IPv4 tables are held read-only: the maps through read-only descriptors (`BPF_F_RDONLY`),
//! the tables as `PROT_READ` mappings with no descriptor, so that a daemon taken over from the
//! network can add and remove deny entries and nothing else.

use std::{
    io,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{Map, MapData, MapError},
};
use ipnet::IpNet;
use screen_common::{Origin, PrefixEntry, ScreenConfig, Stat, map_name};

use super::{
    MapFailure, bpffs,
    dynamic::{self, DynamicDeny, DynamicEntry, DynamicError, DynamicSweep},
    layout,
    lists::{ListChange, ListTries, ListsError, StaticList, StaticLists, Trie4, Trie6},
    settings::{KernelAction, SettingsError, SettingsRecord, screen_config},
    stats::StatsMap,
    v4_table::{V4TableError, V4Tables},
};

/// An error opening, reading or writing the program's maps.
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
    #[error(transparent)]
    Map(#[from] MapFailure),
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
    #[error(transparent)]
    Lists(#[from] ListsError),
    #[error(transparent)]
    Dynamic(#[from] DynamicError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    V4Table(#[from] V4TableError),
}

type Result<T> = std::result::Result<T, MapsError>;

/// Which of the program's maps a holder may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapAccess {
    /// Every map: the load and the operator's commands.
    Full,
    /// The dynamic deny maps only; every other map is opened read-only. What the daemon keeps
    /// after the load: it adds, refreshes and sweeps dynamic entries, and only reads the rest.
    DynamicDeny,
}

impl MapAccess {
    /// Whether the map `name` is opened for writing.
    pub fn writes(self, name: &str) -> bool {
        match self {
            Self::Full => true,
            Self::DynamicDeny => [map_name::DYN_DENY_V4, map_name::DYN_DENY_V6].contains(&name),
        }
    }
}

/// Every map of the program.
pub struct Maps {
    lists: StaticLists,
    dynamic: DynamicDeny,
    /// The configuration the program reads: its global data, pinned as `scr_config`.
    settings: SettingsRecord,
    /// The counters the program writes: its global data, pinned as `scr_stats`.
    stats: StatsMap,
    tables_v4: V4Tables,
}

/// The array named `name`.
fn array(name: &'static str, map: Map) -> Result<MapData> {
    match map {
        Map::Array(data) => Ok(data),
        _ => Err(MapsError::NotAnArray { name }),
    }
}

fn typed<T>(name: &'static str, map: Map) -> Result<T>
where
    T: TryFrom<Map, Error = MapError>,
{
    T::try_from(map).map_err(|source| MapFailure { name, source }.into())
}

/// Where the program's global data is: pinned as the BTF maps, or in the object's sections.
struct GlobalData {
    config: &'static str,
    stats: &'static str,
    /// The previous layout's copy of the configuration, when it is pinned.
    old_config: Option<&'static str>,
}

impl Maps {
    /// Opens the maps pinned under `pin_dir`, every one read-write.
    pub fn from_pins(pin_dir: &Path) -> Result<Self> {
        Self::from_pins_with(pin_dir, MapAccess::Full)
    }

    /// Opens the maps pinned under `pin_dir` with `access`: the maps it does not write through
    /// read-only descriptors.
    pub fn from_pins_with(pin_dir: &Path, access: MapAccess) -> Result<Self> {
        let open = |name: &'static str| {
            let path = pin_dir.join(name);
            if !path.exists() {
                return Err(MapsError::Missing { name });
            }
            let open_pin = |source| MapsError::OpenPin {
                path: path.display().to_string(),
                source,
            };
            // The IPv4 tables are mapped, which takes a read-write descriptor even for a
            // read-only mapping; the mapping closes it ([`V4Tables::new`]).
            let data = if access.writes(name) || map_name::TABLE_V4.contains(&name) {
                MapData::from_pin(&path).map_err(open_pin)?
            } else {
                let fd = bpffs::open_pin_read_only(&path).map_err(|io_error| {
                    open_pin(MapError::SyscallError(aya::sys::SyscallError {
                        call: "BPF_OBJ_GET (BPF_F_RDONLY)",
                        io_error,
                    }))
                })?;
                MapData::from_fd(fd).map_err(open_pin)?
            };
            Map::from_map_data(data).map_err(|source| MapFailure { name, source }.into())
        };
        // Pins of an earlier layout hold counters this version cannot read, and their program
        // reads a configuration record this version would not write.
        let stats = pin_dir.join(map_name::STATS);
        if layout::is_outdated(map_name::STATS, &stats) {
            return Err(MapsError::OldLayout { path: stats });
        }
        let global_data = GlobalData {
            config: map_name::CONFIG,
            stats: map_name::STATS,
            // Loaded over the previous layout, with its program still attached somewhere: that
            // program reads the copy, so the copy is written too.
            old_config: pin_dir
                .join(map_name::OLD_CONFIG_GLOBAL_PIN)
                .exists()
                .then_some(map_name::OLD_CONFIG_GLOBAL_PIN),
        };
        Self::build(open, &global_data, access)
    }

    /// Takes the maps out of a loaded object (tests and benchmarks load without pins).
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self> {
        let take = |name| ebpf.take_map(name).ok_or(MapsError::Missing { name });
        // Without pins the BTF maps and the global data the program uses are separate maps;
        // the global data is the one to read and write.
        let global_data = GlobalData {
            config: map_name::CONFIG_GLOBAL,
            stats: map_name::STATS_GLOBAL,
            old_config: None,
        };
        Self::build(take, &global_data, MapAccess::Full)
    }

    fn build(
        mut open: impl FnMut(&'static str) -> Result<Map>,
        global_data: &GlobalData,
        access: MapAccess,
    ) -> Result<Self> {
        let mut trie4 = |name| -> Result<Trie4> { typed(name, open(name)?) };
        let allow_v4 = [trie4(map_name::ALLOW_V4[0])?, trie4(map_name::ALLOW_V4[1])?];
        let deny_v4 = [trie4(map_name::DENY_V4[0])?, trie4(map_name::DENY_V4[1])?];
        let mut trie6 = |name| -> Result<Trie6> { typed(name, open(name)?) };
        let allow_v6 = [trie6(map_name::ALLOW_V6[0])?, trie6(map_name::ALLOW_V6[1])?];
        let deny_v6 = [trie6(map_name::DENY_V6[0])?, trie6(map_name::DENY_V6[1])?];
        let lists = StaticLists::new(
            ListTries::new(StaticList::Allow, allow_v4, allow_v6),
            ListTries::new(StaticList::Deny, deny_v4, deny_v6),
        );
        let [table_0, table_1] = map_name::TABLE_V4;
        let tables_v4 = V4Tables::new(
            [
                (table_0, array(table_0, open(table_0)?)?),
                (table_1, array(table_1, open(table_1)?)?),
            ],
            access.writes(table_0) && access.writes(table_1),
        )?;
        let dynamic = DynamicDeny::new(
            typed(map_name::DYN_DENY_V4, open(map_name::DYN_DENY_V4)?)?,
            typed(map_name::DYN_DENY_V6, open(map_name::DYN_DENY_V6)?)?,
        );
        let config = typed(global_data.config, open(global_data.config)?)?;
        let stats_name = global_data.stats;
        let stats = StatsMap::new(array(stats_name, open(stats_name)?)?).map_err(|source| {
            MapsError::Stats {
                name: stats_name,
                source,
            }
        })?;
        let old_config = match global_data.old_config {
            Some(name) => Some(typed(name, open(name)?)?),
            None => None,
        };
        Ok(Self {
            lists,
            dynamic,
            settings: SettingsRecord::new(config, old_config),
            stats,
            tables_v4,
        })
    }

    /// The program's configuration record.
    pub fn config(&self) -> Result<ScreenConfig> {
        Ok(self.settings.get()?)
    }

    /// Replaces the configuration record, in one map update (two while the previous layout's
    /// copy is pinned: the copy first).
    pub fn set_config(&mut self, config: &ScreenConfig) -> Result<()> {
        Ok(self.settings.set(config)?)
    }

    /// Whether the configuration record was ever written (ports all zero means no).
    pub fn is_configured(&self) -> Result<bool> {
        Ok(self.settings.is_configured()?)
    }

    /// Adds `net` to a static list (or gives it a new origin).
    pub fn add_static(
        &mut self,
        list: StaticList,
        net: IpNet,
        origin: Origin,
    ) -> Result<ListChange> {
        Ok(self
            .lists
            .add(list, net, origin, &mut self.settings, &mut self.tables_v4)?)
    }

    /// Removes exactly `net` from a static list.
    pub fn remove_static(&mut self, list: StaticList, net: IpNet) -> Result<ListChange> {
        Ok(self
            .lists
            .remove(list, net, &mut self.settings, &mut self.tables_v4)?)
    }

    /// The live entries of a static list.
    pub fn static_entries(&mut self, list: StaticList) -> Result<Vec<(IpNet, PrefixEntry)>> {
        let config = self.settings.get()?;
        Ok(self.lists.entries(list, &config)?)
    }

    /// Replaces a whole static list. `nets` must be valid prefixes (no host bits), which the
    /// list parser guarantees.
    pub fn replace_static(
        &mut self,
        list: StaticList,
        nets: &[IpNet],
        origin: Origin,
    ) -> Result<ListChange> {
        Ok(self
            .lists
            .replace(list, nets, origin, &mut self.settings, &mut self.tables_v4)?)
    }

    /// Builds the IPv4 table of the static lists that `config` makes live and stages it for
    /// `config`, which the caller then writes.
    pub(crate) fn rebuild_v4_table(&mut self, config: &mut ScreenConfig) -> Result<usize> {
        Ok(self
            .lists
            .rebuild_v4_table(&self.settings, &mut self.tables_v4, config)?)
    }

    /// The state of `addr`'s bucket in the live IPv4 table ([`screen_common::v4_table`]).
    pub fn v4_table_state(&self, addr: Ipv4Addr) -> Result<u64> {
        let config = self.settings.get()?;
        Ok(self.tables_v4.state(&config, addr))
    }

    /// The prefix length IPv6 dynamic deny entries are keyed by.
    fn v6_prefix_len(&self) -> Result<u32> {
        Ok(self.settings.get()?.v6_prefix_len)
    }

    /// The prefix length a dynamic entry for `net` is keyed by. The configuration record is
    /// read only for IPv6: an IPv4 entry is one address, and a kernel deny of one costs no
    /// extra map read.
    fn v6_prefix_len_for(&self, net: IpNet) -> Result<u32> {
        match net {
            IpNet::V4(_) => Ok(128),
            IpNet::V6(_) => self.v6_prefix_len(),
        }
    }

    /// Adds or refreshes a dynamic deny entry for `net` that expires after `ttl`.
    pub fn add_dynamic(
        &mut self,
        net: IpNet,
        ttl: Duration,
        origin: Origin,
        failures: u32,
    ) -> Result<DynamicEntry> {
        let v6_prefix_len = self.v6_prefix_len_for(net)?;
        Ok(self
            .dynamic
            .add(net, v6_prefix_len, ttl, origin, failures)?)
    }

    /// The network a dynamic entry for `net` covers: IPv4 /32, IPv6 masked to the configured
    /// prefix. Rejects prefixes wider than that.
    pub(crate) fn dynamic_key_net(&self, net: IpNet) -> Result<IpNet> {
        Ok(dynamic::key_net(net, self.v6_prefix_len_for(net)?)?)
    }

    /// The dynamic deny entry covering `net`, expired or not.
    pub(crate) fn dynamic_entry(&self, net: IpNet) -> Result<Option<DynamicEntry>> {
        let v6_prefix_len = self.v6_prefix_len_for(net)?;
        Ok(self.dynamic.get(net, v6_prefix_len)?)
    }

    /// Removes the dynamic deny entry covering `net`.
    pub(crate) fn remove_dynamic(&mut self, net: IpNet) -> Result<()> {
        let v6_prefix_len = self.v6_prefix_len_for(net)?;
        Ok(self.dynamic.remove(net, v6_prefix_len)?)
    }

    /// Whether the program would deny a SYN from `addr` now: a static deny prefix covers it
    /// and no static allow prefix does, or an unexpired dynamic entry covers it. What the
    /// daemon asks of a client that reached it all the same (through an interface without the
    /// program, or in a frame the program passes without reading).
    pub fn kernel_denies(&self, addr: IpAddr, now_ns: u64) -> Result<bool> {
        let addr = crate::address::canonical(addr);
        let config = self.config()?;
        match self.lists.decides(addr, &config)? {
            Some(StaticList::Allow) => Ok(false),
            Some(StaticList::Deny) => Ok(true),
            None => {
                Ok(self
                    .dynamic
                    .covers(addr, self.v6_prefix_len_for(IpNet::from(addr))?, now_ns)?)
            }
        }
    }

    /// Every dynamic deny entry, expired ones included.
    pub fn dynamic_entries(&self) -> Result<Vec<DynamicEntry>> {
        Ok(self.dynamic.entries(self.v6_prefix_len()?)?)
    }

    /// The sweep of expired dynamic entries, through descriptors of its own.
    pub(crate) fn dynamic_sweep(&self) -> Result<DynamicSweep> {
        Ok(self.dynamic.sweep()?)
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
        self.lists
            .fill_levels()
            .chain(self.dynamic.fill_levels())
            .collect()
    }
}

/// Writes the settings into the loaded program's configuration record, with an IPv4 table
/// rebuilt from the live lists, warning when the IPv6 prefix changes under existing dynamic
/// entries (their keys no longer match).
pub fn configure(
    maps: &mut Maps,
    ports: &[u16],
    action: KernelAction,
    v6_prefix_len: u32,
) -> Result<ScreenConfig> {
    let previous = maps.config()?;
    let configured = maps.is_configured()?;
    let mut config = screen_config(ports, action, v6_prefix_len, configured.then_some(previous));
    if configured && previous.v6_prefix_len != v6_prefix_len {
        let v6_entries = maps
            .dynamic_entries()?
            .iter()
            .filter(|e| e.net.addr().is_ipv6())
            .count();
        if v6_entries > 0 {
            tracing::warn!(
                old = previous.v6_prefix_len,
                new = v6_prefix_len,
                v6_entries,
                "IPv6 deny prefix changed; existing IPv6 dynamic entries keep their old keys until they expire"
            );
        }
    }
    maps.rebuild_v4_table(&mut config)?;
    maps.set_config(&config)?;
    Ok(config)
}
