//! Whether this node is ready, and if not, why: set by the node's loops, read by
//! `/readyz`, the `weft_ready` gauge and `/debug/state`, and told to systemd as it
//! changes (`systemd`: `READY=1`, `STATUS=` the reason).

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
        let mut state = self.lock();
        if state.is_err() {
            *state = Ok(());
            crate::systemd::ready();
        }
    }

    pub fn set_not_ready(&self, reason: impl Into<String>) {
        let reason = reason.into();
        let mut state = self.lock();
        if state.as_ref().err() != Some(&reason) {
            crate::systemd::status(&reason);
            *state = Err(reason);
        }
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
