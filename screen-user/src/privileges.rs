//! Dropping root once the listening sockets, the BPF objects, the database and the log are
//! open: the daemon faces the Internet and needs no privilege to serve it.
//!
//! It becomes its own account (`user`, by default `smtp-screen`), keeping that account's
//! supplementary groups (`initgroups`: membership in `postfix` is what lets it pass clients to
//! Postfix's smtpd socket), with no capability left in any set. Before its threads exist it
//! sets `PR_SET_NO_NEW_PRIVS`, empties the capability bounding set and the inheritable set
//! (all three are per thread and inherited), so nothing it could ever execute regains a
//! privilege. The state directory and the files in it are handed to the account first, so
//! that an operator sees whose they are.
//!
//! Open BPF map descriptors keep working for an unprivileged process (the kernel checks
//! capabilities when a map is created or opened, not on each update), so the kernel deny
//! policy and the sweep go on after the drop; the daemon keeps write access only to the maps
//! it writes ([`crate::kernel::MapAccess`]).

use std::{
    ffi::CString,
    fs::File,
    io,
    os::{
        fd::{AsRawFd, BorrowedFd},
        unix::fs::OpenOptionsExt as _,
    },
    path::{Path, PathBuf},
};

/// The account the daemon runs as unless `user` names another.
pub const DEFAULT_USER: &str = "smtp-screen";

/// Why the daemon could not become the configured user.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error(
        "user {0:?} does not exist: create it (adduser --system --group --no-create-home \
         --home /nonexistent {0}) or set `user` in the configuration to an existing account"
    )]
    UnknownUser(String),
    #[error("cannot switch to user {user:?}: {call}: {source}")]
    Switch {
        user: String,
        call: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("switched to user {user:?} but root can still be regained")]
    StillRoot { user: String },
    #[error("switched to user {user:?} but capabilities remain: {sets}")]
    CapabilitiesKept { user: String, sets: String },
    #[error(
        "user {user:?} is root (uid 0): the daemon faces the Internet and runs as an \
         unprivileged account; set `user` in the configuration to one"
    )]
    Root { user: String },
    #[error("cannot give {path} to user {user:?}: {source}")]
    Chown {
        path: PathBuf,
        user: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is writable by others (mode {mode:o}), so it is not given to user {user:?}: \
         set `state_dir` to a directory of the daemon's own"
    )]
    SharedDirectory {
        path: PathBuf,
        user: String,
        mode: u32,
    },
    #[error("cannot give up the privileges of future programs: {call}: {source}")]
    ExecPrivileges {
        call: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The account to run as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

/// Looks `user` up in the password database.
pub fn lookup(user: &str) -> Result<Account, PrivilegeError> {
    let name = CString::new(user).map_err(|_| PrivilegeError::UnknownUser(user.into()))?;
    // SAFETY: `passwd` is plain C data (integers and pointers), for which all zeroes is a valid
    // value; getpwnam_r fills it in.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` outlives the use of `pwd`'s fields.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return Err(PrivilegeError::UnknownUser(user.into()));
    }
    Ok(Account {
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
    })
}

/// The account the daemon runs as must not be root: `user = "root"` (or an account with uid
/// 0) would keep every privilege the drop is there to shed.
fn refuse_root(user: &str, account: &Account) -> Result<(), PrivilegeError> {
    if account.uid == 0 {
        return Err(PrivilegeError::Root { user: user.into() });
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`, one per 32 capabilities.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The calling thread's capability sets.
fn capabilities() -> io::Result<[CapData; 2]> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: a version 3 header and room for its two data words.
    if unsafe { libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(data)
}

/// Sets the calling thread's capability sets.
fn set_capabilities(data: [CapData; 2]) -> io::Result<()> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: a version 3 header and its two data words, which the kernel only reads.
    if unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The highest capability number this kernel knows.
fn last_capability() -> libc::c_ulong {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        // CAP_CHECKPOINT_RESTORE, the last one of Linux 5.9 to 6.x.
        .unwrap_or(40)
}

/// When running as root: no program this process executes may gain a privilege
/// (`PR_SET_NO_NEW_PRIVS`), and none it has now may pass to one (the bounding and inheritable
/// sets emptied). The capabilities it holds stay until [`ServiceAccount::switch`]. Call before
/// any thread is started: every one of these is per thread, and a new thread inherits them.
pub(crate) fn forgo_exec_privileges() -> Result<(), PrivilegeError> {
    if !is_root() {
        return Ok(());
    }
    let fail = |call| {
        let source = io::Error::last_os_error();
        PrivilegeError::ExecPrivileges { call, source }
    };
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(fail("PR_SET_NO_NEW_PRIVS"));
    }
    for cap in 0..=last_capability() {
        // SAFETY: prctl with integer arguments only. EINVAL means the kernel knows no such
        // capability, which is then in no set.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0
            && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
        {
            return Err(fail("PR_CAPBSET_DROP"));
        }
    }
    let mut sets = capabilities().map_err(|source| PrivilegeError::ExecPrivileges {
        call: "capget",
        source,
    })?;
    for set in &mut sets {
        set.inheritable = 0;
    }
    set_capabilities(sets).map_err(|source| PrivilegeError::ExecPrivileges {
        call: "capset",
        source,
    })
}

/// The account the daemon becomes, looked up at start so that a missing one stops the daemon
/// before it opens anything.
#[derive(Debug)]
pub(crate) struct ServiceAccount {
    user: String,
    name: CString,
    account: Account,
}

impl ServiceAccount {
    /// The account named `user` when running as root (`None` otherwise: there is nothing to
    /// drop); refuses a missing account and one with uid 0.
    pub(crate) fn for_root(user: &str) -> Result<Option<Self>, PrivilegeError> {
        if !is_root() {
            return Ok(None);
        }
        Self::resolve(user).map(Some)
    }

    fn resolve(user: &str) -> Result<Self, PrivilegeError> {
        let account = lookup(user)?;
        refuse_root(user, &account)?;
        let name = CString::new(user).map_err(|_| PrivilegeError::UnknownUser(user.into()))?;
        Ok(Self {
            user: user.into(),
            name,
            account,
        })
    }

    fn chown_error(&self, path: &Path) -> impl FnOnce(io::Error) -> PrivilegeError {
        let (path, user) = (path.to_path_buf(), self.user.clone());
        move |source| PrivilegeError::Chown { path, user, source }
    }

    /// Gives the open file `fd` (found at `path`) to the account and its group.
    pub(crate) fn give_fd(&self, fd: BorrowedFd<'_>, path: &Path) -> Result<(), PrivilegeError> {
        // SAFETY: fchown on a valid open descriptor.
        if unsafe { libc::fchown(fd.as_raw_fd(), self.account.uid, self.account.gid) } != 0 {
            return Err(self.chown_error(path)(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Gives the directory or file at `path` to the account and its group. The path's last
    /// component is opened without following a symbolic link: one planted there is refused,
    /// never the way to give away what it points to. A directory others may write in (`/tmp`,
    /// a shared spool) is refused too: it is not the daemon's to own.
    pub(crate) fn give_path(&self, path: &Path) -> Result<(), PrivilegeError> {
        use std::os::{fd::AsFd as _, unix::fs::MetadataExt as _};

        let file = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(self.chown_error(path))?;
        let meta = file.metadata().map_err(self.chown_error(path))?;
        if meta.is_dir() && meta.mode() & 0o022 != 0 {
            return Err(PrivilegeError::SharedDirectory {
                path: path.to_path_buf(),
                user: self.user.clone(),
                mode: meta.mode() & 0o7777,
            });
        }
        self.give_fd(file.as_fd(), path)
    }

    /// Becomes the account for good: its groups (`initgroups`), its gid and uid, and no
    /// capability left; checks that root cannot be regained.
    pub(crate) fn switch(self) -> Result<(), PrivilegeError> {
        let user = &self.user;
        let fail = |call| {
            let source = io::Error::last_os_error();
            PrivilegeError::Switch {
                user: user.clone(),
                call,
                source,
            }
        };
        let Account { uid, gid } = self.account;
        // SAFETY: plain credential calls on a NUL-terminated name; the order (groups, gid,
        // uid) is the one that works. glibc applies each to every thread of the process.
        unsafe {
            if libc::initgroups(self.name.as_ptr(), gid) != 0 {
                return Err(fail("initgroups"));
            }
            if libc::setresgid(gid, gid, gid) != 0 {
                return Err(fail("setresgid"));
            }
            if libc::setresuid(uid, uid, uid) != 0 {
                return Err(fail("setresuid"));
            }
            if libc::setuid(0) == 0 {
                return Err(PrivilegeError::StillRoot { user: user.clone() });
            }
        }
        // Leaving uid 0 clears the permitted, effective and ambient sets; checked, not assumed.
        let sets = capabilities().map_err(|source| PrivilegeError::Switch {
            user: user.clone(),
            call: "capget",
            source,
        })?;
        if sets != [CapData::default(); 2] {
            return Err(PrivilegeError::CapabilitiesKept {
                user: user.clone(),
                sets: format!("{sets:?}"),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_existing_accounts() {
        assert_eq!(lookup("root").unwrap(), Account { uid: 0, gid: 0 });
        assert!(lookup("nobody").unwrap().uid > 0);
        assert!(matches!(
            lookup("no-such-user-here"),
            Err(PrivilegeError::UnknownUser(_))
        ));
        assert!(matches!(
            lookup("a\0b"),
            Err(PrivilegeError::UnknownUser(_))
        ));
    }

    #[test]
    fn root_is_refused_as_the_daemons_account() {
        let root = lookup("root").unwrap();
        let err = refuse_root("root", &root).unwrap_err();
        assert!(matches!(err, PrivilegeError::Root { .. }));
        assert!(err.to_string().contains("set `user`"), "{err}");
        // Another name for uid 0 is root all the same.
        assert!(refuse_root("toor", &Account { uid: 0, gid: 5 }).is_err());
        assert!(refuse_root("nobody", &lookup("nobody").unwrap()).is_ok());
    }

    #[test]
    fn a_missing_account_is_named_with_how_to_create_it() {
        let err = ServiceAccount::resolve("no-such-user-here").unwrap_err();
        assert!(matches!(err, PrivilegeError::UnknownUser(_)), "{err:?}");
        let text = err.to_string();
        for part in [
            "\"no-such-user-here\" does not exist",
            "adduser --system --group --no-create-home --home /nonexistent no-such-user-here",
            "set `user`",
        ] {
            assert!(text.contains(part), "{part:?} missing from: {text}");
        }
        assert!(matches!(
            ServiceAccount::resolve("root"),
            Err(PrivilegeError::Root { .. })
        ));
    }

    #[test]
    fn the_state_is_given_to_the_account_never_through_a_symlink_nor_a_shared_directory() {
        use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};

        let scratch = screen_tests::netns::ScratchDir::create("give").expect("a scratch dir");
        // As root, to `nobody`; otherwise to this process's own account, which anyone may do.
        // SAFETY: getuid and getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let (user, account) = if uid == 0 {
            ("nobody", lookup("nobody").unwrap())
        } else {
            ("me", Account { uid, gid })
        };
        let service = ServiceAccount {
            user: user.into(),
            name: CString::new(user).unwrap(),
            account: account.clone(),
        };
        let state = scratch.path().join("state");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&state)
            .unwrap();
        let db = state.join("allowlist.redb");
        std::fs::write(&db, b"").unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
        service.give_path(&state).expect("the state directory");
        service.give_path(&db).expect("the database");
        for (path, mode) in [(&state, 0o700), (&db, 0o600)] {
            let meta = std::fs::symlink_metadata(path).unwrap();
            assert_eq!(
                (meta.uid(), meta.gid()),
                (account.uid, account.gid),
                "{path:?}"
            );
            assert_eq!(meta.mode() & 0o777, mode, "{path:?} keeps its mode");
        }

        // A link planted where a file of the state belongs is refused, and what it points to
        // keeps its owner.
        let elsewhere = scratch.path().join("elsewhere");
        std::fs::write(&elsewhere, b"").unwrap();
        let owner = std::fs::metadata(&elsewhere).unwrap().uid();
        let link = state.join("dnsbl.status");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        let err = service.give_path(&link).unwrap_err();
        let PrivilegeError::Chown { path, source, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(path, &link);
        assert_eq!(source.raw_os_error(), Some(libc::ELOOP), "{err}");
        assert_eq!(std::fs::metadata(&elsewhere).unwrap().uid(), owner);

        // A directory others write in is not the daemon's to own.
        let shared = scratch.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let owner = std::fs::metadata(&shared).unwrap().uid();
        let err = service.give_path(&shared).unwrap_err();
        assert!(
            matches!(err, PrivilegeError::SharedDirectory { mode: 0o1777, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("set `state_dir`"), "{err}");
        assert_eq!(std::fs::metadata(&shared).unwrap().uid(), owner);
    }
}
