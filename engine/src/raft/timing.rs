//! Time for one replica: ticks (election and heartbeat timers, check-quorum, transfer
//! timeouts), the caller's monotonic clock and loop tick (lease reads, heartbeats aligned
//! across the caller's groups), quiescence of idle groups and waking them, and the
//! randomized election timer.

use conclave_proto::conclave::raft::v1::MessageType;
use rand::Rng;

use super::membership::Role;
use super::node::RaftNode;
use super::ready::{RaftEvent, RaftRole};

impl RaftNode {
    /// True while this replica is quiesced (see `Config::quiesce`).
    pub fn is_quiesced(&self) -> bool {
        self.quiesced
    }

    /// Ends quiescence: a follower restarts its election timer, a leader heartbeats again.
    /// Call it when the leader's node looks dead (e.g. its connection failed).
    pub fn wake(&mut self) {
        if !self.quiesced {
            return;
        }
        self.quiesced = false;
        if self.role == RaftRole::Leader {
            // A quiet leader may not have been ticked (a caller skips quiet replicas): no
            // earlier heartbeat round may vouch for a lease any more.
            self.reads.forget_lease_rounds();
            self.heartbeat_elapsed = self.cfg.heartbeat_ticks;
            self.election_elapsed = 0;
            for progress in self.progress.values_mut() {
                progress.recent_active = true;
            }
        } else {
            self.reset_election_timer();
        }
    }

    /// Wakes a quiet follower because its leader's node failed (its connection failed, or
    /// it fell silent). All of the group's followers are woken by the same failure at about
    /// the same time, so with the usual randomized timeouts they often campaign together and
    /// split the vote, or ask a follower whose own wake restarted its timer (it refuses votes
    /// for an election timeout after hearing from a leader). Here one successor, the same on
    /// every node (a voter other than the lost leader, picked by group id so successions
    /// spread over the nodes), campaigns after `election_ticks + 1` ticks, just past the
    /// others' refusal window; the others wait a randomized timeout in the upper half of the
    /// usual range. Timing only: votes are asked, granted and counted as always.
    pub fn wake_for_leader_loss(&mut self) {
        if !self.quiesced {
            return;
        }
        let lost = self.leader;
        self.wake();
        if self.role != RaftRole::Follower {
            return;
        }
        let candidates = || self.membership().members().filter(|(id, role)| *role == Role::Voter && *id != lost).map(|(id, _)| id);
        let count = candidates().count();
        if count == 0 {
            return;
        }
        let successor = candidates().nth(self.cfg.group_id as usize % count);
        let base = self.cfg.election_ticks;
        self.randomized_election_ticks = if successor == Some(self.cfg.id) {
            base + 1
        } else {
            self.rng.random_range((base + base / 2).max(base + 2)..(2 * base).max(base + 3))
        };
    }

    /// Feeds the caller's monotonic clock (any unit, microseconds in the shard runtime; the
    /// unit of `Config::lease_micros`). A reading earlier than the last one is ignored. With
    /// lease reads on, call it with a fresh reading before every input, `read_index` above
    /// all: a lease is trusted only while this clock says it runs, and a heartbeat round is
    /// stamped with it when created.
    pub fn set_now(&mut self, now: u64) {
        self.now = self.now.max(now);
    }

    /// Feeds the tick count of the caller's loop, shared by every group the loop runs; call
    /// it before [`RaftNode::tick`]. A leader fed it heartbeats when the count crosses a
    /// multiple of `heartbeat_ticks` rather than after `heartbeat_ticks` of its own ticks,
    /// so all the loop's leaders heartbeat at the same tick and their heartbeats to one
    /// peer leave together: one batch per peer per heartbeat interval, however many groups
    /// are awake. Without it each leader keeps the phase of its election.
    pub fn set_shard_tick(&mut self, tick: u64) {
        self.shard_tick = Some(tick);
    }

    /// Whether a leader's heartbeat is due at this tick (see [`RaftNode::set_shard_tick`]).
    fn heartbeat_due(&self) -> bool {
        let interval = self.cfg.heartbeat_ticks;
        // Past a whole interval: a woken leader (see `wake`), or ticks the caller skipped.
        if self.heartbeat_elapsed > interval {
            return true;
        }
        match self.shard_tick {
            Some(tick) => tick / u64::from(interval) > self.heartbeat_period,
            None => self.heartbeat_elapsed >= interval,
        }
    }

    /// The heartbeat interval the caller's loop is in (0 if it never fed its tick).
    pub(super) fn current_heartbeat_period(&self) -> u64 {
        self.shard_tick.map_or(0, |tick| tick / u64::from(self.cfg.heartbeat_ticks))
    }

    /// The clock reading last fed by [`RaftNode::set_now`].
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        if self.tick_leases() {
            self.maybe_commit();
        }
        if self.quiesced {
            self.leader_ticks += u64::from(self.role == RaftRole::Leader);
            return;
        }
        if self.role == RaftRole::Leader {
            self.tick_leader();
        } else {
            self.election_elapsed = self.election_elapsed.saturating_add(1);
            if self.election_elapsed >= self.cfg.election_ticks {
                self.startup_quiet = false;
            }
            if self.election_elapsed >= self.randomized_election_ticks && self.can_campaign() {
                self.election_elapsed = 0;
                self.start_election(false);
            }
        }
    }

    fn tick_leader(&mut self) {
        self.leader_ticks += 1;
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.transferee != 0 {
            self.transfer_elapsed += 1;
            if self.transfer_elapsed >= self.cfg.election_ticks {
                let to = std::mem::take(&mut self.transferee);
                self.out_events.push(RaftEvent::TransferAborted { to });
            }
        }
        if self.election_elapsed >= self.cfg.election_ticks {
            self.election_elapsed = 0;
            if self.cfg.check_quorum && !self.quorum_recently_active() {
                let term = self.term;
                self.become_follower(term, 0);
                return;
            }
        }
        if self.heartbeat_due() {
            self.heartbeat_elapsed = 0;
            self.heartbeat_period = self.current_heartbeat_period();
            let read = self.reads.take_read_since_heartbeat();
            let idle = !read && self.is_idle();
            self.broadcast_heartbeat();
            if idle {
                for msg in self.out_messages.iter_mut().filter(|m| m.msg_type == MessageType::Heartbeat as i32) {
                    msg.quiesce = true;
                }
                self.quiesced = true;
            }
        }
    }

    /// Leader: may the group go quiet? Every member holds the whole log, it is committed in
    /// this term, and nothing (reads, transfer) is in flight. (A read served since the last
    /// heartbeat also keeps it awake: see `tick_leader`.)
    fn is_idle(&self) -> bool {
        let last = self.log.last_index();
        self.cfg.quiesce
            && self.transferee == 0
            && self.reads.is_idle()
            && self.log.committed() == last
            && self.log.persisted() == last
            && self.log.term(last) == Some(self.term)
            && self.progress.values().all(|p| p.match_index == last && p.recent_active)
    }

    pub(super) fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        let base = self.cfg.election_ticks;
        self.randomized_election_ticks = self.rng.random_range(base..2 * base);
    }

    /// Voters may campaign; observers, witnesses and removed replicas may not, nor a voter
    /// whose caller is installing a snapshot: the caller replaces the log and state machine
    /// with it, so a log grown as leader meanwhile would be thrown away, with its commits.
    ///
    /// A voter of the committed configuration that a later, uncommitted one demotes or
    /// removes (a leader that changed its own role, then lost office before the change
    /// committed) may campaign too, its votes counted by the latest configuration as
    /// always: its log may be the only one long enough to win, and without it the group
    /// could be left with no candidate at all. Elected, it leads until the change commits,
    /// then steps down, as the leader that proposed the change would have.
    pub(super) fn can_campaign(&self) -> bool {
        if self.is_installing() {
            return false;
        }
        if self.member_role() == Some(Role::Voter) {
            return true;
        }
        let committed = self.log.committed();
        self.latest_config_index() > committed && self.role_in(self.membership_at(committed)) == Some(Role::Voter)
    }
}
