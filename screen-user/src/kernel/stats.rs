//! The program's counters: one record with a slot per CPU ([`StatsRecord`], 128 KiB), read and
//! written in place on the heap. `aya`'s array accessors pass values through the stack, and a
//! record this size, copied a few times on its way, overflows a worker thread's stack.

use std::{
    io,
    mem::size_of,
    os::fd::{AsFd, AsRawFd},
};

use aya::maps::MapData;
use screen_common::StatsRecord;

/// `BPF_MAP_LOOKUP_ELEM` and `BPF_MAP_UPDATE_ELEM` (`enum bpf_cmd`).
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;

/// The part of `union bpf_attr` that both commands read (`value` shares its place with
/// `next_key`, which they do not use).
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

const _: () = assert!(size_of::<ElemAttr>() == 32);

/// The counters' map: an array of one [`StatsRecord`].
pub struct StatsMap {
    map: MapData,
}

impl StatsMap {
    /// Takes the map after checking that its value is one record: the kernel copies the whole
    /// value into the buffer a read gives it.
    pub fn new(map: MapData) -> io::Result<Self> {
        let value_size = map.info().map_err(io::Error::other)?.value_size() as usize;
        if value_size != size_of::<StatsRecord>() {
            return Err(io::Error::other(format!(
                "value size {value_size}, expected {}",
                size_of::<StatsRecord>()
            )));
        }
        Ok(Self { map })
    }

    /// The record as the program left it.
    pub fn read(&self) -> io::Result<Box<StatsRecord>> {
        let mut record = zeroed();
        self.elem(BPF_MAP_LOOKUP_ELEM, (&raw mut *record).cast())?;
        Ok(record)
    }

    /// Replaces the record.
    pub fn write(&self, record: &StatsRecord) -> io::Result<()> {
        self.elem(BPF_MAP_UPDATE_ELEM, (&raw const *record).cast_mut().cast())
    }

    fn elem(&self, cmd: libc::c_long, value: *mut u8) -> io::Result<()> {
        let key = 0u32;
        let attr = ElemAttr {
            map_fd: self.map.fd().as_fd().as_raw_fd() as u32,
            _pad: 0,
            key: (&raw const key) as u64,
            value: value as u64,
            flags: 0,
        };
        // SAFETY: `attr` names a key of 4 bytes and a value buffer of exactly the map's value
        // size (checked in `new`); the kernel reads or writes nothing else.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                &raw const attr,
                size_of::<ElemAttr>() as libc::c_uint,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A record of zeros, allocated in place.
pub fn zeroed() -> Box<StatsRecord> {
    // SAFETY: `StatsRecord` is made of `u64`s: all zero bits is a valid value (every counter 0).
    unsafe { Box::<StatsRecord>::new_zeroed().assume_init() }
}
