//! What keeps an idle group cheap on a shard, on the runtime's side: after a group was
//! touched it is either kept awake (ticked every tick) or put to sleep, on a timer when a
//! quiet leader still has a check due (rebalancing, a session deadline); pings coalesced
//! per peer node, and the quiet groups led by a node that went silent (or whose connection
//! failed) woken so their followers elect again; a log line with the counts; and how long
//! the loop may sleep past its ticks when no group is awake.

use super::api::LogStore;
use super::clock::micros;
use super::runtime::ShardRuntime;

/// Ticks between two looks at whether the activity counts changed (then logged).
const ACTIVITY_LOG_TICKS: u64 = 100;

/// The most ticks the loop sleeps through while nothing is due (a bound, so the tick count
/// never falls far behind the clock and a missed wake-up cannot last).
const MAX_IDLE_TICKS: u64 = 100;

impl<L: LogStore> ShardRuntime<L> {
    /// Decides again, after `group` was touched and its output drained, whether it is
    /// ticked every tick or sleeps, and whether it may be due for a snapshot.
    pub(super) fn reschedule(&mut self, group: u32) {
        let Some(replica) = self.groups.replica(group) else {
            self.schedule.forget(group);
            self.groups.snapshot_candidates.remove(&group);
            return;
        };
        let (has_ready, leader) = (replica.has_ready(), replica.is_leader());
        let snapshot_due = self.cfg.snapshot_every > 0 && replica.snapshot_due(self.cfg.snapshot_every, self.cfg.snapshot_log_ratio);
        // A stopping node keeps trying to hand its leaderships on.
        let awake = replica.needs_ticks() || (self.handing_off && leader);
        if has_ready {
            self.schedule.touch(group);
        }
        if snapshot_due {
            self.groups.snapshot_candidates.insert(group);
        }
        if awake {
            self.schedule.wake(group);
            return;
        }
        let due = if leader { self.quiet_leader_due(group) } else { None };
        self.schedule.sleep(group, due);
    }

    /// The tick at which a quiet leader must be looked at again: its next rebalancing
    /// check (when its group has somewhere to go) or the next session deadline of
    /// its state machine (a barrier then lets the session expire).
    fn quiet_leader_due(&self, group: u32) -> Option<u64> {
        let slot = self.groups.get(group)?;
        let replica = &slot.replica;
        let mut due = None;
        if self.rebalance_due(slot) {
            let last = slot.last_rebalance;
            due = Some((last + self.cfg.rebalance_ticks).max(self.ticks + 1));
        } else if let Some(at) = self.home_forgotten_at(slot) {
            // Kept here by its workload: look again when a quiet spell makes it forget it.
            due = Some(at.max(self.ticks + 1));
        }
        if let Some(deadline_ms) = replica.next_session_deadline_ms() {
            let tick_ms = u64::try_from(self.cfg.tick.as_millis()).unwrap_or(u64::MAX).max(1);
            let at = self.ticks + deadline_ms.saturating_sub(self.now_ms()) / tick_ms + 1;
            due = Some(due.map_or(at, |d: u64| d.min(at)));
        }
        due
    }

    /// Once per tick: pings the peer nodes due one (one empty batch each, for all groups)
    /// and wakes the quiet groups led by peers that just went silent.
    /// With a `backlog` of requests left queued this round, no peer is reported silent: its
    /// pings may be waiting in the queue (a loop starved of CPU would otherwise wake the
    /// quiet groups of live peers, whose followers then elect for nothing).
    pub(super) fn tick_liveness(&mut self, backlog: bool) {
        let (ping, silent) = self.liveness.tick(self.ticks, !backlog);
        let from = self.cfg.node_id;
        // The ping rides in the batch the round sends the peer anyway (its groups'
        // heartbeats fall on the same tick, see `RaftNode::set_shard_tick`).
        for to in ping {
            self.outbox.ensure_batch(to);
        }
        for node in silent {
            let woken = self.wake_led_by(node);
            tracing::info!(node = from, peer = node, woken, "peer node silent for an election timeout; woke the quiet groups it leads");
        }
    }

    /// Something arrived from `node`.
    pub(super) fn peer_heard(&mut self, node: u64) {
        if self.liveness.heard(node, self.ticks) {
            let woken = self.wake_rebalancing_toward(node);
            tracing::info!(node = self.cfg.node_id, peer = node, woken, "peer node heard from again");
        }
    }

    /// The connection to `node` failed: the quiet groups it leads wake now (once per
    /// failure; a peer this shard does not watch wakes them every time).
    pub(super) fn peer_down(&mut self, node: u64) {
        let watched = self.cfg.liveness_peers.contains(&node);
        if self.liveness.down(node) || !watched {
            let woken = self.wake_led_by(node);
            tracing::info!(node = self.cfg.node_id, peer = node, woken, "peer connection failed; woke the quiet groups it leads");
        }
    }

    /// Wakes every quiet group whose known leader is `node`; returns how many. A walk over
    /// the shard's groups, once per failure of a node.
    fn wake_led_by(&mut self, node: u64) -> usize {
        let mut woken = 0;
        for (group, replica) in self.groups.replicas_mut() {
            if replica.raft().leader() == node && replica.raft().is_quiesced() {
                replica.raft_mut().wake_for_leader_loss();
                self.schedule.touch(group);
                woken += 1;
            }
        }
        woken
    }

    /// In how many ticks the loop must tick next: 1 while any group is awake (or a
    /// snapshot save, a snapshot or a removal waits for a round); otherwise the first tick at which
    /// something is due — a quiet group's timer, a ping or a peer's silence, a forwarded
    /// request's expiry, a change of the activity counts to log — at most
    /// [`MAX_IDLE_TICKS`]. Requests wake the loop whenever they arrive.
    pub(super) fn ticks_until_due(&self) -> u64 {
        if self.schedule.awake_count() > 0
            || self.groups.has_snapshot_saves()
            || !self.groups.snapshot_candidates.is_empty()
            || !self.removals.is_empty()
        {
            return 1;
        }
        let mut due = self.ticks + MAX_IDLE_TICKS;
        let mut at = |tick: Option<u64>| {
            if let Some(tick) = tick {
                due = due.min(tick);
            }
        };
        at(self.schedule.next_timer());
        at(self.liveness.next_due(self.ticks));
        if self.activity() != self.last_activity {
            at(Some(self.next_activity_check));
        }
        if let Some(expiry) = self.forwarded.next_expiry(self.cfg.forward_timeout, self.cfg.membership_timeout) {
            let left = expiry.saturating_sub(self.now_micros());
            // Rounded down: the loop wakes at the last tick before the bound, then ticks on.
            at(Some(self.ticks + left / micros(self.cfg.tick).max(1)));
        }
        due.saturating_sub(self.ticks).max(1)
    }

    /// (groups, awake, silent peers) now.
    fn activity(&self) -> (usize, usize, usize) {
        (self.groups.len(), self.schedule.awake_count(), self.liveness.silent_count())
    }

    /// Every [`ACTIVITY_LOG_TICKS`] ticks, logs the shard's group counts if they changed:
    /// hosted, awake (ticked every tick), quiet, quiet with a timer, silent peers.
    pub(super) fn log_activity(&mut self) {
        if self.ticks < self.next_activity_check {
            return;
        }
        self.next_activity_check = self.ticks + ACTIVITY_LOG_TICKS;
        let (groups, awake, silent) = self.activity();
        if (groups, awake, silent) == self.last_activity {
            return;
        }
        self.last_activity = (groups, awake, silent);
        let quiet = groups.saturating_sub(awake);
        let timers = self.schedule.timer_count();
        tracing::info!(
            target: "conclave::activity",
            node = self.cfg.node_id,
            shard = self.cfg.shard,
            groups,
            awake,
            quiet,
            timers,
            silent_peers = silent,
            "group activity"
        );
    }
}
