//! The raw `bpf(2)` calls that aya does not offer, for the tests and benchmarks that need
//! them: tiny XDP programs loaded from hand-written instructions ([`RawProgram`]), so that no
//! loader feature can add work to a reference they are measured against;
//! `BPF_PROG_TEST_RUN` with a repeat count and in live-frames mode; native attachment through a
//! BPF link; and batched map updates.
//!
//! Each attribute struct is the leading part of `union bpf_attr` for its command, `#[repr(C)]`
//! as in `include/uapi/linux/bpf.h`; the kernel zero-fills the rest. Batched updates of hash
//! maps need kernel 5.6, XDP links 5.9, live frames 5.18.

use std::{
    io::{self, ErrorKind},
    mem::size_of,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use crate::xdp::{XDP_DROP, XDP_PASS};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
/// `BPF_PROG_TEST_RUN` hands every frame to the network stack as a NIC driver would,
/// instead of reporting the verdict (kernel 5.18).
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;
pub const BPF_FUNC_KTIME_GET_NS: i32 = 5;
pub const BPF_FUNC_KTIME_GET_COARSE_NS: i32 = 160;
const BPF_FUNC_REDIRECT: i32 = 23;

/// `exit` (BPF_JMP | BPF_EXIT).
const EXIT: [u8; 8] = [0x95, 0x00, 0, 0, 0, 0, 0, 0];

/// `dst = imm` (BPF_ALU64 | BPF_MOV | BPF_K).
fn mov_imm(dst: u8, imm: i32) -> [u8; 8] {
    let mut insn = [0xb7, dst, 0, 0, 0, 0, 0, 0];
    insn[4..].copy_from_slice(&imm.to_le_bytes());
    insn
}

/// `call helper` (BPF_JMP | BPF_CALL).
fn call(helper: i32) -> [u8; 8] {
    let mut insn = [0x85, 0x00, 0, 0, 0, 0, 0, 0];
    insn[4..].copy_from_slice(&helper.to_le_bytes());
    insn
}

/// The leading fields of `union bpf_attr` for `BPF_PROG_LOAD`; the kernel zero-fills the rest.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    // Explicit, so that the tail the kernel checks for zeros is initialised.
    _pad: u32,
}

/// `struct xdp_md`: the context a test run's program sees, given as `ctx_in`.
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a fully initialised `#[repr(C)]` prefix of `union bpf_attr` of the
    // size passed; every pointer inside it refers to memory that outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// What one `BPF_PROG_TEST_RUN` reported.
#[derive(Clone, Copy, Debug)]
pub struct TestRunOutcome {
    pub retval: u32,
    /// The kernel's average per run, truncated to whole nanoseconds.
    pub duration_ns: u32,
}

/// `BPF_PROG_TEST_RUN` of `prog` on `frame`, `repeat` times.
pub fn test_run(prog: BorrowedFd<'_>, frame: &[u8], repeat: u32) -> io::Result<TestRunOutcome> {
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat,
        ..Default::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(TestRunOutcome {
        retval: attr.retval,
        duration_ns: attr.duration,
    })
}

/// A few instructions of XDP, loaded without aya so that no loader feature can add work to
/// them: the floor every figure is compared with (`XDP_DROP` without reading anything), its
/// variants, and the live-frames sender.
pub struct RawProgram {
    fd: OwnedFd,
}

impl RawProgram {
    /// `r0 = XDP_DROP; exit`.
    pub fn xdp_drop() -> io::Result<Self> {
        Self::from_insns("ssb_noop", &[mov_imm(0, XDP_DROP as i32), EXIT])
    }

    /// `r0 = XDP_PASS; exit`: lets veth take xdp_frames and hand them to the stack.
    pub fn xdp_pass() -> io::Result<Self> {
        Self::from_insns("ssb_pass", &[mov_imm(0, XDP_PASS as i32), EXIT])
    }

    /// Looks `key` up in the map `map_fd` (its key is 4 bytes), then returns `XDP_DROP`:
    /// what one map lookup adds to the reference.
    pub fn looking_up(map_fd: BorrowedFd<'_>, key: [u8; 4], name: &str) -> io::Result<Self> {
        // `*(u32 *)(r10 - 4) = key` (BPF_ST | BPF_MEM | BPF_W).
        let mut store = [0x62, 0x0a, 0xfc, 0xff, 0, 0, 0, 0];
        store[4..].copy_from_slice(&key);
        // `r2 = r10` (BPF_ALU64 | BPF_MOV | BPF_X), then `r2 += -4`.
        let key_ptr = [0xbf, 0xa2, 0, 0, 0, 0, 0, 0];
        let mut offset = [0x07, 0x02, 0, 0, 0, 0, 0, 0];
        offset[4..].copy_from_slice(&(-4i32).to_le_bytes());
        // `r1 = map` (BPF_LD | BPF_IMM | BPF_DW with BPF_PSEUDO_MAP_FD): two slots.
        let mut load_map = [0x18, 0x11, 0, 0, 0, 0, 0, 0];
        load_map[4..].copy_from_slice(&map_fd.as_raw_fd().to_le_bytes());
        let load_map_high = [0u8; 8];
        Self::from_insns(
            name,
            &[
                store,
                key_ptr,
                offset,
                load_map,
                load_map_high,
                call(BPF_FUNC_MAP_LOOKUP_ELEM),
                mov_imm(0, XDP_DROP as i32),
                EXIT,
            ],
        )
    }

    /// Calls the argument-less `helper`, then returns `XDP_DROP`: what one helper call
    /// adds to the reference.
    pub fn calling(helper: i32, name: &str) -> io::Result<Self> {
        Self::from_insns(name, &[call(helper), mov_imm(0, XDP_DROP as i32), EXIT])
    }

    /// `return bpf_redirect(ifindex, 0)`: sends every frame out of `ifindex`.
    pub fn redirect(ifindex: u32) -> io::Result<Self> {
        let ifindex = i32::try_from(ifindex).map_err(|_| {
            io::Error::new(
                ErrorKind::InvalidInput,
                format!("interface index {ifindex} does not fit an instruction's immediate"),
            )
        })?;
        Self::from_insns(
            "ssb_redirect",
            &[
                mov_imm(1, ifindex),
                mov_imm(2, 0),
                call(BPF_FUNC_REDIRECT),
                EXIT,
            ],
        )
    }

    fn from_insns(name: &str, insns: &[[u8; 8]]) -> io::Result<Self> {
        let mut prog_name = [0u8; 16];
        prog_name[..name.len().min(15)].copy_from_slice(&name.as_bytes()[..name.len().min(15)]);
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: c"GPL".as_ptr() as u64,
            prog_name,
            ..Default::default()
        };
        let fd = bpf(BPF_PROG_LOAD, &mut attr).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("BPF_PROG_LOAD of XDP program {name}: {e}"),
            )
        })?;
        // SAFETY: BPF_PROG_LOAD returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
        Ok(Self { fd })
    }

    pub fn test_run(&self, frame: &[u8], repeat: u32) -> io::Result<TestRunOutcome> {
        test_run(self.fd.as_fd(), frame, repeat)
    }

    /// A live-frames test run: `frames` copies of `frame`, as if received on
    /// `ingress_ifindex` of the calling thread's network namespace, go through the program
    /// `batch_size` at a time, and whatever it returns is carried out for real (a redirect
    /// transmits, a pass enters the stack). The kernel reports no verdict in this mode.
    pub fn test_run_live(
        &self,
        frame: &[u8],
        ingress_ifindex: u32,
        frames: u32,
        batch_size: u32,
    ) -> io::Result<()> {
        let ctx = XdpMd {
            data_end: frame.len() as u32,
            ingress_ifindex,
            ..Default::default()
        };
        let mut attr = TestRunAttr {
            prog_fd: self.fd.as_raw_fd() as u32,
            data_size_in: frame.len() as u32,
            data_in: frame.as_ptr() as u64,
            repeat: frames,
            ctx_size_in: size_of::<XdpMd>() as u32,
            ctx_in: (&ctx as *const XdpMd) as u64,
            flags: BPF_F_TEST_XDP_LIVE_FRAMES,
            batch_size,
            ..Default::default()
        };
        bpf(BPF_PROG_TEST_RUN, &mut attr)?;
        Ok(())
    }

    /// Attaches natively to `ifindex` of the calling thread's network namespace through a
    /// BPF link; dropping the returned descriptor detaches it.
    pub fn attach_native(&self, ifindex: u32) -> io::Result<OwnedFd> {
        let mut attr = LinkCreateAttr {
            prog_fd: self.fd.as_raw_fd() as u32,
            target_ifindex: ifindex,
            attach_type: BPF_XDP,
            flags: XDP_FLAGS_DRV_MODE,
        };
        let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
        // SAFETY: BPF_LINK_CREATE returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
    }
}

/// `BPF_MAP_UPDATE_BATCH`: one syscall for many elements. Returns how many were written.
pub fn update_batch<K, V>(map: BorrowedFd<'_>, keys: &[K], values: &[V]) -> io::Result<u32> {
    assert_eq!(keys.len(), values.len());
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: map.as_raw_fd() as u32,
        ..Default::default()
    };
    bpf(BPF_MAP_UPDATE_BATCH, &mut attr)?;
    Ok(attr.count)
}
