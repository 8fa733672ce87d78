//! The shard runtime's storage upkeep: snapshots taken every N applied entries (saved by
//! tasks of their own while the loop goes on) and the log compacted behind them, snapshots
//! from the leader installed, and replicas that left removed with their data.

use futures_lite::future;

use crate::raft::{Role, Snapshot};
use crate::sm;

use super::api::{LogStore, ShardEvent};
use super::error::ShardError;
use super::replica::SnapshotCapture;
use super::runtime::ShardRuntime;

/// The most snapshots one round of the loop starts (each serializes a state machine); the
/// groups also due wait for the next rounds, so many groups due at once (they applied
/// entries at the same pace) do not hold the loop.
const ROUND_SNAPSHOTS: usize = 64;

/// A snapshot of a group being saved by a task of its own (at most one per group, kept in
/// its [`GroupSlot`](super::groups::GroupSlot)); the log is compacted behind it once it is
/// durable.
pub(super) struct SnapshotSave {
    pub(super) capture: SnapshotCapture,
    /// The group had a snapshot before this one (which this one replaces).
    pub(super) had_snapshot: bool,
    pub(super) task: glommio::task::JoinHandle<Result<(), String>>,
}

impl<L: LogStore> ShardRuntime<L> {
    /// Removes the replicas whose removal was asked for, deleting their data. A group's
    /// slot goes whole, with everything the runtime kept about the group.
    pub(super) async fn remove_pending(&mut self) -> Result<(), ShardError> {
        for (group, reply) in std::mem::take(&mut self.removals) {
            let Some(mut slot) = self.groups.remove(group) else {
                reply(Err(ShardError::UnknownGroup(group)));
                continue;
            };
            slot.replica.fail_all(ShardError::UnknownGroup(group));
            for (_, waiter) in std::mem::take(&mut slot.membership_waiters) {
                waiter(Err(ShardError::UnknownGroup(group)));
            }
            // The group's snapshot directory is deleted below: a save still writing into it
            // ends first.
            if let Some(save) = slot.take_snapshot_save() {
                let _ = save.task.await;
            }
            self.schedule.forget(group);
            if let Err(e) = self.log.remove_group(group).await {
                let error = ShardError::Storage(format!("group {group}: {e}"));
                reply(Err(error.clone()));
                return Err(error);
            }
            (self.events)(group, &ShardEvent::MemberRemoved);
            reply(Ok(()));
        }
        Ok(())
    }

    /// Starts a snapshot of every group (at most [`ROUND_SNAPSHOTS`] per round) that applied
    /// `snapshot_every` entries since its last one and has none on its way to disk; settles
    /// the saves that have become durable since the last round, compacting each group's log
    /// behind its snapshot (a snapshot is durable before anything it covers is dropped).
    pub(super) async fn snapshot_due_groups(&mut self) -> Result<(), ShardError> {
        self.settle_snapshot_saves().await?;
        if self.cfg.snapshot_every == 0 {
            return Ok(());
        }
        // Only groups that applied entries since they were last looked at can be due.
        let candidates = std::mem::take(&mut self.groups.snapshot_candidates);
        let due = candidates.into_iter().filter(|&g| {
            !self.groups.has_snapshot_save(g)
                && self.groups.replica(g).is_some_and(|r| r.snapshot_due(self.cfg.snapshot_every, self.cfg.snapshot_log_ratio))
        });
        let mut due: Vec<u32> = due.collect();
        if due.len() > ROUND_SNAPSHOTS {
            self.groups.snapshot_candidates.extend(due.split_off(ROUND_SNAPSHOTS));
        }
        for group in due {
            let Some(replica) = self.groups.replica_mut(group) else { continue };
            let Some(capture) = replica.capture_snapshot() else { continue };
            replica.note_snapshot_size(capture.data.len());
            super::counters::ShardCounters::add(&self.counters.snapshot_bytes, capture.data.len() as u64);
            let had_snapshot = replica.last_snapshot() > 0;
            let save = self.log.save_snapshot(group, capture.index, capture.term, capture.data.clone());
            let task = glommio::spawn_local(save).detach();
            super::counters::ShardCounters::add(&self.counters.tasks_spawned, 1);
            self.groups.set_snapshot_save(group, SnapshotSave { capture, had_snapshot, task });
        }
        Ok(())
    }

    /// Settles the snapshot saves that have ended, without waiting for the others.
    async fn settle_snapshot_saves(&mut self) -> Result<(), ShardError> {
        for group in self.groups.saving() {
            let Some(save) = self.groups.snapshot_save_mut(group) else { continue };
            let Some(outcome) = future::poll_once(&mut save.task).await else { continue };
            let save = self.groups.take_snapshot_save(group).expect("polled above");
            let outcome = outcome.unwrap_or_else(|| Err("the snapshot save task was cancelled".into()));
            self.snapshot_saved(group, save, outcome).await?;
        }
        Ok(())
    }

    /// A snapshot this shard took is durable: Raft gets it and the log is compacted behind
    /// it, unless the group left this shard or installed a newer snapshot meanwhile.
    async fn snapshot_saved(&mut self, group: u32, save: SnapshotSave, outcome: Result<(), String>) -> Result<(), ShardError> {
        let SnapshotSave { capture, had_snapshot, .. } = save;
        outcome.map_err(|e| ShardError::Storage(format!("group {group}: saving snapshot {}: {e}", capture.index)))?;
        let Some(replica) = self.groups.replica_mut(group) else { return Ok(()) };
        self.schedule.touch(group);
        if capture.index <= replica.last_snapshot() {
            return Ok(());
        }
        replica.snapshot_saved(&capture, self.cfg.compaction_tail)?;
        (self.events)(group, &ShardEvent::SnapshotCreated { index: capture.index });
        if had_snapshot {
            (self.events)(group, &ShardEvent::SnapshotCompacted { index: capture.index });
        }
        self.compact_log(group, capture.index, capture.term).await
    }

    /// Lets the group's snapshot save on its way, if any, end, and forgets it: its outcome
    /// no longer matters (the group is removed, or a newer snapshot replaces it).
    async fn forget_snapshot_save(&mut self, group: u32) {
        if let Some(save) = self.groups.take_snapshot_save(group) {
            let _ = save.task.await;
        }
    }

    /// Stopping: lets every snapshot save end (so no file is left half written) without
    /// compacting behind it; the next start recovers from the newest snapshot and skips the
    /// log entries it covers.
    pub(super) async fn abandon_snapshot_saves(&mut self) {
        for (group, save) in self.groups.take_snapshot_saves() {
            if let Some(Err(e)) = save.task.await {
                tracing::warn!(group, index = save.capture.index, error = %e, "a snapshot save failed while stopping");
            }
        }
    }

    pub(super) async fn compact_log(&mut self, group: u32, index: u64, term: u64) -> Result<(), ShardError> {
        let reclaimed = self.log.compact(group, index, term).await.map_err(|e| ShardError::Storage(format!("group {group}: {e}")))?;
        (self.events)(group, &ShardEvent::LogCompacted { index });
        if reclaimed {
            (self.events)(group, &ShardEvent::LogStoreCompacted { index });
        }
        Ok(())
    }

    /// Installs a snapshot the leader sent: stores it durably, drops the log it covers,
    /// restores the state machine from it (a witness keeps no state machine), then tells
    /// Raft. A snapshot that does not decode is refused and logged, and Raft is told so (the
    /// replica goes on with its log and the leader starts over).
    pub(super) async fn install_snapshot(&mut self, group: u32, snapshot: Snapshot) -> Result<(), ShardError> {
        // This replica's role in the snapshot's configuration, which may list an earlier
        // replica of this node (another incarnation): that one's role is not ours.
        let witness = self.groups.replica(group).is_some_and(|r| r.raft().role_in(&snapshot.membership) == Some(Role::Witness));
        let restored =
            if witness { Ok(sm::StateMachine::new()) } else { super::storage::decode_state_machine(group, snapshot.index, &snapshot.data) };
        let sm = match restored {
            Ok(sm) => sm,
            Err(e) => {
                tracing::error!(group, index = snapshot.index, error = %e, "refusing a snapshot from the leader");
                if let Some(replica) = self.groups.replica_mut(group) {
                    self.schedule.touch(group);
                    replica.raft_mut().snapshot_install_failed(snapshot.index);
                }
                return Ok(());
            }
        };
        let data = if witness { super::storage::encode_witness_envelope(&snapshot.membership) } else { snapshot.data.clone() };
        // A snapshot of our own still on its way is older than the leader's: let it end
        // first, so it cannot land after this one.
        self.forget_snapshot_save(group).await;
        self.log
            .save_snapshot(group, snapshot.index, snapshot.term, data)
            .await
            .map_err(|e| ShardError::Storage(format!("group {group}: {e}")))?;
        if let Some(replica) = self.groups.replica_mut(group) {
            self.schedule.touch(group);
            replica.install_snapshot(sm, snapshot.index, snapshot.data.len());
            replica.raft_mut().snapshot_installed(snapshot.index);
        }
        (self.events)(group, &ShardEvent::SnapshotRecovered { index: snapshot.index });
        self.compact_log(group, snapshot.index, snapshot.term).await
    }
}
