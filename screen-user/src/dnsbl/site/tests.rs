use std::{collections::HashMap, net::Ipv6Addr};

use hickory_resolver::proto::rr::Name;

use super::*;

fn ip4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn filter(s: &str) -> ScoreFilter {
    ScoreFilter::parse(s).unwrap()
}

fn site_error(entry: &str) -> String {
    DnsblSite::parse(entry).unwrap_err().to_string()
}

// --- Site syntax ---

#[test]
fn parses_every_site_form() {
    let site = DnsblSite::parse("zen.example").unwrap();
    assert_eq!(site.domain, "zen.example");
    assert_eq!(site.filter, None);
    assert_eq!(site.weight, 1);

    let site = DnsblSite::parse("zen.example=127.0.0.[2..11]*3").unwrap();
    assert_eq!(site.domain, "zen.example");
    assert_eq!(site.filter.as_ref().unwrap().to_string(), "127.0.0.[2..11]");
    assert_eq!(site.weight, 3);

    let site = DnsblSite::parse("list.dnswl.example=127.0.[0..255].[1..3]*-4").unwrap();
    assert_eq!(site.weight, -4);
    assert_eq!(
        site.to_string(),
        "list.dnswl.example=127.0.[0..255].[1..3]*-4"
    );

    let site = DnsblSite::parse("bl.example*2").unwrap();
    assert_eq!((site.filter, site.weight), (None, 2));
    assert_eq!(DnsblSite::parse("bl.example*+2").unwrap().weight, 2);
    assert_eq!(DnsblSite::parse("bl.example*0").unwrap().weight, 0);
    assert_eq!(DnsblSite::parse("bl.example=127.0.0.2").unwrap().weight, 1);

    // Case and one trailing dot do not make another domain.
    assert_eq!(
        DnsblSite::parse("ZEN.Example.").unwrap().domain,
        "zen.example"
    );
    // Keyed zones: digits, '_' and '-' in labels.
    assert_eq!(
        DnsblSite::parse("abc_123-key.zen.dq.example")
            .unwrap()
            .domain,
        "abc_123-key.zen.dq.example"
    );
    assert_eq!("bl.example*5".parse::<DnsblSite>().unwrap().weight, 5);
}

#[test]
fn site_list_separators_and_repeated_domains() {
    let sites = DnsblSites::parse(
        " zen.example=127.0.0.[2..11]*3, bl.example\n\tdnswl.example=127.0.[0..255].0*-2 ,,\
         dnswl.example=127.0.[0..255].1*-3 dnswl.example=127.0.[0..255].[2..3]*-4 ",
    )
    .unwrap();
    assert_eq!(sites.sites().len(), 5);
    assert_eq!(
        sites.domains(),
        ["zen.example", "bl.example", "dnswl.example"]
    );
    assert!(!sites.is_empty());
    assert!(DnsblSites::parse("").unwrap().is_empty());
    assert!(DnsblSites::parse(" ,\n, ").unwrap().is_empty());
}

#[test]
fn the_list_is_bounded() {
    let text = (0..MAX_SITES)
        .map(|i| format!("bl{i}.example"))
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(DnsblSites::parse(&text).unwrap().domains().len(), MAX_SITES);
    let text = format!("{text} one-more.example");
    assert_eq!(
        DnsblSites::parse(&text).unwrap_err().to_string(),
        format!(
            "dnsbl_sites has {} entries, more than the {MAX_SITES} allowed",
            MAX_SITES + 1
        )
    );
}

#[test]
fn malformed_domains_are_named() {
    assert_eq!(
        site_error("=127.0.0.2"),
        "bad dnsbl_sites entry \"=127.0.0.2\": the domain is empty"
    );
    assert_eq!(
        site_error("*3"),
        "bad dnsbl_sites entry \"*3\": the domain is empty"
    );
    assert_eq!(
        site_error("bl..example"),
        "bad dnsbl_sites entry \"bl..example\": the domain has an empty label"
    );
    assert_eq!(
        site_error(".bl.example"),
        "bad dnsbl_sites entry \".bl.example\": the domain has an empty label"
    );
    assert_eq!(
        site_error("bl!.example"),
        "bad dnsbl_sites entry \"bl!.example\": label \"bl!\" has the character '!': \
         only letters, digits, '-' and '_' are allowed"
    );
    assert_eq!(
        site_error("bl.exämple"),
        "bad dnsbl_sites entry \"bl.exämple\": label \"exämple\" has the character 'ä': \
         only letters, digits, '-' and '_' are allowed"
    );
    assert_eq!(
        site_error("-bl.example"),
        "bad dnsbl_sites entry \"-bl.example\": label \"-bl\" starts or ends with '-'"
    );
    let long_label = "a".repeat(64);
    assert_eq!(
        site_error(&format!("{long_label}.example")),
        format!(
            "bad dnsbl_sites entry \"{long_label}.example\": label \"{long_label}\" is \
             longer than 63 characters"
        )
    );
    let long_domain = ["abcdefghi"; 20].join(".");
    assert!(
        site_error(&long_domain).ends_with(&format!(
            "the domain is 199 characters long, more than {MAX_DOMAIN_LEN}"
        )),
        "{}",
        site_error(&long_domain)
    );
}

#[test]
fn malformed_filters_are_named() {
    let cases = [
        ("bl.example=", "the filter after '=' is empty"),
        ("bl.example=127.0.2", "the filter has 3 octets, not 4"),
        ("bl.example=127.0.0.0.2", "the filter has 5 octets, not 4"),
        ("bl.example=127.0..2", "octet 3 of the filter is empty"),
        ("bl.example=127.0.0.", "octet 4 of the filter is empty"),
        (
            "bl.example=127.0.0.256",
            "octet 4 of the filter: 256 is larger than 255",
        ),
        (
            "bl.example=1270.0.0.2",
            "octet 1 of the filter: 1270 is larger than 255",
        ),
        (
            "bl.example=127.0.0.99999999999999999999",
            "octet 4 of the filter: 99999999999999999999 is larger than 255",
        ),
        (
            "bl.example=127.0.0.x",
            "octet 4 of the filter: \"x\" is not a number",
        ),
        (
            "bl.example=127.0.0.-1",
            "octet 4 of the filter: \"-1\" is not a number",
        ),
        (
            "bl.example=127.0.0.2x",
            "octet 4 of the filter: \"2x\" is not a number",
        ),
        (
            "bl.example=127.0.0.[11..2]",
            "octet 4 of the filter: the range 11..2 is reversed",
        ),
        (
            "bl.example=127.0.0.[]",
            "octet 4 of the filter: the brackets are empty",
        ),
        (
            "bl.example=127.0.0.[2;;3]",
            "octet 4 of the filter: an empty item between ';'",
        ),
        (
            "bl.example=127.0.0.[2;]",
            "octet 4 of the filter: an empty item between ';'",
        ),
        ("bl.example=127.0.0.[2..]", "octet 4 of the filter is empty"),
        ("bl.example=127.0.0.[..2]", "octet 4 of the filter is empty"),
        (
            "bl.example=127.0.0.[2...4]",
            "octet 4 of the filter: \".4\" is not a number",
        ),
        (
            "bl.example=127.0.0.[2..300]",
            "octet 4 of the filter: 300 is larger than 255",
        ),
        (
            "bl.example=127.0.0.[2",
            "octet 4 of the filter: '[' is not closed",
        ),
        (
            "bl.example=127.0.[0.0.2",
            "octet 3 of the filter: '[' is not closed",
        ),
        (
            "bl.example=127.0.0.2]",
            "octet 4 of the filter: ']' without '['",
        ),
        (
            "bl.example=127.0.0.[[2]]",
            "octet 4 of the filter: '[' inside brackets",
        ),
        (
            "bl.example=127.0.0.[2]x",
            "octet 4 of the filter: unexpected \"x\" after ']'",
        ),
        (
            "bl.example=127.0.0.x[2]",
            "octet 4 of the filter: \"x\" is not a number",
        ),
        (
            "bl.example=127.0.0.2=3",
            "octet 4 of the filter: \"2=3\" is not a number",
        ),
    ];
    for (entry, why) in cases {
        assert_eq!(
            site_error(entry),
            format!("bad dnsbl_sites entry {entry:?}: {why}"),
            "{entry}"
        );
    }
}

#[test]
fn malformed_weights_are_named() {
    let cases = [
        ("bl.example*", "the weight after '*' is empty"),
        ("bl.example*x", "the weight \"x\" is not an integer"),
        ("bl.example*3x", "the weight \"3x\" is not an integer"),
        ("bl.example*1.5", "the weight \"1.5\" is not an integer"),
        ("bl.example*-", "the weight \"-\" is not an integer"),
        ("bl.example* 3", "the weight \" 3\" is not an integer"),
        ("bl.example*--3", "the weight \"--3\" is not an integer"),
        ("bl.example*3*4", "the weight \"3*4\" is not an integer"),
        // postscreen splits off the weight first: a filter after it is junk.
        (
            "bl.example*3=127.0.0.2",
            "the weight \"3=127.0.0.2\" is not an integer",
        ),
        (
            "bl.example*1000001",
            "the weight 1000001 is beyond ±1000000",
        ),
        (
            "bl.example*-99999999999",
            "the weight -99999999999 is beyond ±1000000",
        ),
    ];
    for (entry, why) in cases {
        assert_eq!(
            site_error(entry),
            format!("bad dnsbl_sites entry {entry:?}: {why}"),
            "{entry}"
        );
    }
    assert_eq!(
        DnsblSite::parse("bl.example*-1000000").unwrap().weight,
        -MAX_WEIGHT
    );
}

#[test]
fn oversized_and_garbage_entries_are_refused() {
    let long = format!("bl.example={}", "1".repeat(MAX_ENTRY_LEN));
    let err = site_error(&long);
    assert!(
        err.ends_with(&format!(
            "it is {} bytes long, more than {MAX_ENTRY_LEN}",
            long.len()
        )),
        "{err}"
    );
    // The message quotes a bounded part of it.
    assert!(err.len() < 200, "{err}");
    for garbage in [
        "\0",
        "\u{7f}bl.example",
        "bl.example\u{1}",
        "[]",
        "=",
        "*",
        "=*",
        "é",
    ] {
        assert!(DnsblSite::parse(garbage).is_err(), "{garbage:?}");
    }
    // Byte soup never panics.
    let mut seed = 0x2545_f491_u32;
    for _ in 0..2_000 {
        let len = (seed % 24) as usize;
        let entry: String = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                b"0123456789.[];=*-+abc_\xc3"[(seed % 23) as usize] as char
            })
            .collect();
        let _ = DnsblSites::parse(&entry);
    }
}

// --- Filters ---

#[test]
fn filters_match_numbers_lists_and_ranges() {
    let exact = filter("127.0.0.2");
    assert!(exact.matches(ip4("127.0.0.2")));
    assert!(!exact.matches(ip4("127.0.0.3")));
    assert!(!exact.matches(ip4("127.0.1.2")));

    let range = filter("127.0.0.[2..11]");
    for last in 0..=255u8 {
        assert_eq!(
            range.matches(Ipv4Addr::new(127, 0, 0, last)),
            (2..=11).contains(&last),
            "{last}"
        );
    }
    assert!(!range.matches(ip4("128.0.0.2")));

    let list = filter("127.0.0.[2;4;6..8]");
    let hits: Vec<u8> = (0..=255u8)
        .filter(|&d| list.matches(Ipv4Addr::new(127, 0, 0, d)))
        .collect();
    assert_eq!(hits, [2, 4, 6, 7, 8]);

    let dnswl = filter("127.0.[0..255].[1..3]");
    assert!(dnswl.matches(ip4("127.0.10.1")));
    assert!(dnswl.matches(ip4("127.0.255.3")));
    assert!(!dnswl.matches(ip4("127.0.10.0")));
    assert!(!dnswl.matches(ip4("127.1.10.1")));

    let edges = filter("[0..255].[0;255].000.[0..0]");
    assert!(edges.matches(ip4("9.255.0.0")));
    assert!(edges.matches(ip4("255.0.0.0")));
    assert!(!edges.matches(ip4("9.254.0.0")));
    assert!(!edges.matches(ip4("9.0.0.1")));
    assert_eq!(filter("127.0.0.[1;1;1]").to_string(), "127.0.0.[1;1;1]");
}

#[test]
fn an_entry_matches_any_of_its_answers() {
    let site = DnsblSite::parse("bl.example=127.0.0.4").unwrap();
    assert!(site.matches(&[ip4("127.0.0.2"), ip4("127.0.0.4")]));
    assert!(!site.matches(&[ip4("127.0.0.2")]));
    assert!(!site.matches(&[]));
    let any = DnsblSite::parse("bl.example").unwrap();
    assert!(any.matches(&[ip4("10.9.8.7")]));
    assert!(!any.matches(&[]));
}

// --- Reply map ---

#[test]
fn reply_map_values_are_checked() {
    let bad = |value: &str| {
        let mut map = HashMap::new();
        map.insert("bl.test".to_string(), value.to_string());
        ReplyMap::new(map).unwrap_err().to_string()
    };
    assert_eq!(
        bad(""),
        "bad dnsbl_reply_map entry for \"bl.test\": the shown name is empty"
    );
    assert_eq!(
        bad("  "),
        "bad dnsbl_reply_map entry for \"bl.test\": the shown name is empty"
    );
    assert_eq!(
        bad("bl\r\n250 ok"),
        "bad dnsbl_reply_map entry for \"bl.test\": the shown name has a control or \
         non-ASCII character"
    );
    assert_eq!(
        bad("blé"),
        "bad dnsbl_reply_map entry for \"bl.test\": the shown name has a control or \
         non-ASCII character"
    );
    assert_eq!(
        bad(&"x".repeat(256)),
        "bad dnsbl_reply_map entry for \"bl.test\": the shown name is longer than 255 bytes"
    );
    let many: HashMap<String, String> = (0..=MAX_REPLY_MAP)
        .map(|i| (format!("bl{i}.test"), "x".to_string()))
        .collect();
    assert_eq!(
        ReplyMap::new(many).unwrap_err(),
        DnsblError::TooManyReplyNames {
            count: MAX_REPLY_MAP + 1,
            max: MAX_REPLY_MAP
        }
    );
}

// --- Query names ---

#[test]
fn query_names_reverse_octets_and_nibbles() {
    assert_eq!(
        query_name("192.0.2.1".parse().unwrap(), "zen.example"),
        "1.2.0.192.zen.example"
    );
    assert_eq!(
        query_name("2001:db8::25".parse().unwrap(), "v6.example"),
        "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.v6.example"
    );
    assert_eq!(
        query_name("2001:db8:abcd:12::ff00:42:8329".parse().unwrap(), "x"),
        "9.2.3.8.2.4.0.0.0.0.f.f.0.0.0.0.2.1.0.0.d.c.b.a.8.b.d.0.1.0.0.2.x"
    );
    assert_eq!(
        query_name("::ffff:127.0.0.40".parse().unwrap(), "bl.test"),
        "40.0.0.127.bl.test"
    );
    assert_eq!(query_name(Ipv6Addr::UNSPECIFIED.into(), "x").len(), 64 + 1);
    // The longest domain still makes a valid name.
    let domain = ["a".repeat(63), "b".repeat(63), "c".repeat(61)].join(".");
    assert_eq!(domain.len(), MAX_DOMAIN_LEN);
    let site = DnsblSite::parse(&domain).unwrap();
    let name = query_name(Ipv6Addr::LOCALHOST.into(), &site.domain);
    assert_eq!(name.len(), 253);
    assert!(Name::from_ascii(format!("{name}.")).is_ok());
}
