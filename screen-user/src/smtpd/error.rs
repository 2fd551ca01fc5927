//! The engine's one error type: a reply, a setting or a footer that cannot be used. Every
//! message names the value and says what is wrong with it, so the daemon can stop at start
//! with a line the operator can act on.

/// A reply, a setting or a footer that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("reply code {code} is not an SMTP reply code (200..=599)")]
    ReplyCode { code: u16 },
    #[error("reply text {text:?}: {why}")]
    ReplyText { text: String, why: String },
    #[error("{setting} = {value:?}: {why}")]
    Setting {
        setting: &'static str,
        value: String,
        why: String,
    },
}
