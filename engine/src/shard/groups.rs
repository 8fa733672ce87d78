//! The groups a shard hosts, and everything the runtime keeps about each: one
//! [`GroupSlot`] per group (its replica and the runtime's per-group bookkeeping), created
//! when the replica arrives and dropped whole when it leaves, plus the indexes over them
//! that spare the loop a walk over every group (saves on their way, snapshot candidates).

use std::collections::{BTreeMap, BTreeSet};

use super::peer_requests::MembershipWaiters;
use super::replica::Replica;
use super::upkeep::SnapshotSave;
use super::workload::Workload;

/// One hosted group: its replica, and what the runtime remembers of it between rounds.
pub(super) struct GroupSlot {
    pub(super) replica: Replica,
    /// The (term, vote) of the group's hard state as last handed to the log.
    pub(super) durable_vote: (u64, u64),
    /// Leader: when (monotonic clock, µs) it last proposed a barrier that lets sessions
    /// expire (`None`: never).
    pub(super) last_expiry_barrier: Option<u64>,
    /// The tick of the group's last rebalancing transfer or hand-off attempt (or of its
    /// replica becoming leader here); 0: none yet.
    pub(super) last_rebalance: u64,
    /// The node that last handed the group's leadership here (TimeoutNow), and the tick it
    /// did: a leader does not rebalance the group back to it at once (it may be stopping).
    pub(super) handed_by: Option<(u64, u64)>,
    /// Leader: where the group's requests come from (leadership may follow them).
    pub(super) workload: Workload,
    /// Leader: membership changes waiting for their entry to commit.
    pub(super) membership_waiters: MembershipWaiters,
    /// A snapshot this shard took of the group, on its way to disk (kept through
    /// [`Groups`], which indexes the groups that have one).
    snapshot_save: Option<SnapshotSave>,
}

impl GroupSlot {
    fn new(replica: Replica) -> GroupSlot {
        let hs = replica.raft().hard_state();
        GroupSlot {
            durable_vote: (hs.term, hs.vote),
            replica,
            last_expiry_barrier: None,
            last_rebalance: 0,
            handed_by: None,
            workload: Workload::default(),
            membership_waiters: Vec::new(),
            snapshot_save: None,
        }
    }

    /// Takes the group's snapshot save on its way, if any (for a slot already out of
    /// [`Groups`]).
    pub(super) fn take_snapshot_save(&mut self) -> Option<SnapshotSave> {
        self.snapshot_save.take()
    }
}

/// The shard's groups by id, in group order (rounds stay deterministic).
#[derive(Default)]
pub(super) struct Groups {
    slots: BTreeMap<u32, GroupSlot>,
    /// The groups whose slot holds a snapshot save on its way.
    saving: BTreeSet<u32>,
    /// Groups that applied entries since they were last looked at for a snapshot (may name
    /// a group no longer hosted until it is next looked at).
    pub(super) snapshot_candidates: BTreeSet<u32>,
}

impl Groups {
    /// The groups of `replicas`, each with fresh bookkeeping.
    pub(super) fn new(replicas: BTreeMap<u32, Replica>) -> Groups {
        let slots = replicas.into_iter().map(|(group, replica)| (group, GroupSlot::new(replica))).collect();
        Groups { slots, ..Groups::default() }
    }

    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(super) fn contains(&self, group: u32) -> bool {
        self.slots.contains_key(&group)
    }

    pub(super) fn get(&self, group: u32) -> Option<&GroupSlot> {
        self.slots.get(&group)
    }

    pub(super) fn get_mut(&mut self, group: u32) -> Option<&mut GroupSlot> {
        self.slots.get_mut(&group)
    }

    pub(super) fn replica(&self, group: u32) -> Option<&Replica> {
        self.slots.get(&group).map(|slot| &slot.replica)
    }

    pub(super) fn replica_mut(&mut self, group: u32) -> Option<&mut Replica> {
        self.slots.get_mut(&group).map(|slot| &mut slot.replica)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, &GroupSlot)> {
        self.slots.iter().map(|(&group, slot)| (group, slot))
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (u32, &mut GroupSlot)> {
        self.slots.iter_mut().map(|(&group, slot)| (group, slot))
    }

    pub(super) fn replicas(&self) -> impl Iterator<Item = (u32, &Replica)> {
        self.iter().map(|(group, slot)| (group, &slot.replica))
    }

    pub(super) fn replicas_mut(&mut self) -> impl Iterator<Item = (u32, &mut Replica)> {
        self.iter_mut().map(|(group, slot)| (group, &mut slot.replica))
    }

    /// Hosts `replica` as `group` (which must not be hosted yet).
    pub(super) fn insert(&mut self, group: u32, replica: Replica) {
        let previous = self.slots.insert(group, GroupSlot::new(replica));
        debug_assert!(previous.is_none(), "group {group} was hosted already");
    }

    /// Stops hosting `group`: its slot, with everything the runtime kept about it, leaves
    /// every index (a snapshot save on its way stays in the slot returned).
    pub(super) fn remove(&mut self, group: u32) -> Option<GroupSlot> {
        let slot = self.slots.remove(&group)?;
        self.saving.remove(&group);
        self.snapshot_candidates.remove(&group);
        Some(slot)
    }

    /// Whether any group has a snapshot save on its way.
    pub(super) fn has_snapshot_saves(&self) -> bool {
        !self.saving.is_empty()
    }

    pub(super) fn has_snapshot_save(&self, group: u32) -> bool {
        self.saving.contains(&group)
    }

    /// The groups with a snapshot save on its way, in group order.
    pub(super) fn saving(&self) -> Vec<u32> {
        self.saving.iter().copied().collect()
    }

    pub(super) fn snapshot_save_mut(&mut self, group: u32) -> Option<&mut SnapshotSave> {
        self.slots.get_mut(&group)?.snapshot_save.as_mut()
    }

    /// Notes the group's snapshot save on its way (a hosted group with none yet).
    pub(super) fn set_snapshot_save(&mut self, group: u32, save: SnapshotSave) {
        if let Some(slot) = self.slots.get_mut(&group) {
            debug_assert!(slot.snapshot_save.is_none(), "group {group} has a snapshot save on its way already");
            slot.snapshot_save = Some(save);
            self.saving.insert(group);
        }
    }

    /// Takes the group's snapshot save on its way, if any.
    pub(super) fn take_snapshot_save(&mut self, group: u32) -> Option<SnapshotSave> {
        self.saving.remove(&group);
        self.slots.get_mut(&group)?.snapshot_save.take()
    }

    /// Takes every snapshot save on its way, in group order.
    pub(super) fn take_snapshot_saves(&mut self) -> Vec<(u32, SnapshotSave)> {
        let saving = std::mem::take(&mut self.saving);
        saving.into_iter().filter_map(|group| Some((group, self.slots.get_mut(&group)?.snapshot_save.take()?))).collect()
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::raft::{Config, Membership, RaftNode};
    use crate::shard::error::ShardError;
    use crate::sm::StateMachine;

    fn replica() -> Replica {
        let raft = RaftNode::new(Config::new(1, 1), Membership::voters([1]).unwrap(), ChaCha8Rng::seed_from_u64(1)).unwrap();
        Replica::new(raft, StateMachine::new())
    }

    #[test]
    fn a_removed_group_takes_all_of_its_state_with_it() {
        let mut groups = Groups::new(BTreeMap::from([(7, replica())]));
        let slot = groups.get_mut(7).unwrap();
        slot.last_rebalance = 40;
        slot.handed_by = Some((2, 39));
        slot.last_expiry_barrier = Some(1_000);
        slot.membership_waiters.push((5, Box::new(|_: Result<u64, ShardError>| {})));
        groups.snapshot_candidates.insert(7);

        let removed = groups.remove(7).expect("hosted");
        assert_eq!((removed.last_rebalance, removed.handed_by), (40, Some((2, 39))));
        assert_eq!(removed.membership_waiters.len(), 1);
        assert!(!groups.contains(7) && groups.snapshot_candidates.is_empty() && !groups.has_snapshot_saves());

        // A replica of the same group added later starts with nothing of the old one.
        groups.insert(7, replica());
        let slot = groups.get(7).unwrap();
        assert_eq!((slot.last_rebalance, slot.handed_by, slot.last_expiry_barrier), (0, None, None));
        assert!(slot.membership_waiters.is_empty());
    }
}
