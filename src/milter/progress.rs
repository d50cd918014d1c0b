//! Progress replies (SMFIR_PROGRESS) while a step takes long: each one
//! restarts the MTA's timer, so a step that ends within our budgets never
//! meets the MTA's milter timeout. One thread looks at every connection
//! once a second; a connection marks itself busy for the steps where its
//! MTA takes progress (Postfix: any step; Sendmail: end of message only).
//!
//! Every write to the socket, the connection's and this thread's, holds the
//! connection's write lock, and progress is written only while the step is
//! still running: it can never follow the step's reply.

use crate::listener::Stream;
use std::io::{self, IoSlice, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// Progress every this long while a step runs (the thread looks once a
/// second; Sendmail's shortest default milter timeout is 10 s).
const INTERVAL: Duration = Duration::from_secs(4);

/// SMFIR_PROGRESS: length 1, command 'p'.
const PACKET: [u8; 5] = [0, 0, 0, 1, b'p'];

/// One connection as the progress thread sees it.
pub struct Busy {
    stream: Arc<Stream>,
    /// When the running step began (ms since `epoch()`, at least 1); 0: idle.
    since: AtomicU64,
    /// When progress was last sent for it (ms since `epoch()`).
    last: AtomicU64,
    write: Mutex<()>,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

fn connections() -> &'static Mutex<Vec<Weak<Busy>>> {
    static CONNECTIONS: Mutex<Vec<Weak<Busy>>> = Mutex::new(Vec::new());
    &CONNECTIONS
}

impl Busy {
    /// Registers a connection; it is forgotten once dropped.
    pub fn register(stream: Arc<Stream>) -> Arc<Busy> {
        let busy = Arc::new(Busy {
            stream,
            since: AtomicU64::new(0),
            last: AtomicU64::new(0),
            write: Mutex::new(()),
        });
        connections()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&busy));
        busy
    }

    /// A step the MTA takes progress in begins.
    pub fn begin(&self) {
        self.since.store(now_ms(), Ordering::SeqCst);
    }

    /// It ended: no progress from now on (its reply follows).
    pub fn end(&self) {
        self.since.store(0, Ordering::SeqCst);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends progress if the step has run `INTERVAL` since it began or
    /// since the last progress.
    fn tick(&self, now: u64) {
        let since = self.since.load(Ordering::SeqCst);
        let due = since.max(self.last.load(Ordering::SeqCst)) + INTERVAL.as_millis() as u64;
        if since == 0 || now < due {
            return;
        }
        let _w = self.lock();
        // Still the same step: its reply has not been written.
        if self.since.load(Ordering::SeqCst) == since {
            if let Err(e) = self.stream.write_shared(&PACKET) {
                log::debug!("progress reply failed: {e}");
            }
            self.last.store(now, Ordering::SeqCst);
        }
    }
}

/// Starts the thread that sends progress (once per process).
pub fn spawn_thread() -> io::Result<()> {
    std::thread::Builder::new()
        .name("progress".into())
        .spawn(|| loop {
            std::thread::sleep(Duration::from_secs(1));
            let now = now_ms();
            let alive: Vec<Arc<Busy>> = {
                let mut list = connections().lock().unwrap_or_else(|e| e.into_inner());
                list.retain(|w| w.strong_count() > 0);
                list.iter().filter_map(Weak::upgrade).collect()
            };
            for b in alive {
                b.tick(now);
            }
        })?;
    Ok(())
}

/// The connection's writes, each under its write lock.
pub struct Locked<W> {
    pub inner: W,
    pub busy: Arc<Busy>,
}

impl<W: Write> Write for Locked<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _w = self.busy.lock();
        self.inner.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let _w = self.busy.lock();
        self.inner.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        let _w = self.busy.lock();
        self.inner.flush()
    }
}
