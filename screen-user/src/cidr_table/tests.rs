use screen_tests::rng::SplitMix64;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn table(text: &str) -> CidrTable {
    let (table, warnings) = CidrTable::parse("/etc/postfix/test.cidr", text).unwrap();
    assert_eq!(warnings, [], "unexpected warnings");
    table
}

fn lookup<'a>(table: &'a CidrTable, addr: &str) -> Option<&'a str> {
    table.lookup(ip(addr)).map(|r| &**r)
}

fn errors(text: &str) -> Vec<(usize, String)> {
    match CidrTable::parse("/etc/postfix/test.cidr", text) {
        Err(CidrError::Lines { errors, .. }) => errors,
        other => panic!("expected bad lines, got {other:?}"),
    }
}

#[test]
fn parses_every_pattern_form() {
    let cases = [
        ("192.0.2.1", "192.0.2.1/32", false),
        ("192.0.2.0/24", "192.0.2.0/24", false),
        ("0.0.0.0/0", "0.0.0.0/0", false),
        ("2001:db8::1", "2001:db8::1/128", false),
        ("2001:db8::/32", "2001:db8::/32", false),
        ("[2001:db8::]/32", "2001:db8::/32", false),
        ("[2001:db8::1]", "2001:db8::1/128", false),
        ("[2001:db8::/32]", "2001:db8::/32", false),
        ("[192.0.2.0]/24", "192.0.2.0/24", false),
        ("::/0", "::/0", false),
        ("!192.0.2.0/24", "192.0.2.0/24", true),
        ("!!192.0.2.0/24", "192.0.2.0/24", false),
        ("![2001:db8::]/32", "2001:db8::/32", true),
        ("192.0.2.0/024", "192.0.2.0/24", false),
        ("::ffff:192.0.2.7", "192.0.2.7/32", false),
        ("::ffff:192.0.2.0/120", "192.0.2.0/24", false),
        ("::ffff:0:0/96", "0.0.0.0/0", false),
        ("::/80", "::/80", false),
    ];
    for (text, expected, negated) in cases {
        assert_eq!(
            Pattern::parse(text),
            Ok(Pattern {
                net: net(expected),
                negated
            }),
            "{text}"
        );
    }
}

#[test]
fn rejects_bad_patterns_with_postfix_wording() {
    let cases = [
        ("", "no address pattern"),
        ("!", "no address pattern"),
        (
            "[2001:db8::1",
            "missing ']' character after \"[2001:db8::1\"",
        ),
        ("[2001:db8::1]x", "garbage after \"[2001:db8::1]\""),
        ("192.0.2.0/33", "bad net/mask pattern: \"192.0.2.0/33\""),
        ("2001:db8::/129", "bad net/mask pattern: \"2001:db8::/129\""),
        ("192.0.2.0/", "bad net/mask pattern: \"192.0.2.0/\""),
        ("192.0.2.0/-1", "bad net/mask pattern: \"192.0.2.0/-1\""),
        ("192.0.2.0/+8", "bad net/mask pattern: \"192.0.2.0/+8\""),
        ("192.0.2.0/x", "bad net/mask pattern: \"192.0.2.0/x\""),
        ("192.0.2.0/8/8", "bad net/mask pattern: \"192.0.2.0/8/8\""),
        ("192.0.2.0/99999999999", "bad net/mask pattern"),
        ("example.com/24", "bad net/mask pattern: \"example.com/24\""),
        ("192.0.2", "bad address pattern: \"192.0.2\""),
        ("192.0.2.256", "bad address pattern"),
        ("01.2.3.4", "bad address pattern"),
        ("example.com", "bad address pattern: \"example.com\""),
        ("fe80::1%eth0", "bad address pattern"),
        ("1.2.3.4:25", "bad address pattern"),
        ("[]", "bad address pattern: \"\""),
        ("[", "missing ']'"),
    ];
    for (text, expected) in cases {
        let err = Pattern::parse(text).unwrap_err();
        assert!(err.to_string().contains(expected), "{text}: {err}");
    }
}

#[test]
fn quotes_at_most_a_bounded_part_of_garbage() {
    let long = "x".repeat(10_000);
    let msg = Pattern::parse(&long).unwrap_err().to_string();
    assert!(msg.len() < 200, "{}", msg.len());
    assert!(msg.ends_with("...\""), "{msg}");
}

#[test]
fn host_bits_suggest_the_network() {
    assert_eq!(
        Pattern::parse("2a01:111:f400:7c00::/48"),
        Err(PatternError::HostBits {
            given: "2a01:111:f400:7c00::/48".into(),
            network: net("2a01:111:f400::/48"),
        })
    );
    assert_eq!(
        Pattern::parse("[194.7.41.152]/28").unwrap_err().to_string(),
        "non-null host address bits in \"194.7.41.152/28\", perhaps you should use \
         \"194.7.41.144/28\" instead"
    );
}

#[test]
fn patterns_display_as_they_parse() {
    let mut rng = SplitMix64::seeded(0x5eed_cafe);
    for _ in 0..2_000 {
        let v6 = rng.below(2) == 0;
        let (addr, max): (IpAddr, u8) = if v6 {
            let bits = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
            (IpAddr::V6(Ipv6Addr::from(bits)), 128)
        } else {
            (IpAddr::V4(Ipv4Addr::from(rng.next_u64() as u32)), 32)
        };
        let len = rng.below(usize::from(max) + 1) as u8;
        let pattern = Pattern {
            net: unmap(IpNet::new(addr, len).unwrap().trunc()),
            negated: rng.below(2) == 0,
        };
        assert_eq!(Pattern::parse(&pattern.to_string()), Ok(pattern));
    }
}

#[test]
fn first_match_wins_in_file_order() {
    let t = table(
        "192.0.2.1        first\n\
         192.0.2.0/24     second\n\
         192.0.2.1        never\n\
         0.0.0.0/0        everything v4\n\
         2001:db8::/32    doc v6\n\
         ::/0             everything v6\n",
    );
    assert_eq!(lookup(&t, "192.0.2.1"), Some("first"));
    assert_eq!(lookup(&t, "192.0.2.77"), Some("second"));
    assert_eq!(lookup(&t, "198.51.100.1"), Some("everything v4"));
    assert_eq!(lookup(&t, "2001:db8:1::5"), Some("doc v6"));
    assert_eq!(lookup(&t, "2001:db9::5"), Some("everything v6"));
    assert_eq!(t.len(), 6);
}

#[test]
fn mixes_families_without_crossing_them() {
    let t = table("10.0.0.0/8 v4\n[2001:db8::]/32 v6\n[2001:db8::1] host6\n");
    assert_eq!(lookup(&t, "10.1.2.3"), Some("v4"));
    assert_eq!(lookup(&t, "2001:db8::1"), Some("v6"));
    assert_eq!(lookup(&t, "::a00:1"), None, "IPv4-compatible is not IPv4");
    assert_eq!(lookup(&t, "11.0.0.1"), None);
}

#[test]
fn looks_up_ipv4_mapped_clients_as_ipv4() {
    let t = table("192.0.2.0/24 mapped-ok\n::ffff:198.51.100.0/120 written-mapped\n");
    assert_eq!(lookup(&t, "::ffff:192.0.2.9"), Some("mapped-ok"));
    assert_eq!(lookup(&t, "198.51.100.3"), Some("written-mapped"));
    assert_eq!(lookup(&t, "::ffff:198.51.100.3"), Some("written-mapped"));
}

#[test]
fn negation_matches_the_rest_of_the_same_family() {
    let t = table("!192.0.2.0/24 outside\n192.0.2.0/24 inside\n");
    assert_eq!(lookup(&t, "198.51.100.1"), Some("outside"));
    assert_eq!(lookup(&t, "192.0.2.1"), Some("inside"));
    assert_eq!(lookup(&t, "2001:db8::1"), None, "no family crossing");
    let t = table("!!192.0.2.0/24 double\n");
    assert_eq!(lookup(&t, "192.0.2.1"), Some("double"));
    assert_eq!(lookup(&t, "192.0.3.1"), None);
}

#[test]
fn if_blocks_nest_and_apply_only_on_a_match() {
    let t = table(
        "# outer block\n\
         if 10.0.0.0/8\n\
         IF !10.1.0.0/16\n\
         10.2.0.0/16 ten-two\n\
         EndIf\n\
         10.1.2.0/24 ten-one-two\n\
         endif\n\
         if [2001:db8::]/32\n\
         ::/0 doc\n\
         endif\n\
         0.0.0.0/0 default\n",
    );
    assert_eq!(lookup(&t, "10.2.3.4"), Some("ten-two"));
    assert_eq!(lookup(&t, "10.1.2.3"), Some("ten-one-two"));
    assert_eq!(lookup(&t, "10.1.3.3"), Some("default"));
    assert_eq!(lookup(&t, "10.3.0.1"), Some("default"));
    assert_eq!(lookup(&t, "192.0.2.1"), Some("default"));
    assert_eq!(lookup(&t, "2001:db8::1"), Some("doc"));
    assert_eq!(lookup(&t, "2001:db9::1"), None);
}

#[test]
fn negated_if_skips_the_other_family() {
    let t = table("if !192.0.2.0/24\n::/0 v6-inside\n0.0.0.0/0 v4-inside\nendif\n");
    assert_eq!(lookup(&t, "198.51.100.1"), Some("v4-inside"));
    assert_eq!(lookup(&t, "192.0.2.1"), None);
    assert_eq!(lookup(&t, "2001:db8::1"), None);
}

#[test]
fn empty_if_block_and_empty_table() {
    let t = table("if 10.0.0.0/8\nendif\n10.0.0.0/8 after\n");
    assert_eq!(lookup(&t, "10.0.0.1"), Some("after"));
    let t = table("# nothing\n\n   \n");
    assert!(t.is_empty());
    assert_eq!(lookup(&t, "10.0.0.1"), None);
    assert!(table("").is_empty());
}

#[test]
fn continuation_lines_comments_and_blank_lines() {
    let t = table(
        "# comment\n\
         \n\
         \t# indented comment\n\
         192.0.2.1\n\
         \x20 permit\n\
         # a comment does not end the logical line\n\
         \t  , reject\n\
         192.0.2.2 dunno\n\
         \x20\x20\n\
         192.0.2.3 text # not a comment\n",
    );
    assert_eq!(lookup(&t, "192.0.2.1"), Some("permit\t  , reject"));
    assert_eq!(lookup(&t, "192.0.2.2"), Some("dunno"));
    assert_eq!(lookup(&t, "192.0.2.3"), Some("text # not a comment"));
}

#[test]
fn result_is_the_rest_of_the_line_trimmed() {
    let t = table("192.0.2.1 \t  reject  spam source \t\r\n192.0.2.2\tpermit\r\n");
    assert_eq!(lookup(&t, "192.0.2.1"), Some("reject  spam source"));
    assert_eq!(lookup(&t, "192.0.2.2"), Some("permit"));
}

#[test]
fn shares_identical_results() {
    let t = table("192.0.2.1 reject\n192.0.2.2 permit\n192.0.2.3 reject\n");
    assert_eq!(t.results.len(), 2);
    assert_eq!(lookup(&t, "192.0.2.3"), Some("reject"));
    let lengths = t.map_results(|r| r.len());
    assert_eq!(lengths.lookup(ip("192.0.2.2")), Some(&6));
    assert_eq!(lengths.name(), "/etc/postfix/test.cidr");
}

#[test]
fn skips_rules_with_host_bits_with_postfix_warning() {
    let (t, warnings) = CidrTable::parse(
        "/usr/local/etc/postfix/postscreen_spf_whitelist.cidr",
        "2a01:111:f400::/48 ok\n\
         192.0.2.0/24 first\n\
         # comment\n\
         2a01:111:f400:7c00::/48 permit\n\
         !192.0.2.1/24 never\n\
         0.0.0.0/0 second\n",
    )
    .unwrap();
    let texts: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        texts,
        [
            "cidr map /usr/local/etc/postfix/postscreen_spf_whitelist.cidr, line 4: \
             non-null host address bits in \"2a01:111:f400:7c00::/48\", perhaps you \
             should use \"2a01:111:f400::/48\" instead: skipping this rule",
            "cidr map /usr/local/etc/postfix/postscreen_spf_whitelist.cidr, line 5: \
             non-null host address bits in \"192.0.2.1/24\", perhaps you should use \
             \"192.0.2.0/24\" instead: skipping this rule",
        ]
    );
    assert_eq!(t.len(), 3);
    assert_eq!(lookup(&t, "2a01:111:f400:7c00::1"), Some("ok"));
    assert_eq!(lookup(&t, "198.51.100.1"), Some("second"));
}

#[test]
fn warns_about_a_continuation_with_nothing_to_continue() {
    let (t, warnings) = CidrTable::parse(
        "t.cidr",
        "  192.0.2.1 a very long orphan line\n\tmore\n192.0.2.2 b\n",
    )
    .unwrap();
    assert_eq!(
        warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
        [
            "cidr map t.cidr, line 1: logical line must not start with whitespace: \
          \"  192.0.2.1 a very long orphan...\": skipping it"
        ]
    );
    assert_eq!(t.len(), 1);
    assert_eq!(t.lookup(ip("192.0.2.1")), None);
}

#[test]
fn keeps_a_bounded_number_of_warnings() {
    let text: String = (0..250).map(|i| format!("10.0.{i}.1/24 x\n")).collect();
    let (t, warnings) = CidrTable::parse("many.cidr", &text).unwrap();
    assert!(t.is_empty());
    assert_eq!(warnings.len(), MAX_WARNINGS + 1);
    assert_eq!(
        warnings.last().unwrap().to_string(),
        "cidr map many.cidr: 150 more rules skipped"
    );
}

#[test]
fn every_bad_line_is_named_with_its_number() {
    let errs = errors(
        "192.0.2.1 ok\n\
         not-an-address permit\n\
         192.0.2.2\n\
         \n\
         endif\n\
         192.0.2.0/33 reject\n\
         if\n\
         if 10.0.0.0/8 extra\n\
         if 10.0.0.1/8\n\
         [2001:db8::1 reject\n\
         endif now\n",
    );
    assert_eq!(
        errs,
        [
            (2, "bad address pattern: \"not-an-address\"".to_string()),
            (3, "no lookup result".into()),
            (5, "\"endif\" without matching \"if\"".into()),
            (6, "bad net/mask pattern: \"192.0.2.0/33\"".into()),
            (7, "no address pattern after \"if\"".into()),
            (8, "garbage after \"if 10.0.0.0/8\": \"extra\"".into()),
            (
                9,
                "non-null host address bits in \"10.0.0.1/8\", perhaps you should use \
                 \"10.0.0.0/8\" instead (an \"if\" cannot be skipped)"
                    .into()
            ),
            (10, "missing ']' character after \"[2001:db8::1\"".into()),
            (11, "garbage after \"endif\": \"now\"".into()),
        ]
    );
}

#[test]
fn an_unclosed_if_is_reported_at_its_line() {
    let err = CidrTable::parse(
        "/etc/postfix/x.cidr",
        "if 10.0.0.0/8\nif 10.1.0.0/16\n10.1.0.0/16 a\nendif\n",
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cidr map /etc/postfix/x.cidr, line 1: \"if\" without matching \"endif\""
    );
}

#[test]
fn a_bad_line_in_a_continuation_is_reported_at_its_first_line() {
    let errs = errors("192.0.2.1 ok\nbogus\n  result\n   more\n");
    assert_eq!(errs, [(2, "bad address pattern: \"bogus\"".to_string())]);
}

#[test]
fn error_message_names_file_and_line_and_summarises() {
    let text: String = (0..15).map(|i| format!("bad{i} x\n")).collect();
    let err = CidrTable::parse("/etc/postfix/bad.cidr", &text).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("cidr map /etc/postfix/bad.cidr, line 1: bad address pattern: \"bad0\"\n"),
        "{msg}"
    );
    assert!(
        msg.contains("line 10: bad address pattern: \"bad9\""),
        "{msg}"
    );
    assert!(!msg.contains("line 11:"), "{msg}");
    assert!(
        msg.ends_with("cidr map /etc/postfix/bad.cidr: 5 more bad lines"),
        "{msg}"
    );
}

#[test]
fn refuses_oversized_lines_and_tables() {
    let long = format!("192.0.2.1 {}\n192.0.2.2 ok\n", "x".repeat(MAX_LINE_BYTES));
    assert_eq!(
        errors(&long),
        [(1, format!("line longer than {MAX_LINE_BYTES} bytes"))]
    );
    // Continuations of a dropped line are not reported again.
    let long = format!(
        "192.0.2.1 ok\n 1{}\n 2{}\n 3\n192.0.2.2 ok\n",
        "x".repeat(MAX_LINE_BYTES / 2),
        "x".repeat(MAX_LINE_BYTES / 2)
    );
    assert_eq!(
        errors(&long),
        [(
            1,
            format!("logical line longer than {MAX_LINE_BYTES} bytes")
        )]
    );
    let huge = "#".repeat(MAX_TABLE_BYTES + 1);
    assert!(matches!(
        CidrTable::parse("huge.cidr", &huge),
        Err(CidrError::TooLarge { .. })
    ));
}

#[test]
fn refuses_more_rules_than_the_limit() {
    let text = "10.0.0.1 a\n10.0.0.2 b\nif 10.0.0.0/8\nendif\n";
    assert!(CidrTable::parse_with_limit("t", text, 3).is_ok());
    let err = CidrTable::parse_with_limit("t", text, 2).unwrap_err();
    assert_eq!(err.to_string(), "cidr map t: more than 2 rules");
}

#[test]
fn garbage_never_panics() {
    const PIECES: &[&str] = &[
        "1", "0", "9", "25", "255", ".", ":", "::", "/", "[", "]", "!", "if", "IF", "endif", " ",
        "\t", "\n", "\r\n", "#", "ffff", "a", "permit", "reject", "dunno", ",", "é", "\u{0}",
        "/128", "/32", "%", "-", "\u{202e}", "  ", "\n  ",
    ];
    let mut rng = SplitMix64::seeded(0x1234_5678_9abc_def1);
    let probes = [
        ip("0.0.0.0"),
        ip("1.0.0.0"),
        ip("255.255.255.255"),
        ip("::"),
        ip("::1"),
        ip("ffff::"),
    ];
    for _ in 0..3_000 {
        let len = rng.below(40);
        let text: String = (0..len).map(|_| PIECES[rng.below(PIECES.len())]).collect();
        let _ = Pattern::parse(&text);
        if let Ok((t, _)) = CidrTable::parse("fuzz", &text) {
            for probe in probes {
                let _ = t.lookup(probe);
            }
        }
    }
}

#[test]
fn deep_nesting_is_walked_without_recursion() {
    // Deep nesting with every block failing: the walk must skip each block in one step.
    let depth = 10_000;
    let mut text = String::new();
    for _ in 0..depth {
        text.push_str("if 10.0.0.0/8\n");
    }
    text.push_str("10.0.0.0/8 deep\n");
    for _ in 0..depth {
        text.push_str("endif\n");
    }
    text.push_str("0.0.0.0/0 outside\n");
    let t = table(&text);
    assert_eq!(lookup(&t, "10.9.9.9"), Some("deep"));
    assert_eq!(lookup(&t, "192.0.2.1"), Some("outside"));
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("smtp-screen-cidr-{}-{name}", std::process::id()))
}

#[test]
fn loads_a_file_and_names_it() {
    let path = temp_path("load.cidr");
    std::fs::write(&path, "192.0.2.0/24 permit\n192.0.3.1/24 reject\n").unwrap();
    let (t, warnings) = CidrTable::load(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(t.lookup(ip("192.0.2.5")).map(|r| &**r), Some("permit"));
    assert_eq!(
        warnings[0].to_string(),
        format!(
            "cidr map {}, line 2: non-null host address bits in \"192.0.3.1/24\", \
             perhaps you should use \"192.0.3.0/24\" instead: skipping this rule",
            path.display()
        )
    );
}

#[test]
fn reading_refuses_missing_special_and_non_utf8_files() {
    let missing = temp_path("missing.cidr");
    let err = read_table_file(&missing).unwrap_err();
    assert!(matches!(err, CidrError::Read { .. }), "{err}");
    assert!(err.to_string().contains("missing.cidr"), "{err}");

    let dir = std::env::temp_dir();
    assert!(matches!(
        read_table_file(&dir),
        Err(CidrError::NotAFile { .. })
    ));

    let path = temp_path("latin1.cidr");
    std::fs::write(&path, b"192.0.2.1 ok\n# caf\xe9\n").unwrap();
    let err = read_table_file(&path).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        err.to_string(),
        format!("{}, line 2: not UTF-8 text", path.display())
    );
}

#[test]
fn reading_refuses_oversized_files() {
    let path = temp_path("big.cidr");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(MAX_TABLE_BYTES as u64 + 1).unwrap();
    let err = read_table_file(&path).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(err, CidrError::TooLarge { .. }), "{err}");
}
