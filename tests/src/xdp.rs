//! The XDP program loaded without pins and driven frame by frame through `BPF_PROG_TEST_RUN`,
//! so that a test sees the kernel's own verdict, rewritten frame and counters.

use std::{
    fmt,
    net::IpAddr,
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
};

use aya::{
    Ebpf, EbpfLoader, TestRun, TestRunOptions,
    maps::Map,
    programs::{ProgramError, Xdp},
    sys::SyscallError,
};
use screen_common::{PROGRAM_NAME, Stat, map_name};
use screen_user::kernel::{self, Maps};

use crate::frames::{IPPROTO_TCP, TCP_ACK, TCP_RST, pseudo_header_sum, verifies};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// The name of an XDP return value, for assertion messages.
pub fn action_name(action: u32) -> &'static str {
    match action {
        XDP_ABORTED => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        _ => "XDP_?",
    }
}

/// What one run of the program did to one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The XDP return value.
    pub action: u32,
    /// The frame as the program left it (rewritten for `XDP_TX`, shortened by
    /// `bpf_xdp_adjust_tail`).
    pub frame: Vec<u8>,
}

/// A private instance of the program with its own, unpinned maps: counters start at zero and
/// nothing is shared with another test or with an installed smtp-screen.
pub struct ScreenUnderTest {
    ebpf: Ebpf,
    pub maps: Maps,
    /// A second descriptor of the IPv4 dynamic deny map, which `maps` holds too: for writes
    /// through the raw syscall, such as batched updates.
    dynamic_v4: OwnedFd,
}

impl ScreenUnderTest {
    /// Loads the embedded object and verifies the program. The configuration record stays all
    /// zero until the test calls [`kernel::configure`].
    pub fn load() -> Result<Self, Box<dyn std::error::Error>> {
        let mut ebpf = EbpfLoader::new().load(kernel::OBJECT)?;
        let dynamic_v4 = match ebpf.map(map_name::DYN_DENY_V4) {
            Some(Map::LruHashMap(data)) => data.fd().as_fd().try_clone_to_owned()?,
            other => {
                return Err(
                    format!("{} is {other:?}, not an LRU hash", map_name::DYN_DENY_V4).into(),
                );
            }
        };
        // The maps are created by `EbpfLoader::load`; taking them out does not unbind them
        // from the program's relocated instructions.
        let maps = Maps::from_ebpf(&mut ebpf)?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or("the object has no XDP program")?
            .try_into()?;
        program.load()?;
        Ok(Self {
            ebpf,
            maps,
            dynamic_v4,
        })
    }

    /// The loaded program, for a test run of options of its own.
    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(PROGRAM_NAME)
            .expect("checked at load")
            .try_into()
            .expect("checked at load")
    }

    /// The IPv4 dynamic deny map's descriptor.
    pub fn dynamic_v4_fd(&self) -> BorrowedFd<'_> {
        self.dynamic_v4.as_fd()
    }

    /// Runs the program once on `frame`.
    pub fn run(&self, frame: &[u8]) -> Result<Outcome, ProgramError> {
        // The program only ever shortens a frame, so the input length is enough room.
        let mut out = vec![0; frame.len().max(64)];
        let result = self.program().test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..Default::default()
        })?;
        out.truncate(result.data_size_out as usize);
        Ok(Outcome {
            action: result.return_value,
            frame: out,
        })
    }

    /// Runs the program on `frame`, which the kernel must accept.
    pub fn verdict(&self, frame: &[u8]) -> Outcome {
        self.run(frame)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN on {} bytes: {e}", frame.len()))
    }

    /// The program's counters, summed over all CPUs.
    pub fn counters(&self) -> Counters {
        Counters(self.maps.counters().expect("reading the stats map"))
    }

    /// Runs `frame` and returns the outcome with the counters it moved.
    pub fn counted(&self, frame: &[u8]) -> (Outcome, Counters) {
        let before = self.counters();
        let outcome = self.verdict(frame);
        (outcome, self.counters().since(&before))
    }
}

/// The `errno` of a failed `BPF_PROG_TEST_RUN`, if the failure was the syscall's.
pub fn syscall_errno(error: &ProgramError) -> Option<i32> {
    match error {
        ProgramError::SyscallError(SyscallError { io_error, .. }) => io_error.raw_os_error(),
        _ => None,
    }
}

/// Whether a run failed with `EINVAL`.
pub fn is_einval(error: &ProgramError) -> bool {
    syscall_errno(error) == Some(libc::EINVAL)
}

/// A snapshot (or a difference of two snapshots) of the counters summed over the CPU slots,
/// indexed by [`Stat`].
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters(pub [u64; Stat::COUNT as usize]);

impl Counters {
    /// Counters that moved by exactly these amounts and no others.
    pub fn only(moved: &[(Stat, u64)]) -> Self {
        let mut counters = Self::default();
        for &(stat, n) in moved {
            counters.0[stat as usize] += n;
        }
        counters
    }

    /// How far each counter moved since `earlier`.
    pub fn since(&self, earlier: &Counters) -> Self {
        let mut delta = Self::default();
        for stat in Stat::ALL {
            delta.0[stat as usize] = self[stat] - earlier[stat];
        }
        delta
    }
}

impl std::ops::Index<Stat> for Counters {
    type Output = u64;

    fn index(&self, stat: Stat) -> &u64 {
        &self.0[stat as usize]
    }
}

impl fmt::Debug for Counters {
    // Only the counters that are set, by name: a mismatch then reads as the branch taken.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for stat in Stat::ALL {
            if self[stat] != 0 {
                map.entry(&stat.name(), &self[stat]);
            }
        }
        map.finish()
    }
}

/// A frame as hex, for failure messages.
pub fn hex(frame: &[u8]) -> String {
    frame.iter().map(|b| format!("{b:02x}")).collect()
}

fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Field-by-field differences between a frame and what it should be.
#[derive(Default)]
struct Mismatches(Vec<String>);

impl Mismatches {
    fn check<T: PartialEq + fmt::Debug>(&mut self, what: &str, got: T, want: T) {
        if got != want {
            self.0.push(format!("{what}: {got:x?}, expected {want:x?}"));
        }
    }

    fn require(&mut self, what: &str, holds: bool) {
        if !holds {
            self.0.push(what.to_string());
        }
    }

    fn into_result(self) -> Result<(), String> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0.join("; "))
        }
    }
}

/// Checks that `reply` is the RST+ACK that RFC 9293 §3.10.7.1 asks for in answer to `syn`, a
/// frame whose network header starts at `l3` and carries no IPv4 options or IPv6 extension
/// headers. Every expectation is derived from the SYN's own bytes; the error lists each
/// field that is wrong.
pub fn check_rst_reply(syn: &[u8], l3: usize, reply: &[u8]) -> Result<(), String> {
    let mut wrong = Mismatches::default();
    let v4 = syn[l3] >> 4 == 4;
    let (ip_len, addr_len, src_at) = if v4 { (20, 4, 12) } else { (40, 16, 8) };
    let l4 = l3 + ip_len;
    wrong.check("frame length", reply.len(), l4 + 20);
    if reply.len() < l4 + 20 {
        return wrong.into_result();
    }
    wrong.check("destination MAC", &reply[0..6], &syn[6..12]);
    wrong.check("source MAC", &reply[6..12], &syn[0..6]);
    wrong.check("VLAN tags and ethertype", &reply[12..l3], &syn[12..l3]);

    let addresses = |frame: &[u8]| {
        let src = l3 + src_at;
        let dst = src + addr_len;
        let to_ip = |bytes: &[u8]| match <[u8; 4]>::try_from(bytes) {
            Ok(v4) => IpAddr::from(v4),
            Err(_) => IpAddr::from(<[u8; 16]>::try_from(bytes).expect("16 bytes")),
        };
        (to_ip(&frame[src..dst]), to_ip(&frame[dst..dst + addr_len]))
    };
    let (syn_src, syn_dst) = addresses(syn);
    let (reply_src, reply_dst) = addresses(reply);
    wrong.check("source address", reply_src, syn_dst);
    wrong.check("destination address", reply_dst, syn_src);

    let syn_doff = usize::from(syn[l4 + 12] >> 4) * 4;
    // SEG.LEN of the SYN without the SYN flag: the data it carried, by its IP length field.
    let payload = if v4 {
        wrong.check("IPv4 version and IHL", reply[l3], 0x45);
        wrong.check("IPv4 total length", be16(reply, l3 + 2), 40);
        wrong.check(
            "IPv4 fragment offset and MF",
            be16(reply, l3 + 6) & 0x3fff,
            0,
        );
        wrong.check("IPv4 protocol", reply[l3 + 9], IPPROTO_TCP);
        wrong.require("IPv4 header checksum verifies", verifies(&reply[l3..l4], 0));
        usize::from(be16(syn, l3 + 2)).saturating_sub(ip_len + syn_doff)
    } else {
        wrong.check("IPv6 version", reply[l3] >> 4, 6);
        wrong.check("IPv6 payload length", be16(reply, l3 + 4), 20);
        wrong.check("IPv6 next header", reply[l3 + 6], IPPROTO_TCP);
        usize::from(be16(syn, l3 + 4)).saturating_sub(syn_doff)
    };

    wrong.check("TCP source port", be16(reply, l4), be16(syn, l4 + 2));
    wrong.check("TCP destination port", be16(reply, l4 + 2), be16(syn, l4));
    wrong.check("TCP sequence number", be32(reply, l4 + 4), 0);
    // The SYN flag counts as one octet of the segment.
    let ack = be32(syn, l4 + 4)
        .wrapping_add(1)
        .wrapping_add(payload as u32);
    wrong.check("TCP acknowledgment number", be32(reply, l4 + 8), ack);
    wrong.check("TCP data offset", reply[l4 + 12] >> 4, 5);
    wrong.check("TCP flags", reply[l4 + 13], TCP_RST | TCP_ACK);
    let pseudo = pseudo_header_sum(reply_src, reply_dst, IPPROTO_TCP, 20);
    wrong.require("TCP checksum verifies", verifies(&reply[l4..], pseudo));
    wrong.into_result()
}
