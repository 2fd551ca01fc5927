//! The BPF filesystem that holds the pins: mounted on demand, as bpftool and xdp-tools do, and
//! locked while a command changes the pinned state.

use std::{
    ffi::CString,
    fs::File,
    io,
    os::{fd::AsRawFd, unix::ffi::OsStrExt},
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
