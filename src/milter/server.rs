//! Start-up and the connection threads: the socket is opened, privileges
//! dropped, and connections are served by reused threads until SIGTERM,
//! SIGHUP or SIGINT.
//!
//! Threads follow a leader/followers scheme: the idle ones wait in
//! `accept` on the shared socket, and the one that takes a connection makes
//! sure another is waiting before it serves it. An SMTP session holds its
//! milter connection for its whole length, however slow the client, so the
//! number of threads follows the number of connections (as libmilter's
//! thread per connection did); after a burst, threads beyond `MAX_IDLE`
//! end.

use crate::config::SocketSpec;
use crate::listener::{Listener, Stream};
use crate::live::Live;
use crate::progress::{Busy, Locked};
use crate::protocol::IDLE_TIMEOUT;
use crate::runtime::Runtime;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Idle threads kept for the next connections.
const MAX_IDLE: usize = 16;
/// How long a stop waits for messages in flight.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot open socket {path}: {err}")]
    Socket { path: String, err: std::io::Error },
    #[error(transparent)]
    Privileges(#[from] crate::privileges::PrivError),
    #[error(
        "cannot write the PID file {path}: {err} (its directory must exist and be writable \
         by the user the milter runs as: systemd's RuntimeDirectory= makes it; by hand, \
         start as root, or `install -d -o USER /run/smime-milter`, or set pid_file)"
    )]
    PidFile { path: String, err: std::io::Error },
    #[error("cannot start threads: {0}")]
    Threads(std::io::Error),
}

struct Pool {
    listener: Listener,
    idle: AtomicUsize,
    /// Connections being served.
    active: AtomicUsize,
    /// `max_mta_connections` of the configuration the milter started with.
    limit: usize,
    /// Refusing past the limit, and accept failing (descriptors): each said
    /// once until connections are accepted again.
    refusing: AtomicBool,
    failing: AtomicBool,
    live: Arc<Live>,
}

impl Pool {
    fn spawn_worker(self: &Arc<Pool>) -> std::io::Result<()> {
        self.idle.fetch_add(1, Ordering::SeqCst);
        let pool = self.clone();
        std::thread::Builder::new()
            .name("conn".into())
            .spawn(move || pool.work())
            .map(|_| ())
            .inspect_err(|_| {
                self.idle.fetch_sub(1, Ordering::SeqCst);
            })
    }

    fn work(self: Arc<Pool>) {
        loop {
            let accepted = self.listener.accept();
            let idle = self.idle.fetch_sub(1, Ordering::SeqCst) - 1;
            if self.live.stopping() {
                return;
            }
            match accepted {
                Ok(stream) => {
                    if self.active.fetch_add(1, Ordering::SeqCst) >= self.limit {
                        // Closed at once: the MTA applies its default action
                        // (tempfail) instead of waiting for a reply.
                        drop(stream);
                        self.trouble(
                            &self.refusing,
                            &format!(
                                "{} MTA connections open (max_mta_connections): refusing new ones",
                                self.limit
                            ),
                        );
                    } else {
                        self.recovered();
                        if idle == 0 {
                            if let Err(e) = self.spawn_worker() {
                                log::error!("cannot start a connection thread: {e}");
                            }
                        }
                        serve(stream, &self.live);
                    }
                    self.active.fetch_sub(1, Ordering::SeqCst);
                }
                Err(e) => {
                    let hint = match e.raw_os_error() {
                        Some(libc::EMFILE | libc::ENFILE) => {
                            " (out of file descriptors: raise LimitNOFILE or lower max_mta_connections)"
                        }
                        _ => "",
                    };
                    self.trouble(
                        &self.failing,
                        &format!("accepting MTA connections fails: {e}{hint}"),
                    );
                    // Not a reason to spin.
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            if self.idle.load(Ordering::SeqCst) >= MAX_IDLE {
                return;
            }
            self.idle.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Pool {
    /// Logged once, not ten times a second, until accepting works again.
    fn trouble(&self, flag: &AtomicBool, what: &str) {
        if !flag.swap(true, Ordering::SeqCst) {
            log::error!("{what}");
        }
    }

    fn recovered(&self) {
        let refused = self.refusing.swap(false, Ordering::SeqCst);
        if self.failing.swap(false, Ordering::SeqCst) | refused {
            log::info!("accepting MTA connections again");
        }
    }
}

fn serve(stream: Stream, live: &Live) {
    if let Err(e) = stream.set_timeouts(IDLE_TIMEOUT) {
        log::warn!("cannot set the connection timeout: {e}");
    }
    thread_local! {
        static BUFFERS: std::cell::RefCell<crate::protocol::Buffers> = Default::default();
    }
    let stream = Arc::new(stream);
    let busy = Busy::register(Arc::clone(&stream));
    let (input, output) = stream.halves();
    let output = Locked {
        inner: output,
        busy: Arc::clone(&busy),
    };
    // Session panics are caught step by step in `connection`; this is the
    // last line for the protocol code itself, so the thread lives on.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        BUFFERS.with_borrow_mut(|b| crate::connection::serve(input, output, b, live, Some(busy)))
    })) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::debug!("MTA connection ended: {e}"),
        Err(_) => log::error!("internal error: panic in the connection handler; connection closed"),
    }
}

/// Opens the socket, drops privileges and serves until SIGTERM, SIGHUP or
/// SIGINT; then waits up to 10 s for the messages in flight.
pub fn run(rt: Arc<Runtime>, socket: &SocketSpec) -> Result<(), RunError> {
    let identity = crate::privileges::target(&rt.config)?;
    let socket_mode = rt.config.socket_mode;
    let config_path = rt.config.path.clone();
    let pid_file = rt.config.pid_file.clone();
    let limit = rt.config.max_mta_connections;
    let metrics = rt.config.metrics.clone();
    let live = Arc::new(Live::new(rt));
    // Before any thread starts, so that they all inherit the mask and the
    // signals reach only the threads that wait for them.
    crate::signals::block_signals().map_err(RunError::Threads)?;
    if let Some(pid_file) = &pid_file {
        prepare_pid_dir(pid_file, identity.as_ref())?;
    }
    let listener =
        crate::listener::open(socket, socket_mode, identity.as_ref()).map_err(|err| {
            RunError::Socket {
                path: socket.to_string(),
                err,
            }
        })?;
    let metrics_listener = match &metrics {
        Some(m) => Some(
            crate::exporter::bind(m.listen).map_err(|err| RunError::Socket {
                path: format!("{} (metrics)", m.listen),
                err,
            })?,
        ),
        None => None,
    };
    if let Some(id) = &identity {
        crate::privileges::drop_to(id)?;
        log::info!("running as user {}", id.name);
    }
    crate::reload::spawn_reload_thread(live.clone(), config_path).map_err(RunError::Threads)?;
    spawn_stats_thread(live.clone()).map_err(RunError::Threads)?;
    crate::progress::spawn_thread().map_err(RunError::Threads)?;
    if let Some(l) = metrics_listener {
        crate::exporter::serve(l, live.clone()).map_err(RunError::Threads)?;
    }
    let pool = Arc::new(Pool {
        listener,
        idle: AtomicUsize::new(0),
        active: AtomicUsize::new(0),
        limit,
        refusing: AtomicBool::new(false),
        failing: AtomicBool::new(false),
        live: live.clone(),
    });
    pool.spawn_worker().map_err(RunError::Threads)?;
    log::info!(
        "smime-milter {} listening on {socket}",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(pid_file) = &pid_file {
        std::fs::write(pid_file, format!("{}\n", std::process::id())).map_err(|err| {
            RunError::PidFile {
                path: pid_file.display().to_string(),
                err,
            }
        })?;
    }
    let sig = wait_for_stop_signal();
    log::info!("{sig}: stopping");
    live.stop();
    pool.listener.shut_down();
    pool.listener.remove_path();
    // A message already between MAIL and its end is finished; a connection
    // that starts a new one is closed, and the MTA defers that message
    // (milter_default_action = tempfail).
    let deadline = Instant::now() + STOP_GRACE;
    let mut active = crate::session::in_flight();
    if active > 0 {
        log::info!("stopping: waiting for {active} message(s) in flight");
    }
    while active > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        active = crate::session::in_flight();
    }
    if let Some(pid_file) = &pid_file {
        let _ = std::fs::remove_file(pid_file);
    }
    log::info!("smime-milter stopped");
    Ok(())
}

/// Without systemd nothing makes the PID file's directory: made here as
/// RuntimeDirectory= would (mode 0755, owned by the user the milter runs
/// as) when it is missing.
fn prepare_pid_dir(
    pid_file: &std::path::Path,
    id: Option<&crate::privileges::Identity>,
) -> Result<(), RunError> {
    let Some(dir) = pid_file.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    if dir.exists() {
        return Ok(());
    }
    let err = |err| RunError::PidFile {
        path: pid_file.display().to_string(),
        err,
    };
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(err)?;
    if let Some(id) = id {
        std::os::unix::fs::chown(dir, Some(id.uid), Some(id.gid)).map_err(err)?;
    }
    log::info!("made {} for the PID file", dir.display());
    Ok(())
}

fn wait_for_stop_signal() -> &'static str {
    match crate::signals::wait_for(&[libc::SIGTERM, libc::SIGHUP, libc::SIGINT]) {
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "SIGINT",
    }
}

/// Logs the stats line every `stats_interval` of the configuration in force.
fn spawn_stats_thread(live: Arc<Live>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("stats".into())
        .spawn(move || loop {
            let interval = live.runtime().config.stats_interval;
            if interval.is_zero() {
                std::thread::sleep(Duration::from_secs(60));
                continue;
            }
            std::thread::sleep(interval);
            let rt = live.runtime();
            let online = match rt.online {
                Some(_) => crate::online::STATS.line(),
                None => String::new(),
            };
            let harvest = match rt.harvest_ldap {
                Some(_) => crate::harvest_ldap::STATS.line(),
                None => String::new(),
            };
            log::info!(
                "{}{online}{harvest} messages in flight={} memory counted={} bytes",
                crate::certstore::STATS.line(),
                crate::session::in_flight(),
                crate::session::buffered()
            );
        })?;
    Ok(())
}
