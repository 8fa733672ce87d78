//! The shard's durable storage as the runtime uses it: the shard's write-ahead log
//! ([`crate::log::Log`]) behind [`LogStore`], and replicas rebuilt from what recovery found.

use conclave_proto::conclave::raft::v1::Entry as RaftEntry;
use rand_chacha::ChaCha8Rng;

use crate::log::{self, Log, RecoveredGroup};
use crate::raft::{self, entry_kind_from_u8, entry_kind_to_u8, Membership, RaftNode, Recovered};
use crate::sm::StateMachine;

use super::replica::Replica;
use super::runtime::{GroupWrite, LogStore};

impl LogStore for Log {
    /// Enqueues every group's hard state, then its entries, and waits for one flush. The
    /// hard state goes first so that a torn flush can never keep entries of a term whose
    /// vote record was lost.
    async fn persist(&mut self, writes: Vec<GroupWrite>) -> Result<(), String> {
        let mut last = None;
        for write in &writes {
            if let Some(hs) = write.hard_state {
                let hard_state = log::HardState { term: hs.term, vote: hs.vote, commit: hs.commit };
                let ticket = self.save_hard_state(write.group, hard_state).map_err(|e| e.to_string())?;
                last = last.max(Some(ticket));
            }
        }
        for write in writes {
            if write.entries.is_empty() {
                continue;
            }
            let entries: Vec<log::Entry> = write.entries.into_iter().map(to_log_entry).collect();
            let ticket = self.append_entries(write.group, &entries).map_err(|e| e.to_string())?;
            last = last.max(Some(ticket));
        }
        match last {
            Some(ticket) => self.wait_durable(ticket).await.map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    async fn close(self) -> Result<(), String> {
        Log::close(self).await.map_err(|e| e.to_string())
    }
}

fn to_log_entry(entry: RaftEntry) -> log::Entry {
    let kind = raft::EntryKind::try_from(entry.kind).unwrap_or(raft::EntryKind::Normal);
    log::Entry { index: entry.index, term: entry.term, kind: entry_kind_to_u8(kind), payload: entry.data }
}

/// Rebuilds a replica of a group from the log's recovery (or starts it fresh), with
/// `bootstrap` as the configuration of a group that has no snapshot. Every committed entry
/// is applied again from the log on the way up, so the state machine starts empty.
pub fn recover_replica(
    cfg: raft::Config,
    bootstrap: Membership,
    recovered: Option<&RecoveredGroup>,
    rng: ChaCha8Rng,
) -> Result<Replica, String> {
    let group = cfg.group_id;
    let Some(recovered) = recovered else {
        let raft = RaftNode::new(cfg, bootstrap, rng).map_err(|e| format!("group {group}: {e}"))?;
        return Ok(Replica::new(raft, StateMachine::new()));
    };
    if recovered.compacted != 0 {
        return Err(format!(
            "group {group}: the log is compacted to index {} but no snapshot was loaded",
            recovered.compacted
        ));
    }
    let mut entries = Vec::with_capacity(recovered.entries.len());
    for e in &recovered.entries {
        let kind = entry_kind_from_u8(e.kind)
            .ok_or_else(|| format!("group {group}: entry {} has unknown kind {}", e.index, e.kind))?;
        entries.push(RaftEntry { index: e.index, term: e.term, kind: kind as i32, data: e.payload.clone() });
    }
    let hs = recovered.hard_state.unwrap_or_default();
    let recovered = Recovered {
        hard_state: raft::HardState { term: hs.term, vote: hs.vote, commit: hs.commit },
        compacted_index: 0,
        compacted_term: 0,
        membership: bootstrap,
        entries,
        applied: 0,
    };
    let raft = RaftNode::restart(cfg, recovered, rng).map_err(|e| format!("group {group}: {e}"))?;
    Ok(Replica::new(raft, StateMachine::new()))
}
