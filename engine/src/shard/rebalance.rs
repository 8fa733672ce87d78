//! Where a group's leadership goes: a leader hands its group to the group's preferred
//! leader once per rebalancing period, or, when the group's requests come mostly through
//! one node (its workload home, `shard::workload`), to that node (not back, for a while,
//! to a node that just handed it over: that node may be stopping), never to a node that
//! went silent (its TimeoutNow would be lost, and the leader would refuse commands while it
//! waits for the transfer); and a stopping node hands every group it leads to another
//! voter (one that is not silent, where there is one), trying again while leaderships
//! come back.

use super::api::LogStore;
use super::counters::ShardCounters;
use super::groups::GroupSlot;
use super::runtime::ShardRuntime;

/// Rebalancing periods before a leader hands a group back to the node that handed it
/// over (which was perhaps stopping).
const HANDED_BACK_AFTER_PERIODS: u64 = 10;

/// While stopping, ticks between two attempts to hand a group on.
const HAND_OFF_RETRY_TICKS: u64 = 10;

impl<L: LogStore> ShardRuntime<L> {
    /// Notes that node `from` handed group `group`'s leadership to this node.
    pub(super) fn note_handed_by(&mut self, group: u32, from: u64) {
        let ticks = self.ticks;
        if let Some(slot) = self.groups.get_mut(group) {
            slot.handed_by = Some((from, ticks));
        }
    }

    /// A leader's tick: a stopping node hands the group on (again), otherwise once per
    /// rebalancing period the group goes to its workload home or its preferred node.
    pub(super) fn rebalance_tick(&mut self, group: u32) {
        let ticks = self.ticks;
        let Some(slot) = self.groups.get_mut(group) else { return };
        let last = slot.last_rebalance;
        if self.handing_off {
            // Stopping: a leadership that came back here is handed on again.
            if ticks >= last + HAND_OFF_RETRY_TICKS {
                slot.last_rebalance = ticks;
                let replica = &mut slot.replica;
                if let Some(to) = replica.best_successor(|id| self.liveness.is_silent(id)) {
                    if let Err(e) = replica.raft_mut().transfer_leadership(to) {
                        tracing::debug!(group, to, error = %e, "hand-off refused");
                    }
                }
            }
        } else if self.cfg.rebalance_ticks > 0 && ticks >= last + self.cfg.rebalance_ticks {
            let period = self.cfg.rebalance_ticks;
            if self.cfg.follow_workload {
                slot.workload.settle(ticks, period);
            }
            let handed_by = slot.handed_by;
            let gave_it_away = |to: u64| handed_by.is_some_and(|(from, at)| from == to && ticks < at + HANDED_BACK_AFTER_PERIODS * period);
            let silent = |to: u64| self.liveness.is_silent(to);
            match leadership_target(slot, self.cfg.follow_workload) {
                Some((to, follows_workload)) if !gave_it_away(to) && !silent(to) => {
                    slot.last_rebalance = ticks;
                    let replica = &mut slot.replica;
                    match replica.raft_mut().transfer_leadership(to) {
                        Ok(()) if follows_workload => ShardCounters::add(&self.counters.workload_transfers, 1),
                        Ok(()) => {}
                        Err(e) => tracing::debug!(group, to, error = %e, "rebalancing transfer refused"),
                    }
                }
                // Checked again a period later, not every tick.
                Some(_) => {
                    slot.last_rebalance = ticks;
                }
                None => {}
            }
        }
    }

    /// Whether a quiet leader must wake for its next rebalancing check: its group has
    /// somewhere to go (see [`leadership_target`]) that is not silent. (A silent node
    /// heard from again wakes the quiet groups that would go there:
    /// [`ShardRuntime::wake_rebalancing_toward`].)
    pub(super) fn rebalance_due(&self, slot: &GroupSlot) -> bool {
        self.cfg.rebalance_ticks > 0
            && leadership_target(slot, self.cfg.follow_workload).is_some_and(|(to, _)| !self.liveness.is_silent(to))
    }

    /// Wakes every quiet group led here whose leadership would go to `node`, which was
    /// silent and is heard from again, so each checks at its next rebalancing period;
    /// returns how many. A walk over the shard's groups, once per recovery of a node.
    pub(super) fn wake_rebalancing_toward(&mut self, node: u64) -> usize {
        if self.cfg.rebalance_ticks == 0 {
            return 0;
        }
        let mut woken = 0;
        for (group, slot) in self.groups.iter() {
            let quiet_leader = slot.replica.is_leader() && slot.replica.raft().is_quiesced();
            if quiet_leader && leadership_target(slot, self.cfg.follow_workload).is_some_and(|(to, _)| to == node) {
                self.schedule.touch(group);
                woken += 1;
            }
        }
        woken
    }

    /// Led here as its workload's home while its preferred node is elsewhere: the tick at
    /// which a quiet spell makes the group forget that home (and go back).
    pub(super) fn home_forgotten_at(&self, slot: &GroupSlot) -> Option<u64> {
        let rebalancing = self.cfg.rebalance_ticks > 0 && self.cfg.follow_workload;
        if !rebalancing || slot.replica.rebalance_target().is_none() {
            return None;
        }
        slot.workload.home_forgotten_at(self.cfg.rebalance_ticks)
    }

    /// Starts handing every group this shard leads to its most caught-up other voter.
    pub(super) fn hand_off_leadership(&mut self) -> usize {
        self.handing_off = true;
        let mut started = 0;
        for (group, replica) in self.groups.replicas_mut() {
            if !replica.is_leader() {
                continue;
            }
            // Stays awake while stopping, so a failed hand-off is tried again.
            self.schedule.touch(group);
            if let Some(to) = replica.best_successor(|id| self.liveness.is_silent(id)) {
                match replica.raft_mut().transfer_leadership(to) {
                    Ok(()) => started += 1,
                    Err(e) => tracing::debug!(group, to, error = %e, "hand-off refused"),
                }
            }
        }
        started
    }
}

/// Where a leader should hand its group now, if anywhere: to the group's workload home
/// when it has one that may lead (staying put when that is this node), otherwise to its
/// preferred node; either only as a voter holding the whole log. (A home that cannot lead,
/// an observer's node, says nothing about where the leader should be.) With the target,
/// whether it is the workload home.
fn leadership_target(slot: &GroupSlot, follow_workload: bool) -> Option<(u64, bool)> {
    match workload_home(slot, follow_workload) {
        Some(home) => slot.replica.transfer_target(home).map(|to| (to, true)),
        None => slot.replica.rebalance_target().map(|to| (to, false)),
    }
}

/// The group's workload home, when leadership follows the workload and that node may lead
/// (this one, or another voter).
fn workload_home(slot: &GroupSlot, follow_workload: bool) -> Option<u64> {
    let raft = slot.replica.raft();
    let may_lead = |node: &u64| *node == raft.id() || raft.membership().role(*node) == Some(crate::raft::Role::Voter);
    slot.workload.home().filter(|home| follow_workload && may_lead(home))
}
