//! Which groups of a shard need the loop's attention, so that an idle group costs nothing:
//!
//! - *awake* groups are ticked every tick (their Raft timers run: a leader heartbeats, a
//!   follower counts down to an election, a read waits for its confirmation);
//! - quiet groups (quiesced Raft, nothing waiting) are not ticked at all; a quiet group
//!   that still has a check due later (a leader's rebalancing, a session deadline) sleeps
//!   on a timer keyed by the tick it is due at;
//! - *dirty* groups are those touched since the loop last drained Raft output (a request,
//!   a peer message, a tick, a durable write): `process_ready` visits only them, and
//!   decides again afterwards whether each is awake or quiet.
//!
//! Every set is ordered by group id, so rounds stay deterministic.

use std::collections::{BTreeMap, BTreeSet};

use super::api::Request;

/// The awake set, the timers of quiet groups, and the dirty set of one shard.
#[derive(Debug, Default)]
pub(super) struct Schedule {
    awake: BTreeSet<u32>,
    /// (tick, group) of every quiet group with a check due, and each such group's tick.
    timers: BTreeSet<(u64, u32)>,
    timer_of: BTreeMap<u32, u64>,
    dirty: BTreeSet<u32>,
    /// Where the next partial take of the dirty set starts (see `take_dirty`).
    dirty_cursor: u32,
}

impl Schedule {
    /// Marks `group` touched: `process_ready` looks at it in this round.
    pub(super) fn touch(&mut self, group: u32) {
        self.dirty.insert(group);
    }

    /// Takes at most `most` of the groups touched since they were last taken: all of them in
    /// group order when they are that few; otherwise the next `most` in group order from
    /// where the previous partial take ended, wrapping around (so every group is taken in
    /// turn however many are touched again meanwhile).
    pub(super) fn take_dirty(&mut self, most: usize) -> Vec<u32> {
        if self.dirty.len() <= most {
            self.dirty_cursor = 0;
            return std::mem::take(&mut self.dirty).into_iter().collect();
        }
        let mut taken: Vec<u32> = self.dirty.range(self.dirty_cursor..).take(most).copied().collect();
        let wrapped = most - taken.len();
        taken.extend(self.dirty.range(..self.dirty_cursor).take(wrapped));
        for group in &taken {
            self.dirty.remove(group);
        }
        self.dirty_cursor = taken.last().map_or(0, |g| g.saturating_add(1));
        taken
    }

    pub(super) fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// `group` needs every tick.
    pub(super) fn wake(&mut self, group: u32) {
        self.cancel_timer(group);
        self.awake.insert(group);
    }

    /// `group` is quiet; `due` is the tick of its next check, if it has one.
    pub(super) fn sleep(&mut self, group: u32, due: Option<u64>) {
        self.awake.remove(&group);
        if self.timer_of.get(&group).copied() == due {
            return;
        }
        self.cancel_timer(group);
        if let Some(tick) = due {
            self.timers.insert((tick, group));
            self.timer_of.insert(group, tick);
        }
    }

    /// `group` left the shard.
    pub(super) fn forget(&mut self, group: u32) {
        self.awake.remove(&group);
        self.cancel_timer(group);
        self.dirty.remove(&group);
    }

    fn cancel_timer(&mut self, group: u32) {
        if let Some(tick) = self.timer_of.remove(&group) {
            self.timers.remove(&(tick, group));
        }
    }

    /// The groups to tick at tick `now`: every awake one and every quiet one whose timer is
    /// due (its timer is spent: it is scheduled again once it has been looked at).
    pub(super) fn due(&mut self, now: u64) -> Vec<u32> {
        let mut due: Vec<u32> = self.awake.iter().copied().collect();
        while let Some(&(tick, group)) = self.timers.first() {
            if tick > now {
                break;
            }
            self.timers.pop_first();
            self.timer_of.remove(&group);
            due.push(group);
        }
        due
    }

    /// The tick of the earliest timer of a quiet group, if any.
    pub(super) fn next_timer(&self) -> Option<u64> {
        self.timers.first().map(|&(tick, _)| tick)
    }

    /// Groups ticked every tick.
    pub(super) fn awake_count(&self) -> usize {
        self.awake.len()
    }

    /// Quiet groups waiting on a timer.
    pub(super) fn timer_count(&self) -> usize {
        self.timers.len()
    }
}

impl Request {
    /// The group a request addresses, if it addresses one (peer messages name theirs
    /// inside, per Raft message).
    pub(super) fn group(&self) -> Option<u32> {
        match self {
            Request::Propose { group, .. }
            | Request::Read { group, .. }
            | Request::Watch { group, .. }
            | Request::Unwatch { group, .. }
            | Request::AddReplica { group, .. }
            | Request::RemoveReplica { group, .. }
            | Request::ChangeMembership { group, .. } => Some(*group),
            Request::Peer { .. }
            | Request::PeerFrame { .. }
            | Request::Stats { .. }
            | Request::HandOffLeadership { .. }
            | Request::PeerDown { .. }
            | Request::Shutdown => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn awake_groups_tick_every_time_and_quiet_ones_only_when_due() {
        let mut s = Schedule::default();
        s.wake(1);
        s.wake(2);
        s.sleep(2, Some(5));
        s.sleep(3, None);
        assert_eq!(s.due(1), vec![1]);
        assert_eq!(s.due(5), vec![1, 2]);
        // A spent timer does not fire again until the group is scheduled again.
        assert_eq!(s.due(6), vec![1]);
        s.sleep(1, Some(7));
        s.sleep(1, Some(9));
        assert_eq!(s.next_timer(), Some(9));
        assert_eq!(s.due(8), Vec::<u32>::new());
        assert_eq!(s.timer_count(), 1);
        s.wake(1);
        assert_eq!((s.awake_count(), s.timer_count()), (1, 0));
        s.forget(1);
        assert_eq!(s.next_timer(), None);
        assert_eq!(s.due(100), Vec::<u32>::new());
    }

    #[test]
    fn dirty_groups_are_taken_once_in_order() {
        let mut s = Schedule::default();
        s.touch(9);
        s.touch(3);
        s.touch(9);
        assert!(s.has_dirty());
        assert_eq!(s.take_dirty(10), vec![3, 9]);
        assert!(!s.has_dirty());
    }

    #[test]
    fn partial_takes_go_round_the_dirty_groups_in_turn() {
        let mut s = Schedule::default();
        for g in 1..=5 {
            s.touch(g);
        }
        assert_eq!(s.take_dirty(2), vec![1, 2]);
        // Groups touched again meanwhile wait for their turn.
        s.touch(1);
        s.touch(6);
        assert_eq!(s.take_dirty(2), vec![3, 4]);
        assert_eq!(s.take_dirty(2), vec![5, 6]);
        assert_eq!(s.take_dirty(2), vec![1]);
        for g in [2, 8, 9] {
            s.touch(g);
        }
        assert_eq!(s.take_dirty(2), vec![2, 8]);
        s.touch(3);
        s.touch(4);
        // From where the last partial take ended, then round to the start.
        assert_eq!(s.take_dirty(2), vec![9, 3]);
        assert_eq!(s.take_dirty(2), vec![4]);
        assert!(!s.has_dirty());
    }
}
