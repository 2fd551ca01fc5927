//! Addresses and CIDR prefixes as operators write them, and list files with one prefix per
//! line (Spamhaus DROP style: comments start with `#` or `;`).

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// A prefix that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PrefixError {
    #[error("invalid address or prefix {0:?}")]
    Invalid(String),
    #[error("invalid prefix length in {0:?}")]
    Length(String),
    #[error("{given} has host bits set (did you mean {network}?)")]
    HostBits { given: String, network: IpNet },
}

/// Parses `192.0.2.1`, `192.0.2.0/24`, `2001:db8::/32` or `[2001:db8::1]`. A bare address is
/// a host prefix. Host bits must be zero. IPv4-mapped IPv6 (`::ffff:a.b.c.d/96+n`) becomes
/// the IPv4 prefix it stands for, since XDP only sees such clients as IPv4.
pub(crate) fn parse_prefix(text: &str) -> Result<IpNet, PrefixError> {
    let text = text.trim();
    let (addr, len) = match text.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (text, None),
    };
    let addr = addr
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(addr);
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| PrefixError::Invalid(text.to_string()))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len: u8 = match len {
        None => max,
        Some(len) => len
            .parse()
            .ok()
            .filter(|&l| l <= max)
            .ok_or_else(|| PrefixError::Length(text.to_string()))?,
    };
    let net = match ip {
        IpAddr::V4(v4) => IpNet::V4(Ipv4Net::new(v4, len).expect("length checked")),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) if len >= 96 => IpNet::V4(Ipv4Net::new(v4, len - 96).expect("length checked")),
            _ => IpNet::V6(Ipv6Net::new(v6, len).expect("length checked")),
        },
    };
    if net.addr() != net.network() {
        return Err(PrefixError::HostBits {
            given: text.to_string(),
            network: net.trunc(),
        });
    }
    Ok(net)
}

/// A list file that does not parse; nothing from it is used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ListError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render_lines(path, errors))]
    Lines {
        path: PathBuf,
        errors: Vec<(usize, String)>,
    },
    #[error("{path}: {count} prefixes, more than the {max} the maps hold")]
    TooMany {
        path: PathBuf,
        count: usize,
        max: usize,
    },
}

/// How many bad lines an error report names before it summarises.
const MAX_REPORTED: usize = 10;

fn render_lines(path: &Path, errors: &[(usize, String)]) -> String {
    let mut out = String::new();
    for (i, (line, why)) in errors.iter().take(MAX_REPORTED).enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("{}:{line}: {why}", path.display()));
    }
    if errors.len() > MAX_REPORTED {
        out.push_str(&format!(
            "\n{}: {} more bad lines",
            path.display(),
            errors.len() - MAX_REPORTED
        ));
    }
    out
}

/// Parses list text: one prefix per line; `#` and `;` start comments; blank lines are skipped.
/// Every bad line is reported with its number, and a list with any bad line is refused.
pub(crate) fn parse_list(path: &Path, text: &str, max: usize) -> Result<Vec<IpNet>, ListError> {
    let mut nets = Vec::new();
    let mut errors = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let content = line.split(['#', ';']).next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let mut words = content.split_whitespace();
        let first = words.next().expect("content is not empty");
        if let Some(extra) = words.next() {
            errors.push((
                index + 1,
                format!("unexpected {extra:?} after {first:?} (one prefix per line)"),
            ));
            continue;
        }
        match parse_prefix(first) {
            Ok(net) => nets.push(net),
            Err(e) => errors.push((index + 1, e.to_string())),
        }
    }
    if !errors.is_empty() {
        return Err(ListError::Lines {
            path: path.to_path_buf(),
            errors,
        });
    }
    nets.sort();
    nets.dedup();
    if nets.len() > max {
        return Err(ListError::TooMany {
            path: path.to_path_buf(),
            count: nets.len(),
            max,
        });
    }
    Ok(nets)
}

/// Reads and parses a list file.
pub(crate) fn read_list(path: &Path, max: usize) -> Result<Vec<IpNet>, ListError> {
    let text = std::fs::read_to_string(path).map_err(|source| ListError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_list(path, &text, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn parses_addresses_and_prefixes() {
        assert_eq!(parse_prefix("192.0.2.1").unwrap(), net("192.0.2.1/32"));
        assert_eq!(parse_prefix("192.0.2.0/24").unwrap(), net("192.0.2.0/24"));
        assert_eq!(parse_prefix(" 10.0.0.0/8 ").unwrap(), net("10.0.0.0/8"));
        assert_eq!(parse_prefix("0.0.0.0/0").unwrap(), net("0.0.0.0/0"));
        assert_eq!(parse_prefix("2001:db8::/32").unwrap(), net("2001:db8::/32"));
        assert_eq!(
            parse_prefix("[2001:db8::1]").unwrap(),
            net("2001:db8::1/128")
        );
        assert_eq!(
            parse_prefix("[2001:db8::]/48").unwrap(),
            net("2001:db8::/48")
        );
    }

    #[test]
    fn maps_ipv4_mapped_ipv6_to_ipv4() {
        assert_eq!(
            parse_prefix("::ffff:192.0.2.7").unwrap(),
            net("192.0.2.7/32")
        );
        assert_eq!(
            parse_prefix("::ffff:192.0.2.0/120").unwrap(),
            net("192.0.2.0/24")
        );
    }

    #[test]
    fn rejects_host_bits_with_a_hint() {
        let err = parse_prefix("192.0.2.1/24").unwrap_err();
        assert_eq!(
            err,
            PrefixError::HostBits {
                given: "192.0.2.1/24".into(),
                network: net("192.0.2.0/24")
            }
        );
        assert!(err.to_string().contains("did you mean 192.0.2.0/24"));
        assert!(matches!(
            parse_prefix("2a01:111:f400:7c00::/48"),
            Err(PrefixError::HostBits { .. })
        ));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "foo",
            "192.0.2",
            "192.0.2.0/33",
            "2001:db8::/129",
            "192.0.2.0/",
            "1.2.3.4/-1",
            "1.2.3.4/x",
        ] {
            assert!(parse_prefix(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn reads_spamhaus_drop_format() {
        let text = "; Spamhaus DROP List 2026/11/21\n\
                    ; Last-Modified: Sat, 21 Nov 2026\n\
                    1.10.16.0/20 ; SBL256894\n\
                    \n\
                    2.56.192.0/22 ; SBL459831\n\
                    # operator comment\n\
                    2001:db8:bad::/48\n\
                    1.10.16.0/20 ; duplicate\n";
        let nets = parse_list(Path::new("drop.txt"), text, 100).unwrap();
        assert_eq!(
            nets,
            vec![
                net("1.10.16.0/20"),
                net("2.56.192.0/22"),
                net("2001:db8:bad::/48")
            ]
        );
    }

    #[test]
    fn reports_every_bad_line_with_its_number() {
        let text = "10.0.0.0/8\nnot-a-prefix\n192.0.2.1/24\n10.1.0.0/16 extra\n";
        let err = parse_list(Path::new("/etc/list"), text, 100).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/etc/list:2: invalid address or prefix \"not-a-prefix\""),
            "{msg}"
        );
        assert!(
            msg.contains("/etc/list:3: 192.0.2.1/24 has host bits set"),
            "{msg}"
        );
        assert!(msg.contains("/etc/list:4: unexpected \"extra\""), "{msg}");
        assert!(!msg.contains(":1:"), "{msg}");
    }

    #[test]
    fn refuses_more_than_the_maps_hold() {
        let text = "10.0.0.0/8\n10.1.0.0/16\n10.2.0.0/16\n";
        assert!(matches!(
            parse_list(Path::new("l"), text, 2),
            Err(ListError::TooMany {
                count: 3,
                max: 2,
                ..
            })
        ));
    }
}
