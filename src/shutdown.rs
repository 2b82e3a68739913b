//! SIGTERM/SIGINT, observable from several places.

use anyhow::Context;
use tokio::sync::watch;
use tracing::info;

/// See the module docs.
#[derive(Debug)]
pub struct Shutdown {
    receiver: watch::Receiver<bool>,
}

impl Shutdown {
    pub fn install() -> anyhow::Result<Shutdown> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let (sender, receiver) = watch::channel(false);
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            info!("received {name}");
            crate::systemd::stopping();
            let _ = sender.send(true);
        });
        Ok(Shutdown { receiver })
    }

    pub async fn wait(&mut self) {
        let _ = self.receiver.wait_for(|stop| *stop).await;
    }

    /// Runs `work` unless a shutdown comes first.
    pub async fn until<T>(&mut self, work: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            value = work => Some(value),
            () = self.wait() => None,
        }
    }
}
