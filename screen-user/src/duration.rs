//! Time values in Postfix syntax: a number with an optional unit, `s` (the default), `m`,
//! `h`, `d` or `w` (`postconf(5)`, "time values").

use std::{fmt, time::Duration};

/// A time value that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid time value {value:?}: {why} (examples: 30s, 10m, 1h, 7d)")]
pub(crate) struct DurationError {
    value: String,
    why: &'static str,
}

/// The longest time value accepted: ten years, well past any TTL that makes sense.
const MAX_SECONDS: u64 = 10 * 365 * 86_400;

/// Parses `6s`, `10m`, `1h`, `1d`, `2w` or a bare number of seconds.
pub(crate) fn parse(value: &str) -> Result<Duration, DurationError> {
    let err = |why| DurationError {
        value: value.to_string(),
        why,
    };
    let text = value.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(err("it must start with a number"));
    }
    let number: u64 = digits.parse().map_err(|_| err("the number is too large"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(err("the unit must be one of s, m, h, d, w")),
    };
    let seconds = number
        .checked_mul(scale)
        .filter(|&s| s <= MAX_SECONDS)
        .ok_or_else(|| err("it is longer than ten years"))?;
    Ok(Duration::from_secs(seconds))
}

/// Shows a duration the way Postfix writes one: the largest unit that divides it.
pub(crate) struct Display(pub Duration);

impl fmt::Display for Display {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        for (unit, scale) in [("w", 7 * 86_400), ("d", 86_400), ("h", 3_600), ("m", 60)] {
            if secs != 0 && secs.is_multiple_of(scale) {
                return write!(f, "{}{unit}", secs / scale);
            }
        }
        write!(f, "{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_postfix_units() {
        assert_eq!(parse("6s").unwrap(), Duration::from_secs(6));
        assert_eq!(parse("6").unwrap(), Duration::from_secs(6));
        assert_eq!(parse("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse("1d").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse("2w").unwrap(), Duration::from_secs(14 * 86_400));
        assert_eq!(parse(" 0 ").unwrap(), Duration::ZERO);
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            "s",
            "-1s",
            "1x",
            "1.5h",
            "1 h",
            "h1",
            "99999999999999999999",
            "5000w",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn displays_the_largest_unit() {
        assert_eq!(Display(Duration::from_secs(3600)).to_string(), "1h");
        assert_eq!(Display(Duration::from_secs(90)).to_string(), "90s");
        assert_eq!(Display(Duration::from_secs(0)).to_string(), "0s");
        assert_eq!(Display(Duration::from_secs(1209600)).to_string(), "2w");
    }
}
