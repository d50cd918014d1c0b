//! What every connection of a running milter reads: the configuration in
//! force (SIGUSR1 replaces it; a message keeps the one it started with) and
//! whether a stop signal arrived. One value, made at start and handed to
//! each connection, instead of globals.

use crate::runtime::Runtime;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

pub struct Live {
    config: RwLock<Arc<Runtime>>,
    stopping: AtomicBool,
}

impl Live {
    pub fn new(config: Arc<Runtime>) -> Live {
        Live {
            config: RwLock::new(config),
            stopping: AtomicBool::new(false),
        }
    }

    /// The configuration new messages use.
    pub fn config(&self) -> Arc<Runtime> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Messages that start from now on use `new`.
    pub fn replace(&self, new: Arc<Runtime>) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = new;
    }

    /// No new message is started from now on.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}
