//! How `/debug/state` asks the node's event loop for its state: a channel of one slot.
//! The health server hands a request over and answers 503 when the slot is taken or the
//! loop does not answer within [`ANSWER_WITHIN`]; before the node holds a subnet it
//! answers from readiness alone.

use crate::state_view::StateQuery;
use crate::state_wire::StateDoc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long the health server waits for the event loop's answer.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// A `/debug/state` request handed to the event loop.
#[derive(Debug)]
pub struct StateRequest {
    pub query: StateQuery,
    pub reply: oneshot::Sender<StateDoc>,
}

/// The health server's side of the channel.
#[derive(Debug, Clone)]
pub struct StateClient {
    requests: mpsc::Sender<StateRequest>,
    serving: Arc<AtomicBool>,
}

/// The event loop's side: requests, and whether a node holds a subnet yet.
#[derive(Debug)]
pub struct StateInbox {
    pub requests: mpsc::Receiver<StateRequest>,
    serving: Arc<AtomicBool>,
}

impl StateInbox {
    /// The node holds a subnet: requests are answered from now on.
    pub fn start_serving(&self) {
        self.serving.store(true, Ordering::Relaxed);
    }
}

/// One request at a time (see the module docs).
pub fn channel() -> (StateClient, StateInbox) {
    let (tx, rx) = mpsc::channel(1);
    let serving = Arc::new(AtomicBool::new(false));
    (
        StateClient {
            requests: tx,
            serving: serving.clone(),
        },
        StateInbox {
            requests: rx,
            serving,
        },
    )
}

/// Why the health server could not get the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// No subnet yet: nothing to show but the readiness reason.
    Starting,
    /// Another request is being answered, or the loop did not answer in time.
    Busy,
}

impl StateClient {
    /// Asks the event loop for a page of the state.
    pub async fn ask(&self, query: StateQuery) -> Result<StateDoc, Unavailable> {
        if !self.serving.load(Ordering::Relaxed) {
            return Err(Unavailable::Starting);
        }
        let (reply, answer) = oneshot::channel();
        self.requests
            .try_send(StateRequest { query, reply })
            .map_err(|_| Unavailable::Busy)?;
        match tokio::time::timeout(ANSWER_WITHIN, answer).await {
            Ok(Ok(value)) => Ok(value),
            _ => Err(Unavailable::Busy),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_request_at_a_time_and_none_before_a_subnet_is_held() {
        let (client, mut inbox) = channel();
        assert_eq!(
            client.ask(StateQuery::default()).await,
            Err(Unavailable::Starting)
        );
        inbox.start_serving();
        let asking = tokio::spawn({
            let client = client.clone();
            async move { client.ask(StateQuery::default()).await }
        });
        let request = inbox.requests.recv().await.unwrap();
        // The slot is free again once taken; a request waiting in it makes others busy.
        let (reply, _answer) = oneshot::channel();
        let parked = StateRequest {
            query: StateQuery::default(),
            reply,
        };
        client.requests.try_send(parked).unwrap();
        assert_eq!(
            client.ask(StateQuery::default()).await,
            Err(Unavailable::Busy)
        );
        let doc = StateDoc::starting(&Err("a stand-in answer".into()));
        request.reply.send(doc.clone()).unwrap();
        assert_eq!(asking.await.unwrap(), Ok(doc));
    }
}
