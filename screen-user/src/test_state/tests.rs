use screen_tests::rng::SplitMix64;

use super::*;

const DAY: u64 = 86_400;
/// The lab's clock when 127.0.0.11 passed (reference §2.2).
const NOW: u64 = 1_795_313_732;

fn all_enabled() -> EnabledTests {
    EnabledTests {
        pregreet: true,
        dnsbl: true,
        pipelining: true,
        non_smtp_command: true,
        bare_newline: true,
    }
}

fn early_only() -> EnabledTests {
    EnabledTests {
        pregreet: true,
        dnsbl: true,
        ..Default::default()
    }
}

fn times(text: &str) -> TestTimes {
    text.parse().unwrap()
}

fn screening(start: Start) -> Screening {
    match start {
        Start::Screen(s) => s,
        Start::PassOld => panic!("expected tests to be due"),
    }
}

// --- Record text ---

#[test]
fn record_text_round_trips_postscreen_format() {
    let lab = "1795400132;1795313852;1797905732;1797905732;1797905732";
    let t = times(lab);
    assert_eq!(t.pregreet, 1_795_400_132);
    assert_eq!(t.dnsbl, 1_795_313_852);
    assert_eq!(t.bare_newline, 1_797_905_732);
    assert_eq!(t.to_string(), lab);
    assert_eq!(TestTimes::NEW.to_string(), "0;0;0;0;0");
    assert_eq!(times("1;1;1;1;1").pipelining, DISABLED_WHEN_WRITTEN);
    let max = format!("{0};{0};{0};{0};{0}", u64::MAX);
    assert_eq!(max.len(), MAX_RECORD_LEN);
    assert_eq!(times(&max).to_string(), max);
}

#[test]
fn record_with_wrong_field_count_is_rejected() {
    for (text, found) in [
        ("", 1),
        ("1", 1),
        ("1;2;3;4", 4),
        ("1;2;3;4;5;6", 6),
        ("1;2;3;4;5;", 6),
        (";;;;;;;;", 9),
    ] {
        match TestTimes::parse(text.as_bytes()) {
            Err(RecordError::FieldCount { found: f }) => assert_eq!(f, found, "{text:?}"),
            other => panic!("{text:?}: {other:?}"),
        }
    }
}

#[test]
fn record_field_errors_name_the_field() {
    for (text, test, position, why) in [
        ("1;;3;4;5", "dnsbl", 2, "empty"),
        (";2;3;4;5", "pregreet", 1, "empty"),
        ("1;2;x;4;5", "pipelining", 3, "not a decimal"),
        ("1;2;3;-4;5", "non_smtp_command", 4, "not a decimal"),
        ("+1;2;3;4;5", "pregreet", 1, "not a decimal"),
        (" 1;2;3;4;5", "pregreet", 1, "not a decimal"),
        ("1;2;3;4;5\n", "bare_newline", 5, "not a decimal"),
        ("1;2;3;4;5 ", "bare_newline", 5, "not a decimal"),
        ("1;2;3;4;0x10", "bare_newline", 5, "not a decimal"),
        ("1;2;3;4;18446744073709551616", "bare_newline", 5, "larger"),
        ("1;2;3;4;99999999999999999999", "bare_newline", 5, "larger"),
    ] {
        let err = TestTimes::parse(text.as_bytes()).unwrap_err();
        match &err {
            RecordError::Field {
                test: t,
                position: p,
                ..
            } => {
                assert_eq!((*t, *p), (test, position), "{text:?}");
                assert!(err.to_string().contains(why), "{text:?}: {err}");
                assert!(err.to_string().contains(test), "{err}");
            }
            other => panic!("{text:?}: {other:?}"),
        }
    }
}

#[test]
fn non_utf8_record_is_rejected() {
    let err = TestTimes::parse(b"1;2;\xff\xfe;4;5").unwrap_err();
    assert!(
        matches!(err, RecordError::Field { position: 3, .. }),
        "{err:?}"
    );
}

#[test]
fn oversized_record_is_rejected_before_parsing() {
    let long = format!("{};2;3;4;5", "1".repeat(200));
    assert!(matches!(
        TestTimes::parse(long.as_bytes()),
        Err(RecordError::TooLong { len: 208 })
    ));
    let huge = vec![b';'; 1 << 20];
    assert!(matches!(
        TestTimes::parse(&huge),
        Err(RecordError::TooLong { .. })
    ));
    // One byte past the longest valid record.
    let over = format!("{0};{0};{0};{0};1{0}", u64::MAX);
    assert!(matches!(
        TestTimes::parse(over.as_bytes()),
        Err(RecordError::TooLong { .. })
    ));
}

#[test]
fn garbage_never_panics_and_valid_parses_round_trip() {
    // A small deterministic generator biased towards digits and separators.
    let mut rng = SplitMix64::seeded(0x2545_f491_4f6c_dd1d);
    let mut next = move || rng.next_u64();
    let alphabet = b"0123456789;;;; x-\xff\n";
    let mut parsed = 0;
    for _ in 0..20_000 {
        let len = (next() % 40) as usize;
        let text: Vec<u8> = (0..len)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
            .collect();
        if let Ok(t) = TestTimes::parse(&text) {
            parsed += 1;
            assert_eq!(TestTimes::parse(t.to_string().as_bytes()).unwrap(), t);
        }
    }
    assert!(parsed > 0, "the generator never made a valid record");
}

// --- Policy ---

#[test]
fn due_tests_are_the_enabled_expired_or_never_passed_ones() {
    let record = TestTimes {
        pregreet: NOW + 10,
        dnsbl: NOW - 1,
        pipelining: NEVER_PASSED,
        non_smtp_command: DISABLED_WHEN_WRITTEN,
        bare_newline: NOW,
    };
    let due = due_tests(&record, &all_enabled(), NOW);
    assert_eq!(
        due,
        DueTests {
            pregreet: false,
            dnsbl: true,
            pipelining: true,
            non_smtp_command: true,
            // Expiring this very second is still valid: due only when now > expiry.
            bare_newline: false,
        }
    );
    assert!(due.any_deep());
    // Disabled tests are never due, whatever their time.
    let due = due_tests(&record, &early_only(), NOW);
    assert_eq!(
        due,
        DueTests {
            dnsbl: true,
            ..Default::default()
        }
    );
    assert!(!due.any_deep());
}

#[test]
fn pass_old_at_once_when_every_enabled_test_is_unexpired() {
    let record = TestTimes {
        pregreet: NOW + DAY,
        dnsbl: NOW + 60,
        pipelining: NEVER_PASSED,
        non_smtp_command: DISABLED_WHEN_WRITTEN,
        bare_newline: NOW - DAY,
    };
    assert!(is_pass_old(&record, &early_only(), NOW));
    assert_eq!(start(Some(&record), &early_only(), NOW), Start::PassOld);
    // One second later DNSBL has expired: only it is due, and a pass will be OLD.
    let s = screening(start(Some(&record), &early_only(), NOW + 61));
    assert_eq!(
        s.due,
        DueTests {
            dnsbl: true,
            ..Default::default()
        }
    );
    assert_eq!(s.pass_kind, PassKind::Old);
    // With the deep tests enabled the same record is not a pass.
    assert!(!is_pass_old(&record, &all_enabled(), NOW));
}

#[test]
fn unknown_client_is_new_with_every_enabled_test_due() {
    let s = screening(start(None, &early_only(), NOW));
    assert_eq!(s.times, TestTimes::NEW);
    assert_eq!(s.pass_kind, PassKind::New);
    assert_eq!(
        s.due,
        DueTests {
            pregreet: true,
            dnsbl: true,
            ..Default::default()
        }
    );
    // Nothing enabled: screened (not PASS OLD), nothing due; the session passes nothing.
    let s = screening(start(None, &EnabledTests::default(), NOW));
    assert!(s.due.is_empty());
}

#[test]
fn new_only_while_an_enabled_test_never_passed() {
    let mut record = times("0;1795313852;1;1;1");
    assert_eq!(pass_kind(&record, &early_only()), PassKind::New);
    // A 0 of a test that is disabled now does not make the client new.
    assert_eq!(
        pass_kind(
            &record,
            &EnabledTests {
                dnsbl: true,
                ..Default::default()
            }
        ),
        PassKind::Old
    );
    // A test disabled when the record was written (1) and enabled since is due, but a pass
    // of it is OLD: the client is not new.
    record.pregreet = NOW + DAY;
    let s = screening(start(Some(&record), &all_enabled(), NOW));
    assert!(s.due.pipelining && s.due.non_smtp_command && s.due.bare_newline);
    assert_eq!(s.pass_kind, PassKind::Old);
}

#[test]
fn first_pass_writes_the_lab_record() {
    // 127.0.0.11 in the lab: every test enabled, the early tests passed (negative SOA TTL
    // 120 s), then the deep tests at RCPT; PASS NEW and this exact record.
    let s = screening(start(None, &all_enabled(), NOW));
    let results = SessionResults {
        pregreet: Outcome::Passed,
        dnsbl: Outcome::Passed,
        pipelining: Outcome::Passed,
        non_smtp_command: Outcome::Passed,
        bare_newline: Outcome::Passed,
        dns_ttl: Some(Duration::from_secs(120)),
        ..Default::default()
    };
    let c = conclude(&s, &results, &all_enabled(), &TestTtls::default(), NOW);
    assert_eq!(c.pass, Some(PassKind::New));
    assert_eq!(
        c.update.unwrap().to_string(),
        "1795400132;1795313852;1797905732;1797905732;1797905732"
    );
    // The second connection, 0.1 s later, is PASS OLD at once.
    assert_eq!(
        start(c.update.as_ref(), &all_enabled(), NOW + 1),
        Start::PassOld
    );
}

#[test]
fn disabled_tests_are_written_as_one() {
    let s = screening(start(None, &early_only(), NOW));
    let results = SessionResults {
        pregreet: Outcome::Passed,
        dnsbl: Outcome::Passed,
        dns_ttl: Some(Duration::from_secs(120)),
        ..Default::default()
    };
    let c = conclude(&s, &results, &early_only(), &TestTtls::default(), NOW);
    assert_eq!(c.pass, Some(PassKind::New));
    assert_eq!(
        c.update,
        Some(TestTimes {
            pregreet: NOW + DAY,
            dnsbl: NOW + 120,
            pipelining: DISABLED_WHEN_WRITTEN,
            non_smtp_command: DISABLED_WHEN_WRITTEN,
            bare_newline: DISABLED_WHEN_WRITTEN,
        })
    );
}

#[test]
fn partial_pass_is_cached_without_a_pass_line_and_completes_as_new() {
    let ttls = TestTtls::default();
    // Session 1: early tests pass, the client quits before RCPT.
    let s = screening(start(None, &all_enabled(), NOW));
    let results = SessionResults {
        pregreet: Outcome::Passed,
        dnsbl: Outcome::Passed,
        ..Default::default()
    };
    let c = conclude(&s, &results, &all_enabled(), &ttls, NOW);
    assert_eq!(c.pass, None);
    let record = c.update.unwrap();
    // No DNS TTL: the minimum.
    assert_eq!(record, times(&format!("{};{};0;0;0", NOW + DAY, NOW + 60)));
    // Session 2: only the deep tests are due, and passing them is PASS NEW.
    let s = screening(start(Some(&record), &all_enabled(), NOW + 5));
    assert_eq!(s.pass_kind, PassKind::New);
    assert!(!s.due.pregreet && !s.due.dnsbl && s.due.any_deep());
    let results = SessionResults {
        pipelining: Outcome::Passed,
        non_smtp_command: Outcome::Passed,
        bare_newline: Outcome::Passed,
        ..Default::default()
    };
    let c = conclude(&s, &results, &all_enabled(), &ttls, NOW + 5);
    assert_eq!(c.pass, Some(PassKind::New));
    let deep = NOW + 5 + 30 * DAY;
    assert_eq!(
        c.update.unwrap(),
        times(&format!("{};{};{deep};{deep};{deep}", NOW + DAY, NOW + 60))
    );
}

#[test]
fn expired_test_re_passed_is_old_and_only_it_moves() {
    let record = times(&format!(
        "{};{};{};{};{}",
        NOW + 3_600,
        NOW - 10,
        NOW + DAY,
        NOW + DAY,
        NOW + DAY
    ));
    let s = screening(start(Some(&record), &all_enabled(), NOW));
    assert_eq!(
        s.due,
        DueTests {
            dnsbl: true,
            ..Default::default()
        }
    );
    let results = SessionResults {
        dnsbl: Outcome::Passed,
        dns_ttl: Some(Duration::from_secs(300)),
        ..Default::default()
    };
    let c = conclude(&s, &results, &all_enabled(), &TestTtls::default(), NOW);
    assert_eq!(c.pass, Some(PassKind::Old));
    let mut expected = record;
    expected.dnsbl = NOW + 300;
    assert_eq!(c.update, Some(expected));
}

#[test]
fn dns_ttl_is_clamped_to_min_and_max() {
    let ttls = TestTtls::default();
    assert_eq!(
        ttls.dnsbl(Some(Duration::from_secs(5))),
        Duration::from_secs(60)
    );
    assert_eq!(
        ttls.dnsbl(Some(Duration::from_secs(7_200))),
        Duration::from_secs(3_600)
    );
    assert_eq!(
        ttls.dnsbl(Some(Duration::from_secs(300))),
        Duration::from_secs(300)
    );
    assert_eq!(ttls.dnsbl(None), Duration::from_secs(60));
    let s = screening(start(None, &early_only(), NOW));
    let results = SessionResults {
        dnsbl: Outcome::Passed,
        dns_ttl: Some(Duration::from_secs(86_400)),
        ..Default::default()
    };
    let c = conclude(&s, &results, &early_only(), &ttls, NOW);
    assert_eq!(c.update.unwrap().dnsbl, NOW + 3_600);
    // Pregreet is still due: no pass line yet.
    assert_eq!(c.pass, None);
}

#[test]
fn dnswl_marks_every_test_passed_disabled_ones_too() {
    // 127.0.0.30 in the lab: all five fields set to now + 300 s (the DNSWL A TTL).
    let s = screening(start(None, &early_only(), NOW));
    let results = SessionResults {
        dnsbl: Outcome::Passed,
        dns_ttl: Some(Duration::from_secs(300)),
        dnswl_allowlisted: true,
        ..Default::default()
    };
    let c = conclude(&s, &results, &early_only(), &TestTtls::default(), NOW);
    assert_eq!(c.pass, Some(PassKind::New));
    let until = NOW + 300;
    assert_eq!(
        c.update.unwrap().to_string(),
        format!("{until};{until};{until};{until};{until}")
    );
    // Deep tests enabled later are not due for this client until its DNSWL pass expires.
    assert_eq!(
        start(c.update.as_ref(), &all_enabled(), NOW + 300),
        Start::PassOld
    );
    let s = screening(start(c.update.as_ref(), &all_enabled(), NOW + 301));
    assert_eq!(s.pass_kind, PassKind::Old);
    assert!(s.due.dnsbl && s.due.pregreet && s.due.any_deep());
}

#[test]
fn dnswl_never_shortens_a_later_expiry_and_skips_pending_deep_tests() {
    let record = times(&format!("{};{};0;0;0", NOW + DAY, NOW - 1));
    let s = screening(start(Some(&record), &all_enabled(), NOW));
    assert_eq!(s.pass_kind, PassKind::New);
    let results = SessionResults {
        dnsbl: Outcome::Passed,
        dns_ttl: None,
        dnswl_allowlisted: true,
        ..Default::default()
    };
    let c = conclude(&s, &results, &all_enabled(), &TestTtls::default(), NOW);
    // The deep tests were due and never ran: the allowlisting passes them.
    assert_eq!(c.pass, Some(PassKind::New));
    let until = NOW + 60;
    assert_eq!(
        c.update.unwrap(),
        times(&format!("{};{until};{until};{until};{until}", NOW + DAY))
    );
}

#[test]
fn ignored_deep_test_passes_until_the_shortest_ttl() {
    let ttls = TestTtls::default();
    assert_eq!(ttls.shortest(), Duration::from_secs(60));
    let record = times(&format!("{};{};0;0;0", NOW + DAY, NOW + 3_600));
    let s = screening(start(Some(&record), &all_enabled(), NOW));
    let results = SessionResults {
        pipelining: Outcome::Ignored,
        non_smtp_command: Outcome::Passed,
        bare_newline: Outcome::Ignored,
        ..Default::default()
    };
    let c = conclude(&s, &results, &all_enabled(), &ttls, NOW);
    assert_eq!(c.pass, Some(PassKind::New));
    let record = c.update.unwrap();
    assert_eq!(record.pipelining, NOW + 60);
    assert_eq!(record.non_smtp_command, NOW + 30 * DAY);
    assert_eq!(record.bare_newline, NOW + 60);
    // The shortest TTL counts every configured TTL, enabled or not.
    let ttls = TestTtls {
        pregreet: Duration::from_secs(7_200),
        dnsbl_min: Duration::from_secs(600),
        dnsbl_max: Duration::from_secs(900),
        pipelining: Duration::from_secs(86_400),
        non_smtp_command: Duration::from_secs(300),
        bare_newline: Duration::from_secs(86_400),
    };
    assert_eq!(ttls.shortest(), Duration::from_secs(300));
}

#[test]
fn ignored_early_test_passes_nothing() {
    let s = screening(start(None, &early_only(), NOW));
    let results = SessionResults {
        pregreet: Outcome::Ignored,
        dnsbl: Outcome::Passed,
        ..Default::default()
    };
    let c = conclude(&s, &results, &early_only(), &TestTtls::default(), NOW);
    // DNSBL is cached, pregreet stays "never passed" and is tested again next time.
    assert_eq!(c.pass, None);
    let record = c.update.unwrap();
    assert_eq!(record.pregreet, NEVER_PASSED);
    assert_eq!(record.dnsbl, NOW + 60);
    // Only ignored early tests: nothing to write at all.
    let results = SessionResults {
        pregreet: Outcome::Ignored,
        dnsbl: Outcome::Ignored,
        ..Default::default()
    };
    let c = conclude(&s, &results, &early_only(), &TestTtls::default(), NOW);
    assert_eq!(
        c,
        Conclusion {
            pass: None,
            update: None
        }
    );
}

#[test]
fn any_failure_caches_nothing() {
    let record = times(&format!("{};{};0;0;0", NOW + DAY, NOW - 1));
    let s = screening(start(Some(&record), &all_enabled(), NOW));
    let passing = SessionResults {
        pregreet: Outcome::Passed,
        dnsbl: Outcome::Passed,
        pipelining: Outcome::Passed,
        non_smtp_command: Outcome::Passed,
        bare_newline: Outcome::Passed,
        dns_ttl: Some(Duration::from_secs(300)),
        dnswl_allowlisted: true,
        ..Default::default()
    };
    let nothing = Conclusion {
        pass: None,
        update: None,
    };
    // The passing session itself does update (so each case below is a real change).
    assert!(
        conclude(&s, &passing, &all_enabled(), &TestTtls::default(), NOW)
            .update
            .is_some()
    );
    let mut failures = Vec::new();
    for test in Test::ALL {
        let mut r = passing;
        match test {
            Test::Pregreet => r.pregreet = Outcome::Failed,
            Test::Dnsbl => r.dnsbl = Outcome::Failed,
            Test::Pipelining => r.pipelining = Outcome::Failed,
            Test::NonSmtpCommand => r.non_smtp_command = Outcome::Failed,
            Test::BareNewline => r.bare_newline = Outcome::Failed,
        }
        failures.push(r);
    }
    failures.push(SessionResults {
        denylisted: true,
        ..passing
    });
    failures.push(SessionResults {
        allowlist_veto: true,
        ..passing
    });
    for r in failures {
        assert!(r.failed());
        assert_eq!(
            conclude(&s, &r, &all_enabled(), &TestTtls::default(), NOW),
            nothing,
            "{r:?}"
        );
    }
}

#[test]
fn times_saturate_instead_of_wrapping() {
    let s = screening(start(None, &early_only(), u64::MAX - 5));
    let results = SessionResults {
        pregreet: Outcome::Passed,
        dnsbl: Outcome::Passed,
        ..Default::default()
    };
    let c = conclude(
        &s,
        &results,
        &early_only(),
        &TestTtls::default(),
        u64::MAX - 5,
    );
    assert_eq!(c.update.unwrap().pregreet, u64::MAX);
    assert!(retain(
        &c.update.unwrap(),
        u64::MAX,
        Duration::from_secs(u64::MAX)
    ));
}

#[test]
fn retention_waits_until_every_test_expired_long_enough() {
    let week = Duration::from_secs(7 * DAY);
    let latest = NOW - 7 * DAY;
    let record = times(&format!(
        "{};{latest};0;1;{}",
        NOW - 30 * DAY,
        NOW - 8 * DAY
    ));
    assert!(retain(&record, NOW, week), "expired exactly a week ago");
    assert!(!retain(&record, NOW + 1, week), "a week and a second ago");
    // One unexpired test keeps the record, however old the others are.
    let record = times(&format!("1;{};0;0;{}", NOW - 100 * DAY, NOW + 10));
    assert!(retain(&record, NOW, week));
    assert!(!retain(&record, NOW + 10 + 7 * DAY + 1, week));
    // Nothing ever passed: nothing to keep.
    assert!(!retain(&TestTimes::NEW, NOW, week));
    assert!(retain(&record, NOW, Duration::ZERO));
}
