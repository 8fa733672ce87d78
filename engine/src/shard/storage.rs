//! The shard's durable storage as the runtime uses it: the shard's write-ahead log and
//! snapshot store ([`ShardStorage`]) behind [`LogStore`], and replicas rebuilt from what
//! recovery found (the newest snapshot, then the log entries after it).

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use conclave_proto::conclave::raft::v1::Entry as RaftEntry;
use conclave_proto::conclave::shard::v1::GroupSnapshot;
use prost::Message as _;
use rand_chacha::ChaCha8Rng;

use crate::log::{self, Log, RecoveredGroup, SnapshotStore};
use crate::raft::{self, entry_kind_from_u8, entry_kind_to_u8, Membership, RaftNode, Recovered};
use crate::sm::StateMachine;

use super::api::{Durable, GroupWrite, LogStore};
use super::replica::Replica;
use super::stats::StorageStats;

/// The version of the `conclave.shard.v1.GroupSnapshot` envelope this build writes and reads.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;

/// A shard's durable storage: its write-ahead log and its snapshot store.
pub struct ShardStorage {
    pub log: Log,
    pub snapshots: SnapshotStore,
    /// The reclaim running in the background, if any (see [`LogStore::compact`]).
    reclaim: Option<BackgroundReclaim>,
    /// Durations of flushes and snapshot saves, read by the node's metrics.
    stats: Rc<StorageStats>,
}

/// A [`Log::reclaim`] running as a task of its own; `done` is set when it has ended.
struct BackgroundReclaim {
    task: glommio::task::JoinHandle<Result<log::CompactionReport, log::LogError>>,
    done: Rc<Cell<bool>>,
}

impl ShardStorage {
    pub fn new(log: Log, snapshots: SnapshotStore) -> Self {
        ShardStorage { log, snapshots, reclaim: None, stats: Rc::default() }
    }

    /// The timings of this storage's flushes and snapshot saves (shared: they keep counting
    /// after the storage moved into the runtime).
    pub fn stats(&self) -> Rc<StorageStats> {
        Rc::clone(&self.stats)
    }

    /// The outcome of the background reclaim if it has ended: whether it gave back disk
    /// space. Waits for it when `wait` is set.
    async fn finish_reclaim(&mut self, wait: bool) -> Result<bool, String> {
        let Some(running) = self.reclaim.take_if(|r| wait || r.done.get()) else {
            return Ok(false);
        };
        match running.task.await {
            Some(Ok(report)) => {
                if !report.deleted_segments.is_empty() {
                    tracing::debug!(segments = ?report.deleted_segments, relocated = report.relocated_records, "log segments reclaimed");
                }
                Ok(!report.deleted_segments.is_empty())
            }
            Some(Err(e)) => Err(e.to_string()),
            None => Err("the log's reclaim task was cancelled".into()),
        }
    }
}

impl LogStore for ShardStorage {
    /// Enqueues every group's hard state, then its entries; the returned future resolves
    /// once they are durable (one flush, shared with whatever else is enqueued by then).
    /// The hard state goes first so that a torn flush can never keep entries of a term
    /// whose vote record was lost.
    fn submit(&mut self, writes: Vec<GroupWrite>) -> Result<Durable, String> {
        let log = &self.log;
        let mut last = None;
        for write in &writes {
            if let Some(hs) = write.hard_state {
                let hard_state = log::HardState { term: hs.term, vote: hs.vote, commit: hs.commit };
                let ticket = log.save_hard_state(write.group, hard_state).map_err(|e| e.to_string())?;
                last = last.max(Some(ticket));
            }
        }
        for write in writes {
            if write.entries.is_empty() {
                continue;
            }
            let entries: Vec<log::Entry> = write.entries.into_iter().map(to_log_entry).collect();
            let ticket = log.append_entries(write.group, entries).map_err(|e| e.to_string())?;
            last = last.max(Some(ticket));
        }
        let durable = last.map(|ticket| log.durability(ticket));
        let (stats, started) = (Rc::clone(&self.stats), Instant::now());
        Ok(Box::pin(async move {
            match durable {
                Some(durable) => {
                    let result = durable.await.map_err(|e| e.to_string());
                    stats.record_flush(started.elapsed(), result.is_ok());
                    result
                }
                None => Ok(()),
            }
        }))
    }

    fn save_snapshot(&mut self, group: u32, index: u64, term: u64, data: Bytes) -> Durable {
        let snapshots = self.snapshots.clone();
        let (stats, started) = (Rc::clone(&self.stats), Instant::now());
        Box::pin(async move {
            let result = snapshots.save(group, index, term, &data).await.map(|_| ()).map_err(|e| e.to_string());
            stats.record_snapshot_save(started.elapsed(), result.is_ok());
            result
        })
    }

    /// Enqueues the compaction marker and starts a reclaim of old segments in a task of its
    /// own (the reads and rewrites of live records take long on a big log; the shard loop
    /// must not wait for them). Reports whether the reclaim started by an earlier call has
    /// given back disk space since.
    async fn compact(&mut self, group: u32, index: u64, term: u64) -> Result<bool, String> {
        let ticket = self.log.compact_group(group, index, term).map_err(|e| e.to_string())?;
        let reclaimed = self.finish_reclaim(false).await?;
        if self.reclaim.is_none() {
            let done = Rc::new(Cell::new(false));
            let reclaim = self.log.reclaim_after(ticket);
            let finished = Rc::clone(&done);
            let task = glommio::spawn_local(async move {
                let outcome = reclaim.await;
                finished.set(true);
                outcome
            })
            .detach();
            self.reclaim = Some(BackgroundReclaim { task, done });
        }
        Ok(reclaimed)
    }

    async fn remove_group(&mut self, group: u32) -> Result<(), String> {
        let ticket = self.log.remove_group(group).map_err(|e| e.to_string())?;
        self.log.wait_durable(ticket).await.map_err(|e| e.to_string())?;
        self.snapshots.remove_group(group).await.map_err(|e| e.to_string())
    }

    async fn close(mut self) -> Result<(), String> {
        self.finish_reclaim(true).await?;
        self.log.close().await.map_err(|e| e.to_string())
    }
}

fn to_log_entry(entry: RaftEntry) -> log::Entry {
    let kind = raft::EntryKind::try_from(entry.kind).unwrap_or(raft::EntryKind::Normal);
    log::Entry { index: entry.index, term: entry.term, kind: entry_kind_to_u8(kind), payload: entry.data }
}

/// Decodes a snapshot envelope's state machine, checking its version and that it applied
/// exactly `index`.
pub fn decode_state_machine(group: u32, index: u64, data: &Bytes) -> Result<StateMachine, String> {
    let envelope = GroupSnapshot::decode(data.clone()).map_err(|e| format!("group {group}: snapshot {index} does not decode: {e}"))?;
    if envelope.version != SNAPSHOT_FORMAT_VERSION {
        return Err(format!(
            "group {group}: snapshot {index} has format version {}, this build reads {SNAPSHOT_FORMAT_VERSION}",
            envelope.version
        ));
    }
    let sm = StateMachine::restore(&envelope.state_machine).map_err(|e| format!("group {group}: snapshot {index}: {e}"))?;
    if sm.last_applied() != index {
        return Err(format!("group {group}: snapshot {index} holds a state machine that applied {}", sm.last_applied()));
    }
    Ok(sm)
}

/// Encodes the snapshot envelope of a state machine with the configuration in effect at
/// its applied index.
pub fn encode_envelope(membership: &Membership, sm: &StateMachine) -> Bytes {
    let envelope =
        GroupSnapshot { version: SNAPSHOT_FORMAT_VERSION, membership: Some(membership.to_proto()), state_machine: sm.snapshot() };
    Bytes::from(envelope.encode_to_vec())
}

/// The snapshot envelope a witness keeps: the configuration only, no state machine (an
/// empty `state_machine`).
pub fn encode_witness_envelope(membership: &Membership) -> Bytes {
    let envelope =
        GroupSnapshot { version: SNAPSHOT_FORMAT_VERSION, membership: Some(membership.to_proto()), state_machine: Default::default() };
    Bytes::from(envelope.encode_to_vec())
}

/// A group's newest snapshot, decoded.
pub struct LoadedSnapshot {
    pub index: u64,
    pub term: u64,
    pub membership: Membership,
    pub state_machine: StateMachine,
    /// The encoded envelope, as Raft sends it to followers.
    pub data: Bytes,
}

/// Loads and decodes the newest snapshot of `group`, if it has one.
pub async fn load_snapshot(store: &SnapshotStore, group: u32) -> Result<Option<LoadedSnapshot>, String> {
    let Some((meta, data)) = store.load_latest(group).await.map_err(|e| format!("group {group}: {e}"))? else {
        return Ok(None);
    };
    let envelope =
        GroupSnapshot::decode(data.clone()).map_err(|e| format!("group {group}: snapshot {} does not decode: {e}", meta.path.display()))?;
    if envelope.version != SNAPSHOT_FORMAT_VERSION {
        return Err(format!(
            "group {group}: snapshot {} has format version {}, this build reads {SNAPSHOT_FORMAT_VERSION}",
            meta.path.display(),
            envelope.version
        ));
    }
    let membership = envelope
        .membership
        .as_ref()
        .ok_or_else(|| format!("group {group}: snapshot {} has no membership", meta.path.display()))
        .and_then(|m| Membership::from_proto(m).map_err(|e| format!("group {group}: {e}")))?;
    // A witness's snapshot holds the configuration only.
    if envelope.state_machine.is_empty() {
        return Ok(Some(LoadedSnapshot { index: meta.index, term: meta.term, membership, state_machine: StateMachine::new(), data }));
    }
    let state_machine =
        StateMachine::restore(&envelope.state_machine).map_err(|e| format!("group {group}: snapshot {}: {e}", meta.path.display()))?;
    if state_machine.last_applied() != meta.index {
        return Err(format!(
            "group {group}: snapshot {} claims index {} but its state machine applied {}",
            meta.path.display(),
            meta.index,
            state_machine.last_applied()
        ));
    }
    Ok(Some(LoadedSnapshot { index: meta.index, term: meta.term, membership, state_machine, data }))
}

/// Rebuilds a replica of a group from its newest snapshot (if any) and the log's recovery
/// (or starts it fresh), with `bootstrap` as the configuration of a group that has no
/// snapshot. Committed entries after the snapshot are applied again on the way up.
pub fn recover_replica(
    cfg: raft::Config,
    bootstrap: Membership,
    snapshot: Option<LoadedSnapshot>,
    recovered: Option<&RecoveredGroup>,
    rng: ChaCha8Rng,
) -> Result<Replica, String> {
    let group = cfg.group_id;
    if snapshot.is_none() && recovered.is_none() {
        let raft = RaftNode::new(cfg, bootstrap, rng).map_err(|e| format!("group {group}: {e}"))?;
        return Ok(Replica::new(raft, StateMachine::new()));
    }
    let (base_index, base_term, membership, sm, snapshot_data) = match snapshot {
        Some(s) => (s.index, s.term, s.membership, s.state_machine, Some(s.data)),
        None => (0, 0, bootstrap, StateMachine::new(), None),
    };
    let empty = RecoveredGroup::default();
    let recovered = recovered.unwrap_or(&empty);
    if recovered.compacted > base_index {
        return Err(format!(
            "group {group}: the log is compacted to index {} but the newest snapshot covers only {base_index}",
            recovered.compacted
        ));
    }
    // A crash between a snapshot and its compaction marker leaves covered entries in the
    // log: they are skipped here.
    let mut entries = Vec::with_capacity(recovered.entries.len());
    for e in recovered.entries.iter().filter(|e| e.index > base_index) {
        let kind = entry_kind_from_u8(e.kind).ok_or_else(|| format!("group {group}: entry {} has unknown kind {}", e.index, e.kind))?;
        // Copied out: a recovered payload is a slice of a whole segment read, which would
        // otherwise stay in memory as long as any entry of it does.
        let data = Bytes::copy_from_slice(&e.payload);
        entries.push(RaftEntry { index: e.index, term: e.term, kind: kind as i32, data });
    }
    if let Some(first) = entries.first() {
        if first.index != base_index + 1 {
            return Err(format!("group {group}: the log resumes at index {} but the snapshot ends at {base_index}", first.index));
        }
    }
    let hs = recovered.hard_state.unwrap_or_default();
    let recovered = Recovered {
        hard_state: raft::HardState { term: hs.term.max(base_term), vote: hs.vote, commit: hs.commit.max(base_index) },
        compacted_index: base_index,
        compacted_term: base_term,
        membership,
        entries,
        applied: base_index,
    };
    let mut raft = RaftNode::restart(cfg, recovered, rng).map_err(|e| format!("group {group}: {e}"))?;
    let snapshot_bytes = snapshot_data.as_ref().map_or(0, |d| d.len());
    if let Some(data) = snapshot_data {
        raft.snapshot_taken(base_index, data).map_err(|e| format!("group {group}: {e}"))?;
    }
    let mut replica = Replica::new(raft, sm);
    replica.note_snapshot_size(snapshot_bytes);
    Ok(replica)
}
