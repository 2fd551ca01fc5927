//! A real load balancer in front of the daemon: Debian's HAProxy ([`Haproxy`]), a TCP frontend
//! on one address of a namespace that relays every connection to the daemon with a PROXY v2
//! header (`send-proxy-v2`) from that same address. The daemon's socket, and the XDP program on
//! its interface, see only the balancer; the header names the client.
//!
//! HAProxy runs in the foreground (`haproxy -f CFG -db`) inside the namespace, its
//! configuration and output (one `option tcplog` line per connection) in the test's scratch
//! directory. [`Haproxy::start`] returns once the frontend listens, without a connection of
//! its own (that would be a session in the daemon's log); dropping it kills the process.
//! Tests call [`crate::ensure_packages`] with [`PACKAGE`] first.

use std::{
    fs::File,
    io,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use crate::netns::{ChildGuard, Netns, ScratchDir, run_within};

/// The Debian package.
pub const PACKAGE: &str = "haproxy";
/// Debian's binary.
const HAPROXY: &str = "/usr/sbin/haproxy";
/// How long HAProxy may take to parse its configuration and bind its frontend.
const START_WAIT: Duration = Duration::from_secs(10);
/// Upper bound for one `ss` run.
const SS_LIMIT: Duration = Duration::from_secs(5);
/// Upper bound for HAProxy to stop on SIGTERM.
const STOP_WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(50);
/// HAProxy's time limits: long enough for any session of a test, short enough that nothing
/// it holds outlives one.
const TIMEOUTS: &str = "    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n";

/// HAProxy relaying `frontend` to one server with a PROXY v2 header.
pub struct Haproxy {
    process: ChildGuard,
    frontend: SocketAddr,
    output: PathBuf,
}

impl Haproxy {
    /// Starts HAProxy in `netns`, listening on `frontend` (an address of `netns`) and relaying
    /// each connection to `server` from the frontend's own address, a PROXY v2 header first.
    /// Its configuration and output go in `scratch`, named after `name`. Returns once the
    /// frontend listens; an error carries HAProxy's output.
    pub fn start(
        netns: &Netns,
        scratch: &ScratchDir,
        name: &str,
        frontend: SocketAddr,
        server: SocketAddr,
    ) -> io::Result<Self> {
        let config = scratch.write(
            &format!("{name}.cfg"),
            config_text(frontend, server, frontend.ip()),
        )?;
        let output = scratch.path().join(format!("{name}.log"));
        let output_file = File::create(&output)?;
        let mut cmd = netns.command(HAPROXY);
        cmd.arg("-f")
            .arg(&config)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(output_file.try_clone()?)
            .stderr(output_file);
        let process = ChildGuard::spawn(&mut cmd)?;
        let mut haproxy = Self {
            process,
            frontend,
            output,
        };
        haproxy.wait_listening(netns)?;
        Ok(haproxy)
    }

    /// The address clients connect to.
    pub fn frontend(&self) -> SocketAddr {
        self.frontend
    }

    /// What HAProxy wrote: warnings, and a line per connection.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    /// Stops HAProxy with SIGTERM, killing it if it has not gone within a few seconds.
    pub fn stop(mut self) {
        let _ = self.process.terminate(STOP_WAIT);
    }

    /// Polls the namespace's listening sockets (`ss`) until the frontend is among them.
    fn wait_listening(&mut self, netns: &Netns) -> io::Result<()> {
        let deadline = Instant::now() + START_WAIT;
        let wanted = self.frontend.to_string();
        loop {
            if let Some(status) = self.process.try_wait()? {
                return Err(io::Error::other(format!(
                    "haproxy exited ({status}):\n{}",
                    self.output()
                )));
            }
            let mut ss = netns.command("ss");
            ss.args(["-Hltn"]);
            let listening = run_within(&mut ss, SS_LIMIT)?;
            if listening
                .lines()
                .any(|line| line.split_whitespace().any(|field| field == wanted))
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "haproxy is not listening on {wanted} after {START_WAIT:?}:\n{}",
                        self.output()
                    ),
                ));
            }
            thread::sleep(POLL);
        }
    }
}

/// The configuration: one TCP frontend, one server reached from `source` with a PROXY v2
/// header, a log line per connection on stderr, no health checks (which would reach the
/// daemon as connections of their own).
fn config_text(frontend: SocketAddr, server: SocketAddr, source: IpAddr) -> String {
    format!(
        "# smtp-screen end-to-end test: the load balancer in front of the daemon\n\
         global\n    \
             log stderr format raw local0 info\n    \
             maxconn 1000\n\
         defaults\n    \
             mode tcp\n    \
             log global\n    \
             option tcplog\n\
         {TIMEOUTS}\
         frontend smtp\n    \
             bind {frontend}\n    \
             default_backend screen\n\
         backend screen\n    \
             server screen {server} send-proxy-v2 source {source}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_relays_with_a_proxy_v2_header_from_the_balancers_address() {
        let text = config_text(
            "10.251.7.100:25".parse().unwrap(),
            "10.251.7.1:25".parse().unwrap(),
            "10.251.7.100".parse().unwrap(),
        );
        assert!(
            text.contains("\nfrontend smtp\n    bind 10.251.7.100:25\n"),
            "{text}"
        );
        assert!(
            text.contains("\n    server screen 10.251.7.1:25 send-proxy-v2 source 10.251.7.100\n"),
            "{text}"
        );
        assert!(!text.contains(" check"), "no health checks:\n{text}");
    }
}
