//! Signals are taken synchronously: blocked in every thread, and waited
//! for by the threads that act on them (the main thread stops the milter,
//! the reload thread reloads).

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
