//! What the fuzz targets (`screen-user/fuzz/`) call: one function per parser, from bytes to
//! nothing, that runs the parser on any input and panics only when one of its promises is
//! broken. Built only with the `fuzzing` feature, so the library's API does not grow for
//! anyone else; `cargo xtask fuzz` runs the targets.
//!
//! Each function checks what its parser promises beyond "no panic": a PROXY header taken
//! whole stays the same when cut to its length and when encoded again; replies of the
//! dummy engine are CRLF-ended lines with a code; a table, a list or an attribute list that
//! parses says the same when written out and read again; and an imported Postfix
//! configuration loads as the TOML file it claims to be.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::{
    access_list::TableFiles,
    cidr_table::{CidrError, CidrTable},
    config::Config,
    dnsbl::{DnsblSite, DnsblSites, query_name},
    handoff::postfix::PassEndpoints,
    import_postfix::{self, MasterCf, Postconf},
    proxy_protocol::{self, Parsed, ProxyHeader},
    smtpd::{DeepTests, Engine, EngineSettings, TimeLimits, serve},
    test_state::TestAction,
};

/// A PROXY protocol header (v1 or v2) as a balancer sends it, read as `screen/endpoint.rs`
/// reads it: bytes received so far, which may end anywhere.
pub fn proxy_protocol(data: &[u8]) {
    let parsed = match proxy_protocol::parse(data) {
        Ok(parsed) => parsed,
        Err(error) => {
            // The message carries the offending input escaped, cut to a bound.
            assert!(error.to_string().len() < 4 * 1024, "unbounded error text");
            return;
        }
    };
    let Parsed::Complete { header, len } = parsed else {
        return;
    };
    assert!(
        len > 0 && len <= data.len(),
        "header length {len} of {}",
        data.len()
    );
    match proxy_protocol::parse(&data[..len]) {
        Ok(Parsed::Complete {
            header: again,
            len: again_len,
        }) => {
            assert_eq!(
                (again, again_len),
                (header, len),
                "the header alone reads differently"
            );
        }
        other => panic!("the header alone reads as {other:?}"),
    }
    // A header cut short is incomplete, never an error nor another header.
    for cut in [0, 1, len / 2, len - 1] {
        if cut > 0 && cut < len {
            assert!(
                matches!(proxy_protocol::parse(&data[..cut]), Ok(Parsed::Incomplete)),
                "the first {cut} of {len} bytes of a header are not incomplete"
            );
        }
    }
    if let ProxyHeader::Proxied {
        source,
        destination,
    } = header
    {
        for encoded in [
            proxy_protocol::encode_v1(source, destination),
            proxy_protocol::encode_v2(source, destination),
        ] {
            match proxy_protocol::parse(&encoded) {
                Ok(Parsed::Complete { header: again, len }) => {
                    assert_eq!(again, header, "encoded again, the header reads differently");
                    assert_eq!(len, encoded.len());
                }
                other => panic!("the header encoded again reads as {other:?}"),
            }
        }
    }
}

/// Client input to the dummy SMTP engine, through the line reader and the engine's driver as
/// a connection runs them.
///
/// The input is `[settings][n][n chunk lengths][stream]`: bits of `settings` turn the deep
/// tests on (with `ignore`, `enforce` or `drop`), require HELO, turn VRFY off, soft-bounce,
/// turn SMTPUTF8 off, mark the client as pregreeted and offer STARTTLS; the stream is delivered in reads of the chunk lengths in turn (1 to 256 bytes each),
/// so a line can be split anywhere. The engine must answer every read with whole reply lines
/// and end the session once the input ends.
pub fn smtp_session(data: &[u8]) {
    let (&flags, rest) = data.split_first().unwrap_or((&0, &[]));
    let (&count, rest) = rest.split_first().unwrap_or((&0, &[]));
    let count = usize::from(count).min(rest.len());
    let (chunks, stream) = rest.split_at(count);
    let action = match flags & 0b11 {
        0 => None,
        1 => Some(TestAction::Ignore),
        2 => Some(TestAction::Enforce),
        _ => Some(TestAction::Drop),
    };
    let settings = EngineSettings {
        helo_required: flags & 0b100 != 0,
        disable_vrfy: flags & 0b1000 != 0,
        soft_bounce: flags & 0b1_0000 != 0,
        smtputf8: flags & 0b10_0000 == 0,
        // The session stops at STARTTLS; the TLS handshake is not this target's.
        starttls_offered: flags & 0b1000_0000 != 0,
        deep_tests: DeepTests {
            pipelining: action,
            non_smtp_command: action,
            bare_newline: action,
            ..DeepTests::default()
        },
        ..EngineSettings::new("mx.example.test")
    };
    let client: SocketAddr = (Ipv4Addr::new(192, 0, 2, 7), 40_000).into();
    let mut engine = Engine::for_client(settings.into(), client, flags & 0b100_0000 != 0)
        .expect("the fuzzing engine's settings are valid");
    let mut connection = ScriptedClient {
        input: stream,
        chunks,
        next_chunk: 0,
        written: Vec::new(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let outcome = runtime.block_on(serve(
        &mut connection,
        &mut engine,
        TimeLimits::fixed(Duration::from_secs(300), 20),
        |_| {},
    ));
    assert!(
        outcome.events.len() <= 4 * (stream.len() + 2),
        "{} events for {} bytes of input",
        outcome.events.len(),
        stream.len()
    );
    let written = String::from_utf8_lossy(&connection.written);
    assert!(
        written.is_empty() || written.ends_with("\r\n"),
        "a reply not ended by CRLF: {written:?}"
    );
    for line in written.split_terminator("\r\n") {
        let code = line.as_bytes().get(..3).unwrap_or_default();
        assert!(
            code.len() == 3 && code.iter().all(u8::is_ascii_digit),
            "a reply line without a code: {line:?}"
        );
        assert!(
            !line.contains(['\r', '\n']),
            "a bare CR or LF in a reply: {line:?}"
        );
        assert!(
            line.len() <= 512,
            "a reply line longer than SMTP allows: {line:?}"
        );
    }
}

/// A client that sends its input in the given chunks, then closes; what the engine writes is
/// kept.
struct ScriptedClient<'a> {
    input: &'a [u8],
    chunks: &'a [u8],
    next_chunk: usize,
    written: Vec<u8>,
}

impl AsyncRead for ScriptedClient<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let chunk = match self.chunks.get(self.next_chunk % self.chunks.len().max(1)) {
            Some(&len) => usize::from(len) + 1,
            None => usize::MAX,
        };
        self.next_chunk += 1;
        let n = chunk.min(buf.remaining()).min(self.input.len());
        let input = self.input;
        buf.put_slice(&input[..n]);
        self.input = &input[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ScriptedClient<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        // Bounded: the engine's replies to at most the command count limit of commands.
        if self.written.len() < 1 << 20 {
            self.written.extend_from_slice(buf);
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A Postfix attribute list (`attr_scan0()`'s grammar) as smtpd's pass service reads the
/// one the hand-off writes: a list that decodes is written again and reads the same.
pub fn postfix_attributes(data: &[u8]) {
    let Ok((endpoints, used)) = PassEndpoints::decode(data) else {
        return;
    };
    assert!(
        used <= data.len(),
        "the list took {used} of {} bytes",
        data.len()
    );
    let encoded = endpoints.encode();
    let (again, again_used) = PassEndpoints::decode(&encoded).expect("an encoded list decodes");
    assert_eq!(
        again, endpoints,
        "encoded again, the list reads differently"
    );
    assert_eq!(again_used, encoded.len());
}

/// A Postfix CIDR table: parsed, then looked up at addresses taken from the input and at the
/// edges of the address space.
pub fn cidr_table(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok((table, warnings)) = CidrTable::parse("fuzz.cidr", text) else {
        return;
    };
    assert!(
        warnings.len() <= text.lines().count() + 1,
        "more warnings than lines"
    );
    let mut addresses: Vec<IpAddr> = vec![
        Ipv4Addr::UNSPECIFIED.into(),
        Ipv4Addr::BROADCAST.into(),
        Ipv6Addr::UNSPECIFIED.into(),
        Ipv6Addr::from(u128::MAX).into(),
        Ipv6Addr::from(0xffff_0a00_0001_u128).into(),
    ];
    for window in data.chunks(16) {
        let mut octets = [0u8; 16];
        octets[..window.len()].copy_from_slice(window);
        addresses.push(Ipv6Addr::from(octets).into());
        let v4: [u8; 4] = octets[..4].try_into().expect("four bytes");
        addresses.push(Ipv4Addr::from(v4).into());
    }
    for addr in addresses {
        let _ = table.lookup(addr);
    }
    let _ = table.networks_yielding(|_| true);
}

/// The TOML configuration file, checked as `smtp-screen check-config` checks it.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::parse(Path::new("fuzz.toml"), text) {
        let _ = config.greet_banner();
        let _ = config.smtpd_banner();
    }
}

/// `dnsbl_sites`: a list that parses reads the same once written out, each site alone too,
/// and every query name it makes is a DNS name within DNS's bounds.
pub fn dnsbl_sites(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(sites) = DnsblSites::parse(text) else {
        return;
    };
    let written: Vec<String> = sites.sites().iter().map(DnsblSite::to_string).collect();
    let again = DnsblSites::parse(&written.join(", ")).expect("the written list parses");
    assert_eq!(
        again, sites,
        "written out, the list reads differently: {written:?}"
    );
    for (site, text) in sites.sites().iter().zip(&written) {
        assert_eq!(
            &DnsblSite::parse(text).expect("a written site parses"),
            site
        );
        let _ = site.matches(&[Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 255)]);
    }
    for domain in sites.domains() {
        for client in [
            IpAddr::from(Ipv4Addr::new(192, 0, 2, 7)),
            IpAddr::from(Ipv6Addr::LOCALHOST),
        ] {
            let name = query_name(client, domain);
            assert!(
                name.len() <= 255,
                "query name longer than DNS allows: {name}"
            );
        }
    }
}

/// `postconf -n` output and master.cf, separated by a NUL byte, turned into a configuration
/// by `smtp-screen import-postfix`; the configuration it writes must load.
pub fn postfix_import(data: &[u8]) {
    let (main, master) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], Some(&data[at + 1..])),
        None => (data, None),
    };
    let Ok(postconf) = Postconf::parse("postconf -n", main) else {
        return;
    };
    let master_cf = match master.map(|bytes| MasterCf::parse("master.cf", bytes)) {
        Some(Ok(master_cf)) => Some(master_cf),
        Some(Err(_)) => return,
        None => None,
    };
    let import = import_postfix::import(&postconf, master_cf.as_ref(), &NoFiles);
    if let Err(error) = Config::parse(Path::new("imported.toml"), &import.toml) {
        panic!(
            "the imported configuration does not load: {error}\n{}",
            import.toml
        );
    }
}

/// No table files: `texthash:` and `cidr:` maps named by the input are missing.
struct NoFiles;

impl TableFiles for NoFiles {
    fn read(&self, path: &str) -> Result<String, CidrError> {
        Err(CidrError::Read {
            path: path.into(),
            source: std::io::ErrorKind::NotFound.into(),
        })
    }
}
