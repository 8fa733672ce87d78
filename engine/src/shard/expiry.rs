//! Barriers that let sessions expire when nothing else reaches the state machine: session
//! expiry is decided by the timestamps of applied entries, so a quiet leader proposes a
//! barrier once a session's deadline has passed (at most once per `expiry_check`), and a
//! loop held up (a stall) credits every session with the pause before anything that queued
//! up meanwhile is applied.

use std::time::Duration;

use crate::sm;

use super::api::LogStore;
use super::clock::micros;
use super::runtime::ShardRuntime;

impl<L: LogStore> ShardRuntime<L> {
    /// A leader's tick: a barrier when a session of the group is past its deadline and
    /// the last barrier is at least `expiry_check` old.
    pub(super) fn expiry_tick(&mut self, group: u32, now_ms: u64) {
        let now_micros = self.now_micros();
        let Some(slot) = self.groups.get_mut(group) else { return };
        let replica = &mut slot.replica;
        // Session expiry is decided by applied timestamps: with no traffic, the leader
        // proposes a barrier once a session's deadline has passed so expiry happens.
        let due = replica.next_session_deadline_ms().is_some_and(|d| d <= now_ms);
        let last = slot.last_expiry_barrier;
        if due && last.is_none_or(|t| now_micros.saturating_sub(t) >= micros(self.cfg.expiry_check)) {
            slot.last_expiry_barrier = Some(now_micros);
            replica.propose(&sm::command::leader_barrier(now_ms), Box::new(|_| {}));
        }
    }

    /// The loop was held up for `paused` (its tick that late): no keep-alive reached the
    /// state machines meanwhile, so each group led here that has sessions proposes, ahead
    /// of everything that queued up, a barrier crediting every session with that time.
    /// (Groups without sessions have nothing to credit: proposing in every group would wake
    /// every quiet one, and with many groups cause the next stall.)
    pub(super) fn credit_pause(&mut self, paused: Duration) {
        let now_ms = (self.clock)();
        let paused_ms = u64::try_from(paused.as_millis()).unwrap_or(u64::MAX);
        tracing::info!(node = self.cfg.node_id, paused_ms, "crediting sessions with a pause of the shard loop");
        for (group, replica) in self.groups.replicas_mut().filter(|(_, r)| r.is_leader() && !r.state_machine().sessions().is_empty()) {
            self.schedule.touch(group);
            replica.propose(&sm::command::pause_barrier(now_ms, paused_ms), Box::new(|_| {}));
        }
    }
}
