//! Simulated clients of one group's register: they write unique values and read by
//! ReadIndex through whichever node they pick, and record the history the linearizability
//! checker examines.

use bytes::Bytes;
use conclave_engine::raft::{Entry, EntryKind};

use super::linearizability::{Operation, RegisterOp};

/// The payload of a write: the operation id, which is also the value written.
pub fn encode_write(op_id: u64) -> Bytes {
    Bytes::copy_from_slice(&op_id.to_le_bytes())
}

/// The value a normal entry writes, if it is a register write.
pub fn decode_write(entry: &Entry) -> Option<u64> {
    if entry.kind != EntryKind::Normal as i32 {
        return None;
    }
    let bytes: [u8; 8] = entry.data.as_ref().try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

struct PendingWrite {
    op_id: u64,
    node: u64,
    index: u64,
    invoked: u64,
}

struct PendingRead {
    op_id: u64,
    node: u64,
    invoked: u64,
    /// Set once the node's ReadIndex round confirmed it.
    index: Option<u64>,
}

/// The clients of one group.
#[derive(Default)]
pub struct GroupClients {
    next_op: u64,
    writes: Vec<PendingWrite>,
    reads: Vec<PendingRead>,
    pub history: Vec<Operation>,
}

impl GroupClients {
    pub fn next_op_id(&mut self) -> u64 {
        self.next_op += 1;
        self.next_op
    }

    pub fn write_proposed(&mut self, op_id: u64, node: u64, index: u64, now: u64) {
        self.writes.push(PendingWrite { op_id, node, index, invoked: now });
    }

    pub fn read_requested(&mut self, op_id: u64, node: u64, now: u64) {
        self.reads.push(PendingRead { op_id, node, invoked: now, index: None });
    }

    pub fn read_confirmed(&mut self, node: u64, context: &[u8], index: u64) {
        let Ok(bytes) = <[u8; 8]>::try_from(context) else { return };
        let op_id = u64::from_le_bytes(bytes);
        if let Some(read) = self.reads.iter_mut().find(|r| r.op_id == op_id && r.node == node) {
            read.index = Some(index);
        }
    }

    /// `node` applied `entry`: complete or fail the write proposed at that index.
    pub fn applied(&mut self, node: u64, entry: &Entry, now: u64) {
        let written = decode_write(entry);
        let history = &mut self.history;
        self.writes.retain(|w| {
            if w.node != node || w.index != entry.index {
                return true;
            }
            if written == Some(w.op_id) {
                history.push(Operation { op: RegisterOp::Write(w.op_id), invoked: w.invoked, returned: Some(now) });
            }
            // Another entry took the index: this write never takes effect.
            false
        });
    }

    /// Completes reads on `node` whose index the node has applied, returning `value`.
    pub fn serve_reads(&mut self, node: u64, applied: u64, value: u64, now: u64) {
        let history = &mut self.history;
        self.reads.retain(|r| match r.index {
            Some(index) if r.node == node && index <= applied => {
                history.push(Operation { op: RegisterOp::Read(value), invoked: r.invoked, returned: Some(now) });
                false
            }
            _ => true,
        });
    }

    /// `node` crashed: its writes' outcomes become unknown, its reads are abandoned.
    pub fn node_crashed(&mut self, node: u64) {
        let history = &mut self.history;
        self.writes.retain(|w| {
            if w.node == node {
                history.push(Operation { op: RegisterOp::Write(w.op_id), invoked: w.invoked, returned: None });
                false
            } else {
                true
            }
        });
        self.reads.retain(|r| r.node != node);
    }

    /// End of run: unfinished writes have unknown outcomes; unfinished reads never returned.
    pub fn finish(&mut self) {
        for w in std::mem::take(&mut self.writes) {
            self.history.push(Operation { op: RegisterOp::Write(w.op_id), invoked: w.invoked, returned: None });
        }
        self.reads.clear();
    }
}
