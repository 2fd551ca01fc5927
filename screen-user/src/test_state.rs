//! postscreen's per-test state (`postscreen_tests.c`): the five tests whose passes are
//! remembered, what each one's action is, a client's record of pass expiries in postscreen's
//! own text form, which tests are due when a client connects, and what a session's results
//! make of the record when it ends.
//!
//! A record holds one expiry time per test (Unix seconds) in postscreen's text form,
//! `pregreet;dnsbl;pipelining;non_smtp_command;bare_newline`, so a record reads the same here
//! as in `postmap -s` of postscreen's cache. Two values are not times: `0`, the test never
//! passed (the client is still "new"), and `1`, the test never passed and was disabled when
//! the record was written.
//!
//! Everything here is pure: [`start`] decides at connect time whether a cached client is
//! `PASS OLD` at once or which tests are due, [`conclude`] decides at the end of a session
//! whether to log `PASS NEW` or `PASS OLD` and which record to write, and [`retain`] is the
//! cleanup rule. Where records are kept is the allowlist's business.

use std::{
    fmt,
    str::FromStr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Deserialize;

/// The longest record text: five 20-digit numbers and four separators.
pub(crate) const MAX_RECORD_LEN: usize = 5 * 20 + 4;

/// Expiry value of a test the client never passed: it is still "new".
pub(crate) const NEVER_PASSED: u64 = 0;

/// Expiry value of a test the client never passed that was disabled when the record was
/// written, so that enabling it later does not make every cached client "new" again.
pub(crate) const DISABLED_WHEN_WRITTEN: u64 = 1;

/// postscreen's action for a failed test (`postscreen_*_action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TestAction {
    /// Log only; the other tests go on.
    Ignore,
    /// Let the other tests finish, then reject every RCPT with a 550.
    Enforce,
    /// Reply 521 at once and hang up.
    Drop,
}

/// A record text that is not postscreen's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("allowlist record is {len} bytes long; a record is at most {MAX_RECORD_LEN}")]
    TooLong { len: usize },
    #[error(
        "allowlist record has {found} fields, not the 5 of \
         pregreet;dnsbl;pipelining;non_smtp_command;bare_newline"
    )]
    FieldCount { found: usize },
    #[error("allowlist record field {position} of 5 ({test}) is {value:?}: {why}")]
    Field {
        test: &'static str,
        position: usize,
        value: String,
        why: &'static str,
    },
}

/// One of the five tests whose passes are cached, in record order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Test {
    Pregreet,
    Dnsbl,
    Pipelining,
    NonSmtpCommand,
    BareNewline,
}

impl Test {
    /// Every test, in the order of the record's fields.
    pub(crate) const ALL: [Test; 5] = [
        Test::Pregreet,
        Test::Dnsbl,
        Test::Pipelining,
        Test::NonSmtpCommand,
        Test::BareNewline,
    ];

    /// The test's name in messages (its field name).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Test::Pregreet => "pregreet",
            Test::Dnsbl => "dnsbl",
            Test::Pipelining => "pipelining",
            Test::NonSmtpCommand => "non_smtp_command",
            Test::BareNewline => "bare_newline",
        }
    }

    /// Whether the test runs after the 220 greeting, in the dummy SMTP engine.
    pub(crate) fn is_deep(self) -> bool {
        matches!(
            self,
            Test::Pipelining | Test::NonSmtpCommand | Test::BareNewline
        )
    }
}

/// `get` (and `set`) by [`Test`] for a struct with one field per test, named as the tests are.
macro_rules! per_test_fields {
    ($record:ty, $value:ty, $get:ident) => {
        impl $record {
            /// The value of `test`.
            pub(crate) fn $get(&self, test: Test) -> $value {
                match test {
                    Test::Pregreet => self.pregreet,
                    Test::Dnsbl => self.dnsbl,
                    Test::Pipelining => self.pipelining,
                    Test::NonSmtpCommand => self.non_smtp_command,
                    Test::BareNewline => self.bare_newline,
                }
            }
        }
    };
    ($record:ty, $value:ty, $get:ident, $set:ident) => {
        per_test_fields!($record, $value, $get);

        impl $record {
            /// Sets the value of `test`.
            pub(crate) fn $set(&mut self, test: Test, value: $value) {
                match test {
                    Test::Pregreet => self.pregreet = value,
                    Test::Dnsbl => self.dnsbl = value,
                    Test::Pipelining => self.pipelining = value,
                    Test::NonSmtpCommand => self.non_smtp_command = value,
                    Test::BareNewline => self.bare_newline = value,
                }
            }
        }
    };
}

per_test_fields!(TestTimes, u64, get, set);
per_test_fields!(EnabledTests, bool, get);
per_test_fields!(DueTests, bool, get, set);
per_test_fields!(SessionResults, Outcome, outcome, set_outcome);

/// A client's cached pass times: when each test's pass expires, in Unix seconds, or
/// [`NEVER_PASSED`] or [`DISABLED_WHEN_WRITTEN`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TestTimes {
    pub(crate) pregreet: u64,
    pub(crate) dnsbl: u64,
    pub(crate) pipelining: u64,
    pub(crate) non_smtp_command: u64,
    pub(crate) bare_newline: u64,
}

impl TestTimes {
    /// A client seen for the first time: no test ever passed.
    pub(crate) const NEW: TestTimes = TestTimes {
        pregreet: NEVER_PASSED,
        dnsbl: NEVER_PASSED,
        pipelining: NEVER_PASSED,
        non_smtp_command: NEVER_PASSED,
        bare_newline: NEVER_PASSED,
    };

    /// The latest of the five values: until then some pass is still valid.
    pub(crate) fn latest_expiry(&self) -> u64 {
        Test::ALL.iter().map(|&t| self.get(t)).max().unwrap_or(0)
    }

    /// Parses postscreen's record text, `pregreet;dnsbl;pipelining;non_smtp_command;bare_newline`:
    /// exactly five decimal numbers, nothing around them. (postscreen itself reads fewer
    /// fields as disabled tests, for records of older versions; this parser does not guess.)
    pub(crate) fn parse(text: &[u8]) -> Result<Self, RecordError> {
        if text.len() > MAX_RECORD_LEN {
            return Err(RecordError::TooLong { len: text.len() });
        }
        let found = text.iter().filter(|&&b| b == b';').count() + 1;
        if found != Test::ALL.len() {
            return Err(RecordError::FieldCount { found });
        }
        let mut times = TestTimes::NEW;
        for (position, (test, field)) in
            Test::ALL.iter().zip(text.split(|&b| b == b';')).enumerate()
        {
            times.set(*test, parse_field(*test, position + 1, field)?);
        }
        Ok(times)
    }
}

fn parse_field(test: Test, position: usize, field: &[u8]) -> Result<u64, RecordError> {
    let err = |why| RecordError::Field {
        test: test.name(),
        position,
        value: String::from_utf8_lossy(field).into_owned(),
        why,
    };
    if field.is_empty() {
        return Err(err("it is empty"));
    }
    if !field.iter().all(u8::is_ascii_digit) {
        return Err(err("it is not a decimal number"));
    }
    // Only ASCII digits remain, so the text is valid UTF-8 and the one failure left is overflow.
    std::str::from_utf8(field)
        .ok()
        .and_then(|digits| digits.parse().ok())
        .ok_or_else(|| err("it is larger than any time"))
}

impl FromStr for TestTimes {
    type Err = RecordError;

    fn from_str(text: &str) -> Result<Self, RecordError> {
        Self::parse(text.as_bytes())
    }
}

/// postscreen's record text.
impl fmt::Display for TestTimes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{};{};{};{};{}",
            self.pregreet, self.dnsbl, self.pipelining, self.non_smtp_command, self.bare_newline
        )
    }
}

/// Which tests the configuration turns on: pregreet when `greet_banner` is not empty, DNSBL
/// when `dnsbl_sites` is not empty, each deep test by its `*_enable` option.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct EnabledTests {
    pub(crate) pregreet: bool,
    pub(crate) dnsbl: bool,
    pub(crate) pipelining: bool,
    pub(crate) non_smtp_command: bool,
    pub(crate) bare_newline: bool,
}

/// The tests a client must take in this session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DueTests {
    pub(crate) pregreet: bool,
    pub(crate) dnsbl: bool,
    pub(crate) pipelining: bool,
    pub(crate) non_smtp_command: bool,
    pub(crate) bare_newline: bool,
}

impl DueTests {
    /// No test is due.
    pub(crate) fn is_empty(&self) -> bool {
        !Test::ALL.iter().any(|&t| self.get(t))
    }

    /// Whether a deep test (after 220) is due, so the session goes to the dummy SMTP engine.
    pub(crate) fn any_deep(&self) -> bool {
        Test::ALL.iter().any(|&t| t.is_deep() && self.get(t))
    }
}

/// How long a pass of each test is valid (postscreen's `*_ttl` options).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TestTtls {
    /// `greet_ttl`.
    pub(crate) pregreet: Duration,
    /// `dnsbl_min_ttl`: the least a DNSBL pass lasts, whatever the DNS TTL.
    pub(crate) dnsbl_min: Duration,
    /// `dnsbl_max_ttl`: the most a DNSBL pass lasts.
    pub(crate) dnsbl_max: Duration,
    /// `pipelining_ttl`.
    pub(crate) pipelining: Duration,
    /// `non_smtp_command_ttl`.
    pub(crate) non_smtp_command: Duration,
    /// `bare_newline_ttl`.
    pub(crate) bare_newline: Duration,
}

impl Default for TestTtls {
    /// postscreen's defaults: 1d, 60s…1h, 30d, 30d, 30d.
    fn default() -> Self {
        const DAY: u64 = 86_400;
        Self {
            pregreet: Duration::from_secs(DAY),
            dnsbl_min: Duration::from_secs(60),
            dnsbl_max: Duration::from_secs(3_600),
            pipelining: Duration::from_secs(30 * DAY),
            non_smtp_command: Duration::from_secs(30 * DAY),
            bare_newline: Duration::from_secs(30 * DAY),
        }
    }
}

impl TestTtls {
    /// The shortest configured TTL (postscreen's `psc_min_ttl`: `greet_ttl`, `dnsbl_min_ttl`
    /// and the three deep-test TTLs, enabled or not). A deep test whose action is `ignore`
    /// counts as passed until then, so it is tried again soon.
    pub(crate) fn shortest(&self) -> Duration {
        [
            self.pregreet,
            self.dnsbl_min,
            self.pipelining,
            self.non_smtp_command,
            self.bare_newline,
        ]
        .into_iter()
        .min()
        .unwrap_or(Duration::ZERO)
    }

    /// A DNS reply's TTL clamped to `dnsbl_min_ttl`…`dnsbl_max_ttl`; no TTL means the minimum
    /// (postscreen_dnsbl.c).
    pub(crate) fn dnsbl(&self, dns_ttl: Option<Duration>) -> Duration {
        dns_ttl
            .unwrap_or(self.dnsbl_min)
            .max(self.dnsbl_min)
            .min(self.dnsbl_max)
    }

    fn pass(&self, test: Test, dns_ttl: Option<Duration>) -> Duration {
        match test {
            Test::Pregreet => self.pregreet,
            Test::Dnsbl => self.dnsbl(dns_ttl),
            Test::Pipelining => self.pipelining,
            Test::NonSmtpCommand => self.non_smtp_command,
            Test::BareNewline => self.bare_newline,
        }
    }
}

/// How a client's eventual pass is logged: `PASS NEW` or `PASS OLD`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PassKind {
    New,
    Old,
}

impl fmt::Display for PassKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PassKind::New => "NEW",
            PassKind::Old => "OLD",
        })
    }
}

/// The tests due for a client and the state they start from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Screening {
    /// The record at connect time ([`TestTimes::NEW`] for an unknown client).
    pub(crate) times: TestTimes,
    pub(crate) due: DueTests,
    /// How a pass of every due test will be logged.
    pub(crate) pass_kind: PassKind,
}

/// What the cache says about a client at connect time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Start {
    /// Every enabled test is unexpired: log `PASS OLD [a]:p` and hand the client off at once.
    PassOld,
    /// Screen the client.
    Screen(Screening),
}

/// The tests whose pass of the record at `now` has expired, or that never passed, among the
/// enabled ones (a disabled test is never due: nothing could make it go away).
pub(crate) fn due_tests(times: &TestTimes, enabled: &EnabledTests, now: u64) -> DueTests {
    let mut due = DueTests::default();
    for test in Test::ALL {
        if enabled.get(test) && now > times.get(test) {
            due.set(test, true);
        }
    }
    due
}

/// Whether a cached client passes at once: no enabled test is due.
#[cfg(test)]
pub(crate) fn is_pass_old(times: &TestTimes, enabled: &EnabledTests, now: u64) -> bool {
    due_tests(times, enabled, now).is_empty()
}

/// How a pass will be logged: `NEW` while some enabled test has never passed (`0`), `OLD`
/// otherwise. A client that re-passes expired tests is `OLD`, and so is one that passes a test
/// enabled since its record was written (`1`, not `0`).
pub(crate) fn pass_kind(times: &TestTimes, enabled: &EnabledTests) -> PassKind {
    let new = Test::ALL
        .iter()
        .any(|&t| enabled.get(t) && times.get(t) == NEVER_PASSED);
    if new { PassKind::New } else { PassKind::Old }
}

/// Decides at connect time, from the cached record if there is one. The daemon looks the
/// cache up only when nothing has failed yet and the client has no other session in progress
/// (postscreen shares the other session's state instead).
pub(crate) fn start(cached: Option<&TestTimes>, enabled: &EnabledTests, now: u64) -> Start {
    match cached {
        Some(times) => {
            let due = due_tests(times, enabled, now);
            if due.is_empty() {
                Start::PassOld
            } else {
                Start::Screen(Screening {
                    times: *times,
                    due,
                    pass_kind: pass_kind(times, enabled),
                })
            }
        }
        None => Start::Screen(Screening {
            times: TestTimes::NEW,
            due: due_tests(&TestTimes::NEW, enabled, now),
            pass_kind: PassKind::New,
        }),
    }
}

/// What became of one test in a session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Not run, or not finished: a deep test passes only when the client reaches RCPT TO.
    #[default]
    NotCompleted,
    Passed,
    /// The client failed the test and the action is `ignore`. Before 220 this passes nothing
    /// (the test is repeated next time); after 220 the test counts as passed until the
    /// shortest TTL.
    Ignored,
    /// The client failed the test and the action is `enforce` or `drop`.
    Failed,
}

/// Everything a session found out about a client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SessionResults {
    pub(crate) pregreet: Outcome,
    pub(crate) dnsbl: Outcome,
    pub(crate) pipelining: Outcome,
    pub(crate) non_smtp_command: Outcome,
    pub(crate) bare_newline: Outcome,
    /// The TTL of the DNS replies that decided the DNSBL pass (the negative reply's SOA, or
    /// the DNSWL record's); `None` when there was none. Clamped with [`TestTtls::dnsbl`].
    pub(crate) dns_ttl: Option<Duration>,
    /// The DNSBL score reached the allowlist threshold without failing anything: every other
    /// test, pending or disabled, counts as passed until the DNS TTL.
    pub(crate) dnswl_allowlisted: bool,
    /// The permanent access list rejected the client and the denylist action is `enforce` or
    /// `drop` (with `ignore` postscreen takes the failure back; leave this false).
    pub(crate) denylisted: bool,
    /// The client connected to an address outside `allowlist_interfaces` (`ALLOWLIST VETO`).
    pub(crate) allowlist_veto: bool,
}

impl SessionResults {
    /// Any failure: no pass of this session counts, and nothing is cached.
    pub(crate) fn failed(&self) -> bool {
        self.denylisted
            || self.allowlist_veto
            || Test::ALL
                .iter()
                .any(|&t| self.outcome(t) == Outcome::Failed)
    }
}

/// What to do when a session ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Conclusion {
    /// Log `PASS NEW [a]:p` or `PASS OLD [a]:p`: every due test passed.
    pub(crate) pass: Option<PassKind>,
    /// The record to store in the allowlist; `None`: store nothing.
    pub(crate) update: Option<TestTimes>,
}

/// Decides at the end of a session, as postscreen's `psc_conclude` does:
///
/// - any failure: no pass counts, nothing is logged or cached (failures are never cached, so a
///   listed client is tested again on every connection);
/// - a passed test expires at `now` + its TTL; a deep test ignored at `now` + the shortest TTL;
/// - a DNSWL allowlisting passes DNSBL until `now` + the DNS TTL and moves every other test,
///   disabled ones too, to at least that time (an existing later expiry is kept);
/// - the record is written when anything passed, even if some due test is still pending (a
///   client may pass over several sessions); tests that are disabled and never passed are
///   written as [`DISABLED_WHEN_WRITTEN`];
/// - the pass is logged once every due test passed.
pub(crate) fn conclude(
    screening: &Screening,
    results: &SessionResults,
    enabled: &EnabledTests,
    ttls: &TestTtls,
    now: u64,
) -> Conclusion {
    const NOTHING: Conclusion = Conclusion {
        pass: None,
        update: None,
    };
    if results.failed() {
        return NOTHING;
    }
    let mut times = screening.times;
    let mut passed = DueTests::default();
    for test in Test::ALL {
        let ttl = match results.outcome(test) {
            Outcome::Passed => ttls.pass(test, results.dns_ttl),
            Outcome::Ignored if test.is_deep() => ttls.shortest(),
            _ => continue,
        };
        times.set(test, now.saturating_add(ttl.as_secs()));
        passed.set(test, true);
    }
    if results.dnswl_allowlisted {
        let until = now.saturating_add(ttls.dnsbl(results.dns_ttl).as_secs());
        for test in Test::ALL {
            let expiry = match test {
                Test::Dnsbl => until,
                _ => times.get(test).max(until),
            };
            times.set(test, expiry);
            passed.set(test, true);
        }
    }
    if passed.is_empty() {
        return NOTHING;
    }
    for test in Test::ALL {
        if !enabled.get(test) && times.get(test) == NEVER_PASSED {
            times.set(test, DISABLED_WHEN_WRITTEN);
        }
    }
    let every_due_passed = Test::ALL
        .iter()
        .all(|&t| !screening.due.get(t) || passed.get(t));
    Conclusion {
        pass: every_due_passed.then_some(screening.pass_kind),
        update: Some(times),
    }
}

/// The cleanup rule: a record is kept until every one of its tests expired more than
/// `retention` (`cache_retention_time`) ago, so a client that comes back soon is not logged
/// `NEW` again.
pub(crate) fn retain(times: &TestTimes, now: u64, retention: Duration) -> bool {
    times.latest_expiry().saturating_add(retention.as_secs()) >= now
}

/// The current time in Unix seconds, the unit of [`TestTimes`].
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;
