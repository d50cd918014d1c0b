//! Adjusting the listening socket libmilter opened: owner and mode of a unix
//! socket, and TCP_NODELAY on an inet one.

use crate::config::SocketSpec;
use crate::privileges::Identity;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

pub fn after_open(
    socket: &SocketSpec,
    mode: Option<u32>,
    owner: Option<&Identity>,
) -> std::io::Result<()> {
    match socket {
        SocketSpec::Unix(path) => {
            let c = CString::new(path.as_os_str().as_bytes())?;
            if let Some(id) = owner {
                if unsafe { libc::chown(c.as_ptr(), id.uid, id.gid) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(m) = mode {
                if unsafe { libc::chmod(c.as_ptr(), m as libc::mode_t) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        }
        SocketSpec::Inet { .. } | SocketSpec::Inet6 { .. } => {
            set_nodelay_on_listeners();
            Ok(())
        }
    }
}

/// libmilter leaves Nagle's algorithm on; with the MTA's delayed ACKs each
/// message then stalls ~40 ms twice. Linux hands TCP_NODELAY from a listening
/// socket to every accepted one, so setting it on libmilter's listener is
/// enough. The listener is found among our descriptors (libmilter does not
/// expose it): the TCP sockets in the listening state.
fn set_nodelay_on_listeners() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<libc::c_int>().ok())
        else {
            continue;
        };
        if getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) != Some(1) {
            continue;
        }
        let domain = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN);
        if domain != Some(libc::AF_INET) && domain != Some(libc::AF_INET6) {
            continue;
        }
        let one: libc::c_int = 1;
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            log::debug!("TCP_NODELAY set on listening socket (fd {fd})");
        }
    }
}

fn getsockopt_int(fd: libc::c_int, level: libc::c_int, opt: libc::c_int) -> Option<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            opt,
            &mut v as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    (rc == 0).then_some(v)
}

/// Whether TCP_NODELAY is set on a socket (for tests).
pub fn nodelay(fd: libc::c_int) -> Option<bool> {
    getsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY).map(|v| v != 0)
}
