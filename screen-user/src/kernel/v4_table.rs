//! The IPv4 direct table ([`screen_common::v4_table`]), two slots like the static lists
//! (`scr_table_v4_0`, `scr_table_v4_1`): built in memory from the IPv4 prefixes of both static
//! lists and written into the idle table map through a shared mapping, one store per word that
//! differs, so that replacing a list of 100,000 prefixes costs a pass over 4 MiB rather than a
//! syscall per word. Each change makes the table live in the same write of the configuration
//! record that makes the lists live.
//!
//! # Minimum kernel version
//!
//! 5.5 for `BPF_F_MMAPABLE` arrays.

use std::{
    io,
    net::Ipv4Addr,
    ops::Range,
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
};

use aya::maps::MapData;
use ipnet::Ipv4Net;
use screen_common::{
    ScreenConfig,
    v4_table::{ASK_TRIES, BUCKETS_PER_WORD, WORDS, bucket, shift, state, word_index},
};

/// Every bucket of a word in state `DENY`.
const DENY_WORD: u64 = 0x5555_5555_5555_5555;
/// Every bucket of a word in state `ALLOW`.
const ALLOW_WORD: u64 = 0xaaaa_aaaa_aaaa_aaaa;
/// Size of a table map's value area.
const TABLE_BYTES: usize = WORDS as usize * size_of::<u64>();

/// An error with a table map.
#[derive(Debug, thiserror::Error)]
pub enum V4TableError {
    /// Mapping a table into memory failed.
    #[error("cannot map {name} into memory (it must be created with BPF_F_MMAPABLE): {source}")]
    Mmap {
        name: &'static str,
        #[source]
        source: io::Error,
    },
    /// The table is mapped read-only: its holder may not change the static lists.
    #[error("{name} is held read-only (the daemon only reads the static lists)")]
    ReadOnly { name: &'static str },
}

/// The table as the program must see it for one content of the lists.
pub(crate) struct V4Table {
    words: Box<[u64]>,
}

impl V4Table {
    /// The table for these IPv4 lists. A prefix of /24 or shorter sets the buckets it covers
    /// (allow over deny); a longer one sends its bucket to the tries.
    pub(crate) fn build<'a>(
        allow: impl IntoIterator<Item = &'a Ipv4Net> + Clone,
        deny: impl IntoIterator<Item = &'a Ipv4Net> + Clone,
    ) -> Self {
        let mut table = Self {
            words: vec![0; WORDS as usize].into_boxed_slice(),
        };
        let short = |net: &&Ipv4Net| net.prefix_len() <= 24;
        // Lowest precedence first: each pass overwrites what the one before wrote.
        for net in deny.clone().into_iter().filter(short) {
            table.fill(net, DENY_WORD);
        }
        for net in allow.clone().into_iter().filter(short) {
            table.fill(net, ALLOW_WORD);
        }
        for net in allow.into_iter().chain(deny).filter(|net| !short(net)) {
            table.ask_tries(net);
        }
        table
    }

    /// The state of the bucket `addr` falls in.
    #[cfg(test)]
    fn state(&self, addr: Ipv4Addr) -> u64 {
        let bucket = bucket(addr.octets());
        state(self.words[word_index(bucket) as usize], bucket)
    }

    /// The buckets of a prefix of /24 or shorter.
    fn buckets(net: &Ipv4Net) -> Range<u32> {
        let first = bucket(net.network().octets());
        first..first + (1 << (24 - net.prefix_len()))
    }

    /// Sets every bucket of `net` (/24 or shorter) to the state repeated in `pattern`.
    fn fill(&mut self, net: &Ipv4Net, pattern: u64) {
        let buckets = Self::buckets(net);
        let first = word_index(buckets.start) as usize;
        let count = buckets.len() as u32;
        if count >= BUCKETS_PER_WORD {
            // /19 or shorter: whole words, as the prefix is aligned to its size.
            let last = word_index(buckets.end) as usize;
            self.words[first..last].fill(pattern);
        } else {
            let mask = ((1u64 << (count * 2)) - 1) << shift(buckets.start);
            let word = &mut self.words[first];
            *word = (*word & !mask) | (pattern & mask);
        }
    }

    /// Marks the bucket of `net` (longer than /24) as one the tries decide.
    fn ask_tries(&mut self, net: &Ipv4Net) {
        let bucket = bucket(net.network().octets());
        self.words[word_index(bucket) as usize] |= ASK_TRIES << shift(bucket);
    }
}

/// Both table maps, mapped into this process.
pub(crate) struct V4Tables {
    tables: [MappedTable; 2],
}

impl V4Tables {
    /// Maps the table maps of slot 0 and 1, each given with its name and a read-write
    /// descriptor, writable or read-only ([`MappedTable::new`]).
    pub(crate) fn new(
        maps: [(&'static str, MapData); 2],
        writable: bool,
    ) -> Result<Self, V4TableError> {
        let [(name_0, map_0), (name_1, map_1)] = maps;
        let mapped = |name, map| {
            MappedTable::new(name, map, writable)
                .map_err(|source| V4TableError::Mmap { name, source })
        };
        Ok(Self {
            tables: [mapped(name_0, map_0)?, mapped(name_1, map_1)?],
        })
    }

    /// Writes the table of these lists into the table slot `config` does not use, and points
    /// `config` at it for the caller to write. Returns how many words changed.
    pub(crate) fn stage<'a>(
        &mut self,
        config: &mut ScreenConfig,
        allow: impl IntoIterator<Item = &'a Ipv4Net> + Clone,
        deny: impl IntoIterator<Item = &'a Ipv4Net> + Clone,
    ) -> Result<usize, V4TableError> {
        let idle = 1 - (config.v4_table_slot & 1) as usize;
        let table = V4Table::build(allow, deny);
        let changed = self.tables[idle].write(&table)?;
        config.v4_table_slot = idle as u32;
        Ok(changed)
    }

    /// The state of `addr`'s bucket in the table `config` makes live.
    pub(crate) fn state(&self, config: &ScreenConfig, addr: Ipv4Addr) -> u64 {
        self.tables[(config.v4_table_slot & 1) as usize].state(addr)
    }
}

/// A table map mapped into this process, read (and, when writable, written) as memory.
pub(crate) struct MappedTable {
    name: &'static str,
    words: NonNull<u64>,
    /// Mapped `PROT_WRITE`; otherwise `PROT_READ` only, and a store would fault.
    writable: bool,
    /// Kept open when writable: a program loaded after the maps were taken out of its object
    /// refers to them by descriptor. A read-only table keeps no descriptor: the mapping holds
    /// the map.
    _map: Option<MapData>,
}

// SAFETY: the mapping belongs to this value alone; the kernel keeps it valid until `Drop`.
unsafe impl Send for MappedTable {}

impl MappedTable {
    /// Maps the value area of a table map (an array created with `BPF_F_MMAPABLE`), shared,
    /// read-only unless `writable`.
    ///
    /// `map` must be a read-write descriptor even for a read-only mapping: the kernel maps a
    /// BPF map only shared, and a shared mapping of a descriptor opened read-only is refused
    /// (`EINVAL`). A read-only mapping is made `PROT_READ` and its descriptor closed here; the
    /// kernel takes `VM_MAYWRITE` from a read-only mapping of a BPF map, so `mprotect` can
    /// never make it writable.
    pub(crate) fn new(name: &'static str, map: MapData, writable: bool) -> io::Result<Self> {
        let protection = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh shared mapping of a BPF array, sized as the array's value area.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                TABLE_BYTES,
                protection,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let words = NonNull::new(addr.cast()).ok_or_else(|| io::Error::other("mmap gave NULL"))?;
        Ok(Self {
            name,
            words,
            writable,
            _map: writable.then_some(map),
        })
    }

    fn words(&self) -> &[u64] {
        // SAFETY: the mapping is TABLE_BYTES long, page aligned and readable.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr(), WORDS as usize) }
    }

    fn words_mut(&mut self) -> Result<&mut [u64], V4TableError> {
        if !self.writable {
            return Err(V4TableError::ReadOnly { name: self.name });
        }
        // SAFETY: the mapping is TABLE_BYTES long, page aligned and writable (checked above).
        // The program only reads the table, and only the live one; the pin directory lock
        // keeps other writers out.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.words.as_ptr(), WORDS as usize) })
    }

    /// Makes the mapped table equal to `table`, storing only the words that differ; returns
    /// how many did.
    pub(crate) fn write(&mut self, table: &V4Table) -> Result<usize, V4TableError> {
        let mut changed = 0;
        for (word, &wanted) in self.words_mut()?.iter_mut().zip(table.words.iter()) {
            if *word != wanted {
                *word = wanted;
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// The state of the bucket `addr` falls in, as the map holds it.
    pub(crate) fn state(&self, addr: Ipv4Addr) -> u64 {
        let bucket = bucket(addr.octets());
        state(self.words()[word_index(bucket) as usize], bucket)
    }
}

impl Drop for MappedTable {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`, which nothing uses any more.
        unsafe { libc::munmap(self.words.as_ptr().cast(), TABLE_BYTES) };
    }
}

#[cfg(test)]
mod tests {
    use screen_common::v4_table::{ALLOW, BUCKETS, DENY, UNLISTED};

    use super::*;

    fn nets(list: &[&str]) -> Vec<Ipv4Net> {
        list.iter().map(|n| n.parse().expect("a prefix")).collect()
    }

    fn table(allow: &[&str], deny: &[&str]) -> V4Table {
        V4Table::build(&nets(allow), &nets(deny))
    }

    fn at(table: &V4Table, addr: &str) -> u64 {
        table.state(addr.parse().expect("an address"))
    }

    /// How many buckets are in each state.
    fn census(table: &V4Table) -> [u32; 4] {
        let mut out = [0; 4];
        for b in 0..BUCKETS {
            out[state(table.words[word_index(b) as usize], b) as usize] += 1;
        }
        out
    }

    #[test]
    fn empty_lists_leave_every_bucket_unlisted() {
        let t = table(&[], &[]);
        assert!(t.words.iter().all(|&w| w == 0));
        assert_eq!(t.words.len(), WORDS as usize);
    }

    #[test]
    fn a_24_sets_its_own_bucket_only() {
        let t = table(&[], &["192.0.2.0/24"]);
        assert_eq!(at(&t, "192.0.2.0"), DENY);
        assert_eq!(at(&t, "192.0.2.255"), DENY);
        assert_eq!(at(&t, "192.0.1.255"), UNLISTED);
        assert_eq!(at(&t, "192.0.3.0"), UNLISTED);
        assert_eq!(census(&t), [BUCKETS - 1, 1, 0, 0]);
        // Bucket 0xc00002: word 0x60000, bits 4 and 5.
        assert_eq!(t.words[0x6_0000], DENY << 4);
    }

    #[test]
    fn prefixes_between_19_and_24_fill_part_of_a_word() {
        let t = table(&["198.51.100.0/22"], &["203.0.112.0/20"]);
        assert_eq!(census(&t), [BUCKETS - 20, 16, 4, 0]);
        for addr in ["198.51.100.1", "198.51.103.254"] {
            assert_eq!(at(&t, addr), ALLOW, "{addr}");
        }
        assert_eq!(at(&t, "198.51.99.1"), UNLISTED);
        assert_eq!(at(&t, "198.51.104.1"), UNLISTED);
        assert_eq!(at(&t, "203.0.127.9"), DENY);
        assert_eq!(at(&t, "203.0.128.9"), UNLISTED);
    }

    #[test]
    fn zero_and_8_fill_whole_words() {
        let t = table(&[], &["0.0.0.0/0"]);
        assert!(t.words.iter().all(|&w| w == DENY_WORD));
        let t = table(&["10.0.0.0/8"], &[]);
        assert_eq!(census(&t), [BUCKETS - (1 << 16), 0, 1 << 16, 0]);
        assert_eq!(at(&t, "9.255.255.255"), UNLISTED);
        assert_eq!(at(&t, "10.0.0.0"), ALLOW);
        assert_eq!(at(&t, "10.255.255.255"), ALLOW);
        assert_eq!(at(&t, "11.0.0.0"), UNLISTED);
        let t = table(&["10.0.0.0/8"], &["0.0.0.0/0"]);
        assert_eq!(census(&t), [0, BUCKETS - (1 << 16), 1 << 16, 0]);
    }

    #[test]
    fn allow_wins_over_deny_whatever_the_lengths() {
        // Allow inside a wider deny, and deny inside a wider allow.
        let t = table(
            &["192.0.2.0/24", "10.0.0.0/8"],
            &["192.0.0.0/16", "10.1.2.0/24"],
        );
        assert_eq!(at(&t, "192.0.2.9"), ALLOW);
        assert_eq!(at(&t, "192.0.3.9"), DENY);
        assert_eq!(at(&t, "10.1.2.9"), ALLOW);
        // The same prefix in both lists.
        let t = table(&["192.0.2.0/24"], &["192.0.2.0/24"]);
        assert_eq!(at(&t, "192.0.2.9"), ALLOW);
    }

    #[test]
    fn longer_than_24_sends_its_bucket_to_the_tries() {
        let t = table(
            &["192.0.2.7/32", "10.0.0.0/8"],
            &["198.51.100.128/25", "10.9.9.9/32"],
        );
        assert_eq!(at(&t, "192.0.2.7"), ASK_TRIES);
        assert_eq!(
            at(&t, "192.0.2.8"),
            ASK_TRIES,
            "the whole /24 asks the tries"
        );
        assert_eq!(at(&t, "192.0.3.7"), UNLISTED);
        assert_eq!(at(&t, "198.51.100.1"), ASK_TRIES);
        // Even inside an allowed /8: the rule is simple, the tries still answer allow.
        assert_eq!(at(&t, "10.9.9.1"), ASK_TRIES);
        assert_eq!(at(&t, "10.9.8.1"), ALLOW);
        assert_eq!(census(&t)[ASK_TRIES as usize], 3);
    }

    #[test]
    fn removing_a_prefix_restores_the_buckets() {
        let base = ["203.0.113.0/24", "198.51.100.77/32"];
        let before = table(&[], &base);
        let mut more = base.to_vec();
        more.extend(["203.0.0.0/16", "198.51.100.0/24", "192.0.2.1/32"]);
        let with = table(&["203.0.113.0/24"], &more);
        assert_ne!(with.words, before.words);
        let after = table(&[], &base);
        assert_eq!(after.words, before.words);
    }

    #[test]
    fn the_last_bucket_is_reachable() {
        let t = table(&[], &["255.255.255.0/24"]);
        assert_eq!(at(&t, "255.255.255.255"), DENY);
        assert_eq!(t.words[WORDS as usize - 1], DENY << 62);
    }
}
