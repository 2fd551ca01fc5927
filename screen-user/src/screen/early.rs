//! The tests before the greeting (postscreen's `postscreen_early.c`): the `220-` teaser, the
//! greet wait, the pregreet test and the DNSBL score, with their log lines (`PREGREET`,
//! `DNSBL rank`, `HANGUP`) and their actions.
//!
//! smtp-screen sends the `220-` teaser and waits `greet_wait`. A client that talks before
//! the final `220 ` is a pregreeter. Its input is only peeked at (at most 1023 bytes, as
//! postscreen does), so the dummy engine or the real MTA still reads it. The DNSBL queries
//! run beside the wait; the score is read when the wait ends (answers that come later do not
//! count), and a DNSWL answer that allowlists the client ends the wait early.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use tokio::{io::AsyncWriteExt as _, net::TcpStream};

use super::{
    Next, Screen,
    connection::Connection,
    deny_causes::{DNSBL_FAILURE, DnsblGround},
};
use crate::{
    address::ClientAddr,
    address::canonical,
    dnsbl::{DnsblQuery, SoundScore, Thresholds, Verdict},
    escape::{LOG_TEXT_MAX, c_escape},
    limits::StressDuration,
    maillog::DelayDisplay,
    smtpd::{EngineError, Reply},
    test_state::{Outcome, Screening, Test, TestAction},
};

/// How much early input is looked at (postscreen's `PSC_READ_BUF_SIZE` minus one).
pub(crate) const PEEK_LIMIT: usize = 1023;

/// What the client did during the greet wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum GreetOutcome {
    /// Nothing: the client waited for its turn.
    Quiet,
    /// It talked first: `bytes` were waiting `after` the teaser went out.
    Pregreet {
        bytes: usize,
        after: Duration,
        input: Vec<u8>,
    },
    /// It hung up before the greeting.
    Hangup { after: Duration },
}

/// The settings of the tests before the greeting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EarlySettings {
    /// The `220-` teaser's text; empty turns the pregreet test off (`postscreen_greet_banner`).
    pub(crate) greet_banner: String,
    /// `postscreen_greet_wait`.
    pub(crate) greet_wait: StressDuration,
    /// `postscreen_greet_action`.
    pub(crate) greet_action: TestAction,
    /// `postscreen_dnsbl_action`.
    pub(crate) dnsbl_action: TestAction,
    /// The DNSBL thresholds and pass lifetimes.
    pub(crate) thresholds: Thresholds,
    /// A DNSBL score at or above this denies the client in the kernel on first contact.
    pub(crate) kernel_dnsbl_threshold: Option<i32>,
}

/// This stage's replies, in postscreen's words.
impl Reply {
    /// `postscreen_dnsbl_action = enforce`: `list` is the highest-weighted listing's name
    /// after `dnsbl_reply_map`.
    pub(crate) fn dnsbl_enforce(client: IpAddr, list: &str) -> Result<Self, EngineError> {
        Self::dnsbl(550, client, list)
    }

    /// `postscreen_dnsbl_action = drop`.
    pub(crate) fn dnsbl_drop(client: IpAddr, list: &str) -> Result<Self, EngineError> {
        Self::dnsbl(521, client, list)
    }

    fn dnsbl(code: u16, client: IpAddr, list: &str) -> Result<Self, EngineError> {
        Self::new(
            code,
            format!(
                "5.7.1 Service unavailable; client [{}] blocked using {list}",
                canonical(client)
            ),
        )
    }
}

impl EarlySettings {
    /// Whether a DNSBL rank denies the client in the kernel on first contact: it reaches
    /// `kernel_dnsbl_threshold`, and the DNSBL test refuses in SMTP too. With `dnsbl_action =
    /// ignore` the operator only watches the lists, and a silent SYN drop would be the one
    /// refusal the client ever saw.
    fn denies_in_kernel(&self, rank: i32) -> bool {
        self.dnsbl_action != TestAction::Ignore
            && self
                .kernel_dnsbl_threshold
                .is_some_and(|kernel| rank >= kernel)
    }

    /// The ground of a first-contact kernel deny: the sound score (answers inside
    /// 127.0.0.0/8 only) at `kernel_dnsbl_threshold`.
    fn kernel_ground(&self, sound: &SoundScore) -> Option<DnsblGround> {
        if !self.denies_in_kernel(sound.rank) {
            return None;
        }
        DnsblGround::new(sound.clone(), self.kernel_dnsbl_threshold?)
    }
}

impl Screen {
    /// Before the greeting: the pregreet test and the DNSBL lookups, side by side, then each
    /// verdict's action.
    pub(super) async fn before_greeting(
        &self,
        conn: &mut Connection,
        screening: &Screening,
        stressed: bool,
    ) -> Next {
        let settings = &self.settings.early;
        let client = conn.client;
        let query = match (&self.dnsbl, screening.due.dnsbl) {
            (Some(dnsbl), true) => Some(dnsbl.start(client.ip())),
            _ => None,
        };
        let start = std::time::Instant::now();
        let wait = settings.greet_wait.get(stressed);
        let deadline = tokio::time::Instant::from_std(start + wait);
        if screening.due.pregreet && !settings.greet_banner.is_empty() {
            if send_teaser(&mut conn.stream, &settings.greet_banner)
                .await
                .is_err()
            {
                self.hangup_before_greeting(client, start.elapsed());
                return Next::Done;
            }
            conn.session.teaser_sent = true;
            let outcome = self
                .greet_wait(&conn.stream, start, wait, query.as_ref())
                .await;
            match outcome {
                Ok(GreetOutcome::Quiet) => conn.session.results.pregreet = Outcome::Passed,
                Ok(GreetOutcome::Pregreet {
                    bytes,
                    after,
                    input,
                }) => {
                    self.log.info(format_args!(
                        "PREGREET {bytes} after {} from {}: {}",
                        DelayDisplay(after),
                        ClientAddr(client),
                        c_escape(&input, LOG_TEXT_MAX)
                    ));
                    conn.session.pregreeted = true;
                    let next = self
                        .fail(
                            conn,
                            Some(Test::Pregreet),
                            "PREGREET",
                            settings.greet_action,
                            Some(Reply::protocol_error_drop()),
                            Some(Reply::protocol_error_enforce()),
                        )
                        .await;
                    if let Next::Done = next {
                        return next;
                    }
                    // postscreen goes on waiting for the DNS answers after a pregreet: a
                    // listed pregreeter gets the DNSBL verdict too.
                    if let Some(query) = &query {
                        Box::pin(query.wait_all(deadline)).await;
                    }
                }
                Ok(GreetOutcome::Hangup { after }) => {
                    self.hangup_before_greeting(client, after);
                    return Next::Done;
                }
                Err(_) => {
                    self.hangup_before_greeting(client, start.elapsed());
                    return Next::Done;
                }
            }
        } else if let Some(query) = &query {
            // Only the DNSBL test is due: wait no longer than the answers take.
            Box::pin(query.wait_all(deadline)).await;
        }
        match query {
            Some(query) => self.dnsbl_verdict(conn, &query).await,
            None => Next::Continue,
        }
    }

    /// The DNSBL score as it stands when the wait ends (later answers do not count), and the
    /// action of a listed client.
    async fn dnsbl_verdict(&self, conn: &mut Connection, query: &DnsblQuery) -> Next {
        let settings = &self.settings.early;
        let client = conn.client;
        let score = query.verdict_score();
        conn.session.dnswl_listed = score.rank < 0;
        match score.verdict(&settings.thresholds, !conn.session.failures.is_empty()) {
            Verdict::Listed { rank, name } => {
                self.log.info(rank_log_line(rank, client));
                // The kernel reads only the sound score: answers inside 127.0.0.0/8.
                conn.session.dnsbl_ground =
                    DnsblGround::new(score.sound.clone(), settings.thresholds.threshold);
                if let (Some(denied), Some(ground)) =
                    (conn.deniable_client(), settings.kernel_ground(&score.sound))
                {
                    let reason = format!("DNSBL rank {}", ground.sound.rank);
                    self.deny.severe(denied, &reason, ground);
                }
                let next = self
                    .fail(
                        conn,
                        Some(Test::Dnsbl),
                        DNSBL_FAILURE,
                        settings.dnsbl_action,
                        Reply::dnsbl_drop(client.ip(), &name).ok(),
                        Reply::dnsbl_enforce(client.ip(), &name).ok(),
                    )
                    .await;
                if let Next::Done = next {
                    return next;
                }
            }
            Verdict::Allowlisted { ttl } => {
                conn.session.results.dnsbl = Outcome::Passed;
                conn.session.results.dnswl_allowlisted = true;
                conn.session.results.dns_ttl = Some(ttl);
            }
            Verdict::Clean { ttl } => {
                conn.session.results.dnsbl = Outcome::Passed;
                conn.session.results.dns_ttl = Some(ttl);
            }
        }
        Next::Continue
    }

    /// Waits out the greet wait: ends early when the client talks or hangs up, or when a
    /// DNSWL answer allowlists it (postscreen's `postscreen_dnsbl_allowlist_threshold`).
    async fn greet_wait(
        &self,
        stream: &TcpStream,
        start: Instant,
        wait: Duration,
        query: Option<&DnsblQuery>,
    ) -> io::Result<GreetOutcome> {
        let deadline = tokio::time::Instant::from_std(start + wait);
        let allowlisted = async {
            if let Some(query) = query {
                // Boxed, as the later stages: only a screen with DNS lists waits for them.
                let score = Box::pin(query.wait_all(deadline)).await;
                if matches!(
                    score.verdict(&self.settings.early.thresholds, false),
                    Verdict::Allowlisted { .. }
                ) {
                    return;
                }
            }
            std::future::pending::<()>().await;
        };
        tokio::select! {
            outcome = watch(stream, start, wait) => outcome,
            () = allowlisted => Ok(GreetOutcome::Quiet),
        }
    }

    fn hangup_before_greeting(&self, client: SocketAddr, after: Duration) {
        self.log.info(format_args!(
            "HANGUP after {} from {} in tests before SMTP handshake",
            DelayDisplay(after),
            ClientAddr(client)
        ));
        self.disconnect(client);
    }
}

/// postscreen's log line for a listed client: `DNSBL rank 4 for [192.0.2.1]:4000`.
fn rank_log_line(rank: i32, client: SocketAddr) -> String {
    format!("DNSBL rank {rank} for {}", ClientAddr(client))
}

/// Sends the `220-<banner>` teaser that starts the greet wait.
pub(crate) async fn send_teaser(stream: &mut TcpStream, banner: &str) -> io::Result<()> {
    stream
        .write_all(format!("220-{banner}\r\n").as_bytes())
        .await
}

/// Waits until `start + wait` for input or a hang-up without consuming anything. The peek
/// buffer is taken only once the socket has something to read: a client that stays quiet,
/// as most do, holds none for the whole wait.
pub(crate) async fn watch(
    stream: &TcpStream,
    start: Instant,
    wait: Duration,
) -> io::Result<GreetOutcome> {
    let deadline = tokio::time::Instant::from_std(start + wait);
    let peeked = tokio::time::timeout_at(deadline, async {
        stream.readable().await?;
        let mut buf = vec![0u8; PEEK_LIMIT];
        let n = stream.peek(&mut buf).await?;
        buf.truncate(n);
        Ok::<_, io::Error>(buf)
    })
    .await;
    match peeked {
        Err(_elapsed) => Ok(GreetOutcome::Quiet),
        Ok(Ok(input)) if input.is_empty() => Ok(GreetOutcome::Hangup {
            after: start.elapsed(),
        }),
        Ok(Ok(input)) => Ok(GreetOutcome::Pregreet {
            bytes: input.len(),
            after: start.elapsed(),
            input,
        }),
        Ok(Err(e)) if is_reset(&e) => Ok(GreetOutcome::Hangup {
            after: start.elapsed(),
        }),
        Ok(Err(e)) => Err(e),
    }
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

#[cfg(test)]
mod tests {
    use tokio::{io::AsyncReadExt as _, net::TcpStream};

    use super::*;
    use crate::loopback::tcp_pair;

    /// The pregreet test as the server runs it: the teaser, then the watch.
    async fn pregreet_test(
        stream: &mut TcpStream,
        banner: &str,
        wait: Duration,
    ) -> io::Result<GreetOutcome> {
        send_teaser(stream, banner).await?;
        watch(stream, Instant::now(), wait).await
    }

    #[tokio::test]
    async fn a_quiet_client_waits_the_whole_time() {
        let (mut server, mut client) = tcp_pair().await;
        let start = Instant::now();
        let outcome = pregreet_test(
            &mut server,
            "mx.example.test ESMTP",
            Duration::from_millis(300),
        )
        .await
        .unwrap();
        assert_eq!(outcome, GreetOutcome::Quiet);
        assert!(start.elapsed() >= Duration::from_millis(300));
        let mut buf = [0u8; 64];
        let n = client.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"220-mx.example.test ESMTP\r\n");
    }

    #[tokio::test]
    async fn a_pregreeter_is_caught_and_its_input_is_left_unread() {
        let (mut server, mut client) = tcp_pair().await;
        client.write_all(b"EHLO zombie.example\r\n").await.unwrap();
        let outcome = pregreet_test(&mut server, "mx", Duration::from_secs(5))
            .await
            .unwrap();
        let GreetOutcome::Pregreet {
            bytes,
            after,
            input,
        } = outcome
        else {
            panic!("not a pregreet: {outcome:?}");
        };
        assert_eq!(bytes, 21);
        assert_eq!(input, b"EHLO zombie.example\r\n");
        assert!(after < Duration::from_secs(5));
        // Peeked, not consumed: the next reader still sees it.
        let mut buf = [0u8; 64];
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"EHLO zombie.example\r\n");
    }

    #[tokio::test]
    async fn a_hangup_is_told_apart_from_talking() {
        let (mut server, client) = tcp_pair().await;
        drop(client);
        let outcome = pregreet_test(&mut server, "mx", Duration::from_secs(5)).await;
        // The teaser may hit the closed socket first; either way it is a hang-up, not input.
        match outcome {
            Ok(GreetOutcome::Hangup { .. }) => {}
            Err(e) => assert!(is_reset(&e), "{e}"),
            Ok(other) => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn early_input_is_capped() {
        let (mut server, mut client) = tcp_pair().await;
        client.write_all(&[b'x'; 4000]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let outcome = pregreet_test(&mut server, "mx", Duration::from_secs(5))
            .await
            .unwrap();
        let GreetOutcome::Pregreet { bytes, .. } = outcome else {
            panic!("{outcome:?}");
        };
        assert!(bytes <= PEEK_LIMIT);
    }

    #[test]
    fn rank_log_line_is_postscreens() {
        assert_eq!(
            rank_log_line(4, "127.0.0.40:59139".parse().unwrap()),
            "DNSBL rank 4 for [127.0.0.40]:59139"
        );
        assert_eq!(
            rank_log_line(2, "[2001:db8::1]:25".parse().unwrap()),
            "DNSBL rank 2 for [2001:db8::1]:25"
        );
        assert_eq!(
            rank_log_line(3, "[::ffff:192.0.2.1]:4000".parse().unwrap()),
            "DNSBL rank 3 for [192.0.2.1]:4000"
        );
    }

    #[test]
    fn only_a_dnsbl_that_refuses_in_smtp_denies_in_the_kernel() {
        let settings = EarlySettings {
            greet_banner: String::new(),
            greet_wait: StressDuration::fixed(Duration::from_secs(6)),
            greet_action: TestAction::Ignore,
            dnsbl_action: TestAction::Enforce,
            thresholds: Thresholds::default(),
            kernel_dnsbl_threshold: Some(8),
        };
        assert!(settings.denies_in_kernel(8));
        assert!(!settings.denies_in_kernel(7));
        let watching = EarlySettings {
            dnsbl_action: TestAction::Ignore,
            ..settings.clone()
        };
        assert!(!watching.denies_in_kernel(100));
        let unset = EarlySettings {
            kernel_dnsbl_threshold: None,
            ..settings
        };
        assert!(!unset.denies_in_kernel(100));
    }

    #[test]
    fn only_answers_inside_127_8_ground_a_kernel_deny() {
        use crate::dnsbl::{DnsblSites, ListResult, ReplyMap};
        let settings = EarlySettings {
            greet_banner: String::new(),
            greet_wait: StressDuration::fixed(Duration::from_secs(6)),
            greet_action: TestAction::Ignore,
            dnsbl_action: TestAction::Drop,
            thresholds: Thresholds::default(),
            kernel_dnsbl_threshold: Some(4),
        };
        let sites = DnsblSites::parse("zen.test=127.0.0.[2..11]*4 odd.test=10.0.0.[1..3]*5")
            .expect("the lists");
        let listed = |addr: &str| ListResult::Listed {
            addrs: vec![addr.parse().unwrap()],
            ttl: Duration::from_secs(60),
        };
        let unlisted = ListResult::NotListed { ttl: None };
        let map = ReplyMap::default();
        // zen.test's 127.0.0.2 reaches the kernel threshold.
        let score = sites.score(&[listed("127.0.0.2"), unlisted.clone()], &map);
        let ground = settings.kernel_ground(&score.sound).expect("a kernel deny");
        assert_eq!(ground.needed, 4);
        assert!(ground.sound.rests_on("zen.test"));
        // odd.test's 10.0.0.2 ranks 5 in SMTP, above both thresholds, and grounds nothing in
        // the kernel: neither a first-contact deny nor a failure for the repeat rule.
        let score = sites.score(&[unlisted, listed("10.0.0.2")], &map);
        assert!(matches!(
            score.verdict(&settings.thresholds, false),
            Verdict::Listed { rank: 5, .. }
        ));
        assert_eq!(settings.kernel_ground(&score.sound), None);
        assert_eq!(
            DnsblGround::new(score.sound.clone(), settings.thresholds.threshold),
            None
        );
        // Both: the SMTP rank is 9, the kernel's 4.
        let score = sites.score(&[listed("127.0.0.2"), listed("10.0.0.2")], &map);
        assert_eq!((score.rank, score.sound.rank), (9, 4));
        assert!(settings.kernel_ground(&score.sound).is_some());
    }
}
