use std::collections::HashMap;

use super::*;

/// Files held in memory, by the path written in the list.
#[derive(Default)]
struct MemFiles(HashMap<String, String>);

impl MemFiles {
    fn with(mut self, path: &str, text: &str) -> Self {
        self.0.insert(path.into(), text.into());
        self
    }
}

impl TableFiles for MemFiles {
    fn read(&self, path: &str) -> Result<String, CidrError> {
        self.0.get(path).cloned().ok_or_else(|| CidrError::Read {
            path: path.into(),
            source: std::io::ErrorKind::NotFound.into(),
        })
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn addresses(spec: &str) -> AddressList {
    addresses_with(spec, &MemFiles::default())
}

fn addresses_with(spec: &str, files: &MemFiles) -> AddressList {
    let (list, warnings) = AddressList::parse("mynetworks", spec, files).unwrap();
    assert_eq!(warnings, [], "unexpected warnings");
    list
}

fn access(spec: &str, files: &MemFiles) -> AccessList {
    let (list, warnings) = AccessList::parse(spec, files).unwrap();
    assert_eq!(warnings, [], "unexpected warnings");
    list
}

fn verdict(list: &AccessList, client: &str, mynetworks: &AddressList) -> AccessVerdict {
    let decision = list.evaluate(ip(client), mynetworks);
    assert_eq!(decision.warnings, [], "unexpected warnings for {client}");
    decision.verdict
}

fn access_error(spec: &str, files: &MemFiles) -> String {
    AccessList::parse(spec, files).unwrap_err().to_string()
}

fn address_error(spec: &str, files: &MemFiles) -> String {
    AddressList::parse("mynetworks", spec, files)
        .unwrap_err()
        .to_string()
}

use AccessVerdict::{Dunno, Permit, Reject};

#[test]
fn splits_on_commas_and_white_space_keeping_braces() {
    let split: Vec<&str> = words(" a,b\t c ,, d\r\ne{f, g} h{{i j}} k{ ,").collect();
    assert_eq!(split, ["a", "b", "c", "d", "e{f, g}", "h{{i j}}", "k{ ,"]);
    assert_eq!(words(" , \n").count(), 0);
    assert_eq!(words("").count(), 0);
    assert_eq!(words("é,ü ß").collect::<Vec<_>>(), ["é", "ü", "ß"]);
}

#[test]
fn lab_configuration_of_the_reference() {
    // postscreen.md, Appendix A: measured on Postfix 3.7.11.
    let files = MemFiles::default().with(
        "/lab/etc/psacl.cidr",
        "127.0.0.20/32 permit\n127.0.0.21/32 reject\n127.0.0.22/32 dunno\n\
         127.0.0.0/24 dunno\n",
    );
    let list = access("permit_mynetworks, cidr:/lab/etc/psacl.cidr", &files);
    let mynetworks = addresses("127.0.0.2/32");
    assert_eq!(verdict(&list, "127.0.0.20", &mynetworks), Permit);
    assert_eq!(verdict(&list, "127.0.0.21", &mynetworks), Reject);
    assert_eq!(verdict(&list, "127.0.0.22", &mynetworks), Dunno);
    assert_eq!(verdict(&list, "127.0.0.11", &mynetworks), Dunno);
    assert_eq!(verdict(&list, "127.0.0.2", &mynetworks), Permit);
    assert_eq!(verdict(&list, "::ffff:127.0.0.21", &mynetworks), Reject);
    assert_eq!(verdict(&list, "::1", &mynetworks), Dunno);
}

#[test]
fn dunno_in_a_table_goes_on_with_the_outer_list() {
    let files = MemFiles::default().with(
        "/t.cidr",
        "192.0.2.1 dunno\n192.0.2.2 dunno reject\n192.0.2.3 permit\n",
    );
    let list = access("cidr:/t.cidr reject", &files);
    let none = AddressList::default();
    assert_eq!(verdict(&list, "192.0.2.1", &none), Reject);
    assert_eq!(verdict(&list, "192.0.2.2", &none), Reject);
    assert_eq!(verdict(&list, "192.0.2.3", &none), Permit);
    assert_eq!(verdict(&list, "192.0.2.4", &none), Reject, "no hit: go on");
}

#[test]
fn dunno_in_the_outer_list_ends_the_search() {
    let none = AddressList::default();
    let files = MemFiles::default();
    assert_eq!(
        verdict(&access("dunno, reject", &files), "192.0.2.1", &none),
        Dunno
    );
    assert_eq!(
        verdict(&access("reject dunno", &files), "192.0.2.1", &none),
        Reject
    );
    assert_eq!(
        verdict(&access("permit,reject", &files), "192.0.2.1", &none),
        Permit
    );
    assert_eq!(verdict(&access("", &files), "192.0.2.1", &none), Dunno);
    assert_eq!(verdict(&access(" , ", &files), "192.0.2.1", &none), Dunno);
}

#[test]
fn permit_mynetworks_consults_mynetworks() {
    let files = MemFiles::default();
    let mynetworks = addresses("127.0.0.0/8 [::1]/128 192.0.2.0/24");
    let list = access("permit_mynetworks, reject", &files);
    assert_eq!(verdict(&list, "127.0.0.1", &mynetworks), Permit);
    assert_eq!(verdict(&list, "::1", &mynetworks), Permit);
    assert_eq!(verdict(&list, "::ffff:192.0.2.9", &mynetworks), Permit);
    assert_eq!(verdict(&list, "198.51.100.1", &mynetworks), Reject);
    let default = AccessList::default();
    assert_eq!(verdict(&default, "127.0.0.1", &mynetworks), Permit);
    assert_eq!(verdict(&default, "198.51.100.1", &mynetworks), Dunno);
    let (parsed, _) = AccessList::parse(DEFAULT_ACCESS_LIST, &files).unwrap();
    assert_eq!(verdict(&parsed, "127.0.0.1", &mynetworks), Permit);
}

#[test]
fn commands_ignore_case() {
    let files = MemFiles::default().with("/t.cidr", "0.0.0.0/0 DUNNO\n");
    let list = access("cidr:/t.cidr, Permit_MyNetworks, REJECT", &files);
    let mynetworks = addresses("192.0.2.1");
    assert_eq!(verdict(&list, "192.0.2.1", &mynetworks), Permit);
    assert_eq!(verdict(&list, "192.0.2.2", &mynetworks), Reject);
}

#[test]
fn table_results_are_access_lists() {
    let files = MemFiles::default().with(
        "/t.cidr",
        "192.0.2.0/28 permit_mynetworks, reject\n\
         192.0.2.16/28 permit_mynetworks\n\
         192.0.2.32/28 reject spammer go away\n",
    );
    let list = access("cidr:/t.cidr, permit", &files);
    let mynetworks = addresses("192.0.2.1 192.0.2.17");
    assert_eq!(verdict(&list, "192.0.2.1", &mynetworks), Permit);
    assert_eq!(verdict(&list, "192.0.2.2", &mynetworks), Reject);
    assert_eq!(verdict(&list, "192.0.2.17", &mynetworks), Permit);
    assert_eq!(
        verdict(&list, "192.0.2.18", &mynetworks),
        Permit,
        "outer permit"
    );
    assert_eq!(verdict(&list, "192.0.2.33", &mynetworks), Reject);
}

#[test]
fn a_nested_table_in_a_result_is_ignored_with_a_warning() {
    let files = MemFiles::default().with(
        "/etc/postfix/a.cidr",
        "192.0.2.1 cidr:/etc/postfix/b.cidr, permit\n192.0.2.2 permit, cidr:/x\n",
    );
    let list = access("cidr:/etc/postfix/a.cidr, reject", &files);
    let none = AddressList::default();
    let decision = list.evaluate(ip("192.0.2.1"), &none);
    assert_eq!(decision.verdict, Reject, "the table said dunno");
    assert_eq!(
        decision
            .warnings
            .iter()
            .map(|w| w.to_string())
            .collect::<Vec<_>>(),
        [
            "table cidr:/etc/postfix/a.cidr: lookup result \"cidr:/etc/postfix/b.cidr\" is \
          not allowed -- ignoring remainder of access list"
        ]
    );
    let decision = list.evaluate(ip("192.0.2.2"), &none);
    assert_eq!(decision.verdict, Permit, "entries before it still count");
    assert_eq!(decision.warnings.len(), 1);
}

#[test]
fn an_unknown_command_in_a_result_ends_the_search_as_dunno() {
    let files = MemFiles::default().with(
        "/etc/postfix/a.cidr",
        "192.0.2.1 OK\n192.0.2.2 bogus, cidr:/x\n192.0.2.3 dunno bogus\n",
    );
    let list = access("cidr:/etc/postfix/a.cidr, reject", &files);
    let none = AddressList::default();
    let decision = list.evaluate(ip("192.0.2.1"), &none);
    assert_eq!(decision.verdict, Dunno, "not the outer reject");
    assert_eq!(
        decision.warnings,
        [EvalWarning::UnknownCommand {
            table: "cidr:/etc/postfix/a.cidr",
            command: "OK"
        }]
    );
    assert_eq!(
        decision.warnings[0].to_string(),
        "cidr:/etc/postfix/a.cidr: unknown command: OK -- ignoring the remainder of this \
         access list"
    );
    let decision = list.evaluate(ip("192.0.2.2"), &none);
    assert_eq!(decision.verdict, Dunno);
    assert_eq!(
        decision.warnings,
        [
            EvalWarning::NestedTable {
                table: "cidr:/etc/postfix/a.cidr",
                item: "cidr:/x"
            },
            EvalWarning::UnknownCommand {
                table: "cidr:/etc/postfix/a.cidr",
                command: "bogus"
            },
        ]
    );
    // `dunno` comes first, so the unknown command is never reached.
    assert_eq!(verdict(&list, "192.0.2.3", &none), Reject);
}

#[test]
fn tables_are_searched_in_order_and_mix_families() {
    let files = MemFiles::default()
        .with("/a.cidr", "[2001:db8::]/32 reject\n10.0.0.0/8 dunno\n")
        .with(
            "/b.cidr",
            "10.1.0.0/16 permit\n2001:db8::1 permit\n::/0 reject\n",
        );
    let list = access("cidr:/a.cidr cidr:/b.cidr", &files);
    let none = AddressList::default();
    assert_eq!(verdict(&list, "2001:db8::1", &none), Reject);
    assert_eq!(verdict(&list, "2001:db9::1", &none), Reject);
    assert_eq!(verdict(&list, "10.1.2.3", &none), Permit);
    assert_eq!(verdict(&list, "10.2.2.3", &none), Dunno);
    assert_eq!(verdict(&list, "192.0.2.1", &none), Dunno);
}

#[test]
fn static_tables_answer_every_address() {
    let files = MemFiles::default();
    let list = access("static:dunno, static:{reject}", &files);
    let none = AddressList::default();
    assert_eq!(verdict(&list, "192.0.2.1", &none), Reject);
    assert_eq!(verdict(&list, "2001:db8::1", &none), Reject);
}

#[test]
fn table_warnings_come_back_from_parsing() {
    let files = MemFiles::default().with("/t.cidr", "192.0.2.1/24 reject\n0.0.0.0/0 dunno\n");
    let (list, warnings) = AccessList::parse("cidr:/t.cidr, permit", &files).unwrap();
    assert_eq!(
        warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
        [
            "cidr map /t.cidr, line 1: non-null host address bits in \"192.0.2.1/24\", \
          perhaps you should use \"192.0.2.0/24\" instead: skipping this rule"
        ]
    );
    assert_eq!(verdict(&list, "192.0.2.1", &AddressList::default()), Permit);
}

#[test]
fn refuses_what_it_cannot_use() {
    let files = MemFiles::default().with("/bad.cidr", "192.0.2.1 ok\n\nnonsense reject\n");
    let cases = [
        (
            "permit_mynetwork",
            "access_list: unknown command \"permit_mynetwork\"",
        ),
        ("permit, OK", "access_list: unknown command \"OK\""),
        (
            "hash:/etc/postfix/access",
            "access_list: unsupported table \"hash:/etc/postfix/access\"",
        ),
        (
            "inline:{192.0.2.1=reject, 192.0.2.2=permit}",
            "access_list: unsupported table \"inline:{192.0.2.1=reject, 192.0.2.2=permit}\"",
        ),
        ("cidr:", "access_list: table \"cidr:\" names no file"),
        (
            "cidr:/missing.cidr",
            "access_list: cannot read /missing.cidr:",
        ),
        (
            "permit_mynetworks cidr:/bad.cidr",
            "access_list: cidr map /bad.cidr, line 3: bad address pattern: \"nonsense\"",
        ),
    ];
    for (spec, expected) in cases {
        let msg = access_error(spec, &files);
        assert!(msg.starts_with(expected), "{spec}: {msg}");
    }
}

#[test]
fn bounds_length_entries_and_tables() {
    let files = MemFiles::default().with("/t.cidr", "");
    let long = "permit ".repeat(MAX_LIST_BYTES / 7 + 1);
    assert!(access_error(&long, &files).contains("more than the 1048576 allowed"));
    let many = "dunno ".repeat(MAX_LIST_ITEMS + 1);
    assert_eq!(
        access_error(&many, &files),
        "access_list: more than 10000 entries"
    );
    let tables = "cidr:/t.cidr ".repeat(MAX_LIST_TABLES + 1);
    assert_eq!(
        access_error(&tables, &files),
        "access_list: more than 32 tables"
    );
    assert!(AccessList::parse(&"cidr:/t.cidr ".repeat(MAX_LIST_TABLES), &files).is_ok());
    let tables = "!cidr:/t.cidr ".repeat(MAX_LIST_TABLES + 1);
    assert_eq!(
        address_error(&tables, &files),
        "mynetworks: more than 32 tables"
    );
    assert!(address_error(&long, &files).starts_with("mynetworks: the value is"));
}

#[test]
fn address_list_forms() {
    let list = addresses(
        "127.0.0.0/8, [::1]/128 192.0.2.7\t[2001:db8::5] [2001:db8:1::]/48 2001:db8:2::/48 \
         [198.51.100.0/24]",
    );
    for inside in [
        "127.1.2.3",
        "::1",
        "192.0.2.7",
        "2001:db8::5",
        "2001:db8:1:ffff::1",
        "2001:db8:2::9",
        "198.51.100.200",
        "::ffff:127.0.0.1",
    ] {
        assert!(list.contains(ip(inside)), "{inside}");
    }
    for outside in [
        "128.0.0.1",
        "::2",
        "192.0.2.8",
        "2001:db8::6",
        "2001:db8:3::1",
    ] {
        assert!(!list.contains(ip(outside)), "{outside}");
    }
    assert!(!AddressList::default().contains(ip("127.0.0.1")));
    assert!(!addresses("").contains(ip("127.0.0.1")));
}

#[test]
fn address_list_exclusions_use_the_first_match() {
    let list = addresses("!192.0.2.5, 192.0.2.0/24, !2001:db8::/32, ::/0");
    assert!(!list.contains(ip("192.0.2.5")));
    assert!(list.contains(ip("192.0.2.6")));
    assert!(!list.contains(ip("2001:db8::1")));
    assert!(list.contains(ip("2001:db9::1")));
    let list = addresses("192.0.2.0/24 !192.0.2.5");
    assert!(list.contains(ip("192.0.2.5")), "first match wins");
    let list = addresses("!!192.0.2.5");
    assert!(list.contains(ip("192.0.2.5")));
}

#[test]
fn address_list_tables_match_on_any_result() {
    let files = MemFiles::default()
        .with("/nets.cidr", "192.0.2.0/24 reject\n198.51.100.0/24 dunno\n")
        .with("/not.cidr", "192.0.2.66 x\n");
    let list = addresses_with("!cidr:/not.cidr cidr:/nets.cidr 203.0.113.1", &files);
    assert!(list.contains(ip("192.0.2.1")));
    assert!(list.contains(ip("198.51.100.1")));
    assert!(list.contains(ip("203.0.113.1")));
    assert!(
        !list.contains(ip("192.0.2.66")),
        "excluded by the first table"
    );
    assert!(!list.contains(ip("203.0.113.2")));
    let all = addresses("!192.0.2.1 static:all");
    assert!(all.contains(ip("2001:db8::1")));
    assert!(!all.contains(ip("192.0.2.1")));
}

#[test]
fn address_list_pattern_files() {
    let files = MemFiles::default().with(
        "/etc/postfix/mynets",
        "# our networks\n192.0.2.0/24  # office\n\n  [2001:db8::]/32, !10.1.0.0/16 10.0.0.0/8\n",
    );
    let list = addresses_with("127.0.0.1 /etc/postfix/mynets", &files);
    assert!(list.contains(ip("192.0.2.9")));
    assert!(list.contains(ip("2001:db8::9")));
    assert!(list.contains(ip("10.2.0.1")));
    assert!(!list.contains(ip("10.1.0.1")));
    assert!(list.contains(ip("127.0.0.1")));
}

#[test]
fn address_list_skips_host_bits_with_a_warning() {
    let files = MemFiles::default().with("/nets", "10.0.0.1/8\n");
    let (list, warnings) =
        AddressList::parse("mynetworks", "192.0.2.1/24 /nets 192.0.2.1", &files).unwrap();
    assert_eq!(
        warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
        [
            "mynetworks: non-null host address bits in \"192.0.2.1/24\", perhaps you should \
             use \"192.0.2.0/24\" instead: skipping this pattern",
            "mynetworks: /nets, line 1: non-null host address bits in \"10.0.0.1/8\", \
             perhaps you should use \"10.0.0.0/8\" instead: skipping this pattern",
        ]
    );
    assert!(list.contains(ip("192.0.2.1")));
    assert!(!list.contains(ip("192.0.2.2")));
    assert!(!list.contains(ip("10.0.0.2")));
}

#[test]
fn address_list_refuses_what_it_cannot_use() {
    let files = MemFiles::default()
        .with("/nets", "192.0.2.0/24\n\nbogus\n")
        .with("/outer", "/inner\n");
    let cases = [
        (
            "localhost",
            "mynetworks: bad address pattern: \"localhost\"",
        ),
        (
            "192.0.2.0/33",
            "mynetworks: bad net/mask pattern: \"192.0.2.0/33\"",
        ),
        ("[::1", "mynetworks: missing ']' character after \"[::1\""),
        ("[::1]/", "mynetworks: bad net/mask pattern: \"::1/\""),
        ("!", "mynetworks: no address pattern"),
        (
            "/nets",
            "mynetworks: /nets, line 3: bad address pattern: \"bogus\"",
        ),
        (
            "!/nets",
            "mynetworks: \"!/nets\": a /file/name cannot be negated",
        ),
        (
            "/outer",
            "mynetworks: /outer, line 1: \"/inner\": a pattern file cannot name",
        ),
        ("/missing", "mynetworks: cannot read /missing:"),
        (
            "texthash:/etc/x",
            "mynetworks: unsupported table \"texthash:/etc/x\"",
        ),
        (
            "!pcre:/etc/x",
            "mynetworks: unsupported table \"pcre:/etc/x\"",
        ),
    ];
    for (spec, expected) in cases {
        let msg = address_error(spec, &files);
        assert!(msg.starts_with(expected), "{spec}: {msg}");
    }
}

#[test]
fn allowlist_interfaces_default_permits_every_local_address() {
    let default = AllowlistInterfaces::default();
    let (parsed, warnings) =
        AllowlistInterfaces::parse(DEFAULT_ALLOWLIST_INTERFACES, &MemFiles::default()).unwrap();
    assert_eq!(warnings, []);
    for local in ["192.0.2.1", "2001:db8::1", "::ffff:192.0.2.1", "127.0.0.1"] {
        assert!(default.permits(ip(local)), "{local}");
        assert!(parsed.permits(ip(local)), "{local}");
    }
}

#[test]
fn allowlist_interfaces_with_exclusions() {
    let files = MemFiles::default();
    let (primary, _) = AllowlistInterfaces::parse("!168.100.189.8, static:all", &files).unwrap();
    assert!(
        !primary.permits(ip("168.100.189.8")),
        "the backup MX address"
    );
    assert!(primary.permits(ip("168.100.189.2")));
    assert!(primary.permits(ip("2001:db8::25")));
    let (listed, _) = AllowlistInterfaces::parse("192.0.2.25 [2001:db8::25]", &files).unwrap();
    assert!(listed.permits(ip("192.0.2.25")));
    assert!(listed.permits(ip("2001:db8::25")));
    assert!(!listed.permits(ip("192.0.2.26")));
    let (none, _) = AllowlistInterfaces::parse("", &files).unwrap();
    assert!(!none.permits(ip("192.0.2.25")));
    let err = AllowlistInterfaces::parse("mx.example.com", &files).unwrap_err();
    assert_eq!(
        err.to_string(),
        "allowlist_interfaces: bad address pattern: \"mx.example.com\""
    );
}

#[test]
fn reads_tables_from_disk_relative_to_a_base() {
    let dir = std::env::temp_dir().join(format!("smtp-screen-access-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("psacl.cidr"), "192.0.2.0/24 reject\n").unwrap();
    let files = DiskFiles::new(&dir);
    let relative = AccessList::parse("cidr:psacl.cidr", &files);
    let absolute_spec = format!("cidr:{}", dir.join("psacl.cidr").display());
    let absolute = AccessList::parse(&absolute_spec, &files);
    std::fs::remove_dir_all(&dir).unwrap();
    let none = AddressList::default();
    assert_eq!(verdict(&relative.unwrap().0, "192.0.2.1", &none), Reject);
    assert_eq!(verdict(&absolute.unwrap().0, "192.0.2.1", &none), Reject);
}

#[test]
fn garbage_never_panics() {
    const PIECES: &[&str] = &[
        "permit",
        "reject",
        "dunno",
        "permit_mynetworks",
        "cidr:",
        "/t.cidr",
        "static:",
        "!",
        "[",
        "]",
        "/",
        ":",
        "::1",
        "10.0.0.0",
        "/8",
        ",",
        " ",
        "\t",
        "{",
        "}",
        "#",
        "é",
        "\u{0}",
        "hash:",
        "/f",
    ];
    let files = MemFiles::default()
        .with(
            "/t.cidr",
            "10.0.0.0/8 permit\n::/0 bogus\n0.0.0.0/0 cidr:/x dunno\n",
        )
        .with("/f", "10.0.0.1 # x\n[::1]\n");
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mynetworks = addresses("10.0.0.0/8");
    for _ in 0..3_000 {
        let len = (next() % 12) as usize;
        let spec: String = (0..len)
            .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
            .collect();
        for probe in ["10.0.0.1", "192.0.2.1", "::1", "2001:db8::1"] {
            if let Ok((list, _)) = AccessList::parse(&spec, &files) {
                let _ = list.evaluate(ip(probe), &mynetworks);
            }
            if let Ok((list, _)) = AddressList::parse("mynetworks", &spec, &files) {
                let _ = list.contains(ip(probe));
            }
        }
    }
}

#[test]
fn permitted_networks_cover_every_address_the_list_may_permit() {
    let net = |s: &str| s.parse::<IpNet>().unwrap();
    let files = MemFiles::default().with(
        "/etc/postfix/access.cidr",
        "192.0.2.0/24 reject\n\
         198.51.100.0/24 permit\n\
         [2001:db8:5::]/48 dunno\n\
         [2001:db8:6::1d] permit_mynetworks\n\
         if 203.0.113.0/24\n\
         203.0.113.7 permit\n\
         endif\n",
    );
    let mynetworks = addresses("127.0.0.0/8 [::1]/128 !10.9.0.0/16 10.0.0.0/8");
    let list = access("permit_mynetworks, cidr:/etc/postfix/access.cidr", &files);
    let mut nets = list.permitted_networks(&mynetworks);
    nets.sort();
    let mut expected = [
        net("127.0.0.0/8"),
        net("::1/128"),
        net("10.0.0.0/8"),
        net("198.51.100.0/24"),
        net("2001:db8:6::1d/128"),
        net("203.0.113.7/32"),
    ];
    expected.sort();
    assert_eq!(nets, expected);
    // Every address the list permits lies in them.
    for client in [
        "127.0.0.1",
        "10.1.2.3",
        "198.51.100.9",
        "203.0.113.7",
        "::1",
    ] {
        assert_eq!(
            list.evaluate(ip(client), &mynetworks).verdict,
            AccessVerdict::Permit,
            "{client}"
        );
        assert!(nets.iter().any(|n| n.contains(&ip(client))), "{client}");
    }
    // What may permit anything covers everything.
    let everything = [net("0.0.0.0/0"), net("::/0")];
    assert_eq!(
        access("reject, permit", &files).permitted_networks(&mynetworks)[..],
        everything
    );
    let negated = MemFiles::default().with("/n.cidr", "!192.0.2.0/24 permit\n");
    assert_eq!(
        access("cidr:/n.cidr", &negated).permitted_networks(&mynetworks),
        everything
    );
    assert_eq!(
        access("static:permit", &files).permitted_networks(&mynetworks),
        everything
    );
    assert_eq!(access("reject", &files).permitted_networks(&mynetworks), []);
}
