use screen_tests::rng::SplitMix64;

use super::*;
use crate::{
    escape::c_escape,
    smtpd::{
        DeepTests,
        event::MAX_LOGGED_FIELD,
        line::LineReader,
        test_support::{PIPELINED, client, deep_engine, engine, engine_with, lines},
    },
    test_state::Outcome as TestOutcome,
};

/// The reply bytes to `line`, which must leave the session open and log nothing.
fn reply(engine: &mut Engine, line: &str) -> String {
    let step = engine.on_command(line.as_bytes());
    assert_eq!(step.next, Next::Continue, "{line:?} ended the session");
    assert!(step.events.is_empty(), "{line:?} logged {:?}", step.events);
    String::from_utf8(step.bytes()).unwrap()
}

// Commands

#[test]
fn the_greeting_is_the_banner_unless_the_client_pregreeted() {
    let mut engine = engine();
    assert_eq!(
        engine.greeting().unwrap().to_bytes(),
        b"220 mx.example.test ESMTP Postfix\r\n"
    );
    engine.set_pregreeted();
    assert_eq!(engine.greeting(), None);
}

#[test]
fn helo_and_ehlo() {
    let mut e = engine();
    assert_eq!(
        reply(&mut e, "HELO client.example"),
        "250 mx.example.test\r\n"
    );
    assert_eq!(e.helo(), Some("client.example"));
    assert_eq!(e.proto(), Proto::Smtp);
    assert_eq!(reply(&mut e, "HELO"), "501 Syntax: HELO hostname\r\n");
    assert_eq!(reply(&mut e, "HELO    "), "501 Syntax: HELO hostname\r\n");
    assert_eq!(reply(&mut e, "EHLO"), "501 Syntax: EHLO hostname\r\n");
    // Extra words are ignored.
    assert_eq!(
        reply(&mut e, "HELO  a.example b c"),
        "250 mx.example.test\r\n"
    );
    assert_eq!(e.helo(), Some("a.example"));
}

#[test]
fn the_ehlo_reply_matches_the_lab_capture() {
    let mut e = engine();
    assert_eq!(
        reply(&mut e, "EHLO client.example"),
        "250-mx.example.test\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n\
         250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n\
         250 CHUNKING\r\n"
    );
    assert_eq!(e.proto(), Proto::Esmtp);
    // HELO does not downgrade the protocol.
    reply(&mut e, "HELO client.example");
    assert_eq!(e.proto(), Proto::Esmtp);
}

#[test]
fn the_ehlo_reply_follows_the_settings() {
    let mut e = engine_with(|s| {
        s.starttls_offered = true;
        s.disable_vrfy = true;
        s.smtputf8 = false;
        s.message_size_limit = 0;
    });
    assert_eq!(
        reply(&mut e, "EHLO c"),
        "250-mx.example.test\r\n250-SIZE\r\n250-ETRN\r\n250-STARTTLS\r\n\
         250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250 CHUNKING\r\n"
    );
}

#[test]
fn commands_are_case_insensitive() {
    let mut e = engine();
    assert_eq!(reply(&mut e, "ehlo c"), reply(&mut engine(), "EHLO c"));
    assert_eq!(reply(&mut e, "nOoP"), "250 2.0.0 Ok\r\n");
    assert_eq!(reply(&mut e, "mail from:<a@b>"), "250 2.1.0 Ok\r\n");
    assert_eq!(reply(&mut e, "  rset"), "250 2.0.0 Ok\r\n");
    let step = e.on_command(b"qUiT");
    assert_eq!(step.next, Next::Stop(SessionEnd::Quit));
}

#[test]
fn mail_from() {
    let mut e = engine();
    assert_eq!(
        reply(&mut e, "MAIL"),
        "501 5.5.4 Syntax: MAIL FROM:<address>\r\n"
    );
    assert_eq!(
        reply(&mut e, "MAIL FROM"),
        "501 5.5.4 Syntax: MAIL FROM:<address>\r\n"
    );
    assert_eq!(e.sender(), None);
    assert_eq!(
        reply(&mut e, "MAIL FROM:<s@example.org> SIZE=100 BODY=8BITMIME"),
        "250 2.1.0 Ok\r\n"
    );
    assert_eq!(e.sender(), Some("s@example.org"));
    assert_eq!(
        reply(&mut e, "MAIL FROM:<t@example.org>"),
        "503 5.5.1 Error: nested MAIL command\r\n"
    );
    assert_eq!(reply(&mut e, "RSET"), "250 2.0.0 Ok\r\n");
    assert_eq!(e.sender(), None);
    assert_eq!(reply(&mut e, "MAIL FROM:<>"), "250 2.1.0 Ok\r\n");
    assert_eq!(e.sender(), Some(""));
    // EHLO starts a new transaction.
    reply(&mut e, "EHLO c");
    assert_eq!(e.sender(), None);
}

#[test]
fn helo_required() {
    let mut e = engine_with(|s| s.helo_required = true);
    assert_eq!(
        reply(&mut e, "MAIL FROM:<a@b>"),
        "503 5.5.1 Error: send HELO/EHLO first\r\n"
    );
    assert_eq!(
        reply(&mut e, "ETRN example.org"),
        "503 5.5.1 Error: send HELO/EHLO first\r\n"
    );
    reply(&mut e, "HELO c");
    assert_eq!(reply(&mut e, "MAIL FROM:<a@b>"), "250 2.1.0 Ok\r\n");
    assert_eq!(
        reply(&mut e, "ETRN example.org"),
        "458 Unable to queue messages\r\n"
    );
    // Without the setting no HELO is needed.
    assert_eq!(reply(&mut engine(), "MAIL FROM:<a@b>"), "250 2.1.0 Ok\r\n");
}

#[test]
fn addresses_are_read_as_postscreen_reads_them() {
    for (arg, address) in [
        ("FROM:<a@example.org>", "a@example.org"),
        ("FROM: <a@example.org> SIZE=1", "a@example.org"),
        ("FROM:a@example.org SIZE=1", "a@example.org"),
        ("FROM:   bare@example.org", "bare@example.org"),
        ("FROM:<>", ""),
        ("FROM:", ""),
        ("FROM:<\"john doe\"@example.org>", "john doe@example.org"),
        ("FROM:<\"a>b\"@example.org>", "a>b@example.org"),
        ("FROM:<a\\>b@example.org>", "a>b@example.org"),
        ("FROM:<trailing\\", "trailing"),
        (
            "FROM:<@relay1,@relay2:user@example.org>",
            "user@example.org",
        ),
        ("FROM:<unterminated@example.org", "unterminated@example.org"),
        // postscreen does not check the word before the colon.
        ("TO:<odd@example.org>", "odd@example.org"),
    ] {
        let mut e = engine();
        reply(&mut e, &format!("MAIL {arg}"));
        assert_eq!(e.sender(), Some(address), "{arg:?}");
    }
}

#[test]
fn rcpt_is_always_refused_and_logged() {
    let mut e = engine();
    reply(&mut e, "EHLO h.example");
    reply(&mut e, "MAIL FROM:<s@example.org>");
    assert!(!e.rcpt_reached());
    let step = e.on_command(b"RCPT TO:<r@example.test> NOTIFY=NEVER");
    assert_eq!(step.bytes(), b"450 4.3.2 Service currently unavailable\r\n");
    assert_eq!(step.next, Next::Continue);
    assert_eq!(
        lines(&step.events),
        [
            "NOQUEUE: reject: RCPT from [127.0.0.11]:58529: 450 4.3.2 Service currently \
          unavailable; from=<s@example.org>, to=<r@example.test>, proto=ESMTP, \
          helo=<h.example>"
        ]
    );
    assert!(e.rcpt_reached());
    // Every further recipient is refused and logged too.
    let step = e.on_command(b"RCPT TO:<second@example.test>");
    assert_eq!(step.events.len(), 1);
}

#[test]
fn rcpt_errors() {
    let mut e = engine();
    assert_eq!(
        reply(&mut e, "RCPT TO:<r@example.test>"),
        "503 5.5.1 Error: need MAIL command\r\n"
    );
    // Reaching RCPT is what counts for the deep tests, even when it fails.
    assert!(e.rcpt_reached());
    reply(&mut e, "MAIL FROM:<s@example.org>");
    assert_eq!(
        reply(&mut e, "RCPT"),
        "501 5.5.4 Syntax: RCPT TO:<address>\r\n"
    );
    assert_eq!(
        reply(&mut e, "RCPT TO"),
        "501 5.5.4 Syntax: RCPT TO:<address>\r\n"
    );
}

#[test]
fn the_noqueue_line_without_ehlo() {
    let mut e = engine();
    reply(&mut e, "MAIL FROM:<>");
    let step = e.on_command(b"RCPT TO:postmaster");
    assert_eq!(
        lines(&step.events),
        [
            "NOQUEUE: reject: RCPT from [127.0.0.11]:58529: 450 4.3.2 Service currently \
          unavailable; from=<>, to=<postmaster>, proto=SMTP, helo=<>"
        ]
    );
}

#[test]
fn an_enforce_action_changes_the_rcpt_reply() {
    let mut e = engine();
    let dnsbl = Reply::dnsbl_enforce("127.0.0.40".parse().unwrap(), "public-bl.example").unwrap();
    e.set_rcpt_reply(dnsbl).unwrap();
    reply(&mut e, "HELO h.example");
    reply(&mut e, "MAIL FROM:<s@example.org>");
    let step = e.on_command(b"RCPT TO:<r@example.test>");
    assert_eq!(
        step.bytes(),
        b"550 5.7.1 Service unavailable; client [127.0.0.40] blocked using \
          public-bl.example\r\n"
    );
    // The lab's line for this client.
    assert_eq!(
        lines(&step.events),
        [
            "NOQUEUE: reject: RCPT from [127.0.0.11]:58529: 550 5.7.1 Service unavailable; \
          client [127.0.0.40] blocked using public-bl.example; from=<s@example.org>, \
          to=<r@example.test>, proto=SMTP, helo=<h.example>"
        ]
    );
    // VRFY gets the same reply.
    assert_eq!(
        reply(&mut e, "VRFY r"),
        String::from_utf8(step.bytes()).unwrap()
    );
    // The last enforce action wins.
    e.set_rcpt_reply(Reply::protocol_error_enforce()).unwrap();
    assert_eq!(
        e.on_command(b"RCPT TO:<x@y>").bytes(),
        b"550 5.5.1 Protocol error\r\n"
    );
    assert!(e.set_rcpt_reply(Reply::ok()).is_err());
}

#[test]
fn data_is_refused_and_ends_the_session() {
    for (setup, line, expected) in [
        (&[][..], "DATA", "503 5.5.1 Error: need RCPT command\r\n"),
        (&[][..], "DATA x", "501 5.5.4 Syntax: DATA\r\n"),
        (
            &["MAIL FROM:<a@b>"][..],
            "data",
            "554 5.5.1 Error: no valid recipients\r\n",
        ),
        (
            &["MAIL FROM:<a@b>", "RCPT TO:<c@d>"][..],
            "DATA",
            "554 5.5.1 Error: no valid recipients\r\n",
        ),
    ] {
        let mut e = engine();
        for command in setup {
            e.on_command(command.as_bytes());
        }
        let step = e.on_command(line.as_bytes());
        assert_eq!(
            String::from_utf8(step.bytes()).unwrap(),
            expected,
            "{setup:?} {line}"
        );
        assert_eq!(
            lines(&step.events),
            ["DATA without valid RCPT from [127.0.0.11]:58529"]
        );
        assert_eq!(step.next, Next::Stop(SessionEnd::DataRefused));
        assert!(step.closes());
        // Nothing more happens after the end.
        let after = e.on_command(b"NOOP");
        assert_eq!(after.reply, None);
        assert!(after.events.is_empty());
        assert_eq!(after.next, Next::Stop(SessionEnd::DataRefused));
    }
}

#[test]
fn bdat_is_refused_and_ends_the_session() {
    for (setup, line, expected) in [
        (&[][..], "BDAT", "501 5.5.4 Syntax: BDAT count [LAST]\r\n"),
        (
            &[][..],
            "BDAT 100 LAST",
            "554 5.5.1 Error: need MAIL command\r\n",
        ),
        (
            &["MAIL FROM:<a@b>"][..],
            "BDAT 100",
            "554 5.5.1 Error: no valid recipients\r\n",
        ),
    ] {
        let mut e = engine();
        for command in setup {
            e.on_command(command.as_bytes());
        }
        let step = e.on_command(line.as_bytes());
        assert_eq!(String::from_utf8(step.bytes()).unwrap(), expected, "{line}");
        assert_eq!(
            lines(&step.events),
            ["BDAT without valid RCPT from [127.0.0.11]:58529"]
        );
        assert_eq!(step.next, Next::Stop(SessionEnd::DataRefused));
    }
}

#[test]
fn vrfy_etrn_and_unsupported_commands_as_in_the_lab() {
    let mut e = engine();
    assert_eq!(
        reply(&mut e, "VRFY postmaster"),
        "450 4.3.2 Service currently unavailable\r\n"
    );
    assert_eq!(
        reply(&mut e, "ETRN example.org"),
        "458 Unable to queue messages\r\n"
    );
    assert_eq!(
        reply(&mut e, "AUTH PLAIN AGZvbwBiYXI="),
        "502 5.5.2 Error: command not recognized\r\n"
    );
    assert_eq!(
        reply(&mut e, "XCLIENT ADDR=1.2.3.4"),
        "502 5.5.2 Error: command not recognized\r\n"
    );
    assert_eq!(
        reply(&mut e, "STARTTLS"),
        "502 5.5.1 Error: command not implemented\r\n"
    );
    assert_eq!(
        reply(&mut e, "XFORWARD NAME=x"),
        "502 5.5.2 Error: command not recognized\r\n"
    );
    assert_eq!(reply(&mut e, "VRFY"), "501 5.5.4 Syntax: VRFY address\r\n");
    assert_eq!(reply(&mut e, "ETRN"), "500 Syntax: ETRN domain\r\n");
    assert_eq!(reply(&mut e, "ETRN  "), "500 Syntax: ETRN domain\r\n");
}

#[test]
fn vrfy_can_be_disabled() {
    let mut e = engine_with(|s| s.disable_vrfy = true);
    assert_eq!(
        reply(&mut e, "VRFY postmaster"),
        "502 5.5.1 VRFY command is disabled\r\n"
    );
    // The syntax check comes first.
    assert_eq!(reply(&mut e, "VRFY"), "501 5.5.4 Syntax: VRFY address\r\n");
}

#[test]
fn unknown_and_garbage_commands_are_not_recognized() {
    let mut e = engine();
    for line in [
        &b""[..],
        b"   ",
        b"GET / HTTP/1.0",
        b"Subject: hello",
        b"NOOP\tx",
        b"\xff\xfe\x00",
        b"HELOX a",
        b"QUITE",
    ] {
        let step = e.on_command(line);
        assert_eq!(
            step.bytes(),
            b"502 5.5.2 Error: command not recognized\r\n",
            "{line:?}"
        );
        assert_eq!(step.next, Next::Continue);
        assert_eq!(e.last_command(), AFTER_UNKNOWN);
    }
}

#[test]
fn a_nul_ends_the_command_line() {
    let mut e = engine();
    assert_eq!(reply(&mut e, "NOOP\0garbage"), "250 2.0.0 Ok\r\n");
    reply(&mut e, "MAIL FROM:<a\0b@example.org>");
    assert_eq!(e.sender(), Some("a"));
}

#[test]
fn quit() {
    let mut e = engine();
    let step = e.on_command(b"QUIT");
    assert_eq!(step.bytes(), b"221 2.0.0 Bye\r\n");
    assert_eq!(step.next, Next::Stop(SessionEnd::Quit));
    assert!(step.closes());
    assert!(step.events.is_empty());
}

#[test]
fn starttls() {
    let mut e = engine();
    assert_eq!(
        reply(&mut e, "STARTTLS"),
        "502 5.5.1 Error: command not implemented\r\n"
    );

    let mut e = engine_with(|s| s.starttls_offered = true);
    assert_eq!(
        reply(&mut e, "STARTTLS now"),
        "501 5.5.4 Syntax: STARTTLS\r\n"
    );
    reply(&mut e, "EHLO c.example");
    reply(&mut e, "MAIL FROM:<a@b>");
    let step = e.on_command(b"STARTTLS");
    assert_eq!(step.reply, None);
    assert_eq!(step.next, Next::Stop(SessionEnd::StartTls));
    assert!(!step.closes());
    // The caller answers.
    assert_eq!(
        e.tls_ready().to_bytes(),
        b"220 2.0.0 Ready to start TLS\r\n"
    );
    e.tls_established();
    assert_eq!(e.helo(), None);
    assert_eq!(e.sender(), None);
    assert_eq!(e.greeting(), None);
    assert!(!reply(&mut e, "EHLO c.example").contains("STARTTLS"));
    assert_eq!(
        reply(&mut e, "STARTTLS"),
        "554 5.5.1 Error: TLS already active\r\n"
    );
}

#[test]
fn starttls_that_fails_resumes_in_plaintext() {
    let mut e = engine_with(|s| {
        s.starttls_offered = true;
        s.reject_footer = Some("help".into());
    });
    reply(&mut e, "EHLO c.example");
    assert_eq!(
        e.on_command(b"STARTTLS").next,
        Next::Stop(SessionEnd::StartTls)
    );
    // Stopped until the caller says how STARTTLS went.
    assert_eq!(e.on_command(b"NOOP").reply, None);
    assert_eq!(
        e.tls_unavailable().to_bytes(),
        b"454-4.7.0 TLS not available due to local problem\r\n454 4.7.0 help\r\n"
    );
    assert_eq!(reply(&mut e, "NOOP"), "250 2.0.0 Ok\r\n");
    // Still plaintext: the greeting rules and the EHLO offer are unchanged.
    assert!(reply(&mut e, "EHLO c.example").contains("250-STARTTLS\r\n"));
    assert_eq!(e.helo(), Some("c.example"));
}

#[test]
fn the_seventh_noop_with_a_limit_of_six_gets_421() {
    let mut e = engine_with(|s| s.command_count_limit = 6);
    for _ in 0..6 {
        assert_eq!(reply(&mut e, "NOOP"), "250 2.0.0 Ok\r\n");
    }
    let step = e.on_command(b"NOOP");
    assert_eq!(
        step.bytes(),
        b"421 mx.example.test Service unavailable - try again later\r\n"
    );
    assert_eq!(
        lines(&step.events),
        ["COMMAND COUNT LIMIT from [127.0.0.11]:58529 after NOOP"]
    );
    assert_eq!(step.next, Next::Stop(SessionEnd::CommandCountLimit));
}

#[test]
fn quit_is_exempt_from_the_count_limit() {
    let mut e = engine_with(|s| s.command_count_limit = 2);
    reply(&mut e, "NOOP");
    reply(&mut e, "NOOP");
    let step = e.on_command(b"QUIT");
    assert_eq!(step.bytes(), b"221 2.0.0 Bye\r\n");
    assert_eq!(e.command_count(), 3);
}

#[test]
fn the_count_limit_names_the_previous_command() {
    let mut e = engine_with(|s| s.command_count_limit = 1);
    reply(&mut e, "EHLO c");
    let step = e.on_command(b"MAIL FROM:<a@b>");
    assert_eq!(
        lines(&step.events),
        ["COMMAND COUNT LIMIT from [127.0.0.11]:58529 after EHLO"]
    );
    // ... and RCPT over the limit still counts as reaching RCPT, as in postscreen.
    let mut e = engine_with(|s| s.command_count_limit = 1);
    reply(&mut e, "MAIL FROM:<a@b>");
    let step = e.on_command(b"RCPT TO:<c@d>");
    assert_eq!(step.next, Next::Stop(SessionEnd::CommandCountLimit));
    assert!(e.rcpt_reached());
}

#[test]
fn length_and_time_limits_name_the_last_command() {
    let mut e = engine();
    let step = e.on_time_limit();
    assert_eq!(
        step.bytes(),
        b"421 4.4.2 mx.example.test Error: timeout exceeded\r\n"
    );
    assert_eq!(
        lines(&step.events),
        ["COMMAND TIME LIMIT from [127.0.0.11]:58529 after CONNECT"]
    );
    assert_eq!(step.next, Next::Stop(SessionEnd::CommandTimeLimit));

    let mut e = engine();
    reply(&mut e, "EHLO c");
    let step = e.on_line_too_long();
    assert_eq!(
        step.bytes(),
        b"421 mx.example.test Service unavailable - try again later\r\n"
    );
    assert_eq!(
        lines(&step.events),
        ["COMMAND LENGTH LIMIT from [127.0.0.11]:58529 after EHLO"]
    );
    assert_eq!(step.next, Next::Stop(SessionEnd::CommandLengthLimit));

    let mut e = engine();
    let step = e.on_hangup(Duration::from_millis(1_200));
    assert_eq!(step.reply, None);
    assert_eq!(
        lines(&step.events),
        ["HANGUP after 1.2 from [127.0.0.11]:58529 in tests after SMTP handshake"]
    );
}

#[test]
fn x21_answers_everything_but_quit_with_the_final_reply() {
    let mut e = engine();
    e.set_final_reply(Reply::no_system_resources());
    let step = e.on_command(b"EHLO c");
    assert_eq!(step.bytes(), b"421 4.3.2 No system resources\r\n");
    assert_eq!(step.next, Next::Stop(SessionEnd::FinalReply));

    let mut e = engine();
    e.set_final_reply(Reply::no_system_resources());
    assert_eq!(e.on_command(b"QUIT").bytes(), b"221 2.0.0 Bye\r\n");
}

#[test]
fn soft_bounce_rewrites_replies_and_logs() {
    let mut e = engine_with(|s| {
        s.soft_bounce = true;
        s.rcpt_reply = Reply::denylist_enforce();
    });
    assert_eq!(reply(&mut e, "HELO"), "401 Syntax: HELO hostname\r\n");
    assert_eq!(
        reply(&mut e, "AUTH x"),
        "402 4.5.2 Error: command not recognized\r\n"
    );
    assert_eq!(reply(&mut e, "NOOP"), "250 2.0.0 Ok\r\n");
    reply(&mut e, "EHLO h");
    reply(&mut e, "MAIL FROM:<s@x>");
    let step = e.on_command(b"RCPT TO:<r@y>");
    assert_eq!(step.bytes(), b"450 4.3.2 Service currently unavailable\r\n");
    assert_eq!(
        lines(&step.events),
        [
            "NOQUEUE: reject: RCPT from [127.0.0.11]:58529: 450 4.3.2 Service currently \
          unavailable; from=<s@x>, to=<r@y>, proto=ESMTP, helo=<h>"
        ]
    );
    let step = e.on_command(b"DATA");
    assert_eq!(step.bytes(), b"454 4.5.1 Error: no valid recipients\r\n");
}

#[test]
fn the_footer_is_sent_but_not_logged() {
    let mut e = engine_with(|s| {
        s.reject_footer = Some("Contact postmaster@example.test, client $client_address".into())
    });
    reply(&mut e, "MAIL FROM:<s@x>");
    let step = e.on_command(b"RCPT TO:<r@y>");
    assert_eq!(
        String::from_utf8(step.bytes()).unwrap(),
        "450-4.3.2 Service currently unavailable\r\n\
         450 4.3.2 Contact postmaster@example.test, client 127.0.0.11\r\n"
    );
    assert!(lines(&step.events)[0].contains(": 450 4.3.2 Service currently unavailable; from"));
    assert_eq!(reply(&mut e, "NOOP"), "250 2.0.0 Ok\r\n");
}

#[test]
fn logged_fields_are_escaped_and_bounded() {
    let mut e = engine();
    e.on_command(b"HELO bad\rname\x1b\xff\xfe");
    assert_eq!(e.helo(), Some("bad\\rname\\033\\377\\376"));
    reply(&mut e, "HELO grüße.example");
    assert_eq!(e.helo(), Some("grüße.example"));
    let long = "a".repeat(2000);
    reply(&mut e, &format!("MAIL FROM:<{long}>"));
    assert_eq!(e.sender().unwrap().len(), MAX_LOGGED_FIELD);
    // An escape is never cut in half.
    let field = log_field(&[0x01; 400]);
    assert!(field.len() <= MAX_LOGGED_FIELD);
    assert_eq!(field.len() % 4, 0);
    assert_eq!(log_field("é\u{85}".as_bytes()), "é\\u{85}");
}

#[test]
fn nothing_panics_on_random_input() {
    // A deterministic stream of mostly SMTP-ish bytes.
    let mut rng = SplitMix64::seeded(0x2545_f491_4f6c_dd1d);
    let mut next = move || rng.next_u64();
    let alphabet = b"HELOEHLOMAILFROMRCPTTODATABDATQUITVRFYETRN:<>@\" \\\x00\xff\r\t.";
    for _ in 0..2_000 {
        let mut e = engine_with(|s| s.command_count_limit = 50);
        for _ in 0..60 {
            let len = (next() % 40) as usize;
            let line: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let step = e.on_command(&line);
            let bytes = step.bytes();
            // Every reply is well-formed: lines of NNN[- ]text CRLF, nothing else.
            if !bytes.is_empty() {
                let text = String::from_utf8(bytes).unwrap();
                for l in text.split_terminator("\r\n") {
                    assert!(l.len() >= 4 && l.as_bytes()[..3].iter().all(u8::is_ascii_digit));
                    assert!(!l.contains(['\r', '\n']));
                }
            }
            for event in &step.events {
                let line = event.line(client()).to_string();
                assert!(!line.contains(['\r', '\n', '\0']), "{line:?}");
            }
        }
    }
}

// Deep protocol tests

/// What the driver would see feeding `chunks` as successive reads.
#[derive(Debug, Default)]
struct Fed {
    transcript: String,
    events: Vec<String>,
    end: Option<SessionEnd>,
}

fn feed(engine: &mut Engine, chunks: &[&[u8]]) -> Fed {
    let mut reader = LineReader::new(engine.settings().line_length_limit);
    let mut fed = Fed::default();
    for chunk in chunks {
        assert_eq!(reader.extend(chunk), chunk.len(), "chunk does not fit");
        while let Some(line) = reader.next_line().unwrap() {
            let step = engine.on_line(line);
            fed.transcript
                .push_str(&String::from_utf8(step.bytes()).unwrap());
            fed.events.extend(lines(&step.events));
            if let Next::Stop(end) = step.next {
                fed.end = Some(end);
                return fed;
            }
        }
    }
    fed
}

#[test]
fn the_labs_pipelining_line() {
    let mut e = deep_engine(|d| d.pipelining = Some(TestAction::Enforce));
    let fed = feed(&mut e, &[PIPELINED]);
    assert_eq!(
        fed.events,
        ["COMMAND PIPELINING from [127.0.0.11]:58529 after EHLO: MAIL FROM:<p@example.org>\\r\\n"]
    );
    // Both commands are still answered.
    assert!(fed.transcript.ends_with("250 CHUNKING\r\n250 2.1.0 Ok\r\n"));
}

#[test]
fn two_commands_in_one_read_are_pipelining_at_every_split() {
    let first = b"EHLO h.example\r\n".len();
    for k in 0..=PIPELINED.len() {
        let mut e = deep_engine(|d| d.pipelining = Some(TestAction::Enforce));
        let fed = feed(&mut e, &[&PIPELINED[..k], &PIPELINED[k..]]);
        assert!(fed.transcript.ends_with("250 2.1.0 Ok\r\n"), "split at {k}");
        assert_eq!(fed.end, None);
        if k == first {
            // The reads split exactly between the commands: a client that waited.
            assert!(fed.events.is_empty(), "split at {k}: {:?}", fed.events);
            assert_eq!(e.deep_test_results().pipelining, TestOutcome::NotCompleted);
            continue;
        }
        // What was buffered behind EHLO when it completed.
        let pending = if k > first {
            &PIPELINED[first..k]
        } else {
            &PIPELINED[first..]
        };
        assert_eq!(
            fed.events,
            [format!(
                "COMMAND PIPELINING from [127.0.0.11]:58529 after EHLO: {}",
                c_escape(pending, 1000)
            )],
            "split at {k}"
        );
        assert_eq!(e.deep_test_results().pipelining, TestOutcome::Failed);
    }
}

#[test]
fn one_command_split_at_every_position_violates_nothing() {
    let input = b"MAIL FROM:<a@example.org>\r\n";
    for k in 0..=input.len() {
        for j in k..=input.len() {
            let mut e = deep_engine(|d| {
                d.pipelining = Some(TestAction::Drop);
                d.non_smtp_command = Some(TestAction::Drop);
                d.bare_newline = Some(TestAction::Drop);
            });
            let fed = feed(&mut e, &[&input[..k], &input[k..j], &input[j..]]);
            assert_eq!(fed.transcript, "250 2.1.0 Ok\r\n", "split at {k}, {j}");
            assert!(fed.events.is_empty());
            assert_eq!(e.deep_test_results(), DeepTestResults::default());
        }
    }
}

#[test]
fn bare_newline_against_crlf_at_every_split() {
    for (input, bare) in [
        (&b"EHLO b.example\n"[..], true),
        (b"EHLO b.example\r\n", false),
    ] {
        for k in 0..=input.len() {
            let mut e = deep_engine(|d| d.bare_newline = Some(TestAction::Enforce));
            let fed = feed(&mut e, &[&input[..k], &input[k..]]);
            // The line is answered either way.
            assert!(fed.transcript.ends_with("250 CHUNKING\r\n"), "split at {k}");
            assert_eq!(e.helo(), Some("b.example"));
            if bare {
                // The lab's line for this client.
                assert_eq!(
                    fed.events,
                    ["BARE NEWLINE from [127.0.0.11]:58529 after EHLO b.example"],
                    "split at {k}"
                );
                assert_eq!(e.deep_test_results().bare_newline, TestOutcome::Failed);
            } else {
                assert!(fed.events.is_empty(), "split at {k}");
            }
        }
    }
}

#[test]
fn bare_newline_text_is_escaped_and_bounded() {
    for (input, logged) in [
        (&b"NOOP\rX\x01\n"[..], "NOOP\\rX\\001".to_string()),
        (b"\n", String::new()),
        // The text after a NUL is logged too, though the command ends there.
        (b"NOOP\0junk\xff\n", "NOOP\\000junk\\377".to_string()),
        (
            format!("NOOP {}\n", "x".repeat(600)).as_bytes(),
            format!("NOOP {}", "x".repeat(95)),
        ),
    ] {
        let mut e = deep_engine(|d| d.bare_newline = Some(TestAction::Ignore));
        let fed = feed(&mut e, &[input]);
        assert_eq!(
            fed.events,
            [format!(
                "BARE NEWLINE from [127.0.0.11]:58529 after {logged}"
            )]
        );
    }
}

/// (test, reads that violate it right after the greeting, the violation's log line,
/// the reply to the offending line when the action is not drop).
fn violations() -> [(DeepTest, Vec<&'static [u8]>, &'static str, &'static str); 3] {
    [
        (
            DeepTest::Pipelining,
            vec![b"EHLO h.example\r\nNOOP\r\n"],
            "COMMAND PIPELINING from [127.0.0.11]:58529 after EHLO: NOOP\\r\\n",
            "250 CHUNKING\r\n250 2.0.0 Ok\r\n",
        ),
        (
            DeepTest::NonSmtpCommand,
            vec![b"EHLO h.example\r\n", b"GET / HTTP/1.0\r\n"],
            // The lab's line for this client.
            "NON-SMTP COMMAND from [127.0.0.11]:58529 after EHLO: GET / HTTP/1.0",
            "502 5.5.2 Error: command not recognized\r\n",
        ),
        (
            DeepTest::BareNewline,
            vec![b"EHLO h.example\n"],
            "BARE NEWLINE from [127.0.0.11]:58529 after EHLO h.example",
            "250 CHUNKING\r\n",
        ),
    ]
}

fn with_action(test: DeepTest, action: TestAction) -> Engine {
    let mut e = engine();
    e.set_deep_test(test, Some(action));
    e
}

#[test]
fn drop_sends_521_at_once_and_runs_nothing_more() {
    for (test, reads, logged, _) in violations() {
        let mut e = with_action(test, TestAction::Drop);
        let fed = feed(&mut e, &reads);
        let expected_reply = match test {
            DeepTest::NonSmtpCommand => "521 5.7.0 Error: I can break rules, too. Goodbye.\r\n",
            _ => "521 5.5.1 Protocol error\r\n",
        };
        assert!(
            fed.transcript.ends_with(expected_reply),
            "{test:?}: {}",
            fed.transcript
        );
        // The offending command itself is not answered: the EHLO reply appears only
        // when the EHLO was a separate read.
        assert_eq!(
            fed.transcript.contains("250-mx.example.test"),
            test == DeepTest::NonSmtpCommand,
            "{test:?}"
        );
        assert_eq!(fed.events, [logged]);
        assert_eq!(fed.end, Some(SessionEnd::Dropped(test)));
        assert_eq!(e.deep_test_results().get(test), TestOutcome::Failed);
        // Nothing after the drop.
        assert_eq!(e.on_command(b"QUIT").reply, None);
    }
}

#[test]
fn enforce_refuses_every_later_rcpt_with_550() {
    for (test, reads, logged, reply) in violations() {
        let mut e = with_action(test, TestAction::Enforce);
        let fed = feed(&mut e, &reads);
        assert!(
            fed.transcript.ends_with(reply),
            "{test:?}: {}",
            fed.transcript
        );
        assert_eq!(fed.events, [logged]);
        assert_eq!(fed.end, None);
        let fed = feed(&mut e, &[b"MAIL FROM:<s@example.org>\r\n"]);
        assert_eq!(fed.transcript, "250 2.1.0 Ok\r\n");
        for to in ["r@example.test", "s@example.test"] {
            let fed = feed(&mut e, &[format!("RCPT TO:<{to}>\r\n").as_bytes()]);
            assert_eq!(fed.transcript, "550 5.5.1 Protocol error\r\n");
            assert_eq!(
                fed.events,
                [format!(
                    "NOQUEUE: reject: RCPT from [127.0.0.11]:58529: 550 5.5.1 Protocol \
                     error; from=<s@example.org>, to=<{to}>, proto=ESMTP, \
                     helo=<h.example>"
                )]
            );
        }
        // Reaching RCPT does not undo the failure.
        assert_eq!(
            e.deep_test_results().get(test),
            TestOutcome::Failed,
            "{test:?}"
        );
    }
}

#[test]
fn ignore_logs_only() {
    for (test, reads, logged, reply) in violations() {
        let mut e = with_action(test, TestAction::Ignore);
        let fed = feed(&mut e, &reads);
        assert!(fed.transcript.ends_with(reply), "{test:?}");
        assert_eq!(fed.events, [logged]);
        assert_eq!(e.deep_test_results().get(test), TestOutcome::Ignored);
        feed(&mut e, &[b"MAIL FROM:<s@example.org>\r\n"]);
        let fed = feed(&mut e, &[b"RCPT TO:<r@example.test>\r\n"]);
        assert_eq!(
            fed.transcript,
            "450 4.3.2 Service currently unavailable\r\n"
        );
        assert_eq!(
            e.deep_test_results().get(test),
            TestOutcome::Ignored,
            "{test:?}"
        );
    }
}

#[test]
fn the_labs_bare_newline_client_gets_550_at_rcpt() {
    // Lab 127.0.0.14: `EHLO b.example\n`, bare_newline_action = enforce.
    let mut e = deep_engine(|d| d.bare_newline = Some(TestAction::Enforce));
    let fed = feed(
        &mut e,
        &[
            b"EHLO b.example\n",
            b"MAIL FROM:<s@example.org>\n",
            b"RCPT TO:<r@example.test>\n",
        ],
    );
    assert!(
        fed.transcript
            .ends_with("250 2.1.0 Ok\r\n550 5.5.1 Protocol error\r\n")
    );
    // Only the first bare newline is logged.
    assert_eq!(fed.events.len(), 2);
    assert_eq!(
        fed.events[0],
        "BARE NEWLINE from [127.0.0.11]:58529 after EHLO b.example"
    );
}

#[test]
fn the_tests_pass_only_at_rcpt() {
    let all = |d: &mut DeepTests| {
        d.pipelining = Some(TestAction::Enforce);
        d.non_smtp_command = Some(TestAction::Drop);
        d.bare_newline = Some(TestAction::Ignore);
    };
    let passed = DeepTestResults {
        pipelining: TestOutcome::Passed,
        non_smtp_command: TestOutcome::Passed,
        bare_newline: TestOutcome::Passed,
    };
    // A clean client that quits before RCPT earns nothing.
    let mut e = deep_engine(all);
    let fed = feed(
        &mut e,
        &[
            b"EHLO h\r\n",
            b"MAIL FROM:<s@x>\r\n",
            b"NOOP\r\n",
            b"QUIT\r\n",
        ],
    );
    assert_eq!(fed.end, Some(SessionEnd::Quit));
    assert_eq!(e.deep_test_results(), DeepTestResults::default());
    // One that reaches RCPT passes every test that runs.
    let mut e = deep_engine(all);
    feed(&mut e, &[b"EHLO h\r\n", b"MAIL FROM:<s@x>\r\n"]);
    assert_eq!(e.deep_test_results(), DeepTestResults::default());
    feed(&mut e, &[b"RCPT TO:<r@y>\r\n"]);
    assert_eq!(e.deep_test_results(), passed);
    // A violation after RCPT still counts: enforce fails the test...
    let fed = feed(&mut e, &[b"NOOP\r\nNOOP\r\n"]);
    assert_eq!(fed.events.len(), 1);
    assert_eq!(e.deep_test_results().pipelining, TestOutcome::Failed);
    // ...and ignore turns the pass into the short-lived one.
    feed(&mut e, &[b"NOOP\n"]);
    assert_eq!(
        e.deep_test_results(),
        DeepTestResults {
            pipelining: TestOutcome::Failed,
            non_smtp_command: TestOutcome::Passed,
            bare_newline: TestOutcome::Ignored,
        }
    );
    // A refused RCPT counts as reaching RCPT, as in postscreen.
    let mut e = deep_engine(all);
    let fed = feed(&mut e, &[b"RCPT TO:<r@y>\r\n"]);
    assert_eq!(fed.transcript, "503 5.5.1 Error: need MAIL command\r\n");
    assert_eq!(e.deep_test_results(), passed);
    // Tests that do not run never pass.
    let mut e = deep_engine(|d| d.bare_newline = Some(TestAction::Enforce));
    feed(&mut e, &[b"MAIL FROM:<s@x>\r\nRCPT TO:<r@y>\r\n"]);
    assert_eq!(
        e.deep_test_results(),
        DeepTestResults {
            bare_newline: TestOutcome::Passed,
            ..DeepTestResults::default()
        }
    );
}

#[test]
fn each_test_fires_once_per_session() {
    let mut e = deep_engine(|d| {
        d.pipelining = Some(TestAction::Ignore);
        d.non_smtp_command = Some(TestAction::Ignore);
        d.bare_newline = Some(TestAction::Ignore);
    });
    let fed = feed(&mut e, &[b"NOOP\r\nNOOP\r\nNOOP\r\n"]);
    assert_eq!(fed.events.len(), 1);
    let fed = feed(&mut e, &[b"GET /\r\n", b"POST /\r\n", b"Subject: x\r\n"]);
    assert_eq!(
        fed.events,
        ["NON-SMTP COMMAND from [127.0.0.11]:58529 after NOOP: GET /"]
    );
    // Still answered like any unknown command.
    assert_eq!(
        fed.transcript,
        "502 5.5.2 Error: command not recognized\r\n".repeat(3)
    );
    let fed = feed(&mut e, &[b"NOOP\n", b"NOOP\n"]);
    assert_eq!(fed.events.len(), 1);
    assert_eq!(fed.transcript, "250 2.0.0 Ok\r\n".repeat(2));
}

#[test]
fn non_smtp_commands() {
    for (line, logged) in [
        (&b"GET / HTTP/1.0"[..], "GET / HTTP/1.0"),
        (b"get /index.html", "get /index.html"),
        (b"POST /cgi-bin/x HTTP/1.1", "POST /cgi-bin/x HTTP/1.1"),
        (
            b"CONNECT mx.example.test:25 HTTP/1.1",
            "CONNECT mx.example.test:25 HTTP/1.1",
        ),
        // Header lines.
        (b"Subject: hello", "Subject: hello"),
        (b"From:<a@example.org>", "From:<a@example.org> "),
        (b"X-Spam\t: yes", "X-Spam?: yes"),
        (b"MAIL: x", "MAIL: x"),
        // Commands that do not start with a letter (postscreen 3.7's regexp).
        (b"\x16\x03\x01\x02\x00\x01", "???? "),
        (b"<html><body>", "<html><body> "),
        (b"123 go", "123 go"),
        (b":x", ":x "),
        (b"\tEHLO x", "?EHLO x"),
        (b"\xc3\x89HLO x", "\u{c9}HLO x"),
        // Invalid UTF-8.
        (b"HEL\xffO x\x01", "HEL?O x\\001"),
        (b"HE\xc3", "HE? "),
    ] {
        let mut e = with_action(DeepTest::NonSmtpCommand, TestAction::Drop);
        let fed = feed(&mut e, &[line, b"\r\n"]);
        assert_eq!(
            fed.events,
            [format!(
                "NON-SMTP COMMAND from [127.0.0.11]:58529 after CONNECT: {logged}"
            )],
            "{line:?}"
        );
        assert_eq!(
            fed.transcript,
            "521 5.7.0 Error: I can break rules, too. Goodbye.\r\n"
        );
    }
}

#[test]
fn smtp_and_unknown_commands_are_not_non_smtp() {
    for line in [
        &b""[..],
        b"   ",
        b"XYZZY",
        b"HELOX a",
        b"Subject",
        b"a b:c",
        b"AUTH PLAIN AGZvbwBiYXI=",
        b"XCLIENT NAME=x",
        b"XFORWARD ADDR=1.2.3.4",
        b"H\xc3\x89LO x",
        b"NOOP",
        b"noop \x16",
    ] {
        let mut e = with_action(DeepTest::NonSmtpCommand, TestAction::Drop);
        let fed = feed(&mut e, &[line, b"\r\n"]);
        assert!(fed.events.is_empty(), "{line:?}: {:?}", fed.events);
        assert_eq!(fed.end, None);
    }
    // Invalid UTF-8 counts only with SMTPUTF8 on.
    let mut e = engine_with(|s| {
        s.smtputf8 = false;
        s.deep_tests.non_smtp_command = Some(TestAction::Drop);
    });
    let fed = feed(&mut e, &[b"HEL\xffO x\r\n"]);
    assert!(fed.events.is_empty());
    // An empty forbidden list leaves header lines.
    let mut e = engine_with(|s| {
        s.deep_tests.forbidden_commands = Vec::new();
        s.deep_tests.non_smtp_command = Some(TestAction::Drop);
    });
    let fed = feed(&mut e, &[b"GET /\r\n123\r\n"]);
    assert!(fed.events.is_empty());
    let fed = feed(&mut e, &[b"Subject: x\r\n"]);
    assert_eq!(fed.end, Some(SessionEnd::Dropped(DeepTest::NonSmtpCommand)));
}

#[test]
fn pipelining_names_the_command_as_sent_and_bounds_the_input() {
    let mut e = with_action(DeepTest::Pipelining, TestAction::Ignore);
    let fed = feed(&mut e, &[b"ehlo h\r\n\x01\xff\r\n"]);
    assert_eq!(
        fed.events,
        ["COMMAND PIPELINING from [127.0.0.11]:58529 after ehlo: \\001\\377\\r\\n"]
    );
    // Unknown and garbage command words are printed with `?`.
    let mut e = with_action(DeepTest::Pipelining, TestAction::Ignore);
    let fed = feed(&mut e, &[b"X\tY\xfe z\r\nNOOP\r\n"]);
    assert_eq!(
        fed.events,
        ["COMMAND PIPELINING from [127.0.0.11]:58529 after X?Y?: NOOP\\r\\n"]
    );
    // At most 100 bytes of the pending input, escaped.
    let mut e = with_action(DeepTest::Pipelining, TestAction::Ignore);
    let mut input = b"NOOP\r\n".to_vec();
    input.extend([b'A'; 1000]);
    let fed = feed(&mut e, &[&input]);
    assert_eq!(
        fed.events,
        [format!(
            "COMMAND PIPELINING from [127.0.0.11]:58529 after NOOP: {}",
            "A".repeat(100)
        )]
    );
    let mut e = with_action(DeepTest::Pipelining, TestAction::Ignore);
    let mut input = b"NOOP\r\n".to_vec();
    input.extend([0u8; 1000]);
    let fed = feed(&mut e, &[&input]);
    assert_eq!(
        fed.events[0].len(),
        "COMMAND PIPELINING from [127.0.0.11]:58529 after NOOP: ".len() + 400
    );
    // A command word of 2000 bytes is printed up to 100.
    let mut e = with_action(DeepTest::Pipelining, TestAction::Ignore);
    let input = format!("{}\r\nNOOP\r\n", "Z".repeat(2000));
    let fed = feed(&mut e, &[input.as_bytes()]);
    assert_eq!(
        fed.events,
        [format!(
            "COMMAND PIPELINING from [127.0.0.11]:58529 after {}: NOOP\\r\\n",
            "Z".repeat(100)
        )]
    );
}

#[test]
fn bdat_is_followed_by_its_chunk_not_by_pipelined_commands() {
    let mut e = with_action(DeepTest::Pipelining, TestAction::Drop);
    let fed = feed(
        &mut e,
        &[b"MAIL FROM:<a@b>\r\n", b"BDAT 10 LAST\r\n0123456789"],
    );
    assert_eq!(
        fed.events,
        ["BDAT without valid RCPT from [127.0.0.11]:58529"]
    );
    assert_eq!(fed.end, Some(SessionEnd::DataRefused));
    // DATA is not exempt.
    let mut e = with_action(DeepTest::Pipelining, TestAction::Drop);
    let fed = feed(&mut e, &[b"DATA\r\nSubject: x\r\n"]);
    assert_eq!(fed.end, Some(SessionEnd::Dropped(DeepTest::Pipelining)));
}

#[test]
fn several_tests_in_one_line_log_in_postscreens_order() {
    let mut e = deep_engine(|d| {
        d.pipelining = Some(TestAction::Enforce);
        d.non_smtp_command = Some(TestAction::Enforce);
        d.bare_newline = Some(TestAction::Enforce);
    });
    let fed = feed(&mut e, &[b"GET /\nNOOP\r\n"]);
    assert_eq!(
        fed.events,
        [
            "BARE NEWLINE from [127.0.0.11]:58529 after GET /",
            "NON-SMTP COMMAND from [127.0.0.11]:58529 after CONNECT: GET /",
            "COMMAND PIPELINING from [127.0.0.11]:58529 after GET: NOOP\\r\\n",
        ]
    );
    assert_eq!(
        fed.transcript,
        "502 5.5.2 Error: command not recognized\r\n250 2.0.0 Ok\r\n"
    );
    let failed = DeepTestResults {
        pipelining: TestOutcome::Failed,
        non_smtp_command: TestOutcome::Failed,
        bare_newline: TestOutcome::Failed,
    };
    assert_eq!(e.deep_test_results(), failed);
    // A drop further down still reports what fired before it.
    let mut e = deep_engine(|d| {
        d.non_smtp_command = Some(TestAction::Enforce);
        d.pipelining = Some(TestAction::Drop);
    });
    let fed = feed(&mut e, &[b"Subject: x\r\nNOOP\r\n"]);
    assert_eq!(fed.events.len(), 2);
    assert_eq!(fed.transcript, "521 5.5.1 Protocol error\r\n");
    assert_eq!(fed.end, Some(SessionEnd::Dropped(DeepTest::Pipelining)));
}

#[test]
fn the_last_reply_set_at_rcpt_wins() {
    let mut e = with_action(DeepTest::Pipelining, TestAction::Enforce);
    let dnsbl = Reply::dnsbl_enforce("127.0.0.40".parse().unwrap(), "bl.example").unwrap();
    e.set_rcpt_reply(dnsbl.clone()).unwrap();
    feed(&mut e, &[b"MAIL FROM:<a@b>\r\nNOOP\r\n"]);
    let fed = feed(&mut e, &[b"RCPT TO:<c@d>\r\n"]);
    assert_eq!(fed.transcript, "550 5.5.1 Protocol error\r\n");
    e.set_rcpt_reply(dnsbl).unwrap();
    let fed = feed(&mut e, &[b"RCPT TO:<c@d>\r\n"]);
    assert!(fed.transcript.starts_with("550 5.7.1 Service unavailable"));
}

#[test]
fn no_deep_test_runs_in_x21_mode() {
    let mut e = deep_engine(|d| {
        d.pipelining = Some(TestAction::Drop);
        d.non_smtp_command = Some(TestAction::Drop);
        d.bare_newline = Some(TestAction::Drop);
    });
    e.set_final_reply(Reply::no_system_resources());
    let fed = feed(&mut e, &[b"GET /\nNOOP\r\n"]);
    assert_eq!(fed.transcript, "421 4.3.2 No system resources\r\n");
    assert!(fed.events.is_empty());
    assert_eq!(fed.end, Some(SessionEnd::FinalReply));
}

#[test]
fn a_drop_comes_before_the_count_limit_and_enforce_after_it() {
    let mut e = engine_with(|s| {
        s.command_count_limit = 1;
        s.deep_tests.non_smtp_command = Some(TestAction::Drop);
    });
    let fed = feed(&mut e, &[b"NOOP\r\n", b"GET /\r\n"]);
    assert!(
        fed.transcript
            .ends_with("521 5.7.0 Error: I can break rules, too. Goodbye.\r\n")
    );
    let mut e = engine_with(|s| {
        s.command_count_limit = 1;
        s.deep_tests.non_smtp_command = Some(TestAction::Enforce);
    });
    let fed = feed(&mut e, &[b"NOOP\r\n", b"GET /\r\n"]);
    assert_eq!(
        fed.events,
        [
            "NON-SMTP COMMAND from [127.0.0.11]:58529 after NOOP: GET /",
            "COMMAND COUNT LIMIT from [127.0.0.11]:58529 after NOOP",
        ]
    );
    assert_eq!(fed.end, Some(SessionEnd::CommandCountLimit));
}

#[test]
fn a_session_can_turn_tests_on_and_off() {
    let mut e = engine();
    assert!(feed(&mut e, &[b"NOOP\r\nNOOP\r\n"]).events.is_empty());
    e.set_deep_test(DeepTest::Pipelining, Some(TestAction::Enforce));
    assert_eq!(feed(&mut e, &[b"NOOP\r\nNOOP\r\n"]).events.len(), 1);
    let mut e = deep_engine(|d| d.pipelining = Some(TestAction::Enforce));
    e.set_deep_test(DeepTest::Pipelining, None);
    assert!(feed(&mut e, &[b"NOOP\r\nNOOP\r\n"]).events.is_empty());
    // A test that fired keeps its result.
    let mut e = with_action(DeepTest::BareNewline, TestAction::Drop);
    feed(&mut e, &[b"NOOP\n"]);
    e.set_deep_test(DeepTest::BareNewline, None);
    assert_eq!(e.deep_test_results().bare_newline, TestOutcome::Failed);
}

#[test]
fn nothing_panics_on_random_streams_with_every_test_on() {
    let mut rng = SplitMix64::seeded(0x9e37_79b9_7f4a_7c15);
    let mut next = move || rng.next_u64();
    let alphabet = b"EHLOMAILRCPTQUITGETPOST:<>@ \r\n\n\x00\xff\t\x16Subject:";
    let actions = [
        None,
        Some(TestAction::Ignore),
        Some(TestAction::Enforce),
        Some(TestAction::Drop),
    ];
    for _ in 0..500 {
        let mut pick = || actions[(next() % 4) as usize];
        let (p, n, b) = (pick(), pick(), pick());
        let mut e = engine_with(|s| {
            s.command_count_limit = 100;
            s.deep_tests.pipelining = p;
            s.deep_tests.non_smtp_command = n;
            s.deep_tests.bare_newline = b;
        });
        let mut reader = LineReader::new(e.settings().line_length_limit);
        'session: for _ in 0..20 {
            let len = (next() % 200) as usize;
            let chunk: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            reader.extend(&chunk);
            loop {
                let step = match reader.next_line() {
                    Ok(Some(line)) => e.on_line(line),
                    Ok(None) => break,
                    Err(_) => break 'session,
                };
                for event in &step.events {
                    let line = event.line(client()).to_string();
                    assert!(!line.contains(['\r', '\n', '\0']), "{line:?}");
                    assert!(line.len() < 1200, "{line:?}");
                }
                if step.closes() {
                    break 'session;
                }
            }
        }
        // A test that does not run has no result.
        let results = e.deep_test_results();
        for (action, outcome) in [
            (p, results.pipelining),
            (n, results.non_smtp_command),
            (b, results.bare_newline),
        ] {
            if action.is_none() {
                assert_eq!(outcome, TestOutcome::NotCompleted);
            }
            if action == Some(TestAction::Ignore) {
                assert_ne!(outcome, TestOutcome::Failed);
            }
        }
    }
}
