//! Multi-group batching: gathers the outgoing messages of every group on a node into one
//! `MessageBatch` per destination peer, and checks incoming batches before they are routed
//! to their groups. Heartbeats of all groups bound for one peer therefore leave together.

use std::collections::BTreeMap;

use conclave_proto::conclave::raft::v1::{Message, MessageBatch};

use super::error::RaftError;

/// Outgoing messages of all groups of one node, grouped by destination peer.
#[derive(Debug)]
pub struct Outbox {
    from: u64,
    batches: BTreeMap<u64, Vec<Message>>,
}

impl Outbox {
    /// An empty outbox for node `from`.
    pub fn new(from: u64) -> Self {
        Outbox { from, batches: BTreeMap::new() }
    }

    /// Queues one message for its destination.
    pub fn push(&mut self, msg: Message) {
        debug_assert_eq!(msg.from, self.from, "a node only sends its own messages");
        self.batches.entry(msg.to).or_default().push(msg);
    }

    pub fn extend(&mut self, messages: impl IntoIterator<Item = Message>) {
        for msg in messages {
            self.push(msg);
        }
    }

    /// A batch for `to` leaves with the next drain even if no message joins it (a
    /// node-level liveness ping rides with the round's Raft messages, or goes alone).
    pub fn ensure_batch(&mut self, to: u64) {
        self.batches.entry(to).or_default();
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Takes one batch per destination peer, in peer order, leaving the outbox empty.
    pub fn drain(&mut self) -> Vec<MessageBatch> {
        let from = self.from;
        std::mem::take(&mut self.batches).into_iter().map(|(to, messages)| MessageBatch { from, to, messages }).collect()
    }
}

/// Checks a batch received by node `local` and returns its messages, each of which claims
/// the batch's sender and receiver.
pub fn open_batch(local: u64, batch: MessageBatch) -> Result<Vec<Message>, RaftError> {
    if batch.to != local {
        return Err(RaftError::InvalidMessage(format!("batch for node {} arrived at node {local}", batch.to)));
    }
    if let Some(bad) = batch.messages.iter().find(|m| m.from != batch.from || m.to != batch.to) {
        return Err(RaftError::InvalidMessage(format!(
            "batch from {} to {} holds a message from {} to {}",
            batch.from, batch.to, bad.from, bad.to
        )));
    }
    Ok(batch.messages)
}
