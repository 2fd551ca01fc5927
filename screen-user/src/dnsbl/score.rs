//! Scoring, as `postscreen_dnsbl.c`'s `psc_dnsbl_receive` adds up the weights, and the verdict
//! `postscreen_early.c` draws from the score: [`DnsblSites::score`] turns each list's
//! [`ListResult`] into a [`Score`], [`Score::verdict`] compares it with the [`Thresholds`] and
//! clamps the pass's TTL.
//!
//! Pure: the lookups fill in the results, this file only reads them.

use std::{net::Ipv4Addr, time::Duration};

use super::site::{DnsblSite, DnsblSites, ReplyMap};

/// What one list said about a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ListResult {
    /// No answer yet.
    Pending,
    /// Not asked: the list is suspended by the health check.
    Suspended,
    /// A records (at most [`MAX_ANSWERS`](super::resolver::MAX_ANSWERS)) and their smallest TTL.
    Listed { addrs: Vec<Ipv4Addr>, ttl: Duration },
    /// No A record; the TTL of the negative answer (from its SOA), when it had one.
    NotListed { ttl: Option<Duration> },
    /// The lookup failed or timed out: counts as not listed (postscreen's empty reply).
    Failed,
}

/// A client's DNSBL score.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Score {
    /// The sum of the matching entries' weights (postscreen's "rank").
    pub(crate) rank: i32,
    /// The name the reply shows: the matching entry with the largest weight, through the reply
    /// map. `None` when no entry matched.
    pub(crate) name: Option<String>,
    /// The shortest TTL of the answers a pass rests on: negative answers' SOA TTLs and the A
    /// TTLs of matching allowlist (negative-weight) entries.
    pub(crate) pass_ttl: Option<Duration>,
    /// Lists that had not answered when the score was read.
    pub(crate) pending: usize,
    /// Lists whose lookup failed.
    pub(crate) failed: usize,
    /// Lists not asked because they are suspended.
    pub(crate) suspended: usize,
    /// The part of the score a kernel decision may rest on (see [`SoundScore`]).
    pub(crate) sound: SoundScore,
}

/// The score from answers inside 127.0.0.0/8 only, with each list's share: what the kernel
/// deny policy reads. An operator's filter (`list=10.0.0.[1..3]`) may make an answer outside
/// 127.0.0.0/8 a listing for the SMTP verdict, as postscreen does, but no list answers a
/// listing that way by RFC 5782: such an answer is as likely a hijacked zone or a resolver's
/// redirect, and a silent SYN drop must not rest on it. A negative weight counts whatever
/// its answer: it can only lower the score.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SoundScore {
    /// The sum of `weights`.
    pub(crate) rank: i32,
    /// Each matching entry's list and weight, in configuration order (at most
    /// [`MAX_SITES`](super::site::MAX_SITES)).
    pub(crate) weights: Vec<(String, i32)>,
}

impl SoundScore {
    /// The rank without the weights of the lists `gone` says are gone (suspended).
    pub(crate) fn rank_without(&self, gone: impl Fn(&str) -> bool) -> i32 {
        self.weights
            .iter()
            .filter(|(list, _)| !gone(list))
            .fold(0i32, |rank, (_, weight)| rank.saturating_add(*weight))
    }

    /// Whether any weight comes from `list`.
    pub(crate) fn rests_on(&self, list: &str) -> bool {
        self.weights.iter().any(|(name, _)| name == list)
    }
}

/// Whether an answer is one a list gives for a listing (RFC 5782 §2.3: 127.0.0.0/8).
pub(crate) fn is_sound_answer(addr: Ipv4Addr) -> bool {
    addr.is_loopback()
}

/// The DNSBL options that turn a score into a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Thresholds {
    /// `dnsbl_threshold`: a client fails at this rank or above (default 1).
    pub(crate) threshold: i32,
    /// `dnsbl_allowlist_threshold`: when negative, a client at or below it that failed
    /// nothing is allowlisted (default 0: off).
    pub(crate) allowlist_threshold: i32,
    /// `dnsbl_min_ttl`: the shortest DNSBL pass (default 60s).
    pub(crate) min_ttl: Duration,
    /// `dnsbl_max_ttl`: the longest DNSBL pass (default 1h).
    pub(crate) max_ttl: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            threshold: 1,
            allowlist_threshold: 0,
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(3_600),
        }
    }
}

impl Thresholds {
    /// A DNS TTL clamped to `min_ttl`…`max_ttl`; no TTL gives the minimum. Never panics, even
    /// when the two are the wrong way round (the maximum wins).
    pub(crate) fn clamp_ttl(&self, ttl: Option<Duration>) -> Duration {
        ttl.unwrap_or(self.min_ttl)
            .max(self.min_ttl)
            .min(self.max_ttl)
    }
}

/// The outcome of the DNSBL test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The rank reached `dnsbl_threshold`: log `DNSBL rank N for [a]:p` and apply
    /// `dnsbl_action`; `name` goes into the reply.
    Listed { rank: i32, name: String },
    /// Allowlisted by `dnsbl_allowlist_threshold`: the other tests are skipped and marked
    /// passed, for `ttl`.
    Allowlisted { ttl: Duration },
    /// Passed; the pass lasts `ttl`.
    Clean { ttl: Duration },
}

/// What a listed client's reply names when no entry matched, which only a `dnsbl_threshold`
/// of 0 or less allows: postscreen prints a null name, which the C library shows thus.
pub(crate) const NO_LIST_NAME: &str = "(null)";

impl Score {
    /// The verdict (`postscreen_early.c`): listed when `rank >= threshold`; allowlisted when
    /// the allowlist threshold is negative, `rank <= allowlist_threshold` and
    /// `other_test_failed` is false; clean otherwise. Pass TTLs are clamped to
    /// `min_ttl`…`max_ttl`.
    pub(crate) fn verdict(&self, thresholds: &Thresholds, other_test_failed: bool) -> Verdict {
        if self.rank >= thresholds.threshold {
            return Verdict::Listed {
                rank: self.rank,
                name: self.name.clone().unwrap_or_else(|| NO_LIST_NAME.into()),
            };
        }
        let ttl = thresholds.clamp_ttl(self.pass_ttl);
        if thresholds.allowlist_threshold < 0
            && self.rank <= thresholds.allowlist_threshold
            && !other_test_failed
        {
            Verdict::Allowlisted { ttl }
        } else {
            Verdict::Clean { ttl }
        }
    }

    /// Whether every list has answered (or failed, or was skipped).
    #[cfg(test)]
    pub(crate) fn is_complete(&self) -> bool {
        self.pending == 0
    }
}

impl DnsblSites {
    /// Scores one client from its lists' results, indexed like [`domains`](Self::domains) (a
    /// missing result counts as pending). Each entry adds its weight at most once, when any
    /// address of its domain's answer passes its filter. The name shown is the matching entry's
    /// with the largest weight (the first in configuration order among equals), through the
    /// reply map.
    pub(crate) fn score(&self, results: &[ListResult], reply_map: &ReplyMap) -> Score {
        let mut score = Score::default();
        let mut top: Option<(i32, usize)> = None;
        let mut dnswl_ttl: Option<Duration> = None;
        let mut negative_ttl: Option<Duration> = None;
        for (index, _) in self.domains().iter().enumerate() {
            match results.get(index).unwrap_or(&ListResult::Pending) {
                ListResult::Pending => score.pending += 1,
                ListResult::Failed => score.failed += 1,
                ListResult::Suspended => score.suspended += 1,
                ListResult::NotListed { ttl } => negative_ttl = min_ttl(negative_ttl, *ttl),
                ListResult::Listed { .. } => {}
            }
        }
        for (site, domain) in self.indexed_sites() {
            let Some(ListResult::Listed { addrs, ttl }) = results.get(domain) else {
                continue;
            };
            if !site.matches(addrs) {
                continue;
            }
            score.rank = score.rank.saturating_add(site.weight);
            if site.weight < 0 || matches_soundly(site, addrs) {
                score.sound.rank = score.sound.rank.saturating_add(site.weight);
                score
                    .sound
                    .weights
                    .push((self.domains()[domain].clone(), site.weight));
            }
            if top.is_none_or(|(weight, _)| weight < site.weight) {
                top = Some((site.weight, domain));
            }
            if site.weight < 0 {
                dnswl_ttl = min_ttl(dnswl_ttl, Some(*ttl));
            }
        }
        score.name = top.map(|(_, domain)| reply_map.shown(&self.domains()[domain]).to_string());
        score.pass_ttl = min_ttl(negative_ttl, dnswl_ttl);
        score
    }
}

/// Whether an answer inside 127.0.0.0/8 passes the entry's filter.
fn matches_soundly(site: &DnsblSite, addrs: &[Ipv4Addr]) -> bool {
    addrs.iter().any(|&addr| {
        is_sound_answer(addr)
            && site
                .filter
                .as_ref()
                .is_none_or(|filter| filter.matches(addr))
    })
}

fn min_ttl(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn ip4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    // --- Scoring ---

    fn listed(addrs: &[&str], ttl: u64) -> ListResult {
        ListResult::Listed {
            addrs: addrs.iter().map(|a| ip4(a)).collect(),
            ttl: Duration::from_secs(ttl),
        }
    }

    fn not_listed(ttl: Option<u64>) -> ListResult {
        ListResult::NotListed {
            ttl: ttl.map(Duration::from_secs),
        }
    }

    #[test]
    fn each_entry_adds_its_weight_once() {
        let sites = DnsblSites::parse("bl.test=127.0.0.[2..11]*3 bl2.test").unwrap();
        let score = sites.score(
            &[
                listed(&["127.0.0.2", "127.0.0.3", "127.0.0.4"], 300),
                listed(&["127.0.0.4"], 300),
            ],
            &ReplyMap::default(),
        );
        assert_eq!(score.rank, 4);
        assert_eq!(score.name.as_deref(), Some("bl.test"));
        assert_eq!((score.pending, score.failed), (0, 0));
    }

    #[test]
    fn repeated_domains_score_per_entry() {
        let sites = DnsblSites::parse(
            "zen.test=127.0.0.[2..3]*3 zen.test=127.0.0.[10..11]*2 zen.test=127.0.0.4 \
             dnswl.test=127.0.[0..255].0*-2 dnswl.test=127.0.[0..255].1*-3 \
             dnswl.test=127.0.[0..255].[2..3]*-4",
        )
        .unwrap();
        assert_eq!(sites.domains(), ["zen.test", "dnswl.test"]);
        let map = ReplyMap::default();
        let score = sites.score(
            &[
                listed(&["127.0.0.2", "127.0.0.10"], 60),
                not_listed(Some(120)),
            ],
            &map,
        );
        assert_eq!(score.rank, 5);
        assert_eq!(score.name.as_deref(), Some("zen.test"));
        let score = sites.score(
            &[listed(&["127.0.0.11"], 60), listed(&["127.0.10.1"], 300)],
            &map,
        );
        assert_eq!(score.rank, 2 - 3);
        let score = sites.score(&[not_listed(None), listed(&["127.0.10.2"], 300)], &map);
        assert_eq!(score.rank, -4);
        // Only an allowlist matched: it names the (unused) reply, as postscreen's first match.
        assert_eq!(score.name.as_deref(), Some("dnswl.test"));
        // A listing no filter accepts scores nothing.
        let score = sites.score(&[listed(&["127.0.0.99"], 60), not_listed(None)], &map);
        assert_eq!((score.rank, score.name), (0, None));
    }

    #[test]
    fn the_largest_weight_names_the_reply_through_the_map() {
        let sites =
            DnsblSites::parse("small.test big.test*5 other.test*5 keyed.secret.test*2").unwrap();
        let mut map = HashMap::new();
        map.insert("BIG.test.".to_string(), "public-bl.example".to_string());
        map.insert("keyed.secret.test".to_string(), " zen.example ".to_string());
        let map = ReplyMap::new(map).unwrap();
        let all = [
            listed(&["127.0.0.2"], 60),
            listed(&["127.0.0.2"], 60),
            listed(&["127.0.0.2"], 60),
            listed(&["127.0.0.2"], 60),
        ];
        let score = sites.score(&all, &map);
        assert_eq!(score.rank, 13);
        // big.test and other.test tie at 5: the first in the configuration wins.
        assert_eq!(score.name.as_deref(), Some("public-bl.example"));
        let score = sites.score(
            &[
                listed(&["127.0.0.2"], 60),
                not_listed(None),
                not_listed(None),
                listed(&["127.0.0.2"], 60),
            ],
            &map,
        );
        assert_eq!(score.rank, 3);
        assert_eq!(score.name.as_deref(), Some("zen.example"));
        assert_eq!(map.shown("unmapped.test"), "unmapped.test");
    }

    #[test]
    fn pending_failed_and_suspended_lists_score_nothing() {
        let sites = DnsblSites::parse("a.test*5 b.test*5 c.test*5 d.test").unwrap();
        let score = sites.score(
            &[
                ListResult::Pending,
                ListResult::Failed,
                ListResult::Suspended,
            ],
            &ReplyMap::default(),
        );
        assert_eq!(score.rank, 0);
        // The fourth result is missing: pending.
        assert_eq!((score.pending, score.failed, score.suspended), (2, 1, 1));
        assert!(!score.is_complete());
        // Extra results are ignored.
        let score = sites.score(&vec![not_listed(None); 9], &ReplyMap::default());
        assert!(score.is_complete());
        assert_eq!(score.rank, 0);
    }

    #[test]
    fn the_pass_ttl_comes_from_negative_answers_and_allowlists() {
        let sites = DnsblSites::parse("bl.test*2 bl2.test wl.test=127.0.10.[0..3]*-5").unwrap();
        let map = ReplyMap::default();
        let score = sites.score(
            &[
                not_listed(Some(120)),
                not_listed(Some(900)),
                listed(&["127.0.10.1"], 300),
            ],
            &map,
        );
        assert_eq!(score.pass_ttl, Some(Duration::from_secs(120)));
        let score = sites.score(
            &[
                not_listed(None),
                not_listed(None),
                listed(&["127.0.10.1"], 300),
            ],
            &map,
        );
        assert_eq!(score.pass_ttl, Some(Duration::from_secs(300)));
        // A DNSBL listing's TTL and an unmatched listing's do not count.
        let score = sites.score(
            &[
                listed(&["127.0.0.2"], 5),
                not_listed(None),
                listed(&["127.0.0.9"], 7),
            ],
            &map,
        );
        assert_eq!(score.pass_ttl, None);
    }

    #[test]
    fn only_answers_inside_127_8_count_toward_the_sound_score() {
        let sites = DnsblSites::parse(
            "zen.test=127.0.0.[2..11]*4 odd.test=10.0.0.[1..3]*5 any.test*2 \
             wl.test=10.0.[0..255].1*-3",
        )
        .unwrap();
        let map = ReplyMap::default();
        // An answer outside 127/8 that the operator's filter accepts lists the client in SMTP
        // (rank 9), but only zen.test's weight is sound.
        let score = sites.score(
            &[
                listed(&["127.0.0.2"], 60),
                listed(&["10.0.0.2"], 60),
                not_listed(None),
                not_listed(None),
            ],
            &map,
        );
        assert_eq!(score.rank, 9);
        assert_eq!(score.name.as_deref(), Some("odd.test"));
        assert_eq!(score.sound.rank, 4);
        assert_eq!(score.sound.weights, [("zen.test".to_string(), 4)]);
        assert!(score.sound.rests_on("zen.test"));
        assert!(!score.sound.rests_on("odd.test"));
        // The SMTP verdict is postscreen's, whatever the sound score.
        assert!(matches!(
            score.verdict(&Thresholds::default(), false),
            Verdict::Listed { rank: 9, .. }
        ));
        // Outside 127/8 only: listed in SMTP, nothing sound.
        let score = sites.score(
            &[
                not_listed(None),
                listed(&["10.0.0.3"], 60),
                listed(&["192.0.2.1"], 60),
                not_listed(None),
            ],
            &map,
        );
        assert_eq!((score.rank, score.sound.rank), (7, 0));
        assert!(score.sound.weights.is_empty());
        // One sound answer among others is enough for an entry without a filter.
        let score = sites.score(
            &[
                not_listed(None),
                not_listed(None),
                listed(&["192.0.2.1", "127.0.0.3"], 60),
                not_listed(None),
            ],
            &map,
        );
        assert_eq!((score.rank, score.sound.rank), (2, 2));
        // An allowlist's weight counts whatever its answer: it only lowers the score.
        let score = sites.score(
            &[
                listed(&["127.0.0.2"], 60),
                not_listed(None),
                not_listed(None),
                listed(&["10.0.7.1"], 60),
            ],
            &map,
        );
        assert_eq!((score.rank, score.sound.rank), (1, 1));
        assert_eq!(score.sound.rank_without(|list| list == "wl.test"), 4);
        assert_eq!(score.sound.rank_without(|list| list == "zen.test"), -3);
        assert_eq!(score.sound.rank_without(|_| true), 0);
    }

    // --- Verdicts and TTLs ---

    fn score(rank: i32, pass_ttl: Option<u64>) -> Score {
        Score {
            rank,
            name: Some("bl.test".into()),
            pass_ttl: pass_ttl.map(Duration::from_secs),
            ..Score::default()
        }
    }

    #[test]
    fn verdict_thresholds() {
        let defaults = Thresholds::default();
        assert_eq!(
            score(1, None).verdict(&defaults, false),
            Verdict::Listed {
                rank: 1,
                name: "bl.test".into()
            }
        );
        assert_eq!(
            score(0, Some(120)).verdict(&defaults, false),
            Verdict::Clean {
                ttl: Duration::from_secs(120)
            }
        );
        // The allowlist threshold 0 is off, however low the score.
        assert!(matches!(
            score(-100, None).verdict(&defaults, false),
            Verdict::Clean { .. }
        ));

        let t = Thresholds {
            threshold: 3,
            allowlist_threshold: -1,
            ..Thresholds::default()
        };
        assert!(matches!(
            score(3, None).verdict(&t, false),
            Verdict::Listed { rank: 3, .. }
        ));
        assert!(matches!(
            score(2, None).verdict(&t, false),
            Verdict::Clean { .. }
        ));
        assert!(matches!(
            score(0, None).verdict(&t, false),
            Verdict::Clean { .. }
        ));
        assert_eq!(
            score(-1, Some(300)).verdict(&t, false),
            Verdict::Allowlisted {
                ttl: Duration::from_secs(300)
            }
        );
        assert!(matches!(
            score(-5, None).verdict(&t, false),
            Verdict::Allowlisted { .. }
        ));
        // Another failed test rules the allowlist out.
        assert!(matches!(
            score(-5, None).verdict(&t, true),
            Verdict::Clean { .. }
        ));
        // The allowlist never overrides a listing (threshold below the allowlist threshold).
        let odd = Thresholds {
            threshold: -10,
            allowlist_threshold: -1,
            ..Thresholds::default()
        };
        assert!(matches!(
            score(-5, None).verdict(&odd, false),
            Verdict::Listed { .. }
        ));
        // A listing with no matching entry (threshold 0) shows postscreen's null name.
        let zero = Thresholds {
            threshold: 0,
            ..Thresholds::default()
        };
        assert_eq!(
            Score::default().verdict(&zero, false),
            Verdict::Listed {
                rank: 0,
                name: NO_LIST_NAME.into()
            }
        );
    }

    #[test]
    fn pass_ttls_are_clamped() {
        let t = Thresholds::default();
        let ttl = |s: Option<u64>| match score(0, s).verdict(&t, false) {
            Verdict::Clean { ttl } => ttl.as_secs(),
            other => panic!("{other:?}"),
        };
        assert_eq!(ttl(None), 60);
        assert_eq!(ttl(Some(0)), 60);
        assert_eq!(ttl(Some(59)), 60);
        assert_eq!(ttl(Some(61)), 61);
        assert_eq!(ttl(Some(3_600)), 3_600);
        assert_eq!(ttl(Some(86_400)), 3_600);
        let backwards = Thresholds {
            min_ttl: Duration::from_secs(600),
            max_ttl: Duration::from_secs(60),
            ..t
        };
        assert_eq!(
            backwards.clamp_ttl(Some(Duration::from_secs(300))),
            Duration::from_secs(60)
        );
        assert_eq!(backwards.clamp_ttl(None), Duration::from_secs(60));
    }
}
