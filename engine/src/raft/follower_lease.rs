//! Follower reads under a lease (`Config::follower_leases`): a follower holding a lease
//! from its leader serves a read itself, at its own last log index, without asking the
//! leader for a read index. What makes that linearizable:
//! - **Grant.** A follower asks with its read batches (and renews before the lease runs
//!   out). The leader grants only while its own lease is valid (no other leader can be
//!   elected before that lease ends, see `RaftNode::lease_valid`), only to a non-witness
//!   member that holds everything committed, and for no longer than its own lease has
//!   left. The follower counts the lease from when it *sent* the request, on its own clock,
//!   less 1/8 for the drift between clocks; the leader counts it from when it granted it.
//!   So the follower's lease ends, in real time, before the leader stops counting it.
//! - **Commit.** While a follower's lease may run, the leader commits an entry only once
//!   that follower holds it too. Every write acknowledged before a lease read began is
//!   therefore in the follower's log, at or below the index the read waits for.
//! - **New leaders.** A lease of an earlier leader may still run when a new leader is
//!   elected without waiting out the old leader's lease: after a leadership transfer (the
//!   target campaigns at once) and when the old leader itself campaigns again (after it
//!   stepped down or restarted; its followers vote for it at once). So for an election
//!   timeout, counted in ticks (which never run ahead of real time), after receiving a
//!   TimeoutNow, after restarting, and after granting a lease itself, a replica that
//!   becomes leader commits only what every member that may hold a lease holds. The leader
//!   that sent the TimeoutNow is not waited for: it left the follower role before it led,
//!   and a replica serves no follower lease read once it did (a node stopping gracefully
//!   hands its leaderships over, and its successors must not wait for it). Any other
//!   election happens after the old leader's lease, and so every lease it granted, ended.
//!
//! A follower drops its lease when its leader or term changes, and serves lease reads only
//! while its own configuration lists it as a voter or observer: one removed by an entry
//! committed while its lease ran holds that entry, and stops.

use std::collections::BTreeMap;

use super::membership::Role;
use super::node::RaftNode;
use super::ready::{RaftRole, ReadState};

/// Both sides of follower read leases for one replica.
#[derive(Debug, Default)]
pub(super) struct FollowerLeases {
    /// Follower: the lease from the current leader runs until this clock reading (0: none).
    held_until: u64,
    /// Follower: a read was served under a lease with less than a quarter of a whole
    /// follower lease left; the next drain asks for a new one (an empty read batch).
    renew_due: bool,
    /// Follower: when it last asked for a lease (a read batch, or a renewal), while no grant
    /// has answered since. A renewal is not asked again for an eighth of a lease after
    /// that, so the reads of the rounds before the grant comes back do not each send one.
    asked_at: Option<u64>,
    /// Leader: members that may hold a lease it granted, until this clock reading (the
    /// leader's own clock).
    holders: BTreeMap<u64, u64>,
    /// Ticks left of an election timeout after this replica granted a lease.
    granted_ticks_left: u32,
    /// Ticks left during which a lease of an earlier leader may run (after a restart or a
    /// TimeoutNow); a replica becoming leader carries the larger of the two into `window`.
    foreign_ticks_left: u32,
    /// Leader: ticks left during which every member that may hold a lease must hold an
    /// entry before it commits.
    window: u32,
    /// The leader that handed leadership to this replica (TimeoutNow), exempt from the
    /// window: it left the follower role before, so it serves no follower lease reads.
    /// A node stopping gracefully hands its leaderships over; its successors must not wait
    /// for it.
    handed_by: u64,
    /// Reads this replica served under a follower lease (for the caller's metrics).
    reads_served: u64,
}

impl FollowerLeases {
    /// Forgets the lease held from a leader (its leader or term changed).
    pub(super) fn drop_held(&mut self) {
        self.held_until = 0;
        self.renew_due = false;
        self.asked_at = None;
    }
}

impl RaftNode {
    /// Follower: serves a read under its lease if it holds a valid one, at its last log
    /// index (every write acknowledged before now is at or below it); otherwise hands the
    /// read's context back.
    pub(super) fn try_follower_lease_read(&mut self, context: bytes::Bytes) -> Result<(), bytes::Bytes> {
        if !self.cfg.follower_leases || self.role != RaftRole::Follower || self.leader == 0 || self.is_installing() {
            return Err(context);
        }
        if !matches!(self.member_role(), Some(Role::Voter | Role::Observer)) || self.now >= self.leases.held_until {
            return Err(context);
        }
        if self.leases.held_until - self.now < self.follower_lease_length() / 4 && !self.lease_asked_lately() {
            self.leases.renew_due = true;
        }
        self.leases.reads_served += 1;
        let index = self.log.last_index();
        self.reads.push_ready(ReadState { index, context });
        Ok(())
    }

    /// Follower: a renewal is due (set only by a read served under a lease); takes it.
    pub(super) fn take_lease_renewal(&mut self) -> bool {
        std::mem::take(&mut self.leases.renew_due)
    }

    /// Follower: whether its read batches ask for a lease.
    pub(super) fn wants_follower_lease(&self) -> bool {
        self.cfg.follower_leases && matches!(self.member_role(), Some(Role::Voter | Role::Observer))
    }

    /// Follower: a read batch asking for a lease left now.
    pub(super) fn lease_asked(&mut self) {
        self.leases.asked_at = Some(self.now);
    }

    /// Follower: it asked for a lease less than an eighth of a lease ago, and no grant came
    /// back since (so a renewal is not asked again yet).
    fn lease_asked_lately(&self) -> bool {
        self.leases.asked_at.is_some_and(|at| self.now < at.saturating_add(self.follower_lease_length() / 8))
    }

    /// Follower: the leader granted a lease of `micros` on the batch sent at `sent_at`.
    pub(super) fn lease_granted(&mut self, sent_at: u64, micros: u64) {
        if !self.cfg.follower_leases || micros == 0 || self.role != RaftRole::Follower {
            return;
        }
        let micros = micros.min(self.follower_lease_length());
        self.leases.held_until = self.leases.held_until.max(sent_at.saturating_add(micros / 8 * 7));
        self.leases.asked_at = None;
    }

    /// Leader: the lease to grant `requester` now (0: none), recorded as held.
    pub(super) fn grant_lease(&mut self, requester: u64) -> u64 {
        if !self.cfg.follower_leases || self.role != RaftRole::Leader {
            return 0;
        }
        if !matches!(self.membership().role(requester), Some(Role::Voter | Role::Observer)) {
            return 0;
        }
        let holds_committed = self.progress.get(&requester).is_some_and(|p| p.match_index >= self.log.committed());
        let Some(lease_end) = self.lease_end().filter(|_| holds_committed) else { return 0 };
        let micros = lease_end.saturating_sub(self.now).min(self.follower_lease_length());
        if micros == 0 {
            return 0;
        }
        let until = self.leases.holders.entry(requester).or_insert(0);
        *until = (*until).max(self.now + micros);
        self.leases.granted_ticks_left = self.cfg.election_ticks;
        micros
    }

    /// A lease of an earlier leader may run for an election timeout from now: this replica
    /// restarted (`handed_by` 0), or leader `handed_by` told it to campaign at once.
    pub(super) fn note_foreign_leases(&mut self, handed_by: u64) {
        if self.cfg.follower_leases {
            self.leases.foreign_ticks_left = self.cfg.election_ticks;
            self.leases.handed_by = handed_by;
        }
    }

    /// On becoming leader: leases granted before may still run.
    pub(super) fn open_lease_window(&mut self) {
        self.leases.holders.clear();
        self.leases.window = self.leases.foreign_ticks_left.max(self.leases.granted_ticks_left);
        if self.cfg.deliberate_bugs.no_lease_window {
            self.leases.window = 0;
        }
    }

    /// At every tick: counts the windows down; a leader forgets holders whose lease ended.
    /// Returns true if the commit rule got looser (the caller retries committing).
    pub(super) fn tick_leases(&mut self) -> bool {
        if !self.cfg.follower_leases {
            return false;
        }
        let leases = &mut self.leases;
        leases.granted_ticks_left = leases.granted_ticks_left.saturating_sub(1);
        leases.foreign_ticks_left = leases.foreign_ticks_left.saturating_sub(1);
        if self.role != RaftRole::Leader {
            return false;
        }
        let window_ended = leases.window == 1;
        leases.window = leases.window.saturating_sub(1);
        let now = self.now;
        let before = leases.holders.len();
        leases.holders.retain(|_, until| *until > now);
        window_ended || leases.holders.len() < before
    }

    /// Leader: the highest index that every member whose lease may run holds (`u64::MAX`
    /// when none may).
    pub(super) fn lease_holders_match(&self) -> u64 {
        if !self.cfg.follower_leases || self.cfg.deliberate_bugs.commit_without_lease_holders {
            return u64::MAX;
        }
        let match_of = |member: u64| self.progress.get(&member).map_or(0, |p| p.match_index);
        let mut bound = u64::MAX;
        for (member, until) in &self.leases.holders {
            if *until > self.now {
                bound = bound.min(match_of(*member));
            }
        }
        if self.leases.window > 0 {
            let id = self.cfg.id;
            let exempt = self.leases.handed_by;
            for (_, _, membership) in &self.configs {
                for (member, role) in membership.members() {
                    if member != id && member != exempt && role != Role::Witness {
                        bound = bound.min(match_of(member));
                    }
                }
            }
        }
        bound
    }

    /// The longest follower lease granted (`Config::follower_lease_micros`, at most the
    /// leader's lease).
    fn follower_lease_length(&self) -> u64 {
        match self.cfg.follower_lease_micros {
            0 => self.cfg.lease_micros,
            micros => micros.min(self.cfg.lease_micros),
        }
    }

    /// Reads served under a follower lease since this replica started.
    pub fn follower_lease_reads(&self) -> u64 {
        self.leases.reads_served
    }
}
