//! SIGUSR1 reloads the configuration, with keys and certificate stores,
//! without dropping connections (SIGHUP and SIGTERM stop the milter, as
//! with OpenDKIM).

use crate::live::Live;
use crate::runtime::Runtime;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Reloads from `path`; a broken file leaves the running configuration in force.
pub fn reload(live: &Live, path: &Path) {
    match Runtime::load(path) {
        Ok(new) => {
            let old = live.runtime();
            if new.config.socket.is_some() && new.config.socket != old.config.socket {
                log::warn!("reload: a new socket takes effect only after a restart");
            }
            if new.config.max_mta_connections != old.config.max_mta_connections {
                log::warn!("reload: a new max_mta_connections takes effect only after a restart");
            }
            crate::logging::set_level(new.config.log_level);
            log::info!(
                "configuration reloaded from {}: {} signing keys, verification {}, encryption {}; certificate cache emptied",
                path.display(),
                new.keys.len(),
                if new.verify.is_some() { "on" } else { "off" },
                if new.config.encrypt.is_some() { "on" } else { "off" },
            );
            // Messages in flight keep the configuration they started with.
            live.replace(Arc::new(new));
        }
        Err(e) => log::error!("reload failed, the previous configuration stays in force: {e}"),
    }
}

/// Waits for SIGUSR1 in a thread of its own.
pub fn spawn_reload_thread(live: Arc<Live>, path: PathBuf) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("reload".into())
        .spawn(move || loop {
            crate::signals::wait_for(&[libc::SIGUSR1]);
            log::info!("SIGUSR1: reloading the configuration");
            reload(&live, &path);
        })?;
    Ok(())
}
