//! Dropping root once the listening sockets, the BPF objects, the database and the log are
//! open: the daemon faces the Internet and needs no privilege to serve it.
//!
//! Open BPF map descriptors keep working for an unprivileged process (the kernel checks
//! capabilities when a map is created or opened, not on each update), so the kernel deny
//! policy and the sweep go on after the drop.

use std::{ffi::CString, io};

/// Why the daemon could not become the configured user.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("unknown user {0:?} (set `user` in the configuration to an existing account)")]
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
    #[error(
        "user {user:?} is root (uid 0): the daemon faces the Internet and runs as an \
         unprivileged account; set `user` in the configuration to one"
    )]
    Root { user: String },
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

/// Becomes `user` for good when running as root; does nothing otherwise.
pub(crate) fn drop_to(user: &str) -> Result<(), PrivilegeError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let account = lookup(user)?;
    refuse_root(user, &account)?;
    let fail = |call| {
        let source = io::Error::last_os_error();
        PrivilegeError::Switch {
            user: user.into(),
            call,
            source,
        }
    };
    // SAFETY: plain credential syscalls; the order (groups, gid, uid) is the one that works.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0 {
            return Err(fail("setgroups"));
        }
        if libc::setresgid(account.gid, account.gid, account.gid) != 0 {
            return Err(fail("setresgid"));
        }
        if libc::setresuid(account.uid, account.uid, account.uid) != 0 {
            return Err(fail("setresuid"));
        }
        if account.uid != 0 && libc::setuid(0) == 0 {
            return Err(PrivilegeError::StillRoot { user: user.into() });
        }
    }
    Ok(())
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
}
