//! What every connection of a running milter reads: the configuration in
//! force (SIGUSR1 replaces it; a message keeps the one it started with) and
//! whether a stop signal arrived. One value, made at start and handed to
//! each connection, instead of globals.

use crate::runtime::Runtime;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

pub struct Live {
    runtime: RwLock<Arc<Runtime>>,
    stopping: AtomicBool,
}

impl Live {
    pub fn new(runtime: Arc<Runtime>) -> Live {
        Live {
            runtime: RwLock::new(runtime),
            stopping: AtomicBool::new(false),
        }
    }

    /// The configuration, loaded, that new messages use.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Messages that start from now on use `new`.
    pub fn replace(&self, new: Arc<Runtime>) {
        *self.runtime.write().unwrap_or_else(|e| e.into_inner()) = new;
    }

    /// No new message is started from now on.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}
