//! systemd's readiness protocol (sd_notify(3)), for units of `Type=notify` as flannel's
//! common units are: `READY=1` when `/readyz` turns ready (subnet held, datapath
//! programmed, traffic rules in place, subnet.env written), a `STATUS=` line whenever
//! the reason weft is not ready changes (what it is waiting for), and `STOPPING=1` when a
//! SIGTERM or SIGINT starts the shutdown. Without `NOTIFY_SOCKET` (not under systemd,
//! or another unit type) nothing is sent.
//!
//! The `sd-notify` crate sends the datagrams (it reads `NOTIFY_SOCKET` at each call,
//! path or abstract socket). A failed send is logged at debug and otherwise ignored:
//! systemd itself times a unit out that never says it is ready.

use sd_notify::NotifyState;
use tracing::debug;

/// The node is ready (sent on each transition to ready; systemd acts on the first).
pub fn ready() {
    send(&[NotifyState::Ready, NotifyState::Status("ready")]);
}

/// What weft is waiting for.
pub fn status(text: &str) {
    let line = one_line(text);
    send(&[NotifyState::Status(&line)]);
}

/// The shutdown has started.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("shutting down; the datapath is left in place"),
    ]);
}

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        debug!("cannot notify systemd: {e}");
    }
}

/// A `STATUS=` value is one line of the message: newlines would start other fields.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_is_one_line() {
        assert_eq!(one_line("a\nREADY=1\rb"), "a READY=1 b");
    }
}
