//! postscreen's three tests after the 220 greeting (`postscreen_smtpd.c`): command
//! pipelining, non-SMTP commands and bare newlines. [`DeepTests`] says which run, each with
//! its [`TestAction`], and holds `postscreen_forbidden_commands` ([`ForbiddenCommand`], read
//! from Postfix's list syntax). [`SessionDeepTests`] keeps the tests' state in one session:
//! the engine says when the client violated a test or reached RCPT, and what that earns is
//! decided here. [`DeepTestResults`] is what the session earned, in `test_state`'s
//! [`Outcome`](TestOutcome) values, for the client's record.

use std::fmt;

use super::{error::EngineError, reply::Reply};
use crate::test_state::{Outcome as TestOutcome, SessionResults, Test, TestAction};

/// `postscreen_forbidden_commands` as Postfix 3.7 and later ship it
/// (`$smtpd_forbidden_commands`).
#[cfg(test)]
pub const DEFAULT_FORBIDDEN_COMMANDS: &str = "CONNECT GET POST regexp:{{/^[^A-Z]/ Bogus}}";

/// The most entries a forbidden command list may have, and the longest entry.
pub const MAX_FORBIDDEN_COMMANDS: usize = 64;
pub const MAX_FORBIDDEN_COMMAND_LEN: usize = 64;

/// One of postscreen's tests after the 220 greeting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeepTest {
    /// `postscreen_pipelining_enable`: the client sent a command before the reply to the
    /// previous one (the engine never announces PIPELINING).
    Pipelining,
    /// `postscreen_non_smtp_command_enable`: a header line, invalid UTF-8, or a forbidden
    /// command such as `GET` or `CONNECT`.
    NonSmtpCommand,
    /// `postscreen_bare_newline_enable`: a line ended in LF without CR.
    BareNewline,
}

impl DeepTest {
    pub(crate) const ALL: [DeepTest; 3] = [
        DeepTest::Pipelining,
        DeepTest::NonSmtpCommand,
        DeepTest::BareNewline,
    ];

    fn index(self) -> usize {
        match self {
            DeepTest::Pipelining => 0,
            DeepTest::NonSmtpCommand => 1,
            DeepTest::BareNewline => 2,
        }
    }

    /// The test's name in postscreen's log lines (`COMMAND PIPELINING from …`).
    pub(crate) fn log_name(self) -> &'static str {
        match self {
            DeepTest::Pipelining => "COMMAND PIPELINING",
            DeepTest::NonSmtpCommand => "NON-SMTP COMMAND",
            DeepTest::BareNewline => "BARE NEWLINE",
        }
    }

    /// The reply to a violation whose action is `drop`.
    pub(super) fn drop_reply(self) -> Reply {
        match self {
            DeepTest::NonSmtpCommand => Reply::non_smtp_command_drop(),
            DeepTest::Pipelining | DeepTest::BareNewline => Reply::protocol_error_drop(),
        }
    }
}

impl From<DeepTest> for Test {
    fn from(test: DeepTest) -> Self {
        match test {
            DeepTest::Pipelining => Test::Pipelining,
            DeepTest::NonSmtpCommand => Test::NonSmtpCommand,
            DeepTest::BareNewline => Test::BareNewline,
        }
    }
}

/// One entry of `postscreen_forbidden_commands`: a command word, or postscreen 3.7's
/// `regexp:{{/^[^A-Z]/ Bogus}}` (a command that does not start with a letter), which the
/// engine knows as a built-in rule instead of running a regular expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForbiddenCommand(ForbiddenRule);

#[derive(Clone, Debug, PartialEq, Eq)]
enum ForbiddenRule {
    /// Compared without regard to case, as Postfix's string lists compare.
    Name(String),
    NotStartingWithLetter,
}

impl ForbiddenCommand {
    /// postscreen's default list, `DEFAULT_FORBIDDEN_COMMANDS`.
    pub(crate) fn defaults() -> Vec<Self> {
        vec![
            Self(ForbiddenRule::Name("CONNECT".into())),
            Self(ForbiddenRule::Name("GET".into())),
            Self(ForbiddenRule::Name("POST".into())),
            Self(ForbiddenRule::NotStartingWithLetter),
        ]
    }

    /// A command that does not start with an ASCII letter (such as a TLS ClientHello sent
    /// without STARTTLS).
    #[cfg(test)]
    pub(crate) fn not_starting_with_letter() -> Self {
        Self(ForbiddenRule::NotStartingWithLetter)
    }

    /// Parses a list in Postfix syntax (entries separated by spaces or commas), such as
    /// [`DEFAULT_FORBIDDEN_COMMANDS`]. An empty list forbids nothing. Besides command words,
    /// the one table accepted is an inline `regexp:` or `pcre:` table holding only the rule
    /// `/^[^A-Z]/` (its result text does not matter).
    #[cfg(test)]
    pub(crate) fn parse_list(text: &str) -> Result<Vec<Self>, EngineError> {
        let err = |why: String| forbidden_error(text, why);
        if text.len() > MAX_FORBIDDEN_COMMANDS * (MAX_FORBIDDEN_COMMAND_LEN + 1) {
            return Err(err("the list is too long".into()));
        }
        let entries = split_postfix_list(text).map_err(&err)?;
        if entries.len() > MAX_FORBIDDEN_COMMANDS {
            return Err(err(format!("more than {MAX_FORBIDDEN_COMMANDS} entries")));
        }
        entries
            .into_iter()
            .map(|entry| Self::parse_entry(entry).map_err(|why| err(format!("{entry:?}: {why}"))))
            .collect()
    }

    /// One entry of the list, for a configuration that gives the entries one by one: a
    /// command word, or the inline table described at `parse_list`.
    pub(crate) fn parse(entry: &str) -> Result<Self, EngineError> {
        Self::parse_entry(entry.trim()).map_err(|why| forbidden_error(entry, why))
    }

    fn parse_entry(entry: &str) -> Result<Self, String> {
        if let Some((kind, body)) = split_table(entry) {
            if kind != "regexp" && kind != "pcre" {
                return Err(format!(
                    "{kind}: tables are not supported; list command names, or \
                     regexp:{{{{/^[^A-Z]/ Bogus}}}}"
                ));
            }
            return parse_inline_rule(body).map(|()| Self(ForbiddenRule::NotStartingWithLetter));
        }
        if entry.is_empty() {
            return Err("an empty entry".into());
        }
        if entry.starts_with('!') {
            return Err("negated entries are not supported".into());
        }
        if entry.len() > MAX_FORBIDDEN_COMMAND_LEN {
            return Err(format!("longer than {MAX_FORBIDDEN_COMMAND_LEN} bytes"));
        }
        if !entry.bytes().all(|b| b.is_ascii_graphic()) || entry.contains(['{', '}']) {
            return Err("a command name is printable ASCII without braces".into());
        }
        Ok(Self(ForbiddenRule::Name(entry.to_string())))
    }

    /// Whether the command word `command` (as the client sent it) is forbidden.
    pub(crate) fn matches(&self, command: &[u8]) -> bool {
        match &self.0 {
            ForbiddenRule::Name(name) => command.eq_ignore_ascii_case(name.as_bytes()),
            ForbiddenRule::NotStartingWithLetter => {
                command.first().is_some_and(|b| !b.is_ascii_alphabetic())
            }
        }
    }
}

/// The entry as it is written in the configuration.
impl fmt::Display for ForbiddenCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            ForbiddenRule::Name(name) => f.write_str(name),
            ForbiddenRule::NotStartingWithLetter => f.write_str("regexp:{{/^[^A-Z]/ Bogus}}"),
        }
    }
}

fn forbidden_error(value: &str, why: String) -> EngineError {
    EngineError::Setting {
        setting: "forbidden_commands",
        value: value.to_string(),
        why,
    }
}

/// Splits a Postfix list at spaces and commas outside braces.
#[cfg(test)]
fn split_postfix_list(text: &str) -> Result<Vec<&str>, String> {
    let mut entries = Vec::new();
    let mut depth = 0usize;
    let mut start = None;
    for (at, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| format!("a '}}' without '{{' at byte {at}"))?;
            }
            c if depth == 0 && (c == ',' || c.is_whitespace()) => {
                if let Some(begin) = start.take() {
                    entries.push(&text[begin..at]);
                }
                continue;
            }
            _ => {}
        }
        start.get_or_insert(at);
    }
    if depth > 0 {
        return Err("a '{' without '}'".into());
    }
    if let Some(begin) = start {
        entries.push(&text[begin..]);
    }
    Ok(entries)
}

/// `type:rest` when `entry` names a table (a type of letters and digits before a colon).
fn split_table(entry: &str) -> Option<(&str, &str)> {
    let (kind, body) = entry.split_once(':')?;
    (!kind.is_empty() && kind.bytes().all(|b| b.is_ascii_alphanumeric())).then_some((kind, body))
}

/// Accepts an inline table body `{{/^[^A-Z]/ result}}` (spaces allowed inside the braces).
fn parse_inline_rule(body: &str) -> Result<(), String> {
    let unsupported = || {
        "only the inline table {{/^[^A-Z]/ Bogus}} (a command that does not start with a \
         letter) is supported"
            .to_string()
    };
    let inner = body
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .ok_or_else(unsupported)?
        .trim();
    let rule = inner
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .ok_or_else(unsupported)?
        .trim();
    // One rule: another would be in braces of its own.
    if rule.contains(['{', '}']) {
        return Err(unsupported());
    }
    let result = rule.strip_prefix("/^[^A-Z]/").ok_or_else(unsupported)?;
    // A flag after the pattern (`/^[^A-Z]/i`) would change what it matches.
    if !(result.is_empty() || result.starts_with(char::is_whitespace)) {
        return Err(unsupported());
    }
    Ok(())
}

/// Which deep tests run, with what action, and postscreen's forbidden command list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeepTests {
    /// `postscreen_pipelining_enable` and `…_action`; `None`: the test does not run.
    pub(crate) pipelining: Option<TestAction>,
    /// `postscreen_non_smtp_command_enable` and `…_action`.
    pub(crate) non_smtp_command: Option<TestAction>,
    /// `postscreen_bare_newline_enable` and `…_action`.
    pub(crate) bare_newline: Option<TestAction>,
    /// `postscreen_forbidden_commands`: commands the non-SMTP test refuses besides header
    /// lines and invalid UTF-8 (see `ForbiddenCommand::parse_list`).
    pub(crate) forbidden_commands: Vec<ForbiddenCommand>,
}

impl Default for DeepTests {
    /// postscreen's defaults: no deep test runs; the 3.7 forbidden command list.
    fn default() -> Self {
        Self {
            pipelining: None,
            non_smtp_command: None,
            bare_newline: None,
            forbidden_commands: ForbiddenCommand::defaults(),
        }
    }
}

impl DeepTests {
    pub(crate) fn action(&self, test: DeepTest) -> Option<TestAction> {
        match test {
            DeepTest::Pipelining => self.pipelining,
            DeepTest::NonSmtpCommand => self.non_smtp_command,
            DeepTest::BareNewline => self.bare_newline,
        }
    }

    /// The non-SMTP test's verdict on a command word the engine does not know: a header
    /// line, invalid UTF-8 when SMTPUTF8 is on, or a forbidden command.
    pub(super) fn is_non_smtp(&self, command: &[u8], smtputf8: bool) -> bool {
        is_header(command)
            || (smtputf8 && std::str::from_utf8(command).is_err())
            || self
                .forbidden_commands
                .iter()
                .any(|rule| rule.matches(command))
    }
}

/// What one session earned in each deep test (values of [`crate::test_state::Outcome`]):
/// `NotCompleted` when the test did not run or the client never reached RCPT TO, `Passed`
/// when it reached RCPT TO without violating the test, `Ignored` after a violation whose
/// action is `ignore` (the caller counts it passed until the shortest TTL), `Failed` after
/// one whose action is `enforce` or `drop`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeepTestResults {
    pub(crate) pipelining: TestOutcome,
    pub(crate) non_smtp_command: TestOutcome,
    pub(crate) bare_newline: TestOutcome,
}

impl DeepTestResults {
    pub(crate) fn get(&self, test: DeepTest) -> TestOutcome {
        match test {
            DeepTest::Pipelining => self.pipelining,
            DeepTest::NonSmtpCommand => self.non_smtp_command,
            DeepTest::BareNewline => self.bare_newline,
        }
    }

    /// Copies the results into the session's record for [`crate::test_state::conclude`], leaving
    /// a test that did not complete here as it was.
    pub(crate) fn record_into(&self, results: &mut SessionResults) {
        for test in DeepTest::ALL {
            let outcome = self.get(test);
            if outcome == TestOutcome::NotCompleted {
                continue;
            }
            results.set_outcome(test.into(), outcome);
        }
    }
}

/// The deep tests in one session: which run with what action, which the client violated,
/// and what each earned so far.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct SessionDeepTests([DeepTestState; 3]);

/// One deep test in one session.
#[derive(Clone, Copy, Debug, Default)]
struct DeepTestState {
    action: Option<TestAction>,
    /// The client violated the test: it is not checked again this session.
    fired: bool,
    outcome: TestOutcome,
}

impl SessionDeepTests {
    /// The tests as `tests` configures them.
    pub(super) fn new(tests: &DeepTests) -> Self {
        let mut session = Self::default();
        for test in DeepTest::ALL {
            session.0[test.index()].action = tests.action(test);
        }
        session
    }

    /// Runs `test` with `action` from now on, or not at all with `None`. A test the client
    /// already violated keeps its result.
    pub(super) fn set(&mut self, test: DeepTest, action: Option<TestAction>) {
        let state = &mut self.0[test.index()];
        if !state.fired {
            state.action = action;
        }
    }

    /// No test runs from now on; the results so far stay.
    pub(super) fn stop_all(&mut self) {
        for state in &mut self.0 {
            state.action = None;
        }
    }

    /// Whether `test` runs and has not fired yet.
    pub(super) fn armed(&self, test: DeepTest) -> bool {
        let state = &self.0[test.index()];
        state.action.is_some() && !state.fired
    }

    /// Records that the client violated `test`: the test is not checked again this session,
    /// and the client earns `Ignored` (action `ignore`) or `Failed`. Returns the action to
    /// apply, or `None` when the test does not run.
    pub(super) fn violated(&mut self, test: DeepTest) -> Option<TestAction> {
        let state = &mut self.0[test.index()];
        let action = state.action?;
        state.fired = true;
        state.outcome = match action {
            TestAction::Ignore => TestOutcome::Ignored,
            TestAction::Enforce | TestAction::Drop => TestOutcome::Failed,
        };
        Some(action)
    }

    /// The client reached RCPT TO: every test that runs and has not fired passes. A later
    /// violation can still fail it.
    pub(super) fn pass_at_rcpt(&mut self) {
        for state in &mut self.0 {
            if state.action.is_some() && !state.fired {
                state.outcome = TestOutcome::Passed;
            }
        }
    }

    /// What the session earned in each test so far.
    pub(super) fn results(&self) -> DeepTestResults {
        let outcome = |test: DeepTest| self.0[test.index()].outcome;
        DeepTestResults {
            pipelining: outcome(DeepTest::Pipelining),
            non_smtp_command: outcome(DeepTest::NonSmtpCommand),
            bare_newline: outcome(DeepTest::BareNewline),
        }
    }
}

/// Postfix's `is_header()`: a label of printable ASCII (no space, no colon), optional
/// spaces or tabs, then a colon.
fn is_header(command: &[u8]) -> bool {
    let label = command
        .iter()
        .take_while(|&&b| b.is_ascii_graphic() && b != b':')
        .count();
    if label == 0 {
        return false;
    }
    let rest = &command[label..];
    let blanks = rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    rest.get(blanks) == Some(&b':')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtpd::test_support::settings;

    #[test]
    fn results_go_into_the_session_record() {
        let results = DeepTestResults {
            pipelining: TestOutcome::Passed,
            non_smtp_command: TestOutcome::NotCompleted,
            bare_newline: TestOutcome::Ignored,
        };
        let mut record = SessionResults {
            pregreet: TestOutcome::Passed,
            non_smtp_command: TestOutcome::Failed,
            ..SessionResults::default()
        };
        results.record_into(&mut record);
        assert_eq!(record.pipelining, TestOutcome::Passed);
        assert_eq!(record.non_smtp_command, TestOutcome::Failed);
        assert_eq!(record.bare_newline, TestOutcome::Ignored);
        assert_eq!(record.pregreet, TestOutcome::Passed);
        for test in DeepTest::ALL {
            assert!(Test::from(test).is_deep());
        }
    }

    #[test]
    fn forbidden_command_lists() {
        let defaults = ForbiddenCommand::parse_list(DEFAULT_FORBIDDEN_COMMANDS).unwrap();
        assert_eq!(defaults, ForbiddenCommand::defaults());
        assert_eq!(
            defaults.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["CONNECT", "GET", "POST", "regexp:{{/^[^A-Z]/ Bogus}}"]
        );
        assert_eq!(DeepTests::default().forbidden_commands, defaults);
        for text in [
            "CONNECT, GET,POST\tregexp:{ { /^[^A-Z]/ Bogus } }",
            "  CONNECT GET POST pcre:{{/^[^A-Z]/}}  ",
            "CONNECT\nGET\n POST, regexp:{{/^[^A-Z]/   whatever it says}}",
        ] {
            assert_eq!(
                ForbiddenCommand::parse_list(text).unwrap(),
                defaults,
                "{text:?}"
            );
        }
        assert_eq!(ForbiddenCommand::parse_list("").unwrap(), []);
        assert_eq!(ForbiddenCommand::parse_list(" , ").unwrap(), []);
        let only = ForbiddenCommand::parse_list("EXPN").unwrap();
        assert!(only[0].matches(b"expn") && !only[0].matches(b"EXPN2"));
        // Entries one by one.
        assert_eq!(
            ForbiddenCommand::parse("regexp:{{/^[^A-Z]/ Bogus}}").unwrap(),
            ForbiddenCommand::not_starting_with_letter()
        );
        assert_eq!(ForbiddenCommand::parse(" GET ").unwrap(), defaults[1]);
        for bad in ["", "GET POST", "hash:/x"] {
            let err = ForbiddenCommand::parse(bad).unwrap_err().to_string();
            assert!(err.starts_with("forbidden_commands = "), "{err}");
        }
        let rule = ForbiddenCommand::not_starting_with_letter();
        for (command, matches) in [
            (&b"1"[..], true),
            (b"\x16", true),
            (b"\xc3\x89", true),
            (b"_x", true),
            (b"a", false),
            (b"Z9", false),
            (b"", false),
        ] {
            assert_eq!(rule.matches(command), matches, "{command:?}");
        }
    }

    #[test]
    fn bad_forbidden_command_lists_say_why() {
        for (text, why) in [
            (
                "GET hash:/etc/postfix/forbidden",
                "hash: tables are not supported",
            ),
            ("cidr:{{1.2.3.4 x}}", "cidr: tables are not supported"),
            ("regexp:/etc/postfix/forbidden.re", "only the inline table"),
            ("regexp:{{/^[^a-z]/ Bogus}}", "only the inline table"),
            ("regexp:{{/^[^A-Z]/i Bogus}}", "only the inline table"),
            ("regexp:{{/^[^A-Z]/ x} {/^X/ y}}", "only the inline table"),
            ("!GET", "negated entries"),
            ("GET {POST}", "without braces"),
            ("GET }", "a '}' without '{' at byte 4"),
            ("regexp:{{/^[^A-Z]/ x}", "a '{' without '}'"),
            ("G\u{e9}T", "printable ASCII"),
        ] {
            let err = ForbiddenCommand::parse_list(text).unwrap_err().to_string();
            assert!(err.starts_with("forbidden_commands = "), "{err}");
            assert!(err.contains(why), "{text:?}: {err}");
        }
        let long = "X".repeat(MAX_FORBIDDEN_COMMAND_LEN + 1);
        let err = ForbiddenCommand::parse_list(&long).unwrap_err().to_string();
        assert!(err.contains("longer than 64 bytes"), "{err}");
        let many = "GET ".repeat(MAX_FORBIDDEN_COMMANDS + 1);
        let err = ForbiddenCommand::parse_list(&many).unwrap_err().to_string();
        assert!(err.contains("more than 64 entries"), "{err}");
        let huge = " ".repeat(1 << 20);
        assert!(ForbiddenCommand::parse_list(&huge).is_err());
        // Built by hand, the list is still checked.
        let mut s = settings();
        s.deep_tests.forbidden_commands = vec![ForbiddenCommand::not_starting_with_letter(); 65];
        let err = s.validate().unwrap_err();
        assert!(err.to_string().starts_with("forbidden_commands"), "{err}");
    }

    #[test]
    fn headers_are_recognised_like_postfix() {
        for (command, header) in [
            (&b"Subject:"[..], true),
            (b"Subject:x", true),
            (b"X-A \t :", true),
            (b"a:", true),
            (b":", false),
            (b" a:", false),
            (b"a b:", false),
            (b"a\x7f:", false),
            (b"a\xc3\x89:", false),
            (b"Subject", false),
            (b"", false),
        ] {
            assert_eq!(is_header(command), header, "{command:?}");
        }
    }
}
