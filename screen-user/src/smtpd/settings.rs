//! The engine's configuration ([`EngineSettings`]) with postscreen's defaults and limits,
//! and its validation: every value is checked once, before the first session, so that a
//! setting that cannot be used stops the daemon at start with a line that names it.

use std::fmt;

use super::{
    deep_tests::{DeepTests, MAX_FORBIDDEN_COMMANDS},
    error::EngineError,
    line::{DEFAULT_LINE_LENGTH_LIMIT, MAX_LINE_LENGTH_LIMIT},
    reply::{MAX_HOSTNAME, Reply},
    reply_style::ReplyStyle,
};

/// Postfix's `postscreen_command_count_limit` default.
pub const DEFAULT_COMMAND_COUNT_LIMIT: u32 = 20;

/// The largest command count limit accepted; it also bounds the events of one session.
pub const MAX_COMMAND_COUNT_LIMIT: u32 = 10_000;

/// The shortest `line_length_limit` accepted: RFC 5321 lets a command line be 512 bytes.
pub const MIN_LINE_LENGTH_LIMIT: usize = 512;

/// Postfix's `message_size_limit` default, announced in the EHLO reply.
pub const DEFAULT_MESSAGE_SIZE_LIMIT: u64 = 10_240_000;

/// The engine's configuration, with postscreen's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineSettings {
    /// `myhostname`: the HELO reply, the first EHLO line and the 421 replies.
    pub(crate) myhostname: String,
    /// `smtpd_banner`: the text of the `220` greeting.
    pub(crate) smtpd_banner: String,
    /// How RCPT (and VRFY) are refused until the caller says otherwise
    /// ([`Engine::set_rcpt_reply`](super::Engine::set_rcpt_reply)). Must be 4xx or 5xx.
    pub(crate) rcpt_reply: Reply,
    /// `postscreen_command_count_limit`: commands per session, QUIT not counted.
    pub(crate) command_count_limit: u32,
    /// `line_length_limit`: a command line must be shorter than this many bytes.
    pub(crate) line_length_limit: usize,
    /// `postscreen_helo_required`: MAIL and ETRN need HELO or EHLO first.
    pub(crate) helo_required: bool,
    /// `postscreen_disable_vrfy_command`: VRFY is refused with 502 and not announced.
    pub(crate) disable_vrfy: bool,
    /// `soft_bounce`: every 5xx reply is sent, and logged, as 4xx.
    pub(crate) soft_bounce: bool,
    /// `postscreen_reject_footer`: text added to 4xx and 5xx replies (see
    /// [`ReplyFooter`](super::ReplyFooter)).
    pub(crate) reject_footer: Option<String>,
    /// `smtputf8_enable`: announce SMTPUTF8.
    pub(crate) smtputf8: bool,
    /// `message_size_limit`, announced as `SIZE`; 0 announces `SIZE` without a number.
    pub(crate) message_size_limit: u64,
    /// STARTTLS is announced and accepted (`postscreen_tls_security_level` may/encrypt).
    pub(crate) starttls_offered: bool,
    /// The deep protocol tests: none by default, as in postscreen.
    pub(crate) deep_tests: DeepTests,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self::new("localhost")
    }
}

impl EngineSettings {
    /// postscreen's defaults for a host named `myhostname`, with the banner
    /// `<myhostname> ESMTP`.
    pub(crate) fn new(myhostname: &str) -> Self {
        Self {
            myhostname: myhostname.to_string(),
            smtpd_banner: format!("{myhostname} ESMTP"),
            rcpt_reply: Reply::service_unavailable_450(),
            command_count_limit: DEFAULT_COMMAND_COUNT_LIMIT,
            line_length_limit: DEFAULT_LINE_LENGTH_LIMIT,
            helo_required: false,
            disable_vrfy: false,
            soft_bounce: false,
            reject_footer: None,
            smtputf8: true,
            message_size_limit: DEFAULT_MESSAGE_SIZE_LIMIT,
            starttls_offered: false,
            deep_tests: DeepTests::default(),
        }
    }

    /// Checks every value; [`Engine::new`](super::Engine::new) does the same.
    pub(crate) fn validate(&self) -> Result<(), EngineError> {
        self.style().map(|_| ())
    }

    /// The reply style the settings make, once every value is checked.
    pub(super) fn style(&self) -> Result<ReplyStyle, EngineError> {
        let err = |setting, value: &dyn fmt::Display, why: &str| EngineError::Setting {
            setting,
            value: value.to_string(),
            why: why.to_string(),
        };
        let host = &self.myhostname;
        if host.is_empty() || host.len() > MAX_HOSTNAME {
            return Err(err("myhostname", host, "must be 1 to 255 characters long"));
        }
        if !host.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(err(
                "myhostname",
                host,
                "must be printable ASCII without spaces",
            ));
        }
        Reply::new(220, self.smtpd_banner.as_str())
            .map_err(|e| err("smtpd_banner", &self.smtpd_banner, &e.to_string()))?;
        if !self.rcpt_reply.is_negative() {
            return Err(err(
                "rcpt_reply",
                &self.rcpt_reply,
                "must be a 4xx or 5xx reply: the engine never accepts mail",
            ));
        }
        if !(1..=MAX_COMMAND_COUNT_LIMIT).contains(&self.command_count_limit) {
            return Err(err(
                "command_count_limit",
                &self.command_count_limit,
                &format!("must be 1..={MAX_COMMAND_COUNT_LIMIT}"),
            ));
        }
        let max_line = MAX_LINE_LENGTH_LIMIT;
        if !(MIN_LINE_LENGTH_LIMIT..=max_line).contains(&self.line_length_limit) {
            return Err(err(
                "line_length_limit",
                &self.line_length_limit,
                &format!("must be {MIN_LINE_LENGTH_LIMIT}..={max_line}"),
            ));
        }
        if self.deep_tests.forbidden_commands.len() > MAX_FORBIDDEN_COMMANDS {
            return Err(err(
                "forbidden_commands",
                &self.deep_tests.forbidden_commands.len(),
                &format!("more than {MAX_FORBIDDEN_COMMANDS} entries"),
            ));
        }
        ReplyStyle::new(self.soft_bounce, self.reject_footer.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtpd::{
        Engine,
        test_support::{client, settings},
    };

    #[test]
    fn settings_are_checked() {
        type Change = fn(&mut EngineSettings);
        let cases: [(Change, &str); 11] = [
            (|s| s.myhostname = String::new(), "myhostname"),
            (|s| s.myhostname = "mx example".into(), "myhostname"),
            (|s| s.myhostname = "mx\r\n250".into(), "myhostname"),
            (|s| s.myhostname = "a".repeat(256), "myhostname"),
            (|s| s.smtpd_banner = "mx\r\n250 ok".into(), "smtpd_banner"),
            (|s| s.rcpt_reply = Reply::ok(), "rcpt_reply"),
            (|s| s.command_count_limit = 0, "command_count_limit"),
            (
                |s| s.command_count_limit = MAX_COMMAND_COUNT_LIMIT + 1,
                "command_count_limit",
            ),
            (|s| s.line_length_limit = 511, "line_length_limit"),
            (|s| s.line_length_limit = 1 << 20, "line_length_limit"),
            (|s| s.reject_footer = Some("$bogus".into()), "reject_footer"),
        ];
        for (change, setting) in cases {
            let mut s = settings();
            change(&mut s);
            let err = s.validate().unwrap_err();
            assert!(matches!(&err, EngineError::Setting { setting: got, .. } if *got == setting));
            assert!(err.to_string().starts_with(setting), "{err}");
            assert_eq!(Engine::new(s, client()).unwrap_err(), err);
        }
        assert!(EngineSettings::default().validate().is_ok());
        assert_eq!(EngineSettings::default().smtpd_banner, "localhost ESMTP");
    }
}
