//! Batch operations on the dynamic deny hashes: `BPF_MAP_LOOKUP_BATCH` and
//! `BPF_MAP_DELETE_BATCH` (kernel 5.6, within the layer's minimum), which aya does not wrap.
//! A sweep of a full map (1.3M entries) takes a few hundred system calls instead of three per
//! entry.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use aya::Pod;
use screen_common::DenyEntry;

/// How many entries one batch call moves: a bucket of the hash must fit (the kernel answers
/// `ENOSPC` otherwise), and 64 KiB of keys and values is a few dozen microseconds of copying.
const BATCH: usize = 4096;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// A batch operation that failed, naming the map.
#[derive(Debug, thiserror::Error)]
#[error("{op} on {name}: {source}")]
pub struct BatchError {
    pub name: &'static str,
    pub op: &'static str,
    #[source]
    pub source: io::Error,
}

/// The `batch` member of `union bpf_attr`.
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

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a fully initialised `#[repr(C)]` prefix of `union bpf_attr` of the
    // size passed; the buffers it points to are owned by the caller, sized for `count`
    // entries of the map's key and value, and outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            size_of::<BatchAttr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn zeroed<T: Pod>() -> T {
    // SAFETY: `Pod` types are plain data, for which all zero bytes is a value.
    unsafe { std::mem::zeroed() }
}

/// Deletes the entries of the deny hash `map` (keys `K`, values [`DenyEntry`]) that expired
/// at or before `now_ns`; returns how many went. Entries gone meanwhile (LRU eviction) are
/// skipped. The map is walked once in batches; the deletions follow in batches too.
pub(crate) fn sweep_expired<K: Pod>(
    map: BorrowedFd<'_>,
    name: &'static str,
    now_ns: u64,
) -> Result<usize, BatchError> {
    let error = |op, source| BatchError { name, op, source };
    let mut keys: Vec<K> = (0..BATCH).map(|_| zeroed()).collect();
    let mut values: Vec<DenyEntry> = (0..BATCH).map(|_| zeroed()).collect();
    let mut stale: Vec<K> = Vec::new();
    let (mut token_in, mut token_out) = (0u64, 0u64);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &token_in as *const u64 as u64
            },
            out_batch: &mut token_out as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let got = (attr.count as usize).min(BATCH);
        stale.extend(
            keys[..got]
                .iter()
                .zip(&values[..got])
                .filter(|(_, entry)| entry.expires_ns <= now_ns)
                .map(|(key, _)| *key),
        );
        match result {
            Ok(()) => {
                token_in = token_out;
                first = false;
            }
            // The end of the map.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => return Err(error("BPF_MAP_LOOKUP_BATCH", e)),
        }
    }
    let mut swept = 0;
    let mut rest = &stale[..];
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(BATCH)];
        let mut attr = BatchAttr {
            keys: chunk.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        let result = bpf(BPF_MAP_DELETE_BATCH, &mut attr);
        let deleted = (attr.count as usize).min(chunk.len());
        swept += deleted;
        match result {
            Ok(()) => rest = &rest[chunk.len()..],
            // The key after the deleted ones is gone already: skip it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                rest = &rest[(deleted + 1).min(rest.len())..]
            }
            Err(e) => return Err(error("BPF_MAP_DELETE_BATCH", e)),
        }
    }
    Ok(swept)
}
