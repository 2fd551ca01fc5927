//! The BPF filesystem that holds the pins: mounted on demand, as bpftool and xdp-tools do,
//! locked while a command changes the pinned state, and its pins opened read-only for a holder
//! that only reads a map.
//!
//! # Minimum kernel version
//!
//! 4.15 for `BPF_F_RDONLY` in `BPF_OBJ_GET`.

use std::{
    ffi::CString,
    fs::File,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use crate::paths::BPFFS_ROOT;

/// `statfs` magic of the BPF filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// An error with the BPF filesystem.
#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error("{path} is not on a BPF filesystem (pin directories must live under a bpffs mount)")]
    NotBpffs { path: PathBuf },
    #[error("cannot mount the BPF filesystem on {BPFFS_ROOT}: {source}")]
    Mount {
        #[source]
        source: io::Error,
    },
    #[error("cannot create pin directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot lock pin directory {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `statfs` is plain C data (integers), for which all zeroes is a valid value.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and a writable statfs buffer.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut buf) };
    rc == 0 && buf.f_type as i64 == BPF_FS_MAGIC
}

/// Makes sure `pin_dir` exists on a bpffs, mounting bpffs on `/sys/fs/bpf` when nothing is
/// mounted there yet.
pub(crate) fn prepare_pin_dir(pin_dir: &Path) -> Result<(), BpffsError> {
    let parent = pin_dir.parent().unwrap_or(Path::new("/"));
    if !is_bpffs(parent) {
        if parent != Path::new(BPFFS_ROOT) {
            return Err(BpffsError::NotBpffs {
                path: parent.to_path_buf(),
            });
        }
        mount_bpffs()?;
    }
    match std::fs::create_dir(pin_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(BpffsError::CreateDir {
            path: pin_dir.to_path_buf(),
            source,
        }),
    }
}

fn mount_bpffs() -> Result<(), BpffsError> {
    let _ = std::fs::create_dir_all(BPFFS_ROOT);
    let source = c"bpf";
    let target = CString::new(BPFFS_ROOT).expect("no NUL in a constant");
    let fstype = c"bpf";
    let data = c"mode=0700";
    // SAFETY: all pointers are valid NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(BpffsError::Mount {
            source: io::Error::last_os_error(),
        });
    }
    tracing::info!("mounted the BPF filesystem on {BPFFS_ROOT}");
    Ok(())
}

/// An exclusive `flock` on the pin directory, held while a command changes pinned state, so
/// that two operators (or the daemon and an operator) never interleave a list replacement.
pub(crate) struct PinDirLock {
    _dir: File,
}

impl PinDirLock {
    pub(crate) fn acquire(pin_dir: &Path) -> Result<Self, BpffsError> {
        let err = |source| BpffsError::Lock {
            path: pin_dir.to_path_buf(),
            source,
        };
        let dir = File::open(pin_dir).map_err(err)?;
        // SAFETY: a valid open descriptor.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(err(io::Error::last_os_error()));
        }
        Ok(Self { _dir: dir })
    }
}

/// `BPF_OBJ_GET` (`enum bpf_cmd`).
const BPF_OBJ_GET: libc::c_long = 7;
/// `BPF_F_RDONLY`: the descriptor may read the map, not change it.
const BPF_F_RDONLY: u32 = 1 << 3;

/// The part of `union bpf_attr` that `BPF_OBJ_GET` reads (the kernel zero-fills the rest).
#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// A read-only descriptor of the map pinned at `path`: the kernel refuses every update, delete
/// and writable mapping through it, so a holder that only reads cannot change the map even
/// when compromised.
pub(crate) fn open_pin_read_only(path: &Path) -> io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))?;
    let attr = ObjGetAttr {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: BPF_F_RDONLY,
    };
    // SAFETY: `attr` points at a NUL-terminated path that outlives the call; the kernel reads
    // `size_of::<ObjGetAttr>()` bytes of it and writes nothing.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &raw const attr,
            size_of::<ObjGetAttr>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: BPF_OBJ_GET returned a new descriptor, which nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Removes the pin at `path`; one that is gone already is fine.
pub(crate) fn remove_pin(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        result => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_a_pin_that_is_gone_is_fine() {
        let path = std::env::temp_dir().join(format!("smtp-screen-pin-{}", std::process::id()));
        std::fs::write(&path, b"").expect("a scratch file");
        remove_pin(&path).expect("removing it");
        assert!(!path.exists());
        remove_pin(&path).expect("removing it again");
        assert!(remove_pin(Path::new("/proc/version")).is_err());
    }

    #[test]
    fn a_pin_directory_outside_bpffs_is_refused() {
        let pin_dir = std::env::temp_dir().join("smtp-screen-pins");
        assert!(matches!(
            prepare_pin_dir(&pin_dir),
            Err(BpffsError::NotBpffs { .. })
        ));
        assert!(!pin_dir.exists());
    }
}
