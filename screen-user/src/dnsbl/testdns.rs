//! Test helpers that run real DNS servers: rbldnsd, and a UDP forwarder in front of it that
//! counts queries and can swallow a zone's.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::net::UdpSocket;

const RBLDNSD: &str = "/usr/sbin/rbldnsd";

/// rbldnsd on 127.0.0.1 with the given zones: `(zone, dataset type, file contents)`.
pub(crate) struct Rbldnsd {
    child: Child,
    dir: PathBuf,
    pub(crate) addr: SocketAddr,
}

impl Rbldnsd {
    pub(crate) fn start(zones: &[(&str, &str, &str)]) -> Self {
        assert!(
            std::path::Path::new(RBLDNSD).exists(),
            "{RBLDNSD} is missing: apt-get install rbldnsd"
        );
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "smtp-screen-dnsbl-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // rbldnsd drops root for its own user, which must read the zone files.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut args = Vec::new();
        for (zone, kind, data) in zones {
            let file = format!("{zone}.txt");
            let path = dir.join(&file);
            std::fs::write(&path, data).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            args.push(format!("{zone}:{kind}:{file}"));
        }
        for _ in 0..5 {
            let port = std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut child = Command::new(RBLDNSD)
                .arg("-n")
                .args(["-b", &format!("127.0.0.1/{port}")])
                .arg("-w")
                .arg(&dir)
                .args(["-c", "0"])
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start rbldnsd");
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            if wait_ready(addr, &mut child) {
                return Self { child, dir, addr };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("rbldnsd did not start");
    }
}

/// Waits until the server answers a query, for at most 5 s.
fn wait_ready(addr: SocketAddr, child: &mut Child) -> bool {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let query = build_query(0x4242, "version.bind");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        let _ = socket.send_to(&query, addr);
        let mut buf = [0u8; 512];
        if let Ok((n, _)) = socket.recv_from(&mut buf)
            && n >= 2
            && buf[..2] == [0x42, 0x42]
        {
            return true;
        }
    }
    false
}

impl Drop for Rbldnsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A DNS query packet for `name`, type A.
pub(crate) fn build_query(id: u16, name: &str) -> Vec<u8> {
    let mut packet = Vec::new();
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.extend_from_slice(&[0, 0, 1, 0, 1]);
    packet
}

/// The question name of a DNS packet, lower case; `None` when it does not parse.
pub(crate) fn question_name(packet: &[u8]) -> Option<String> {
    let mut at = 12;
    let mut labels = Vec::new();
    for _ in 0..128 {
        let len = usize::from(*packet.get(at)?);
        if len == 0 {
            return Some(labels.join(".").to_ascii_lowercase());
        }
        if len > 63 {
            return None;
        }
        let label = packet.get(at + 1..at + 1 + len)?;
        labels.push(String::from_utf8_lossy(label).into_owned());
        at += 1 + len;
    }
    None
}

/// A UDP forwarder on 127.0.0.1 that counts queries by name and drops those for the
/// zones in `blackhole`.
pub(crate) struct Forwarder {
    pub(crate) addr: SocketAddr,
    counts: Arc<Mutex<HashMap<String, usize>>>,
    pub(crate) blackhole: Arc<Mutex<HashSet<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    pub(crate) async fn start(upstream: SocketAddr, blackhole: &[&str]) -> Self {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = socket.local_addr().unwrap();
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let blackhole = Arc::new(Mutex::new(
            blackhole
                .iter()
                .map(|z| z.to_string())
                .collect::<HashSet<_>>(),
        ));
        let task = tokio::spawn({
            let counts = Arc::clone(&counts);
            let blackhole = Arc::clone(&blackhole);
            async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                        return;
                    };
                    let packet = buf[..n].to_vec();
                    let Some(name) = question_name(&packet) else {
                        continue;
                    };
                    *counts.lock().unwrap().entry(name.clone()).or_default() += 1;
                    let swallowed = blackhole
                        .lock()
                        .unwrap()
                        .iter()
                        .any(|zone| name == *zone || name.ends_with(&format!(".{zone}")));
                    if swallowed {
                        continue;
                    }
                    let socket = Arc::clone(&socket);
                    tokio::spawn(async move {
                        let relay = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                        relay.send_to(&packet, upstream).await.unwrap();
                        let mut reply = vec![0u8; 4096];
                        if let Ok(Ok(n)) =
                            tokio::time::timeout(Duration::from_secs(2), relay.recv(&mut reply))
                                .await
                        {
                            let _ = socket.send_to(&reply[..n], from).await;
                        }
                    });
                }
            }
        });
        Self {
            addr,
            counts,
            blackhole,
            task,
        }
    }

    /// Queries seen for `name`.
    pub(crate) fn count(&self, name: &str) -> usize {
        self.counts.lock().unwrap().get(name).copied().unwrap_or(0)
    }

    /// Queries seen in all.
    pub(crate) fn total(&self) -> usize {
        self.counts.lock().unwrap().values().sum()
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}
