//! The configuration in force. SIGUSR1 reloads it, with keys and
//! certificate stores, without dropping connections (SIGHUP and SIGTERM
//! stop the milter, as with OpenDKIM); a periodic stats line reports the
//! lookup counters.

use crate::config::Config;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

static CONFIG: RwLock<Option<Arc<Config>>> = RwLock::new(None);

/// The configuration new messages use.
pub fn current_config() -> Arc<Config> {
    CONFIG
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .expect("configuration installed before the milter starts")
}

pub fn install_config(cfg: Arc<Config>) {
    *CONFIG.write().unwrap_or_else(|e| e.into_inner()) = Some(cfg);
}

/// Blocks SIGUSR1, SIGTERM, SIGHUP and SIGINT in the calling thread;
/// threads created afterwards inherit the mask, so SIGUSR1 reaches only the
/// reload thread and the others only the main thread's `sigwait` (which
/// stops the milter gracefully). Left unblocked in one of our threads,
/// SIGTERM would kill the process outright.
pub fn block_signals() -> std::io::Result<()> {
    let set = signal_set(&[libc::SIGUSR1, libc::SIGTERM, libc::SIGHUP, libc::SIGINT]);
    // SAFETY: `set` is a filled sigset_t; no old mask is asked for.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

fn signal_set(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: a zeroed sigset_t is valid input to sigemptyset, which with
    // sigaddset only writes into it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &sig in signals {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Waits until one of `signals` (blocked, see `block_signals`) arrives.
pub fn wait_for(signals: &[libc::c_int]) -> libc::c_int {
    let set = signal_set(signals);
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is a filled sigset_t; `sig` is written by sigwait.
        if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
            return sig;
        }
    }
}

/// Reloads from `path`; a broken file leaves the running configuration in force.
pub fn reload(path: &std::path::Path) {
    match Config::load(path) {
        Ok(new) => {
            let old = current_config();
            if new.socket.is_some() && new.socket != old.socket {
                log::warn!("reload: a new socket takes effect only after a restart");
            }
            crate::logging::set_level(new.log_level);
            log::info!(
                "configuration reloaded from {}: {} signing keys, verification {}, encryption {}; certificate cache emptied",
                path.display(),
                new.keys.len(),
                if new.verify.is_some() { "on" } else { "off" },
                if new.encrypt.is_some() { "on" } else { "off" },
            );
            // Messages in flight keep the configuration they started with.
            install_config(Arc::new(new));
        }
        Err(e) => log::error!("reload failed, the previous configuration stays in force: {e}"),
    }
}

/// Waits for SIGUSR1 in a thread of its own.
pub fn spawn_reload_thread(path: PathBuf) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("reload".into())
        .spawn(move || loop {
            wait_for(&[libc::SIGUSR1]);
            log::info!("SIGUSR1: reloading the configuration");
            reload(&path);
        })?;
    Ok(())
}

/// Logs the stats line every `stats_interval` of the configuration in force.
pub fn spawn_stats_thread() -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("stats".into())
        .spawn(|| loop {
            let interval = current_config().stats_interval;
            if interval.is_zero() {
                std::thread::sleep(std::time::Duration::from_secs(60));
                continue;
            }
            std::thread::sleep(interval);
            log::info!(
                "{} messages in flight={} memory counted={} bytes",
                crate::certstore::STATS.line(),
                crate::session::in_flight(),
                crate::session::buffered()
            );
        })?;
    Ok(())
}
