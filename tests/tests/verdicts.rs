//! The XDP program's verdicts on crafted frames, run in the kernel through
//! `BPF_PROG_TEST_RUN`: which frames are screened, which list decides, what the parser gives up
//! on, and the RST+ACK replies. Each test loads its own instance, so the counters it asserts
//! moved for its frames alone.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use aya::maps::{Array, HashMap, Map, MapData, MapInfo, MapType, PerCpuArray};
use ipnet::IpNet;
use screen_common::{
    Counters as CounterRecord, DenyEntry, DynKeyV4, Origin, ScreenConfig, Stat, StatsRecord,
    map_name, v4_table,
};
use screen_tests::{
    frames::{
        ETH_P_8021AD, ETH_P_8021Q, ExtHeader, Fragment, FrameSpec, IPPROTO_TCP, IPPROTO_UDP,
        TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, l2_len, pseudo_header_sum, verifies,
    },
    require_root,
    xdp::{
        Counters, Outcome, ScreenUnderTest, XDP_DROP, XDP_PASS, XDP_TX, action_name,
        check_rst_reply, hex, is_einval,
    },
};
use screen_user::kernel::{
    self, KernelAction, LayoutError, LoadError, MapAccess, Maps, MapsError, ScreenProgram,
    StaticList, layout, link,
    stats::{self, StatsMap},
};

const SERVER_V4: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 1);
const UNLISTED_V4: Ipv4Addr = Ipv4Addr::new(10, 251, 1, 10);
const DENY_NET_V4: &str = "10.251.66.0/24";
const DENIED_V4: Ipv4Addr = Ipv4Addr::new(10, 251, 66, 7);
/// Inside [`DENY_NET_V4`] and allowed as well.
const ALLOW_NET_V4: &str = "10.251.66.128/25";
const ALLOWED_AND_DENIED_V4: Ipv4Addr = Ipv4Addr::new(10, 251, 66, 200);
const DYNAMIC_V4: Ipv4Addr = Ipv4Addr::new(10, 251, 77, 7);

const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x251, 0, 0, 0, 0, 0, 1);
const UNLISTED_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x251, 0, 1, 0, 0, 0, 0x10);
const DENY_NET_V6: &str = "fd00:251:0:66::/64";
const DENIED_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x251, 0, 0x66, 0, 0, 0, 7);
/// Inside [`DENY_NET_V6`] and allowed as well.
const ALLOW_NET_V6: &str = "fd00:251:0:66:8000::/65";
const ALLOWED_AND_DENIED_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x251, 0, 0x66, 0x8000, 0, 0, 7);
const DYNAMIC_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x251, 0, 0x77, 0, 0, 0, 7);

/// Long enough to outlive any test run.
const DYNAMIC_TTL: Duration = Duration::from_secs(3600);

// What each branch of the program counts, besides `Frames`.
const NOT_SCREENED: &[Stat] = &[];
const PASSED: &[Stat] = &[Stat::SynScreened, Stat::Passed];
const PASSED_ALLOW: &[Stat] = &[Stat::SynScreened, Stat::PassedAllow];
const EXPIRED: &[Stat] = &[Stat::SynScreened, Stat::Expired, Stat::Passed];
const DROP_STATIC: &[Stat] = &[Stat::SynScreened, Stat::DropStatic];
const DROP_DYNAMIC: &[Stat] = &[Stat::SynScreened, Stat::DropDynamic];
const RST_STATIC: &[Stat] = &[Stat::SynScreened, Stat::RstStatic];
const RST_DYNAMIC: &[Stat] = &[Stat::SynScreened, Stat::RstDynamic];
const PARSE_FAILED: &[Stat] = &[Stat::ParseFailed];
const FRAGMENT: &[Stat] = &[Stat::Fragments];

fn net(text: &str) -> IpNet {
    text.parse().expect("a valid prefix")
}

fn host(addr: impl Into<IpAddr>) -> IpNet {
    IpNet::from(addr.into())
}

fn server_for(src: IpAddr) -> IpAddr {
    match src {
        IpAddr::V4(_) => SERVER_V4.into(),
        IpAddr::V6(_) => SERVER_V6.into(),
    }
}

/// A SYN from `src` to the server's port 25.
fn syn(src: impl Into<IpAddr>) -> FrameSpec {
    let src = src.into();
    FrameSpec::syn(src, server_for(src), 25)
}

/// Where the network header of `spec`'s frame starts and where its TCP header starts.
fn offsets(spec: &FrameSpec) -> (usize, usize) {
    let l3 = l2_len(spec);
    let l4 = match spec.src {
        IpAddr::V4(_) => l3 + 20 + spec.ipv4_options.len().next_multiple_of(4),
        IpAddr::V6(_) => {
            l3 + 40
                + spec
                    .ipv6_ext
                    .iter()
                    .map(|ext| match *ext {
                        ExtHeader::Options { len8, .. } => (usize::from(len8) + 1) * 8,
                        ExtHeader::Auth { len4 } => (usize::from(len4) + 2) * 4,
                        ExtHeader::Fragment { .. } => 8,
                    })
                    .sum::<usize>()
        }
    };
    (l3, l4)
}

/// A freshly loaded program configured for port 25 with the test lists: a static deny prefix,
/// an allow prefix inside it, and an unexpired dynamic entry, for each family.
fn listed(action: KernelAction) -> ScreenUnderTest {
    let mut screen = ScreenUnderTest::load().expect("loading the XDP program");
    kernel::configure(&mut screen.maps, &[25], action, 64).expect("configuring");
    add_lists(&mut screen.maps);
    screen
}

fn add_lists(maps: &mut Maps) {
    for deny in [DENY_NET_V4, DENY_NET_V6] {
        maps.add_static(StaticList::Deny, net(deny), Origin::Operator)
            .expect("adding a static deny prefix");
    }
    for allow in [ALLOW_NET_V4, ALLOW_NET_V6] {
        maps.add_static(StaticList::Allow, net(allow), Origin::Operator)
            .expect("adding an allow prefix");
    }
    for dynamic in [IpAddr::from(DYNAMIC_V4), IpAddr::from(DYNAMIC_V6)] {
        maps.add_dynamic(host(dynamic), DYNAMIC_TTL, Origin::Policy, 3)
            .expect("adding a dynamic deny entry");
    }
}

/// Runs `frame` and asserts the verdict and that exactly `moved` (and `Frames`) were counted,
/// each once.
#[track_caller]
fn expect(screen: &ScreenUnderTest, frame: &[u8], action: u32, moved: &[Stat]) -> Outcome {
    let (outcome, counted) = screen.counted(frame);
    assert_eq!(
        outcome.action,
        action,
        "{} instead of {} for frame {}",
        action_name(outcome.action),
        action_name(action),
        hex(frame)
    );
    let mut want = vec![(Stat::Frames, 1)];
    want.extend(moved.iter().map(|&stat| (stat, 1)));
    assert_eq!(
        counted,
        Counters::only(&want),
        "counters for frame {}",
        hex(frame)
    );
    outcome
}

fn tcp_offset(frame: &[u8], l4: usize, doff: u8) -> Vec<u8> {
    let mut frame = frame.to_vec();
    frame[l4 + 12] = doff << 4;
    frame
}

// ---- Sources: which list decides ----

#[test]
fn v4_syn_from_unlisted_source_passes() {
    if !require_root("v4_syn_from_unlisted_source_passes") {
        return;
    }
    let screen = listed(KernelAction::Drop);
    expect(&screen, &syn(UNLISTED_V4).build(), XDP_PASS, PASSED);
}

#[test]
fn v6_syn_from_unlisted_source_passes() {
    if !require_root("v6_syn_from_unlisted_source_passes") {
        return;
    }
    let screen = listed(KernelAction::Drop);
    expect(&screen, &syn(UNLISTED_V6).build(), XDP_PASS, PASSED);
}

#[test]
fn v4_syn_from_static_deny_prefix_is_dropped() {
    if !require_root("v4_syn_from_static_deny_prefix_is_dropped") {
        return;
    }
    let screen = listed(KernelAction::Drop);
    expect(&screen, &syn(DENIED_V4).build(), XDP_DROP, DROP_STATIC);
    // The last address of the prefix is in it; the next one is not.
    expect(
        &screen,
        &syn(Ipv4Addr::new(10, 251, 66, 127)).build(),
        XDP_DROP,
        DROP_STATIC,
    );
    expect(
        &screen,
        &syn(Ipv4Addr::new(10, 251, 67, 0)).build(),
        XDP_PASS,
        PASSED,
    );
}

#[test]
fn v6_syn_from_static_deny_prefix_is_dropped() {
    if !require_root("v6_syn_from_static_deny_prefix_is_dropped") {
        return;
    }
    let screen = listed(KernelAction::Drop);
    expect(&screen, &syn(DENIED_V6).build(), XDP_DROP, DROP_STATIC);
    let outside: Ipv6Addr = "fd00:251:0:67::7".parse().unwrap();
    expect(&screen, &syn(outside).build(), XDP_PASS, PASSED);
}

#[test]
fn v4_syn_from_dynamic_deny_entry_is_dropped() {
    if !require_root("v4_syn_from_dynamic_deny_entry_is_dropped") {
        return;
    }
    let screen = listed(KernelAction::Drop);
    expect(&screen, &syn(DYNAMIC_V4).build(), XDP_DROP, DROP_DYNAMIC);
    // IPv4 dynamic entries are single addresses.
    expect(
        &screen,
        &syn(Ipv4Addr::new(10, 251, 77, 8)).build(),
        XDP_PASS,
        PASSED,
    );
}

#[test]
fn v6_syn_from_dynamic_deny_entry_is_dropped() {
    if !require_root("v6_syn_from_dynamic_deny_entry_is_dropped") {
        return;
    }
    let screen = listed(KernelAction::Drop);
    expect(&screen, &syn(DYNAMIC_V6).build(), XDP_DROP, DROP_DYNAMIC);
}

// ---- The IPv4 direct table ----

/// A freshly loaded program configured for port 25, with no list entries.
fn configured() -> ScreenUnderTest {
    let mut screen = ScreenUnderTest::load().expect("loading the XDP program");
    kernel::configure(&mut screen.maps, &[25], KernelAction::Drop, 64).expect("configuring");
    screen
}

#[track_caller]
fn table_state(screen: &mut ScreenUnderTest, addr: Ipv4Addr) -> u64 {
    screen
        .maps
        .v4_table_state(addr)
        .expect("reading the live IPv4 table")
}

#[test]
fn v4_table_denies_a_listed_prefix_without_the_tries() {
    if !require_root("v4_table_denies_a_listed_prefix_without_the_tries") {
        return;
    }
    let mut screen = configured();
    let change = screen
        .maps
        .add_static(StaticList::Deny, net("10.251.80.0/22"), Origin::Operator)
        .expect("adding a static deny prefix");
    // One /22 is four buckets of one word.
    assert_eq!(change.table_words, 1, "{change:?}");
    for (addr, state, action, moved) in [
        ([10, 251, 80, 0], v4_table::DENY, XDP_DROP, DROP_STATIC),
        ([10, 251, 83, 255], v4_table::DENY, XDP_DROP, DROP_STATIC),
        ([10, 251, 79, 255], v4_table::UNLISTED, XDP_PASS, PASSED),
        ([10, 251, 84, 0], v4_table::UNLISTED, XDP_PASS, PASSED),
    ] {
        let addr = Ipv4Addr::from(addr);
        assert_eq!(table_state(&mut screen, addr), state, "bucket of {addr}");
        expect(&screen, &syn(addr).build(), action, moved);
    }
}

#[test]
fn v4_table_allows_a_24_inside_a_denied_prefix() {
    if !require_root("v4_table_allows_a_24_inside_a_denied_prefix") {
        return;
    }
    let mut screen = configured();
    screen
        .maps
        .add_static(StaticList::Deny, net("10.251.80.0/22"), Origin::Operator)
        .unwrap();
    screen
        .maps
        .add_static(StaticList::Allow, net("10.251.81.0/24"), Origin::Operator)
        .unwrap();
    let allowed = Ipv4Addr::new(10, 251, 81, 9);
    assert_eq!(table_state(&mut screen, allowed), v4_table::ALLOW);
    expect(&screen, &syn(allowed).build(), XDP_PASS, PASSED_ALLOW);
    let denied = Ipv4Addr::new(10, 251, 82, 9);
    assert_eq!(table_state(&mut screen, denied), v4_table::DENY);
    expect(&screen, &syn(denied).build(), XDP_DROP, DROP_STATIC);
}

#[test]
fn v4_table_sends_buckets_with_longer_prefixes_to_the_tries() {
    if !require_root("v4_table_sends_buckets_with_longer_prefixes_to_the_tries") {
        return;
    }
    let mut screen = configured();
    // A /32 deny inside an allowed /24: the tries answer allow for it and its neighbours.
    screen
        .maps
        .add_static(StaticList::Allow, net("10.251.90.0/24"), Origin::Operator)
        .unwrap();
    screen
        .maps
        .add_static(StaticList::Deny, net("10.251.90.7/32"), Origin::Operator)
        .unwrap();
    // An allowed /32 inside a denied /16: only that address passes.
    screen
        .maps
        .add_static(StaticList::Deny, net("10.251.0.0/16"), Origin::Operator)
        .unwrap();
    screen
        .maps
        .add_static(StaticList::Allow, net("10.251.33.7/32"), Origin::Operator)
        .unwrap();
    for (addr, state, action, moved) in [
        (
            [10, 251, 90, 7],
            v4_table::ASK_TRIES,
            XDP_PASS,
            PASSED_ALLOW,
        ),
        (
            [10, 251, 90, 8],
            v4_table::ASK_TRIES,
            XDP_PASS,
            PASSED_ALLOW,
        ),
        (
            [10, 251, 33, 7],
            v4_table::ASK_TRIES,
            XDP_PASS,
            PASSED_ALLOW,
        ),
        ([10, 251, 33, 8], v4_table::ASK_TRIES, XDP_DROP, DROP_STATIC),
        ([10, 251, 34, 7], v4_table::DENY, XDP_DROP, DROP_STATIC),
        ([10, 252, 33, 7], v4_table::UNLISTED, XDP_PASS, PASSED),
    ] {
        let addr = Ipv4Addr::from(addr);
        assert_eq!(table_state(&mut screen, addr), state, "bucket of {addr}");
        expect(&screen, &syn(addr).build(), action, moved);
    }
    // A dynamic entry in a bucket the tries decide still counts when no list matches.
    screen
        .maps
        .remove_static(StaticList::Allow, net("10.251.90.0/24"))
        .unwrap();
    screen
        .maps
        .remove_static(StaticList::Deny, net("10.251.0.0/16"))
        .unwrap();
    let dynamic = Ipv4Addr::new(10, 251, 90, 9);
    screen
        .maps
        .add_dynamic(host(dynamic), DYNAMIC_TTL, Origin::Policy, 2)
        .unwrap();
    assert_eq!(table_state(&mut screen, dynamic), v4_table::ASK_TRIES);
    expect(&screen, &syn(dynamic).build(), XDP_DROP, DROP_DYNAMIC);
    expect(
        &screen,
        &syn(Ipv4Addr::new(10, 251, 90, 7)).build(),
        XDP_DROP,
        DROP_STATIC,
    );
}

#[test]
fn v4_table_flips_with_the_list_and_deleting_restores_it() {
    if !require_root("v4_table_flips_with_the_list_and_deleting_restores_it") {
        return;
    }
    let mut screen = configured();
    let first = Ipv4Addr::new(10, 251, 100, 1);
    let second = Ipv4Addr::new(10, 251, 101, 1);
    let before = screen.maps.config().unwrap();
    screen
        .maps
        .replace_static(
            StaticList::Deny,
            &[net("10.251.100.0/24")],
            Origin::ListFile,
        )
        .unwrap();
    let loaded = screen.maps.config().unwrap();
    assert_ne!(loaded.deny_slot, before.deny_slot, "the deny slot flips");
    assert_ne!(
        loaded.v4_table_slot, before.v4_table_slot,
        "the table flips with it"
    );
    assert_eq!(loaded.allow_slot, before.allow_slot);
    expect(&screen, &syn(first).build(), XDP_DROP, DROP_STATIC);
    expect(&screen, &syn(second).build(), XDP_PASS, PASSED);

    // The next load replaces the list whole, in the other slots.
    screen
        .maps
        .replace_static(
            StaticList::Deny,
            &[net("10.251.101.0/24")],
            Origin::ListFile,
        )
        .unwrap();
    let reloaded = screen.maps.config().unwrap();
    assert_eq!(reloaded.deny_slot, before.deny_slot);
    assert_eq!(reloaded.v4_table_slot, before.v4_table_slot);
    expect(&screen, &syn(first).build(), XDP_PASS, PASSED);
    expect(&screen, &syn(second).build(), XDP_DROP, DROP_STATIC);
    assert_eq!(
        screen.maps.static_entries(StaticList::Deny).unwrap(),
        [(
            net("10.251.101.0/24"),
            screen_common::PrefixEntry {
                origin: Origin::ListFile as u32
            }
        )]
    );

    // Deleting the prefix brings back the empty table.
    let change = screen
        .maps
        .remove_static(StaticList::Deny, net("10.251.101.0/24"))
        .unwrap();
    assert_eq!(change.trie_writes, 1, "{change:?}");
    assert_eq!(table_state(&mut screen, second), v4_table::UNLISTED);
    expect(&screen, &syn(second).build(), XDP_PASS, PASSED);
}

/// Adds a dynamic entry that has expired by the time the frame runs.
fn add_expired(maps: &mut Maps, addr: IpAddr) {
    maps.add_dynamic(host(addr), Duration::from_nanos(1), Origin::Policy, 1)
        .expect("adding a dynamic deny entry");
    thread::sleep(Duration::from_millis(20));
    assert!(
        maps.dynamic_entries()
            .expect("listing dynamic entries")
            .iter()
            .any(|e| e.net.contains(&addr)),
        "the expired entry must still be in the map: the program, not a sweep, ignores it"
    );
}

#[test]
fn v4_expired_dynamic_entry_passes() {
    if !require_root("v4_expired_dynamic_entry_passes") {
        return;
    }
    let mut screen = listed(KernelAction::Drop);
    let client = Ipv4Addr::new(10, 251, 78, 9);
    add_expired(&mut screen.maps, client.into());
    expect(&screen, &syn(client).build(), XDP_PASS, EXPIRED);
}

#[test]
fn v6_expired_dynamic_entry_passes() {
    if !require_root("v6_expired_dynamic_entry_passes") {
        return;
    }
    let mut screen = listed(KernelAction::Drop);
    let client: Ipv6Addr = "fd00:251:0:78::9".parse().unwrap();
    add_expired(&mut screen.maps, client.into());
    expect(&screen, &syn(client).build(), XDP_PASS, EXPIRED);
}

#[test]
fn v4_allow_wins_over_deny() {
    if !require_root("v4_allow_wins_over_deny") {
        return;
    }
    let mut screen = listed(KernelAction::Drop);
    let frame = syn(ALLOWED_AND_DENIED_V4).build();
    expect(&screen, &frame, XDP_PASS, PASSED_ALLOW);
    // Over a dynamic entry as well.
    screen
        .maps
        .add_dynamic(host(ALLOWED_AND_DENIED_V4), DYNAMIC_TTL, Origin::Policy, 1)
        .unwrap();
    expect(&screen, &frame, XDP_PASS, PASSED_ALLOW);
}

#[test]
fn v6_allow_wins_over_deny() {
    if !require_root("v6_allow_wins_over_deny") {
        return;
    }
    let mut screen = listed(KernelAction::Drop);
    let frame = syn(ALLOWED_AND_DENIED_V6).build();
    expect(&screen, &frame, XDP_PASS, PASSED_ALLOW);
    screen
        .maps
        .add_dynamic(host(ALLOWED_AND_DENIED_V6), DYNAMIC_TTL, Origin::Policy, 1)
        .unwrap();
    expect(&screen, &frame, XDP_PASS, PASSED_ALLOW);
}

/// What the daemon asks of a client that reached it past the program
/// (`Maps::kernel_denies`) is what the program decides for that client's SYN.
#[test]
fn the_daemons_reading_of_the_deny_state_is_the_programs() {
    if !require_root("the_daemons_reading_of_the_deny_state_is_the_programs") {
        return;
    }
    let mut screen = listed(KernelAction::Drop);
    let expired_v4 = Ipv4Addr::new(10, 251, 78, 9);
    add_expired(&mut screen.maps, expired_v4.into());
    let in_dynamic_64: Ipv6Addr = "fd00:251:0:77::99".parse().unwrap();
    let clients: [IpAddr; 10] = [
        UNLISTED_V4.into(),
        DENIED_V4.into(),
        ALLOWED_AND_DENIED_V4.into(),
        DYNAMIC_V4.into(),
        expired_v4.into(),
        UNLISTED_V6.into(),
        DENIED_V6.into(),
        ALLOWED_AND_DENIED_V6.into(),
        DYNAMIC_V6.into(),
        in_dynamic_64.into(),
    ];
    for client in clients {
        let dropped = screen.counted(&syn(client).build()).0.action == XDP_DROP;
        let denied = screen
            .maps
            .kernel_denies(client, kernel::clock::monotonic_ns())
            .expect("reading the deny state");
        assert_eq!(denied, dropped, "{client}");
    }
    // An IPv4-mapped address is the IPv4 client.
    let mapped = IpAddr::V6(DENIED_V4.to_ipv6_mapped());
    assert!(
        screen
            .maps
            .kernel_denies(mapped, kernel::clock::monotonic_ns())
            .unwrap()
    );
}

#[test]
fn v6_dynamic_entry_covers_the_configured_64() {
    if !require_root("v6_dynamic_entry_covers_the_configured_64") {
        return;
    }
    let screen = listed(KernelAction::Drop);
    let same_64: Ipv6Addr = "fd00:251:0:77:abcd:ef01:2345:6789".parse().unwrap();
    let other_64: Ipv6Addr = "fd00:251:0:78::7".parse().unwrap();
    expect(&screen, &syn(same_64).build(), XDP_DROP, DROP_DYNAMIC);
    expect(&screen, &syn(other_64).build(), XDP_PASS, PASSED);
}

#[test]
fn v6_dynamic_entry_with_prefix_128_covers_one_address() {
    if !require_root("v6_dynamic_entry_with_prefix_128_covers_one_address") {
        return;
    }
    let mut screen = ScreenUnderTest::load().expect("loading the XDP program");
    kernel::configure(&mut screen.maps, &[25], KernelAction::Drop, 128).unwrap();
    screen
        .maps
        .add_dynamic(host(DYNAMIC_V6), DYNAMIC_TTL, Origin::Policy, 1)
        .unwrap();
    let neighbour: Ipv6Addr = "fd00:251:0:77::8".parse().unwrap();
    expect(&screen, &syn(DYNAMIC_V6).build(), XDP_DROP, DROP_DYNAMIC);
    expect(&screen, &syn(neighbour).build(), XDP_PASS, PASSED);
}

// ---- VLAN tags ----

#[test]
fn syn_behind_one_vlan_tag_is_screened() {
    if !require_root("syn_behind_one_vlan_tag_is_screened") {
        return;
    }
    let screen = listed(KernelAction::Drop);
    for src in [IpAddr::from(DENIED_V4), IpAddr::from(DENIED_V6)] {
        let frame = syn(src).vlan(ETH_P_8021Q, 100).build();
        expect(&screen, &frame, XDP_DROP, DROP_STATIC);
    }
    for src in [IpAddr::from(UNLISTED_V4), IpAddr::from(UNLISTED_V6)] {
        let frame = syn(src).vlan(ETH_P_8021Q, 100).build();
        expect(&screen, &frame, XDP_PASS, PASSED);
    }
}

#[test]
fn syn_behind_two_vlan_tags_is_screened() {
    if !require_root("syn_behind_two_vlan_tags_is_screened") {
        return;
    }
    let screen = listed(KernelAction::Drop);
    for src in [IpAddr::from(DENIED_V4), IpAddr::from(DENIED_V6)] {
        let frame = syn(src)
            .vlan(ETH_P_8021AD, 100)
            .vlan(ETH_P_8021Q, 200)
            .build();
        expect(&screen, &frame, XDP_DROP, DROP_STATIC);
    }
    for src in [IpAddr::from(DYNAMIC_V4), IpAddr::from(DYNAMIC_V6)] {
        let frame = syn(src)
            .vlan(ETH_P_8021AD, 100)
            .vlan(ETH_P_8021Q, 200)
            .build();
        expect(&screen, &frame, XDP_DROP, DROP_DYNAMIC);
    }
}

#[test]
fn syn_behind_three_vlan_tags_passes_unparsed() {
    if !require_root("syn_behind_three_vlan_tags_passes_unparsed") {
        return;
    }
    let screen = listed(KernelAction::Drop);
    for src in [IpAddr::from(DENIED_V4), IpAddr::from(DENIED_V6)] {
        let frame = syn(src)
            .vlan(ETH_P_8021AD, 100)
            .vlan(ETH_P_8021Q, 200)
            .vlan(ETH_P_8021Q, 300)
            .build();
        expect(&screen, &frame, XDP_PASS, PARSE_FAILED);
    }
}

// ---- IPv6 extension headers and fragments ----

fn hop_by_hop() -> ExtHeader {
    ExtHeader::Options { kind: 0, len8: 0 }
}

fn routing() -> ExtHeader {
    ExtHeader::Options { kind: 43, len8: 2 }
}

fn destination_options() -> ExtHeader {
    ExtHeader::Options { kind: 60, len8: 1 }
}

fn auth() -> ExtHeader {
    // A 24-byte AH: the ICV of HMAC-SHA1-96, the usual size.
    ExtHeader::Auth { len4: 4 }
}

fn first_fragment() -> ExtHeader {
    ExtHeader::Fragment {
        offset: 0,
        more: true,
    }
}

#[test]
fn v6_extension_headers_are_walked_to_tcp() {
    if !require_root("v6_extension_headers_are_walked_to_tcp") {
        return;
    }
    let screen = listed(KernelAction::Drop);
    let chains = [
        vec![hop_by_hop()],
        vec![routing()],
        vec![destination_options()],
        vec![auth()],
        vec![first_fragment()],
        vec![
            hop_by_hop(),
            routing(),
            first_fragment(),
            auth(),
            destination_options(),
        ],
        // As many as the parser walks.
        vec![
            hop_by_hop(),
            destination_options(),
            routing(),
            first_fragment(),
            auth(),
            destination_options(),
        ],
    ];
    for chain in chains {
        let mut spec = syn(DENIED_V6);
        spec.ipv6_ext = chain;
        expect(&screen, &spec.build(), XDP_DROP, DROP_STATIC);
    }
    let mut spec = syn(UNLISTED_V6);
    spec.ipv6_ext = vec![hop_by_hop(), auth()];
    expect(&screen, &spec.build(), XDP_PASS, PASSED);
    let mut spec = syn(DYNAMIC_V6);
    spec.ipv6_ext = vec![routing(), first_fragment()];
    expect(&screen, &spec.build(), XDP_DROP, DROP_DYNAMIC);
}

#[test]
fn v6_more_than_six_extension_headers_pass_unparsed() {
    if !require_root("v6_more_than_six_extension_headers_pass_unparsed") {
        return;
    }
    let screen = listed(KernelAction::Drop);
    let mut spec = syn(DENIED_V6);
    spec.ipv6_ext = vec![destination_options(); 7];
    expect(&screen, &spec.build(), XDP_PASS, PARSE_FAILED);
    spec.ipv6_ext = vec![
        hop_by_hop(),
        routing(),
        routing(),
        first_fragment(),
        auth(),
        destination_options(),
        destination_options(),
    ];
    expect(&screen, &spec.build(), XDP_PASS, PARSE_FAILED);
}

#[test]
fn v6_non_first_fragment_passes_as_fragment() {
    if !require_root("v6_non_first_fragment_passes_as_fragment") {
        return;
    }
    let screen = listed(KernelAction::Drop);
    for (offset, more) in [(1, true), (1, false), (185, false), (0x1fff, true)] {
        let mut spec = syn(DENIED_V6);
        spec.ipv6_ext = vec![ExtHeader::Fragment { offset, more }];
        expect(&screen, &spec.build(), XDP_PASS, FRAGMENT);
        spec.ipv6_ext.insert(0, hop_by_hop());
        expect(&screen, &spec.build(), XDP_PASS, FRAGMENT);
    }
}

#[test]
fn v4_non_first_fragment_passes_as_fragment() {
    if !require_root("v4_non_first_fragment_passes_as_fragment") {
        return;
    }
    let screen = listed(KernelAction::Drop);
    for (offset, more) in [(1, true), (1, false), (185, false), (0x1fff, true)] {
        let mut spec = syn(DENIED_V4);
        spec.ipv4_fragment = Some(Fragment { offset, more });
        expect(&screen, &spec.build(), XDP_PASS, FRAGMENT);
    }
}

#[test]
fn v4_first_fragment_of_denied_syn_is_dropped() {
    if !require_root("v4_first_fragment_of_denied_syn_is_dropped") {
        return;
    }
    let screen = listed(KernelAction::Drop);
    let mut spec = syn(DENIED_V4);
    spec.ipv4_fragment = Some(Fragment {
        offset: 0,
        more: true,
    });
    expect(&screen, &spec.build(), XDP_DROP, DROP_STATIC);
}

// ---- TCP flags and ports ----

#[test]
fn only_syn_without_ack_is_screened() {
    if !require_root("only_syn_without_ack_is_screened") {
        return;
    }
    let screen = listed(KernelAction::Drop);
    for src in [IpAddr::from(DENIED_V4), IpAddr::from(DENIED_V6)] {
        expect(&screen, &syn(src).build(), XDP_DROP, DROP_STATIC);
        for flags in [
            TCP_SYN | TCP_ACK,
            TCP_ACK,
            TCP_RST,
            TCP_FIN,
            TCP_PSH | TCP_ACK,
            TCP_FIN | TCP_ACK,
            TCP_RST | TCP_ACK,
            0,
        ] {
            let frame = syn(src).flags(flags).build();
            expect(&screen, &frame, XDP_PASS, NOT_SCREENED);
        }
        // Without ACK a SYN is a connection attempt whatever else is set.
        for flags in [
            TCP_SYN | TCP_RST,
            TCP_SYN | TCP_FIN,
            TCP_SYN | TCP_PSH,
            !TCP_ACK,
        ] {
            let frame = syn(src).flags(flags).build();
            expect(&screen, &frame, XDP_DROP, DROP_STATIC);
        }
    }
}

#[test]
fn unprotected_port_is_screened_only_once_configured() {
    if !require_root("unprotected_port_is_screened_only_once_configured") {
        return;
    }
    let mut screen = listed(KernelAction::Drop);
    let submission = |src: IpAddr| FrameSpec::syn(src, server_for(src), 587).build();
    for src in [IpAddr::from(DENIED_V4), IpAddr::from(DENIED_V6)] {
        expect(&screen, &submission(src), XDP_PASS, NOT_SCREENED);
    }
    kernel::configure(&mut screen.maps, &[25, 587], KernelAction::Drop, 64).unwrap();
    for src in [IpAddr::from(DENIED_V4), IpAddr::from(DENIED_V6)] {
        expect(&screen, &submission(src), XDP_DROP, DROP_STATIC);
        expect(&screen, &syn(src).build(), XDP_DROP, DROP_STATIC);
        let web = FrameSpec::syn(src, server_for(src), 80).build();
        expect(&screen, &web, XDP_PASS, NOT_SCREENED);
    }
}

#[test]
fn udp_to_port_25_passes() {
    if !require_root("udp_to_port_25_passes") {
        return;
    }
    let screen = listed(KernelAction::Drop);
    for src in [IpAddr::from(DENIED_V4), IpAddr::from(DENIED_V6)] {
        let mut spec = syn(src);
        spec.protocol = IPPROTO_UDP;
        spec.payload = vec![0x55; 12];
        expect(&screen, &spec.build(), XDP_PASS, NOT_SCREENED);
    }
}

// ---- Truncation and malformed headers ----

#[test]
fn truncated_frames_pass_at_every_length() {
    if !require_root("truncated_frames_pass_at_every_length") {
        return;
    }
    let screen = listed(KernelAction::Drop);
    let mut with_ext = syn(DENIED_V6);
    with_ext.ipv6_ext = vec![hop_by_hop(), routing(), first_fragment(), auth()];
    let mut with_options = syn(DENIED_V4);
    with_options.ipv4_options = vec![1; 8];
    with_options.tcp_options = vec![2, 4, 0x05, 0xb4, 1, 3, 3, 7, 4, 2, 1, 1];
    let specs = [
        syn(DENIED_V4),
        syn(DENIED_V6),
        syn(DENIED_V4).vlan(ETH_P_8021Q, 100),
        syn(DENIED_V6)
            .vlan(ETH_P_8021AD, 100)
            .vlan(ETH_P_8021Q, 200),
        with_ext,
        with_options,
    ];
    for spec in specs {
        let frame = spec.build();
        for len in 14..frame.len() {
            // Every byte of the SYN belongs to a header (the TCP header ends with its
            // options), so every cut is a cut header.
            expect(&screen, &frame[..len], XDP_PASS, PARSE_FAILED);
        }
        expect(&screen, &frame, XDP_DROP, DROP_STATIC);
    }
}

#[test]
fn frames_shorter_than_ethernet_are_rejected_by_the_kernel() {
    if !require_root("frames_shorter_than_ethernet_are_rejected_by_the_kernel") {
        return;
    }
    let screen = listed(KernelAction::Drop);
    let frame = syn(DENIED_V4).build();
    let before = screen.counters();
    for len in 0..14 {
        match screen.run(&frame[..len]) {
            Err(e) => assert!(is_einval(&e), "{len} bytes: {e}, expected EINVAL"),
            Ok(outcome) => panic!("{len} bytes ran the program: {outcome:?}"),
        }
    }
    assert_eq!(
        screen.counters().since(&before),
        Counters::default(),
        "the program must not have run"
    );
}

#[test]
fn v4_header_length_below_five_words_is_unparsed() {
    if !require_root("v4_header_length_below_five_words_is_unparsed") {
        return;
    }
    let screen = listed(KernelAction::Drop);
    let spec = syn(DENIED_V4);
    let (l3, _) = offsets(&spec);
    for ihl in 0..5 {
        let mut frame = spec.build();
        frame[l3] = 0x40 | ihl;
        expect(&screen, &frame, XDP_PASS, PARSE_FAILED);
    }
}

#[test]
fn v4_version_other_than_four_is_unparsed() {
    if !require_root("v4_version_other_than_four_is_unparsed") {
        return;
    }
    let screen = listed(KernelAction::Drop);
    let spec = syn(DENIED_V4);
    let (l3, _) = offsets(&spec);
    for version in (0..16).filter(|&v| v != 4) {
        let mut frame = spec.build();
        frame[l3] = version << 4 | 5;
        expect(&screen, &frame, XDP_PASS, PARSE_FAILED);
    }
    // And an IPv6 header whose version nibble is not 6.
    let spec = syn(DENIED_V6);
    let (l3, _) = offsets(&spec);
    let mut frame = spec.build();
    frame[l3] = 0x40;
    expect(&screen, &frame, XDP_PASS, PARSE_FAILED);
}

#[test]
fn v4_options_are_skipped_to_tcp() {
    if !require_root("v4_options_are_skipped_to_tcp") {
        return;
    }
    let screen = listed(KernelAction::Drop);
    for ihl in 6..=15 {
        let mut spec = syn(DENIED_V4);
        // NOPs: the program skips options by length, it does not read them.
        spec.ipv4_options = vec![1; (ihl - 5) * 4];
        let frame = spec.build();
        let (l3, _) = offsets(&spec);
        assert_eq!(usize::from(frame[l3] & 0x0f), ihl);
        expect(&screen, &frame, XDP_DROP, DROP_STATIC);
    }
}

#[test]
fn tcp_data_offset_below_five_is_unparsed() {
    if !require_root("tcp_data_offset_below_five_is_unparsed") {
        return;
    }
    let screen = listed(KernelAction::Drop);
    for src in [IpAddr::from(DENIED_V4), IpAddr::from(DENIED_V6)] {
        let spec = syn(src);
        let (_, l4) = offsets(&spec);
        let frame = spec.build();
        for doff in 0..5 {
            expect(
                &screen,
                &tcp_offset(&frame, l4, doff),
                XDP_PASS,
                PARSE_FAILED,
            );
        }
    }
}

#[test]
fn tcp_data_offset_past_the_frame_passes() {
    if !require_root("tcp_data_offset_past_the_frame_passes") {
        return;
    }
    let screen = listed(KernelAction::Drop);
    for src in [IpAddr::from(DENIED_V4), IpAddr::from(DENIED_V6)] {
        let spec = syn(src);
        let (_, l4) = offsets(&spec);
        let frame = spec.build();
        let header_words = ((frame.len() - l4) / 4) as u8;
        assert_eq!(header_words, 6, "20 bytes and the MSS option");
        for doff in header_words + 1..=15 {
            expect(
                &screen,
                &tcp_offset(&frame, l4, doff),
                XDP_PASS,
                PARSE_FAILED,
            );
        }
        // Pointing inside the frame (into the options) is fine.
        expect(&screen, &tcp_offset(&frame, l4, 5), XDP_DROP, DROP_STATIC);
    }
}

#[test]
fn arp_passes_without_counting_a_parse_failure() {
    if !require_root("arp_passes_without_counting_a_parse_failure") {
        return;
    }
    let screen = listed(KernelAction::Drop);
    let mut arp = Vec::new();
    arp.extend_from_slice(&[0xff; 6]);
    arp.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    arp.extend_from_slice(&0x0806u16.to_be_bytes());
    // Request: Ethernet, IPv4, who has 10.251.0.1, tell 10.251.66.7.
    arp.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    arp.extend_from_slice(&DENIED_V4.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&SERVER_V4.octets());
    expect(&screen, &arp, XDP_PASS, NOT_SCREENED);
    // Behind a VLAN tag as well.
    let mut tagged = arp[..12].to_vec();
    tagged.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
    tagged.extend_from_slice(&100u16.to_be_bytes());
    tagged.extend_from_slice(&arp[12..]);
    expect(&screen, &tagged, XDP_PASS, NOT_SCREENED);
}

#[test]
fn ipv6_without_a_next_header_passes_as_not_screened() {
    if !require_root("ipv6_without_a_next_header_passes_as_not_screened") {
        return;
    }
    let screen = listed(KernelAction::Drop);
    // A valid IPv6 packet whose next header is 59 (No Next Header) and whose payload is empty:
    // nothing to screen, and nothing malformed either.
    let mut frame = syn(DENIED_V6).build();
    frame.truncate(14 + 40);
    frame[14 + 4..14 + 6].copy_from_slice(&0u16.to_be_bytes());
    frame[14 + 6] = 59;
    expect(&screen, &frame, XDP_PASS, NOT_SCREENED);
    // UDP with a short payload likewise.
    frame[14 + 6] = 17;
    expect(&screen, &frame, XDP_PASS, NOT_SCREENED);
}

#[test]
fn unconfigured_program_passes_denied_syn() {
    if !require_root("unconfigured_program_passes_denied_syn") {
        return;
    }
    let mut screen = ScreenUnderTest::load().expect("loading the XDP program");
    add_lists(&mut screen.maps);
    assert!(!screen.maps.is_configured().unwrap());
    for src in [
        IpAddr::from(DENIED_V4),
        IpAddr::from(DENIED_V6),
        IpAddr::from(DYNAMIC_V4),
        IpAddr::from(DYNAMIC_V6),
    ] {
        expect(&screen, &syn(src).build(), XDP_PASS, NOT_SCREENED);
    }
}

// ---- RST replies ----

/// Runs a denied SYN in RST mode and checks the reply, field by field.
#[track_caller]
fn expect_rst(screen: &ScreenUnderTest, spec: &FrameSpec, moved: &[Stat]) {
    let frame = spec.build();
    let reply = expect(screen, &frame, XDP_TX, moved).frame;
    let (l3, l4) = offsets(spec);
    if let Err(wrong) = check_rst_reply(&frame, l3, &reply) {
        panic!(
            "bad RST reply\n  SYN   {}\n  reply {}\n  {wrong}",
            hex(&frame),
            hex(&reply)
        );
    }
    // The same facts once more from the frame builder's view, independent of the SYN's
    // length fields.
    let ip_len = l4 - l3;
    assert_eq!(reply.len(), l2_len(spec) + ip_len + 20);
    assert_eq!(&reply[..6], &spec.src_mac);
    assert_eq!(&reply[6..12], &spec.dst_mac);
    let tcp = &reply[l4..];
    assert_eq!(u16::from_be_bytes([tcp[0], tcp[1]]), spec.dst_port);
    assert_eq!(u16::from_be_bytes([tcp[2], tcp[3]]), spec.src_port);
    assert_eq!(u32::from_be_bytes(tcp[4..8].try_into().unwrap()), 0);
    let ack = spec.seq.wrapping_add(1 + spec.payload.len() as u32);
    assert_eq!(u32::from_be_bytes(tcp[8..12].try_into().unwrap()), ack);
    assert_eq!(tcp[12], 5 << 4);
    assert_eq!(tcp[13], TCP_RST | TCP_ACK);
    let pseudo = pseudo_header_sum(spec.dst, spec.src, IPPROTO_TCP, 20);
    assert!(verifies(tcp, pseudo), "TCP checksum of {}", hex(&reply));
    match spec.src {
        IpAddr::V4(_) => {
            assert_eq!(u16::from_be_bytes([reply[l3 + 2], reply[l3 + 3]]), 40);
            assert!(
                verifies(&reply[l3..l4], 0),
                "IPv4 checksum of {}",
                hex(&reply)
            );
        }
        IpAddr::V6(_) => {
            assert_eq!(u16::from_be_bytes([reply[l3 + 4], reply[l3 + 5]]), 20);
        }
    }
}

#[test]
fn rst_mode_answers_v4_syn_with_rst_ack() {
    if !require_root("rst_mode_answers_v4_syn_with_rst_ack") {
        return;
    }
    let screen = listed(KernelAction::Rst);
    expect_rst(&screen, &syn(DENIED_V4), RST_STATIC);
    expect_rst(&screen, &syn(DYNAMIC_V4), RST_DYNAMIC);
    // Screening is unchanged for everyone else.
    expect(&screen, &syn(UNLISTED_V4).build(), XDP_PASS, PASSED);
    expect(
        &screen,
        &syn(ALLOWED_AND_DENIED_V4).build(),
        XDP_PASS,
        PASSED_ALLOW,
    );
}

#[test]
fn rst_mode_answers_v4_syn_behind_vlan_tags() {
    if !require_root("rst_mode_answers_v4_syn_behind_vlan_tags") {
        return;
    }
    let screen = listed(KernelAction::Rst);
    expect_rst(&screen, &syn(DENIED_V4).vlan(ETH_P_8021Q, 100), RST_STATIC);
    expect_rst(
        &screen,
        &syn(DYNAMIC_V4).vlan(ETH_P_8021Q, 0x0fff),
        RST_DYNAMIC,
    );
    let two_tags = syn(DENIED_V4)
        .vlan(ETH_P_8021AD, 100)
        .vlan(ETH_P_8021Q, 200);
    expect_rst(&screen, &two_tags, RST_STATIC);
}

#[test]
fn rst_mode_answers_v6_syn_with_rst_ack() {
    if !require_root("rst_mode_answers_v6_syn_with_rst_ack") {
        return;
    }
    let screen = listed(KernelAction::Rst);
    expect_rst(&screen, &syn(DENIED_V6), RST_STATIC);
    expect_rst(&screen, &syn(DYNAMIC_V6), RST_DYNAMIC);
    expect_rst(&screen, &syn(DENIED_V6).vlan(ETH_P_8021Q, 100), RST_STATIC);
    expect(&screen, &syn(UNLISTED_V6).build(), XDP_PASS, PASSED);
}

#[test]
fn rst_acknowledges_the_syn_payload() {
    if !require_root("rst_acknowledges_the_syn_payload") {
        return;
    }
    let screen = listed(KernelAction::Rst);
    for src in [IpAddr::from(DENIED_V4), IpAddr::from(DENIED_V6)] {
        let mut spec = syn(src);
        // TCP Fast Open style: data on the SYN, cut from the reply and acknowledged.
        spec.payload = b"EHLO spam\n".to_vec();
        spec.seq = u32::MAX - 3;
        expect_rst(&screen, &spec, RST_STATIC);
        // No options at all: the reply keeps the frame's length.
        let mut bare = syn(src);
        bare.tcp_options.clear();
        expect_rst(&screen, &bare, RST_STATIC);
    }
}

#[test]
fn rst_mode_drops_syn_with_ipv4_options() {
    if !require_root("rst_mode_drops_syn_with_ipv4_options") {
        return;
    }
    let screen = listed(KernelAction::Rst);
    let mut spec = syn(DENIED_V4);
    spec.ipv4_options = vec![1; 4];
    let frame = spec.build();
    let outcome = expect(&screen, &frame, XDP_DROP, DROP_STATIC);
    assert_eq!(outcome.frame, frame, "a dropped frame is left as it was");
    let mut spec = syn(DYNAMIC_V4).vlan(ETH_P_8021Q, 100);
    spec.ipv4_options = vec![1; 40];
    expect(&screen, &spec.build(), XDP_DROP, DROP_DYNAMIC);
}

#[test]
fn rst_mode_drops_syn_after_ipv6_extension_headers() {
    if !require_root("rst_mode_drops_syn_after_ipv6_extension_headers") {
        return;
    }
    let screen = listed(KernelAction::Rst);
    for chain in [
        vec![hop_by_hop()],
        vec![first_fragment()],
        vec![auth(), routing()],
    ] {
        let mut spec = syn(DENIED_V6);
        spec.ipv6_ext = chain;
        let frame = spec.build();
        let outcome = expect(&screen, &frame, XDP_DROP, DROP_STATIC);
        assert_eq!(outcome.frame, frame, "a dropped frame is left as it was");
    }
    let mut spec = syn(DYNAMIC_V6);
    spec.ipv6_ext = vec![destination_options()];
    expect(&screen, &spec.build(), XDP_DROP, DROP_DYNAMIC);
}

// ---- Pinned maps ----

/// A pin directory of this test process, unloaded (every pin removed) when dropped.
struct PinDir(PathBuf);

impl PinDir {
    fn new(purpose: &str) -> Self {
        let dir = PathBuf::from(format!("/sys/fs/bpf/sst-{purpose}-{}", std::process::id()));
        // Left over from a crashed run of a process with the same id.
        let _ = link::unload(&dir);
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = link::unload(&self.0) {
            eprintln!("cleaning up {}: {e}", self.0.display());
        }
    }
}

#[test]
fn pinned_map_layouts_match_the_loader() {
    if !require_root("pinned_map_layouts_match_the_loader") {
        return;
    }
    let dir = PinDir::new("layout");
    let mut program = ScreenProgram::load(dir.path()).expect("loading with pins");
    for name in map_name::ALL {
        let info = MapInfo::from_pin(dir.path().join(name))
            .unwrap_or_else(|e| panic!("{name} is not pinned: {e}"));
        layout::check(name, &info).unwrap_or_else(|what| panic!("{name}: {what}"));
        assert_eq!(info.name_as_str(), Some(name), "kernel name of {name}");
    }
    // The program uses the pinned records as its global data, not maps of its own.
    let prog_id = program.program_id().unwrap();
    let info = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|info| info.id() == prog_id)
        .expect("the loaded program is listed");
    let used = info.map_ids().unwrap().expect("map ids are readable");
    for name in [map_name::CONFIG, map_name::STATS] {
        let id = MapInfo::from_pin(dir.path().join(name)).unwrap().id();
        assert!(used.contains(&id), "{name} (id {id}) not among {used:?}");
    }
    for id in &used {
        let map = MapInfo::from_id(*id).unwrap();
        let name = map.name_as_str().unwrap_or("").to_string();
        assert!(
            map_name::ALL.contains(&name.as_str()),
            "the program uses map {name} (id {id}), which is not pinned"
        );
    }
    let pinned: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        pinned.len(),
        map_name::ALL.len(),
        "nothing but the maps is pinned: {pinned:?}"
    );
    drop(program);
    link::unload(dir.path()).expect("unloading");
    assert!(!dir.path().exists(), "unload removes the pin directory");
}

#[test]
fn reloading_reuses_the_pinned_maps() {
    if !require_root("reloading_reuses_the_pinned_maps") {
        return;
    }
    let dir = PinDir::new("reuse");
    let denied = net("10.251.99.0/24");
    let ids = || map_name::ALL.map(|name| MapInfo::from_pin(dir.path().join(name)).unwrap().id());
    let before = {
        let _program = ScreenProgram::load(dir.path()).expect("first load");
        let mut maps = Maps::from_pins(dir.path()).expect("opening the pins");
        kernel::configure(&mut maps, &[25], KernelAction::Drop, 64).unwrap();
        maps.add_static(StaticList::Deny, denied, Origin::Operator)
            .unwrap();
        maps.add_dynamic(host(DYNAMIC_V4), DYNAMIC_TTL, Origin::Policy, 2)
            .unwrap();
        maps.config().unwrap()
    };
    assert_eq!(
        before.deny_slot, 1,
        "adding the prefix flipped the deny slot"
    );
    let first = ids();
    let _program = ScreenProgram::load(dir.path()).expect("second load");
    assert_eq!(ids(), first, "the second load must reuse every pinned map");
    let mut maps = Maps::from_pins(dir.path()).unwrap();
    assert!(maps.is_configured().unwrap(), "the configuration survives");
    // The load itself writes the object's initial data into the record the program reads; it
    // must write back what was there (the list change above flipped the slots), not the
    // unconfigured record, or the filter would pass everything until the daemon configures it.
    assert_eq!(pinned_record(&dir, map_name::CONFIG), before);
    let statics = maps.static_entries(StaticList::Deny).unwrap();
    assert!(
        statics.iter().any(|(n, _)| *n == denied),
        "static entry lost: {statics:?}"
    );
    let dynamics = maps.dynamic_entries().unwrap();
    assert!(
        dynamics.iter().any(|e| e.net == host(DYNAMIC_V4)),
        "dynamic entry lost: {dynamics:?}"
    );
}

/// What the daemon holds once it drops root: the dynamic deny maps writable, every other map
/// through a read-only descriptor, which the kernel refuses to change.
#[test]
fn the_daemons_maps_take_dynamic_denies_and_refuse_every_other_change() {
    if !require_root("the_daemons_maps_take_dynamic_denies_and_refuse_every_other_change") {
        return;
    }
    let dir = PinDir::new("rdonly");
    let denied = net(DENY_NET_V4);
    let _program = ScreenProgram::load(dir.path()).expect("loading");
    let config = {
        let mut maps = Maps::from_pins(dir.path()).expect("opening the pins");
        kernel::configure(&mut maps, &[25], KernelAction::Drop, 64).unwrap();
        maps.add_static(StaticList::Deny, denied, Origin::Operator)
            .unwrap();
        maps.config().unwrap()
    };
    let mut daemon =
        Maps::from_pins_with(dir.path(), MapAccess::DynamicDeny).expect("the daemon's maps");

    // What the daemon writes: dynamic entries, in both families.
    daemon
        .add_dynamic(host(DYNAMIC_V4), DYNAMIC_TTL, Origin::Policy, 2)
        .expect("a dynamic deny through the daemon's maps");
    daemon
        .add_dynamic(host(DYNAMIC_V6), DYNAMIC_TTL, Origin::Policy, 2)
        .expect("an IPv6 dynamic deny through the daemon's maps");
    let dynamics = daemon.dynamic_entries().unwrap();
    assert_eq!(dynamics.len(), 2, "{dynamics:?}");

    // What it reads: the lists, the configuration, the counters, the mapped IPv4 table.
    let now = kernel::clock::monotonic_ns();
    assert!(daemon.kernel_denies(DENIED_V4.into(), now).unwrap());
    assert!(daemon.kernel_denies(DYNAMIC_V4.into(), now).unwrap());
    assert!(!daemon.kernel_denies(UNLISTED_V4.into(), now).unwrap());
    assert_eq!(daemon.config().unwrap(), config);
    assert_eq!(daemon.v4_table_state(DENIED_V4).unwrap(), v4_table::DENY);
    daemon.counters().expect("reading the counters");

    // Everything else is refused, by the kernel for the maps (EPERM) and by the read-only
    // mapping's guard for the tables (a change that needs no trie write, such as removing
    // what the idle slot lacks already, reaches the table first), and nothing changed.
    let refused = |what: &str, result: Result<kernel::ListChange, MapsError>| match result {
        Err(e) => assert!(
            ["PermissionDenied", "ReadOnly"]
                .iter()
                .any(|refusal| format!("{e:?}").contains(refusal)),
            "{what}: must be refused as read-only: {e:?}"
        ),
        Ok(change) => panic!("{what} went through the daemon's maps: {change:?}"),
    };
    refused(
        "a static deny",
        daemon.add_static(StaticList::Deny, net("10.251.88.0/24"), Origin::Operator),
    );
    refused(
        "a static allow",
        daemon.add_static(StaticList::Allow, net("10.251.89.0/24"), Origin::Operator),
    );
    refused(
        "removing a static deny",
        daemon.remove_static(StaticList::Deny, denied),
    );
    refused(
        "replacing the deny list",
        daemon.replace_static(StaticList::Deny, &[], Origin::Operator),
    );
    let mut changed = config;
    changed.ports[0] = 2525;
    let error = daemon
        .set_config(&changed)
        .expect_err("the configuration record is read-only");
    assert!(
        format!("{error:?}").contains("PermissionDenied"),
        "{error:?}"
    );

    let operator = Maps::from_pins(dir.path()).unwrap();
    assert_eq!(
        operator.config().unwrap(),
        config,
        "the record is unchanged"
    );
    let mut operator = operator;
    let statics = operator.static_entries(StaticList::Deny).unwrap();
    assert_eq!(
        statics.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        [denied],
        "the deny list is unchanged"
    );
    assert!(
        operator
            .static_entries(StaticList::Allow)
            .unwrap()
            .is_empty()
    );
}

/// Element 0 of the configuration record pinned as `name`.
fn pinned_record(dir: &PinDir, name: &str) -> ScreenConfig {
    let data = MapData::from_pin(dir.path().join(name)).unwrap();
    let record: Array<MapData, ScreenConfig> = Array::try_from(Map::Array(data)).unwrap();
    record.get(&0, 0).unwrap()
}

#[test]
fn loading_over_the_previous_layouts_pins_takes_its_configuration_and_retires_the_copy() {
    if !require_root(
        "loading_over_the_previous_layouts_pins_takes_its_configuration_and_retires_the_copy",
    ) {
        return;
    }
    let dir = PinDir::new("upgrade");
    let before = {
        let _program = ScreenProgram::load(dir.path()).expect("first load");
        let mut maps = Maps::from_pins(dir.path()).expect("opening the pins");
        kernel::configure(&mut maps, &[25], KernelAction::Drop, 64).unwrap();
        maps.add_static(StaticList::Deny, net("10.251.99.0/24"), Origin::Operator)
            .unwrap();
        maps.config().unwrap()
    };
    // As the pins of the previous layout: its program read a copy of the record, pinned as
    // `scr_config_live`, the one to trust; `scr_config` may lag behind it.
    let mut lagging = before;
    lagging.deny_slot ^= 1;
    Maps::from_pins(dir.path())
        .unwrap()
        .set_config(&lagging)
        .unwrap();
    let mut copy = Array::<MapData, ScreenConfig>::create(1, 0).expect("an array of one");
    copy.set(0, before, 0).unwrap();
    let old_pin = dir.path().join(map_name::OLD_CONFIG_GLOBAL_PIN);
    copy.pin(&old_pin).expect("pinning the copy");
    assert_eq!(
        Maps::from_pins(dir.path()).unwrap().config().unwrap(),
        before,
        "the copy is the record while it is pinned"
    );

    let mut program = ScreenProgram::load(dir.path()).expect("loading over them");
    assert_eq!(pinned_record(&dir, map_name::CONFIG), before);
    // Until the previous program is off every interface, a change reaches its copy too.
    let mut changed = before;
    changed.action ^= 1;
    Maps::from_pins(dir.path())
        .unwrap()
        .set_config(&changed)
        .unwrap();
    assert_eq!(
        pinned_record(&dir, map_name::OLD_CONFIG_GLOBAL_PIN),
        changed
    );
    assert_eq!(pinned_record(&dir, map_name::CONFIG), changed);
    // No interface runs the previous program here: the copy goes.
    program.retire_old_layout().unwrap();
    assert!(!old_pin.exists(), "the copy's pin is removed");
    assert_eq!(
        Maps::from_pins(dir.path()).unwrap().config().unwrap(),
        changed
    );
}

#[test]
fn loading_rebuilds_a_missing_table_from_the_tries() {
    if !require_root("loading_rebuilds_a_missing_table_from_the_tries") {
        return;
    }
    let dir = PinDir::new("rebuild");
    let denied = Ipv4Addr::new(10, 251, 99, 1);
    {
        let _program = ScreenProgram::load(dir.path()).expect("first load");
        let mut maps = Maps::from_pins(dir.path()).expect("opening the pins");
        kernel::configure(&mut maps, &[25], KernelAction::Drop, 64).unwrap();
        maps.add_static(StaticList::Deny, net("10.251.99.0/24"), Origin::Operator)
            .unwrap();
    }
    // As after an upgrade from a version without the tables: the lists are there, the
    // tables are created empty by the next load.
    for name in map_name::TABLE_V4 {
        std::fs::remove_file(dir.path().join(name)).expect("removing a table pin");
    }
    let _program = ScreenProgram::load(dir.path()).expect("second load");
    let mut maps = Maps::from_pins(dir.path()).unwrap();
    assert_eq!(maps.v4_table_state(denied).unwrap(), v4_table::UNLISTED);
    kernel::configure(&mut maps, &[25], KernelAction::Drop, 64).unwrap();
    assert_eq!(maps.v4_table_state(denied).unwrap(), v4_table::DENY);
}

/// The counters pinned under `dir`, the record the program writes.
fn pinned_stats(dir: &PinDir) -> StatsMap {
    let data = MapData::from_pin(dir.path().join(map_name::STATS)).unwrap();
    StatsMap::new(data).unwrap()
}

#[test]
fn reloading_carries_the_counters_over() {
    if !require_root("reloading_carries_the_counters_over") {
        return;
    }
    let dir = PinDir::new("counters");
    let _program = ScreenProgram::load(dir.path()).expect("first load");
    let mut counted = stats::zeroed();
    counted.cpus[0].counters.frames = 7;
    counted.cpus[0].counters.drop_static = 5;
    counted.cpus[1].counters.frames = 11;
    counted.cpus[1].counters.fragments = 3;
    pinned_stats(&dir).write(&counted).unwrap();

    // The load writes the object's zeroed counters into the map the program writes; it must
    // write back the counts instead.
    let _program = ScreenProgram::load(dir.path()).expect("second load");
    assert!(pinned_stats(&dir).read().unwrap() == counted);
    let totals = Maps::from_pins(dir.path()).unwrap().counters().unwrap();
    assert_eq!(totals[Stat::Frames as usize], 18);
    assert_eq!(totals[Stat::DropStatic as usize], 5);
    assert_eq!(totals[Stat::Fragments as usize], 3);
}

/// Creates the pin directory with counters of the layout before they moved to global data (a
/// per-CPU array of one record) pinned in it; returns their pin.
fn pin_old_counters(dir: &PinDir) -> PathBuf {
    std::fs::create_dir(dir.path()).expect("creating the pin directory");
    let old = PerCpuArray::<MapData, CounterRecord>::create(1, 0).expect("a per-CPU array");
    let pin = dir.path().join(map_name::STATS);
    old.pin(&pin).expect("pinning the old counters");
    pin
}

#[test]
fn counters_of_an_older_layout_are_replaced_not_refused() {
    if !require_root("counters_of_an_older_layout_are_replaced_not_refused") {
        return;
    }
    let dir = PinDir::new("old-stats");
    let pin = pin_old_counters(&dir);
    match Maps::from_pins(dir.path()) {
        Err(MapsError::OldLayout { path }) => assert_eq!(path, pin),
        Err(other) => panic!("expected OldLayout, got {other}"),
        Ok(_) => panic!("opened pins of an older layout"),
    }
    let _program = ScreenProgram::load(dir.path()).expect("loading over the old counters");
    let info = MapInfo::from_pin(&pin).unwrap();
    assert_eq!(info.map_type().unwrap(), MapType::Array);
    assert_eq!(info.value_size() as usize, size_of::<StatsRecord>());
    assert_eq!(
        Maps::from_pins(dir.path()).unwrap().counters().unwrap(),
        [0; Stat::COUNT as usize],
        "the counters restart"
    );
}

#[test]
fn counters_of_an_older_layout_stay_when_another_pin_is_refused() {
    if !require_root("counters_of_an_older_layout_stay_when_another_pin_is_refused") {
        return;
    }
    let dir = PinDir::new("old-stats-refused");
    let stats_pin = pin_old_counters(&dir);
    // A table without BPF_F_MMAPABLE: refused.
    let table = Array::<MapData, u64>::create(v4_table::WORDS, 0).expect("an array");
    let table_pin = dir.path().join(map_name::TABLE_V4[0]);
    table.pin(&table_pin).expect("pinning it");
    match ScreenProgram::load(dir.path()) {
        Err(LoadError::Layout(LayoutError::IncompatiblePin { path, .. })) => {
            assert_eq!(path, table_pin)
        }
        Err(other) => panic!("expected IncompatiblePin, got {other}"),
        Ok(_) => panic!("loaded over an incompatible table"),
    }
    let info = MapInfo::from_pin(&stats_pin).expect("the old counters are still pinned");
    assert_eq!(info.map_type().unwrap(), MapType::PerCpuArray);
}

#[test]
fn bpftool_prints_the_counters_and_the_configuration_by_field_name() {
    if !require_root("bpftool_prints_the_counters_and_the_configuration_by_field_name") {
        return;
    }
    let dir = PinDir::new("btf");
    let _program = ScreenProgram::load(dir.path()).expect("load");
    let mut maps = Maps::from_pins(dir.path()).unwrap();
    kernel::configure(&mut maps, &[25], KernelAction::Drop, 64).unwrap();
    let dump = |name: &str| {
        let out = std::process::Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(dir.path().join(name))
            .output()
            .expect("running bpftool");
        assert!(out.status.success(), "bpftool map dump {name}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let stats = dump(map_name::STATS);
    for field in ["\"cpus\"", "\"frames\"", "\"drop_static\"", "\"fragments\""] {
        assert!(stats.contains(field), "{field} missing from {stats:.400}");
    }
    let config = dump(map_name::CONFIG);
    for field in [
        "\"ports\"",
        "\"action\"",
        "\"deny_slot\"",
        "\"v4_table_slot\"",
    ] {
        assert!(config.contains(field), "{field} missing from {config}");
    }
}

#[test]
fn incompatible_pin_is_refused() {
    if !require_root("incompatible_pin_is_refused") {
        return;
    }
    let dir = PinDir::new("incompat");
    std::fs::create_dir(dir.path()).expect("creating the pin directory");
    // Same name, same key and value, but a plain hash where the program wants an LRU hash.
    let impostor =
        HashMap::<MapData, DynKeyV4, DenyEntry>::create(16, 0).expect("creating a hash map");
    let pin = dir.path().join(map_name::DYN_DENY_V4);
    impostor.pin(&pin).expect("pinning the hash map");
    match ScreenProgram::load(dir.path()) {
        Err(LoadError::Layout(LayoutError::IncompatiblePin { path, what })) => {
            assert_eq!(path, pin);
            assert!(what.contains("type"), "{what}");
        }
        Err(other) => panic!("expected IncompatiblePin, got {other}"),
        Ok(_) => panic!("loaded over an incompatible pin"),
    }
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(left, [map_name::DYN_DENY_V4], "nothing else was pinned");
}
