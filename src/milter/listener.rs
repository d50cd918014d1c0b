//! The listening socket: a unix socket (stale one replaced, owner and mode
//! set) or a TCP one, and the streams accepted on it.

use crate::config::SocketSpec;
use crate::privileges::Identity;
use std::ffi::CString;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

pub enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

pub enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

/// Opens the socket the MTA connects to.
pub fn open(
    spec: &SocketSpec,
    mode: Option<u32>,
    owner: Option<&Identity>,
) -> io::Result<Listener> {
    match spec {
        SocketSpec::Unix(path) => {
            remove_stale(path)?;
            if let Some(dir) = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty() && !d.is_dir())
            {
                // Nothing makes a socket's directory but its admin: say so.
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "directory {} does not exist: create it, writable by the milter's \
                         user (e.g. install -d -o smime-milter {}), or use an inet socket",
                        dir.display(),
                        dir.display()
                    ),
                ));
            }
            let l = UnixListener::bind(path)?;
            set_owner_and_mode(path, mode, owner)?;
            Ok(Listener::Unix(l, path.clone()))
        }
        SocketSpec::Inet { port, host } | SocketSpec::Inet6 { port, host } => {
            let v6 = matches!(spec, SocketSpec::Inet6 { .. });
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let addrs: Vec<_> = (host, *port)
                .to_socket_addrs()?
                .filter(|a| a.is_ipv6() == v6)
                .collect();
            if addrs.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{host} has no {} address", if v6 { "IPv6" } else { "IPv4" }),
                ));
            }
            Ok(Listener::Tcp(TcpListener::bind(&addrs[..])?))
        }
    }
}

/// A socket left by a previous run is replaced; anything else at that path
/// is an error rather than deleted.
fn remove_stale(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket",
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn set_owner_and_mode(path: &Path, mode: Option<u32>, owner: Option<&Identity>) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    if let Some(id) = owner {
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        if unsafe { libc::chown(c.as_ptr(), id.uid, id.gid) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    if let Some(m) = mode {
        // SAFETY: as above.
        if unsafe { libc::chmod(c.as_ptr(), m as libc::mode_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Listener {
    pub fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Unix(l, _) => Ok(Stream::Unix(l.accept()?.0)),
            Listener::Tcp(l) => {
                let (s, _) = l.accept()?;
                // With Nagle's algorithm on, the MTA's delayed ACKs stall
                // each message ~40 ms twice (libmilter leaves it on).
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
        }
    }

    /// Wakes every thread blocked in `accept` (they get an error) and
    /// refuses new connections.
    pub fn shut_down(&self) {
        let fd = match self {
            Listener::Unix(l, _) => l.as_raw_fd(),
            Listener::Tcp(l) => l.as_raw_fd(),
        };
        // SAFETY: `fd` is the listener's own open socket; shutdown does not
        // close it.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }

    /// Removes a unix socket's path (at exit).
    pub fn remove_path(&self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Stream {
    /// Idle connections are dropped after this long without a packet, as
    /// libmilter does (its default timeout, 7210 s).
    pub fn set_timeouts(&self, t: std::time::Duration) -> io::Result<()> {
        match self {
            Stream::Unix(s) => {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))
            }
            Stream::Tcp(s) => {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))
            }
        }
    }

    /// Writes all of `buf` through a shared reference (progress replies).
    pub fn write_shared(&self, buf: &[u8]) -> io::Result<()> {
        match self {
            Stream::Unix(s) => (&*s).write_all(buf),
            Stream::Tcp(s) => (&*s).write_all(buf),
        }
    }

    /// A reading and a writing half of the same socket.
    pub fn halves(&self) -> (Box<dyn Read + '_>, Box<dyn Write + '_>) {
        match self {
            Stream::Unix(s) => (Box::new(s), Box::new(s)),
            Stream::Tcp(s) => (Box::new(QuickAck(s)), Box::new(s)),
        }
    }
}

/// Reads from a TCP connection and acknowledges at once. The MTA sends
/// header lines and body chunks without waiting for replies; with Nagle's
/// algorithm on its side, each small packet after the first waits for our
/// ACK, which Linux delays up to 40 ms unless asked not to, every time.
struct QuickAck<'a>(&'a TcpStream);

impl Read for QuickAck<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (&mut &*self.0).read(buf)?;
        let one: libc::c_int = 1;
        // Linux clears the flag again by itself, so it is set after each
        // read; a failure only costs speed.
        // SAFETY: the socket is open (we just read from it) and `one` is a c_int
        // of the size given.
        unsafe {
            libc::setsockopt(
                self.0.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        Ok(n)
    }
}

/// Whether TCP_NODELAY is set on a socket (for tests).
pub fn nodelay(fd: libc::c_int) -> Option<bool> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are a c_int and its size, written by the call.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            &mut v as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    (rc == 0).then_some(v != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_tcp_connections_have_nagle_off() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let spec = SocketSpec::Inet {
            port,
            host: "127.0.0.1".into(),
        };
        let l = open(&spec, None, None).unwrap();
        let _client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let Stream::Tcp(s) = l.accept().unwrap() else {
            panic!("a TCP stream")
        };
        assert_eq!(nodelay(s.as_raw_fd()), Some(true));
        let v6 = SocketSpec::Inet6 {
            port,
            host: "127.0.0.1".into(),
        };
        assert!(open(&v6, None, None).is_err(), "inet6 wants an IPv6 host");
    }

    #[test]
    fn a_stale_unix_socket_is_replaced_and_a_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("milter.sock");
        let spec = SocketSpec::Unix(path.clone());
        drop(open(&spec, Some(0o660), None).unwrap());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o660);
        let l = open(&spec, None, None).unwrap();
        let _client = UnixStream::connect(&path).unwrap();
        assert!(matches!(l.accept().unwrap(), Stream::Unix(_)));
        l.remove_path();
        std::fs::write(&path, "not a socket").unwrap();
        let e = open(&spec, None, None).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
    }

    #[test]
    fn a_missing_socket_directory_is_named_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("run");
        let e = open(&SocketSpec::Unix(missing.join("milter.sock")), None, None)
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let text = e.to_string();
        assert!(
            text.contains(&format!("directory {} does not exist", missing.display()))
                && text.contains("install -d"),
            "{text}"
        );
    }
}
