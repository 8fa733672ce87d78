//! The simulated network: batches travel with a random delay (so they reorder), may be
//! lost or duplicated, and are dropped across symmetric or one-way partitions.

use std::collections::{BTreeMap, BTreeSet};

use conclave_engine::raft::MessageBatch;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// How hostile the network is right now.
#[derive(Clone, Copy, Debug)]
pub struct NetworkFaults {
    /// Probability a batch is lost.
    pub loss: f64,
    /// Probability a batch is delivered twice.
    pub duplicate: f64,
    /// Delivery delay is uniform in `1..=max_delay` time units.
    pub max_delay: u64,
}

impl NetworkFaults {
    pub fn calm(max_delay: u64) -> Self {
        NetworkFaults { loss: 0.0, duplicate: 0.0, max_delay }
    }
}

#[derive(Default)]
pub struct Network {
    /// In flight, keyed by (delivery time, send sequence) so delivery order is deterministic.
    in_flight: BTreeMap<(u64, u64), MessageBatch>,
    sequence: u64,
    /// Directed links that currently drop everything: (from, to).
    blocked: BTreeSet<(u64, u64)>,
    pub delivered: u64,
    pub dropped: u64,
}

impl Network {
    pub fn send(&mut self, batch: MessageBatch, now: u64, faults: &NetworkFaults, rng: &mut ChaCha8Rng) {
        if rng.random_bool(faults.loss) {
            self.dropped += 1;
            return;
        }
        let copies = if rng.random_bool(faults.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            let at = now + rng.random_range(1..=faults.max_delay.max(1));
            self.sequence += 1;
            self.in_flight.insert((at, self.sequence), batch.clone());
        }
    }

    /// Batches due at or before `now`, minus those crossing a blocked link.
    pub fn deliver_due(&mut self, now: u64) -> Vec<MessageBatch> {
        let mut due = Vec::new();
        while let Some(entry) = self.in_flight.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let batch = entry.remove();
            if self.blocked.contains(&(batch.from, batch.to)) {
                self.dropped += 1;
            } else {
                self.delivered += 1;
                due.push(batch);
            }
        }
        due
    }

    /// A node lost power: whatever it sent that has not arrived yet is lost with it.
    pub fn drop_from(&mut self, node: u64) {
        let before = self.in_flight.len();
        self.in_flight.retain(|_, batch| batch.from != node);
        self.dropped += (before - self.in_flight.len()) as u64;
    }

    /// True if a batch `from` sent carries a message of group `group` that has not arrived.
    pub fn carries(&self, from: u64, group: u32) -> bool {
        self.in_flight.values().any(|batch| batch.from == from && batch.messages.iter().any(|m| m.group_id == group))
    }

    pub fn block(&mut self, from: u64, to: u64) {
        self.blocked.insert((from, to));
    }

    /// Cuts `node` off from every other node in both directions.
    pub fn isolate(&mut self, node: u64, nodes: u64) {
        for other in 1..=nodes {
            if other != node {
                self.block(node, other);
                self.block(other, node);
            }
        }
    }

    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    pub fn is_partitioned(&self) -> bool {
        !self.blocked.is_empty()
    }
}
