//! The static allow and deny lists: an LPM trie per list, family and slot (`scr_allow_v4_0` …
//! `scr_deny_v6_1`). Each list has two slots so that a change never shows half done: it is
//! written into the idle slot and made live, with an IPv4 table built to match, in one write of
//! the configuration record. The slot that was live keeps the previous content, so the next
//! change writes only its difference.
//!
//! # Minimum kernel version
//!
//! 4.20 for iterating LPM tries from userspace.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::maps::{LpmTrie, MapData, MapError, lpm_trie::Key};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use screen_common::{LpmKeyV4, LpmKeyV6, Origin, PrefixEntry, ScreenConfig, map_name};

use super::{
    MapFailure,
    settings::{SettingsError, SettingsRecord},
    v4_table::{V4TableError, V4Tables},
};

/// An error reading or changing a static list.
#[derive(Debug, thiserror::Error)]
pub enum ListsError {
    #[error(transparent)]
    Map(#[from] MapFailure),
    /// The entry to delete is not there.
    #[error("{net} is not in the {list} list")]
    NotListed { net: IpNet, list: &'static str },
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    V4Table(#[from] V4TableError),
}

type Result<T> = std::result::Result<T, ListsError>;

/// Which static list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StaticList {
    Allow,
    Deny,
}

impl StaticList {
    /// `allow` or `deny`, as on the command line.
    pub(crate) const fn as_str(self) -> &'static str {
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

    /// The names of the list's tries, IPv4 and IPv6, by slot.
    pub(crate) const fn map_names(self) -> ([&'static str; 2], [&'static str; 2]) {
        match self {
            Self::Allow => (map_name::ALLOW_V4, map_name::ALLOW_V6),
            Self::Deny => (map_name::DENY_V4, map_name::DENY_V6),
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

pub(crate) type Trie4 = LpmTrie<MapData, LpmKeyV4, PrefixEntry>;
pub(crate) type Trie6 = LpmTrie<MapData, LpmKeyV6, PrefixEntry>;

/// One list's tries: both families, both slots.
pub(crate) struct ListTries {
    list: StaticList,
    v4: [Trie4; 2],
    v6: [Trie6; 2],
}

impl ListTries {
    /// The tries of `list`, by slot, as [`StaticList::map_names`] names them.
    pub(crate) fn new(list: StaticList, v4: [Trie4; 2], v6: [Trie6; 2]) -> Self {
        Self { list, v4, v6 }
    }

    fn v4_name(&self, slot: usize) -> &'static str {
        self.list.map_names().0[slot]
    }

    fn v6_name(&self, slot: usize) -> &'static str {
        self.list.map_names().1[slot]
    }

    /// Whether a prefix of `slot` covers `addr` (the longest match, as the program asks).
    fn covers(&self, slot: usize, addr: IpAddr) -> Result<bool> {
        let (found, name) = match addr {
            IpAddr::V4(a) => (
                self.v4[slot].get(&Key::new(32, a.octets()), 0).map(|_| ()),
                self.v4_name(slot),
            ),
            IpAddr::V6(a) => (
                self.v6[slot].get(&Key::new(128, a.octets()), 0).map(|_| ()),
                self.v6_name(slot),
            ),
        };
        match found {
            Ok(()) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(source) => Err(MapFailure { name, source }.into()),
        }
    }

    /// Every entry of one slot, both families.
    fn content(&self, slot: usize) -> Result<ListContent> {
        let mut out = ListContent::new();
        for item in self.v4[slot].iter() {
            let (key, value) = item.map_err(|source| MapFailure {
                name: self.v4_name(slot),
                source,
            })?;
            let net = Ipv4Net::new(Ipv4Addr::from(key.data()), key.prefix_len() as u8)
                .expect("the kernel keeps IPv4 prefix lengths within 32");
            out.insert(IpNet::V4(net), value.origin);
        }
        for item in self.v6[slot].iter() {
            let (key, value) = item.map_err(|source| MapFailure {
                name: self.v6_name(slot),
                source,
            })?;
            let net = Ipv6Net::new(Ipv6Addr::from(key.data()), key.prefix_len() as u8)
                .expect("the kernel keeps IPv6 prefix lengths within 128");
            out.insert(IpNet::V6(net), value.origin);
        }
        Ok(out)
    }

    /// Turns slot `slot` from `held` into `wanted`; returns how many entries it wrote or
    /// deleted.
    fn write_difference(
        &mut self,
        slot: usize,
        held: &ListContent,
        wanted: &ListContent,
    ) -> Result<usize> {
        let (stale, fresh) = difference(held, wanted);
        for &net in &stale {
            self.remove(slot, net)?;
        }
        for &(net, origin) in &fresh {
            self.insert(slot, net, origin)?;
        }
        Ok(stale.len() + fresh.len())
    }

    fn insert(&mut self, slot: usize, net: IpNet, origin: u32) -> Result<()> {
        let value = PrefixEntry { origin };
        let (result, name) = match net {
            IpNet::V4(n) => (
                self.v4[slot].insert(
                    &Key::new(n.prefix_len().into(), n.addr().octets()),
                    value,
                    0,
                ),
                self.v4_name(slot),
            ),
            IpNet::V6(n) => (
                self.v6[slot].insert(
                    &Key::new(n.prefix_len().into(), n.addr().octets()),
                    value,
                    0,
                ),
                self.v6_name(slot),
            ),
        };
        result.map_err(|source| MapFailure { name, source }.into())
    }

    /// Deletes `net` from a slot; one that is gone already is fine.
    fn remove(&mut self, slot: usize, net: IpNet) -> Result<()> {
        let (result, name) = match net {
            IpNet::V4(n) => (
                self.v4[slot].remove(&Key::new(n.prefix_len().into(), n.addr().octets())),
                self.v4_name(slot),
            ),
            IpNet::V6(n) => (
                self.v6[slot].remove(&Key::new(n.prefix_len().into(), n.addr().octets())),
                self.v6_name(slot),
            ),
        };
        match result {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(MapFailure { name, source }.into()),
        }
    }

    /// Number of entries in each trie, by map name: IPv4 slot 0 and 1, then IPv6.
    fn fill_levels(&self) -> [(&'static str, usize); 4] {
        [
            (self.v4_name(0), self.v4[0].keys().count()),
            (self.v4_name(1), self.v4[1].keys().count()),
            (self.v6_name(0), self.v6[0].keys().count()),
            (self.v6_name(1), self.v6[1].keys().count()),
        ]
    }
}

/// What turns `held` into `wanted`: the prefixes to delete, and the prefixes to write (new,
/// or with another origin).
fn difference(held: &ListContent, wanted: &ListContent) -> (Vec<IpNet>, Vec<(IpNet, u32)>) {
    let stale = held
        .keys()
        .filter(|net| !wanted.contains_key(net))
        .copied()
        .collect();
    let fresh = wanted
        .iter()
        .filter(|&(net, origin)| held.get(net) != Some(origin))
        .map(|(&net, &origin)| (net, origin))
        .collect();
    (stale, fresh)
}

/// The IPv4 prefixes of a list's content.
fn v4_nets(content: &ListContent) -> impl Iterator<Item = &Ipv4Net> + Clone {
    content.keys().filter_map(|net| match net {
        IpNet::V4(n) => Some(n),
        IpNet::V6(_) => None,
    })
}

/// Both static lists.
pub(crate) struct StaticLists {
    allow: ListTries,
    deny: ListTries,
}

impl StaticLists {
    pub(crate) fn new(allow: ListTries, deny: ListTries) -> Self {
        Self { allow, deny }
    }

    fn tries(&mut self, list: StaticList) -> &mut ListTries {
        match list {
            StaticList::Allow => &mut self.allow,
            StaticList::Deny => &mut self.deny,
        }
    }

    /// The static list that decides for `addr` under `config`'s live slots: allow wins over
    /// deny, as in the program; `None` when neither lists it.
    pub(crate) fn decides(
        &self,
        addr: IpAddr,
        config: &ScreenConfig,
    ) -> Result<Option<StaticList>> {
        for list in [StaticList::Allow, StaticList::Deny] {
            let tries = match list {
                StaticList::Allow => &self.allow,
                StaticList::Deny => &self.deny,
            };
            if tries.covers(list.slot(config), addr)? {
                return Ok(Some(list));
            }
        }
        Ok(None)
    }

    /// Adds `net` to a list (or gives it a new origin).
    pub(crate) fn add(
        &mut self,
        list: StaticList,
        net: IpNet,
        origin: Origin,
        record: &mut SettingsRecord,
        tables: &mut V4Tables,
    ) -> Result<ListChange> {
        self.change(list, record, tables, |content| {
            content.insert(net, origin as u32);
            Ok(())
        })
    }

    /// Removes exactly `net` from a list.
    pub(crate) fn remove(
        &mut self,
        list: StaticList,
        net: IpNet,
        record: &mut SettingsRecord,
        tables: &mut V4Tables,
    ) -> Result<ListChange> {
        self.change(list, record, tables, |content| match content.remove(&net) {
            Some(_) => Ok(()),
            None => Err(ListsError::NotListed {
                net,
                list: list.as_str(),
            }),
        })
    }

    /// Replaces a whole list. `nets` must be valid prefixes (no host bits), which the list
    /// parser guarantees.
    pub(crate) fn replace(
        &mut self,
        list: StaticList,
        nets: &[IpNet],
        origin: Origin,
        record: &mut SettingsRecord,
        tables: &mut V4Tables,
    ) -> Result<ListChange> {
        self.change(list, record, tables, |content| {
            *content = nets.iter().map(|&net| (net, origin as u32)).collect();
            Ok(())
        })
    }

    /// The live entries of a list, as `config` makes them live.
    pub(crate) fn entries(
        &mut self,
        list: StaticList,
        config: &ScreenConfig,
    ) -> Result<Vec<(IpNet, PrefixEntry)>> {
        let content = self.tries(list).content(list.slot(config))?;
        Ok(content
            .into_iter()
            .map(|(net, origin)| (net, PrefixEntry { origin }))
            .collect())
    }

    /// Changes a list without the program ever seeing half of the change, or a table that
    /// disagrees with the tries: writes the new content into the idle slot of the list's tries,
    /// builds the IPv4 table of both lists into the idle table, and makes both live in one
    /// write of the configuration record.
    fn change(
        &mut self,
        list: StaticList,
        record: &mut SettingsRecord,
        tables: &mut V4Tables,
        change: impl FnOnce(&mut ListContent) -> Result<()>,
    ) -> Result<ListChange> {
        let mut config = record.get()?;
        let live = list.slot(&config);
        let idle = 1 - live;
        let tries = self.tries(list);
        let mut wanted = tries.content(live)?;
        change(&mut wanted)?;
        let held = tries.content(idle)?;
        let trie_writes = tries.write_difference(idle, &held, &wanted)?;
        list.set_slot(&mut config, idle);

        let other = list.other();
        let other_content = self.tries(other).content(other.slot(&config))?;
        let (allow, deny) = match list {
            StaticList::Allow => (&wanted, &other_content),
            StaticList::Deny => (&other_content, &wanted),
        };
        let table_words = tables.stage(&mut config, v4_nets(allow), v4_nets(deny))?;
        record.set(&config)?;
        Ok(ListChange {
            trie_writes,
            table_words,
        })
    }

    /// Builds the IPv4 table of the lists that `config` makes live and stages it for `config`,
    /// which the caller then writes. Loading and configuring do this so that a table map
    /// created after the lists (a new version over old pins) starts out agreeing with them.
    pub(crate) fn rebuild_v4_table(
        &mut self,
        record: &SettingsRecord,
        tables: &mut V4Tables,
        config: &mut ScreenConfig,
    ) -> Result<usize> {
        config.v4_table_slot = record.get()?.v4_table_slot;
        let allow = self.allow.content(StaticList::Allow.slot(config))?;
        let deny = self.deny.content(StaticList::Deny.slot(config))?;
        Ok(tables.stage(config, v4_nets(&allow), v4_nets(&deny))?)
    }

    /// Number of entries in each trie, by map name (the live and idle slots both count).
    pub(crate) fn fill_levels(&self) -> impl Iterator<Item = (&'static str, usize)> {
        self.allow
            .fill_levels()
            .into_iter()
            .chain(self.deny.fill_levels())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(entries: &[(&str, Origin)]) -> ListContent {
        entries
            .iter()
            .map(|(net, origin)| (net.parse().expect("a prefix"), *origin as u32))
            .collect()
    }

    fn net(text: &str) -> IpNet {
        text.parse().expect("a prefix")
    }

    #[test]
    fn a_change_writes_only_its_difference() {
        let held = content(&[
            ("192.0.2.0/24", Origin::Operator),
            ("198.51.100.0/24", Origin::ListFile),
            ("2001:db8::/32", Origin::ListFile),
        ]);
        let wanted = content(&[
            ("192.0.2.0/24", Origin::Operator),
            ("198.51.100.0/24", Origin::Operator),
            ("203.0.113.7/32", Origin::Operator),
        ]);
        let (stale, fresh) = difference(&held, &wanted);
        assert_eq!(stale, [net("2001:db8::/32")]);
        assert_eq!(
            fresh,
            [
                (net("198.51.100.0/24"), Origin::Operator as u32),
                (net("203.0.113.7/32"), Origin::Operator as u32),
            ],
            "a new origin is a write, an unchanged entry is not"
        );
        let (stale, fresh) = difference(&wanted, &wanted);
        assert!(stale.is_empty() && fresh.is_empty());
    }

    #[test]
    fn each_list_flips_its_own_slot() {
        let mut config = ScreenConfig::new();
        StaticList::Deny.set_slot(&mut config, 1);
        assert_eq!(StaticList::Deny.slot(&config), 1);
        assert_eq!(StaticList::Allow.slot(&config), 0);
        assert_eq!(StaticList::Deny.other(), StaticList::Allow);
        // Only the low bit of a stored slot counts.
        config.allow_slot = 3;
        assert_eq!(StaticList::Allow.slot(&config), 1);
    }

    #[test]
    fn only_ipv4_prefixes_go_into_the_table() {
        let list = content(&[
            ("192.0.2.0/24", Origin::Operator),
            ("2001:db8::/32", Origin::Operator),
        ]);
        let nets: Vec<_> = v4_nets(&list).collect();
        assert_eq!(nets, [&"192.0.2.0/24".parse::<Ipv4Net>().unwrap()]);
    }
}
