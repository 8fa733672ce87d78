//! The shard runtime's storage upkeep: snapshots taken every N applied entries and the
//! log compacted behind them, snapshots from the leader installed, and replicas that left
//! removed with their data.

use crate::raft::{Role, Snapshot};
use crate::sm;

use super::error::ShardError;
use super::replica::Replica;
use super::runtime::{LogStore, ShardEvent, ShardRuntime};

impl<L: LogStore> ShardRuntime<L> {
    /// Removes the replicas whose removal was asked for, deleting their data.
    pub(super) async fn remove_pending(&mut self) -> Result<(), ShardError> {
        for (group, reply) in std::mem::take(&mut self.removals) {
            let Some(mut replica) = self.replicas.remove(&group) else {
                reply(Err(ShardError::UnknownGroup(group)));
                continue;
            };
            replica.fail_all(ShardError::UnknownGroup(group));
            for (_, waiter) in self.membership_waiters.remove(&group).unwrap_or_default() {
                waiter(Err(ShardError::UnknownGroup(group)));
            }
            self.durable_votes.remove(&group);
            self.last_expiry_barrier.remove(&group);
            self.last_rebalance.remove(&group);
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

    /// Snapshots every group that applied `snapshot_every` entries since its last snapshot,
    /// then compacts its log: the snapshot is durable before anything it covers is dropped.
    pub(super) async fn snapshot_due_groups(&mut self) -> Result<(), ShardError> {
        if self.cfg.snapshot_every == 0 {
            return Ok(());
        }
        let due: Vec<u32> = self.replicas.iter().filter(|(_, r)| r.snapshot_due(self.cfg.snapshot_every)).map(|(g, _)| *g).collect();
        for group in due {
            let Some(capture) = self.replicas.get(&group).and_then(Replica::capture_snapshot) else {
                continue;
            };
            let storage_error = |e: String| ShardError::Storage(format!("group {group}: {e}"));
            let had_snapshot = self.replicas.get(&group).is_some_and(|r| r.last_snapshot() > 0);
            self.log.save_snapshot(group, capture.index, capture.term, capture.data.clone()).await.map_err(storage_error)?;
            if let Some(replica) = self.replicas.get_mut(&group) {
                replica.snapshot_saved(&capture, self.cfg.compaction_tail)?;
            }
            (self.events)(group, &ShardEvent::SnapshotCreated { index: capture.index });
            if had_snapshot {
                (self.events)(group, &ShardEvent::SnapshotCompacted { index: capture.index });
            }
            self.compact_log(group, capture.index, capture.term).await?;
        }
        Ok(())
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
    /// Raft. A snapshot that does not decode is refused and logged; the leader sends again.
    pub(super) async fn install_snapshot(&mut self, group: u32, snapshot: Snapshot) -> Result<(), ShardError> {
        let me = self.cfg.node_id;
        let witness = snapshot.membership.role(me) == Some(Role::Witness);
        let restored =
            if witness { Ok(sm::StateMachine::new()) } else { super::storage::decode_state_machine(group, snapshot.index, &snapshot.data) };
        let sm = match restored {
            Ok(sm) => sm,
            Err(e) => {
                tracing::error!(group, index = snapshot.index, error = %e, "refusing a snapshot from the leader");
                return Ok(());
            }
        };
        let data = if witness { super::storage::encode_witness_envelope(&snapshot.membership) } else { snapshot.data.clone() };
        self.log
            .save_snapshot(group, snapshot.index, snapshot.term, data)
            .await
            .map_err(|e| ShardError::Storage(format!("group {group}: {e}")))?;
        if let Some(replica) = self.replicas.get_mut(&group) {
            replica.install_snapshot(sm, snapshot.index);
            replica.raft_mut().snapshot_installed(snapshot.index);
        }
        (self.events)(group, &ShardEvent::SnapshotRecovered { index: snapshot.index });
        self.compact_log(group, snapshot.index, snapshot.term).await
    }
}
