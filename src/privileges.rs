//! Dropping root once the socket is open and the keys are read.

use crate::config::Config;
use std::ffi::CString;

#[derive(Debug, thiserror::Error)]
pub enum PrivError {
    #[error("refusing to run as root: set `user` in the configuration (or run_as_root = true)")]
    WouldRunAsRoot,
    #[error("unknown user '{0}'")]
    UnknownUser(String),
    #[error("unknown group '{0}'")]
    UnknownGroup(String),
    #[error("cannot switch to {what}: {err}")]
    Switch { what: String, err: std::io::Error },
}

pub struct Identity {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

/// The account to run as, looked up before anything is opened so that the
/// socket can be handed to it.
pub fn target(cfg: &Config) -> Result<Option<Identity>, PrivError> {
    // SAFETY: geteuid has no arguments and cannot fail.
    let is_root = unsafe { libc::geteuid() } == 0;
    let Some(user) = &cfg.user else {
        if is_root && !cfg.run_as_root {
            return Err(PrivError::WouldRunAsRoot);
        }
        return Ok(None);
    };
    if !is_root {
        // Already unprivileged: nothing to drop (and nothing we could do).
        return Ok(None);
    }
    let c_user = CString::new(user.as_str()).map_err(|_| PrivError::UnknownUser(user.clone()))?;
    // SAFETY: `c_user` is a C string; the result is checked for null and read
    // at once, before any other getpw* call (start-up, one thread).
    let pw = unsafe { libc::getpwnam(c_user.as_ptr()) };
    if pw.is_null() {
        return Err(PrivError::UnknownUser(user.clone()));
    }
    // SAFETY: `pw` is non-null and still valid (see above).
    let (uid, mut gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    if let Some(group) = &cfg.group {
        let c_group =
            CString::new(group.as_str()).map_err(|_| PrivError::UnknownGroup(group.clone()))?;
        // SAFETY: as for getpwnam.
        let gr = unsafe { libc::getgrnam(c_group.as_ptr()) };
        if gr.is_null() {
            return Err(PrivError::UnknownGroup(group.clone()));
        }
        // SAFETY: `gr` is non-null and still valid.
        gid = unsafe { (*gr).gr_gid };
    }
    Ok(Some(Identity {
        name: user.clone(),
        uid,
        gid,
    }))
}

/// Switches to the identity for good: supplementary groups, group, user.
pub fn drop_to(id: &Identity) -> Result<(), PrivError> {
    let err = |what: &str| PrivError::Switch {
        what: what.to_string(),
        err: std::io::Error::last_os_error(),
    };
    let name =
        CString::new(id.name.as_str()).map_err(|_| PrivError::UnknownUser(id.name.clone()))?;
    // SAFETY: plain system calls with a C string and ids; every result is
    // checked.
    unsafe {
        if libc::initgroups(name.as_ptr(), id.gid) != 0 {
            return Err(err("supplementary groups"));
        }
        if libc::setgid(id.gid) != 0 {
            return Err(err(&format!("gid {}", id.gid)));
        }
        if libc::setuid(id.uid) != 0 {
            return Err(err(&format!("user {}", id.name)));
        }
        // setuid from root must be irreversible.
        if libc::setuid(0) == 0 {
            return Err(PrivError::Switch {
                what: id.name.clone(),
                err: std::io::Error::other("root could be regained"),
            });
        }
    }
    Ok(())
}
