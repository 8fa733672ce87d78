//! Simulated disks: each replica's durable state (hard state, snapshot, entries after it)
//! and its queue of writes, which complete in order after a delay; a crash loses the queue.
//! Also the register state machine's snapshot encoding.

use std::collections::VecDeque;

use bytes::Bytes;
use conclave_engine::raft::{Entry, HardState, Membership, Message, RaftNode, Snapshot};

use super::checker::Violation;

pub struct DiskWrite {
    pub done_at: u64,
    pub hard_state: Option<HardState>,
    pub entries: Vec<Entry>,
    pub then_send: Vec<Message>,
    pub ack: Option<(u64, u64)>,
    /// A snapshot received from the leader, installed after the writes before it.
    pub install: Option<Snapshot>,
}

/// One replica: the live Raft node (None while its node is down, or while the node hosts
/// no replica of the group) and its durable state.
pub struct Replica {
    /// The node hosts a replica of the group (it was a member, or is joining).
    pub hosted: bool,
    /// The configuration the replica started from, for restarts without a snapshot: the
    /// initial one, or the group as it stood when the replica joined it.
    pub bootstrap: Membership,
    /// The replica is a witness (from the start, or it joined as one): the leader sends it
    /// entries without payloads, before it may know its own role.
    pub witness: bool,
    /// Which replica of its node this is (0: one of the initial configuration), kept with
    /// its storage as a server keeps it in `groups.toml`.
    pub incarnation: u64,
    pub raft: Option<RaftNode>,
    pub durable_hard_state: HardState,
    /// The durable snapshot (None: none yet, the log starts at index 1).
    pub durable_snapshot: Option<Snapshot>,
    /// Durable entries after the snapshot's index.
    pub durable_entries: Vec<Entry>,
    pub writes: VecDeque<DiskWrite>,
    pub register: u64,
    /// The index the register reflects: what the state machine applied (a witness's Raft
    /// applied index moves on without it). Reads are served by it, as a server does.
    pub register_applied: u64,
}

impl Replica {
    /// A replica with empty storage (not started), or no replica at all (`hosted` false).
    pub fn empty(hosted: bool, witness: bool, bootstrap: Membership) -> Self {
        Replica {
            hosted,
            bootstrap,
            witness,
            incarnation: 0,
            raft: None,
            durable_hard_state: HardState::default(),
            durable_snapshot: None,
            durable_entries: Vec::new(),
            writes: VecDeque::new(),
            register: 0,
            register_applied: 0,
        }
    }

    pub fn durable_base(&self) -> u64 {
        snapshot_index(&self.durable_snapshot)
    }

    /// Term of the durable entry at `index`; `Ok(None)` if beyond the end, `Err(())` if the
    /// index is covered by the snapshot.
    pub fn durable_term(&self, index: u64) -> Result<Option<u64>, ()> {
        let base = self.durable_base();
        if index < base {
            return Err(());
        }
        if index == base {
            return Ok(Some(self.durable_snapshot.as_ref().map_or(0, |s| s.term)));
        }
        Ok(self.durable_entries.get((index - base - 1) as usize).map(|e| e.term))
    }

    pub fn write_entries(&mut self, entries: Vec<Entry>) {
        let Some(first) = entries.first() else { return };
        let base = self.durable_base();
        debug_assert!(first.index > base, "entries below the snapshot are never rewritten");
        self.durable_entries.truncate((first.index - base - 1) as usize);
        self.durable_entries.extend(entries);
    }
}

pub fn snapshot_index(snapshot: &Option<Snapshot>) -> u64 {
    snapshot.as_ref().map_or(0, |s| s.index)
}

pub fn encode_register(value: u64) -> Bytes {
    Bytes::copy_from_slice(&value.to_le_bytes())
}

pub fn decode_register(data: &[u8]) -> Result<u64, Violation> {
    let bytes: [u8; 8] = data.try_into().map_err(|_| Violation(format!("snapshot of {} bytes is no register", data.len())))?;
    Ok(u64::from_le_bytes(bytes))
}
