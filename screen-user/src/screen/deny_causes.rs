//! Which DNSBL answers each kernel deny rests on, so that a list's suspension revokes the
//! denies it caused.
//!
//! A deny made on a DNSBL score (at `kernel_dnsbl_threshold`, or a DNSBL failure counted by
//! the repeat rule) rests on the lists whose answers made the score. When one of them is
//! suspended (an error answer, or the health check), its answers no longer hold: every deny
//! that does not stand without them is removed from the kernel maps and logged. A deny stands
//! while enough of its failures do: one for a first-contact deny, two for a repeat; a DNSBL
//! failure stands while its sound score without the suspended lists still reaches the
//! threshold it met.
//!
//! Bounded as the policy's tracked clients are (the policy gives its bound): past the bound the
//! oldest records go first, and a deny whose record went is not revoked (it expires with its
//! TTL).

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use ipnet::IpNet;

use crate::dnsbl::SoundScore;

/// The DNSBL test's name in the failures a session collects: the failure a deny may rest on
/// a list for.
pub(crate) const DNSBL_FAILURE: &str = "DNSBL";

/// A DNSBL failure the kernel counts: its sound score and the threshold the score met.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DnsblGround {
    pub(crate) sound: SoundScore,
    /// `kernel_dnsbl_threshold` for a first-contact deny, `dnsbl_threshold` for a failure the
    /// repeat rule counts.
    pub(crate) needed: i32,
}

impl DnsblGround {
    /// A ground, when the sound score reaches `needed`: a DNSBL failure below it rests on
    /// answers outside 127.0.0.0/8 and never counts in the kernel.
    pub(crate) fn new(sound: SoundScore, needed: i32) -> Option<Self> {
        (sound.rank >= needed).then_some(Self { sound, needed })
    }

    fn stands(&self) -> bool {
        self.sound.rank >= self.needed
    }

    /// Takes `list`'s weights out; returns whether the ground changed.
    fn drop_list(&mut self, list: &str) -> bool {
        if !self.sound.rests_on(list) {
            return false;
        }
        self.sound.rank = self.sound.rank_without(|name| name == list);
        self.sound.weights.retain(|(name, _)| name != list);
        true
    }
}

/// What one kernel deny rests on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DenyCause {
    /// Each failure the deny counted: `None` for one that rests on no list (a pregreet, a
    /// deep test).
    pub(crate) failures: Vec<Option<DnsblGround>>,
    /// How many of them must stand: 1 at first contact, 2 for a repeat.
    pub(crate) needed: usize,
}

impl DenyCause {
    /// A deny on one DNSBL score at first contact.
    pub(crate) fn severe(ground: DnsblGround) -> Self {
        Self {
            failures: vec![Some(ground)],
            needed: 1,
        }
    }

    /// A deny on a repeat: the earlier failure's ground and this one's.
    pub(crate) fn repeat(earlier: Option<DnsblGround>, this: Option<DnsblGround>) -> Self {
        Self {
            failures: vec![earlier, this],
            needed: 2,
        }
    }

    /// A deny that rests on no list (a denylisted client).
    pub(crate) fn on_no_list() -> Self {
        Self {
            failures: vec![None],
            needed: 1,
        }
    }

    /// Whether any failure rests on a list.
    fn rests_on_lists(&self) -> bool {
        self.failures.iter().any(Option::is_some)
    }

    /// Whether enough failures still stand.
    pub(crate) fn stands(&self) -> bool {
        let standing = self
            .failures
            .iter()
            .filter(|failure| failure.as_ref().is_none_or(DnsblGround::stands))
            .count();
        standing >= self.needed
    }

    fn drop_list(&mut self, list: &str) -> bool {
        let mut changed = false;
        for ground in self.failures.iter_mut().flatten() {
            changed |= ground.drop_list(list);
        }
        changed
    }
}

/// A deny installed on DNSBL answers.
#[derive(Clone, Debug)]
struct Installed {
    cause: DenyCause,
    /// The client the deny was made for, for the log line.
    client: IpAddr,
    made: Instant,
    until: Instant,
}

/// An earlier DNSBL failure of a client the repeat rule tracks.
#[derive(Clone, Debug)]
struct Earlier {
    ground: DnsblGround,
    made: Instant,
}

/// A deny to take out of the kernel: its list no longer holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Revocation {
    pub(crate) net: IpNet,
    pub(crate) client: IpAddr,
}

impl Revocation {
    /// `KERNEL DENY revoked [a]: list zen.example suspended`.
    pub(crate) fn log_line(&self, list: &str) -> String {
        format!(
            "KERNEL DENY revoked [{}]: list {list} suspended",
            self.client
        )
    }
}

/// The denies made on DNSBL answers, and the DNSBL failures that may make one.
#[derive(Debug)]
pub(crate) struct DenyCauses {
    max: usize,
    denies: HashMap<IpNet, Installed>,
    earlier: HashMap<IpNet, Earlier>,
}

impl DenyCauses {
    /// At most `max` denies and `max` earlier failures remembered.
    pub(crate) fn with_capacity(max: usize) -> Self {
        Self {
            max: max.max(1),
            denies: HashMap::new(),
            earlier: HashMap::new(),
        }
    }

    /// A client's first failure within the window: remembered when it is a DNSBL failure,
    /// for the repeat deny it may lead to; any earlier one is forgotten.
    pub(crate) fn first_failure(&mut self, key: IpNet, ground: Option<DnsblGround>, now: Instant) {
        match ground {
            None => {
                self.earlier.remove(&key);
            }
            Some(ground) => {
                if !self.earlier.contains_key(&key) && self.earlier.len() >= self.max {
                    make_room(&mut self.earlier, |e| e.made);
                }
                self.earlier.insert(key, Earlier { ground, made: now });
            }
        }
    }

    /// The ground of a client's earlier failure, taken for its repeat deny.
    pub(crate) fn take_earlier(&mut self, key: IpNet) -> Option<DnsblGround> {
        self.earlier.remove(&key).map(|earlier| earlier.ground)
    }

    /// A deny went into the kernel for `ttl`. One that rests on no list replaces what was
    /// remembered for the key: that deny no longer depends on any list.
    pub(crate) fn installed(
        &mut self,
        key: IpNet,
        client: IpAddr,
        cause: DenyCause,
        ttl: Duration,
        now: Instant,
    ) {
        if !cause.rests_on_lists() {
            self.denies.remove(&key);
            return;
        }
        if !self.denies.contains_key(&key) && self.denies.len() >= self.max {
            self.expire(now);
            if self.denies.len() >= self.max {
                make_room(&mut self.denies, |d| d.made);
            }
        }
        self.denies.insert(
            key,
            Installed {
                cause,
                client,
                made: now,
                until: now + ttl,
            },
        );
    }

    /// `list` is suspended: its weights leave every remembered ground, and the denies that
    /// no longer stand are returned (and forgotten), oldest first.
    pub(crate) fn suspended(&mut self, list: &str, now: Instant) -> Vec<Revocation> {
        self.expire(now);
        // An earlier failure that no longer stands is kept as fallen: the repeat deny it would
        // lead to does not stand either.
        for earlier in self.earlier.values_mut() {
            earlier.ground.drop_list(list);
        }
        let mut fallen: Vec<(Instant, IpNet)> = Vec::new();
        for (key, deny) in &mut self.denies {
            if deny.cause.drop_list(list) && !deny.cause.stands() {
                fallen.push((deny.made, *key));
            }
        }
        fallen.sort();
        fallen
            .into_iter()
            .filter_map(|(_, net)| {
                self.denies.remove(&net).map(|deny| Revocation {
                    net,
                    client: deny.client,
                })
            })
            .collect()
    }

    /// Forgets the denies whose TTL has run out: the kernel ignores them already.
    pub(crate) fn expire(&mut self, now: Instant) {
        self.denies.retain(|_, deny| deny.until > now);
    }

    /// How many denies and earlier failures are remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> (usize, usize) {
        (self.denies.len(), self.earlier.len())
    }
}

/// Forgets the oldest tenth of a full map in one pass, as the policy does: a flood of
/// distinct addresses costs amortised constant time per insert.
fn make_room<V>(map: &mut HashMap<IpNet, V>, made: impl Fn(&V) -> Instant) {
    let mut times: Vec<Instant> = map.values().map(&made).collect();
    if times.is_empty() {
        return;
    }
    let cut = (times.len() / 10).max(1) - 1;
    let (_, cutoff, _) = times.select_nth_unstable(cut);
    let cutoff = *cutoff;
    map.retain(|_, value| made(value) > cutoff);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policy's bound, as the daemon sizes it.
    const MAX: usize = 100_000;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sound(weights: &[(&str, i32)]) -> SoundScore {
        SoundScore {
            rank: weights.iter().map(|(_, w)| w).sum(),
            weights: weights.iter().map(|(l, w)| (l.to_string(), *w)).collect(),
        }
    }

    const TTL: Duration = Duration::from_secs(3_600);

    #[test]
    fn a_ground_needs_its_sound_score_at_the_threshold() {
        assert!(DnsblGround::new(sound(&[("zen.test", 4)]), 4).is_some());
        assert!(DnsblGround::new(sound(&[("zen.test", 3)]), 4).is_none());
        assert!(DnsblGround::new(SoundScore::default(), 1).is_none());
    }

    #[test]
    fn a_suspended_list_revokes_the_denies_that_do_not_stand_without_it() {
        let mut causes = DenyCauses::with_capacity(MAX);
        let now = Instant::now();
        let ground = |weights: &[(&str, i32)]| DnsblGround::new(sound(weights), 4).unwrap();
        // Rests on zen.test alone.
        causes.installed(
            net("192.0.2.1/32"),
            ip("192.0.2.1"),
            DenyCause::severe(ground(&[("zen.test", 4)])),
            TTL,
            now,
        );
        // Reaches 4 without zen.test as well.
        causes.installed(
            net("192.0.2.2/32"),
            ip("192.0.2.2"),
            DenyCause::severe(ground(&[("zen.test", 4), ("bl.test", 4)])),
            TTL,
            now,
        );
        // Rests on another list.
        causes.installed(
            net("192.0.2.3/32"),
            ip("192.0.2.3"),
            DenyCause::severe(ground(&[("bl.test", 5)])),
            TTL,
            now,
        );
        // A repeat: a pregreet and a zen.test failure.
        causes.installed(
            net("2001:db8:1::/64"),
            ip("2001:db8:1::9"),
            DenyCause::repeat(None, Some(ground(&[("zen.test", 4)]))),
            TTL,
            now,
        );
        let revoked = causes.suspended("zen.test", now);
        let nets: Vec<IpNet> = revoked.iter().map(|r| r.net).collect();
        assert_eq!(nets.len(), 2, "{revoked:?}");
        assert!(nets.contains(&net("192.0.2.1/32")));
        assert!(nets.contains(&net("2001:db8:1::/64")));
        assert_eq!(
            revoked
                .iter()
                .find(|r| r.net == net("192.0.2.1/32"))
                .unwrap()
                .log_line("zen.test"),
            "KERNEL DENY revoked [192.0.2.1]: list zen.test suspended"
        );
        assert_eq!(causes.len().0, 2);
        // The second deny stood on bl.test too: bl.test's suspension takes both others.
        assert_eq!(causes.suspended("bl.test", now).len(), 2);
        assert_eq!(causes.len().0, 0);
        assert!(causes.suspended("bl.test", now).is_empty());
    }

    #[test]
    fn a_deny_on_no_list_replaces_the_record_and_is_never_revoked() {
        let mut causes = DenyCauses::with_capacity(MAX);
        let now = Instant::now();
        let key = net("192.0.2.1/32");
        let ground = DnsblGround::new(sound(&[("zen.test", 4)]), 4).unwrap();
        causes.installed(key, ip("192.0.2.1"), DenyCause::severe(ground), TTL, now);
        // Denied again, now for a repeated pregreet: no list is involved any more.
        causes.installed(
            key,
            ip("192.0.2.1"),
            DenyCause::repeat(None, None),
            TTL,
            now,
        );
        assert!(causes.suspended("zen.test", now).is_empty());
    }

    #[test]
    fn an_earlier_dnsbl_failure_is_kept_for_the_repeat_and_falls_with_its_list() {
        let mut causes = DenyCauses::with_capacity(MAX);
        let now = Instant::now();
        let key = net("192.0.2.7/32");
        let ground = DnsblGround::new(sound(&[("zen.test", 3)]), 3).unwrap();
        causes.first_failure(key, Some(ground.clone()), now);
        assert_eq!(causes.take_earlier(key), Some(ground.clone()));
        assert_eq!(causes.take_earlier(key), None);
        causes.first_failure(key, Some(ground.clone()), now);
        // A first failure on no list replaces it.
        causes.first_failure(key, None, now);
        assert_eq!(causes.take_earlier(key), None);
        // The list's suspension leaves the earlier failure nothing to stand on, and a repeat
        // deny on it and a pregreet does not stand.
        causes.first_failure(key, Some(ground.clone()), now);
        assert!(causes.suspended("zen.test", now).is_empty());
        let earlier = causes.take_earlier(key).expect("kept, fallen");
        assert_eq!(earlier.sound.rank, 0);
        assert!(!DenyCause::repeat(Some(earlier), None).stands());
        // Another list's suspension leaves it standing.
        causes.first_failure(key, Some(ground), now);
        assert!(causes.suspended("bl.test", now).is_empty());
        let earlier = causes.take_earlier(key).expect("kept");
        assert!(DenyCause::repeat(Some(earlier), None).stands());
    }

    #[test]
    fn expired_denies_are_forgotten() {
        let mut causes = DenyCauses::with_capacity(MAX);
        let now = Instant::now();
        let ground = DnsblGround::new(sound(&[("zen.test", 4)]), 4).unwrap();
        causes.installed(
            net("192.0.2.1/32"),
            ip("192.0.2.1"),
            DenyCause::severe(ground),
            Duration::from_secs(60),
            now,
        );
        // Its entry expired in the kernel: nothing to revoke.
        assert!(
            causes
                .suspended("zen.test", now + Duration::from_secs(61))
                .is_empty()
        );
        assert_eq!(causes.len().0, 0);
    }

    #[test]
    fn memory_stays_bounded() {
        let mut causes = DenyCauses::with_capacity(100);
        let start = Instant::now();
        let ground = DnsblGround::new(sound(&[("zen.test", 4)]), 4).unwrap();
        for i in 0..1_000u32 {
            let addr = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let at = start + Duration::from_millis(i.into());
            causes.installed(
                IpNet::from(addr),
                addr,
                DenyCause::severe(ground.clone()),
                TTL,
                at,
            );
            causes.first_failure(IpNet::from(addr), Some(ground.clone()), at);
        }
        let (denies, earlier) = causes.len();
        assert!(denies <= 100 && earlier <= 100, "{denies} {earlier}");
        // The newest are kept; the oldest went first.
        let newest = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + 999));
        let revoked = causes.suspended("zen.test", start + Duration::from_secs(1));
        assert!(revoked.iter().any(|r| r.client == newest));
        assert!(
            !revoked
                .iter()
                .any(|r| r.client == IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000)))
        );
    }
}
