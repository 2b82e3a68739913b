//! Whether this node is ready, and if not, why: set by the node's loops, read by
//! `/readyz`, the `weft_ready` gauge and `/debug/state`.

use std::sync::{Arc, Mutex};

/// Whether the node is ready, and if not, why.
#[derive(Debug)]
pub struct Readiness {
    state: Mutex<Result<(), String>>,
}

impl Readiness {
    pub fn new(initial_reason: &str) -> Arc<Readiness> {
        Arc::new(Readiness {
            state: Mutex::new(Err(initial_reason.to_string())),
        })
    }

    pub fn set_ready(&self) {
        *self.lock() = Ok(());
    }

    pub fn set_not_ready(&self, reason: impl Into<String>) {
        *self.lock() = Err(reason.into());
    }

    pub fn get(&self) -> Result<(), String> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Result<(), String>> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
