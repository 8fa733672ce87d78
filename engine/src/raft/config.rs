//! Configuration of one Raft group replica: timing in ticks (and the lease in the caller's
//! monotonic clock), flow-control limits, optional features, and the fault-injection
//! switches used only by the simulation's "teeth" tests.

use super::error::RaftError;

/// Faults that deliberately break Raft safety. All false by default; only the simulation's
/// teeth tests turn them on, to prove the checkers catch each one.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeliberateBugs {
    /// Grant votes without checking that the candidate's log is at least as up to date.
    pub vote_for_stale_log: bool,
    /// Advance the commit index over entries of earlier terms by counting replicas alone.
    pub commit_old_term_by_count: bool,
    /// Acknowledge appended entries before they are persisted.
    pub ack_before_persist: bool,
    /// Answer a ReadIndex read without waiting for a quorum to confirm its heartbeat round.
    pub read_index_without_quorum: bool,
    /// Grant (pre-)votes while still hearing a live leader, ignoring the lease it holds.
    pub vote_inside_lease: bool,
    /// Trust a lease by counting leader ticks alone, not the monotonic clock, so a leader
    /// whose ticks lag (a stalled loop) trusts a lease that ran out in real time.
    pub lease_in_ticks: bool,
    /// Commit by quorum alone, not waiting for followers whose read lease may run.
    pub commit_without_lease_holders: bool,
    /// Let a new leader commit at once after a transfer or restart, though a follower
    /// lease of the previous leader may still run.
    pub no_lease_window: bool,
}

/// Settings of one replica. Time is measured in ticks of the caller's clock, except the
/// lease of lease reads, measured on the monotonic clock the caller feeds with
/// [`super::RaftNode::set_now`].
#[derive(Clone, Debug)]
pub struct Config {
    /// This replica's node id (never 0).
    pub id: u64,
    /// The group this replica belongs to.
    pub group_id: u32,
    /// Which replica of this node this is (see [`super::Membership::incarnation`]): 0 for a
    /// replica of the group's initial configuration; for a replica started to join the group,
    /// a value the node never used for this group before (the caller picks it, persists it
    /// with the replica, and asks the leader to add exactly this incarnation). Messages to
    /// another incarnation of this node are dropped.
    pub incarnation: u64,
    /// Minimum election timeout; the actual one is drawn from `[election_ticks, 2 * election_ticks)`.
    pub election_ticks: u32,
    /// Interval between a leader's heartbeats. Must be smaller than `election_ticks`.
    pub heartbeat_ticks: u32,
    /// Campaign in a pre-vote round first, so a partitioned node cannot disrupt the group.
    pub pre_vote: bool,
    /// A leader steps down when it has not heard from a quorum within an election timeout;
    /// followers that heard from a leader recently ignore vote requests.
    pub check_quorum: bool,
    /// Serve reads on the leader without a heartbeat round while it holds a lease: a quorum
    /// acknowledged a heartbeat round *sent* less than `lease_micros` ago on the monotonic
    /// clock (checked against the time of the read), and less than `election_ticks - 2`
    /// leader ticks ago. Followers refuse votes for `election_ticks` of their ticks after
    /// hearing from the leader, so no other leader can be elected meanwhile. Off by default.
    /// Requires `check_quorum` and `lease_micros`; the caller must call `set_now` before
    /// every input (a stale clock would let an expired lease be trusted).
    pub lease_reads: bool,
    /// Length of a lease in the units of the caller's monotonic clock (microseconds for the
    /// shard runtime). It must stay below the time followers refuse votes after hearing
    /// from the leader, `(election_ticks - 1)` ticks, by a margin for clock drift: see
    /// [`Config::safe_lease_micros`].
    pub lease_micros: u64,
    /// Followers serve reads themselves under a lease from the leader, without asking it
    /// for a read index each time (see `follower_lease.rs`). While a follower's lease may
    /// run, the leader commits an entry only once that follower holds it too. Off by
    /// default; requires `lease_reads`.
    pub follower_leases: bool,
    /// Longest follower lease the leader grants, in `lease_micros` units (0: as long as
    /// the leader's own lease). A follower that dies holding a lease stalls commits until
    /// the lease runs out; a shorter one bounds that stall and costs more renewals.
    pub follower_lease_micros: u64,
    /// Let idle groups go silent: once every member holds the whole committed log, the leader
    /// sends one last heartbeat marked `quiesce` and stops heartbeating; followers stop their
    /// election timers. Any message or proposal wakes the group. Off by default: the caller
    /// must then call `wake()` on groups whose leader's node stops answering (a failed
    /// connection), or a quiet group would not notice its leader died.
    pub quiesce: bool,
    /// Hold back commit notices: a commit index that moved is told to followers on the
    /// appends and heartbeats that go to them anyway, and to the others only when the
    /// caller calls [`super::RaftNode::flush_commit_notices`] (the shard runtime does a
    /// moment later, see `RuntimeConfig::commit_notice_delay`). Under load the next
    /// round's append carries it, so followers get one message per round instead of two.
    /// Off by default (and in the server unless `--commit-notice-delay-us` is set): notices
    /// leave with the drain in which the commit moved. The caller
    /// must flush whenever [`super::RaftNode::commit_notices_owed`] holds, or followers
    /// learn the commit only with the next heartbeat.
    pub hold_commit_notices: bool,
    /// Maximum entries in one append message.
    pub max_entries_per_message: usize,
    /// Maximum payload bytes in one append message (at least one entry is always sent).
    pub max_bytes_per_message: usize,
    /// Maximum append messages in flight to one follower.
    pub max_inflight_messages: usize,
    /// Maximum payload bytes in flight to one follower.
    pub max_inflight_bytes: usize,
    /// Maximum proposals (entries) accepted but not yet committed; more are refused.
    pub max_uncommitted_entries: usize,
    /// Fault injection for the simulation's teeth tests. Leave at the default.
    #[doc(hidden)]
    pub deliberate_bugs: DeliberateBugs,
}

impl Config {
    /// A configuration with the defaults for replica `id` of group `group_id`.
    pub fn new(id: u64, group_id: u32) -> Self {
        Config {
            id,
            group_id,
            incarnation: 0,
            election_ticks: 10,
            heartbeat_ticks: 2,
            pre_vote: true,
            check_quorum: true,
            lease_reads: false,
            lease_micros: 0,
            follower_leases: false,
            follower_lease_micros: 0,
            quiesce: false,
            hold_commit_notices: false,
            max_entries_per_message: 256,
            max_bytes_per_message: 1 << 20,
            max_inflight_messages: 64,
            max_inflight_bytes: 8 << 20,
            max_uncommitted_entries: 1 << 16,
            deliberate_bugs: DeliberateBugs::default(),
        }
    }

    /// The lease length for ticks of `tick_micros`: two ticks short of the election
    /// timeout (a follower's first tick may come at once after it heard the leader, and a
    /// heartbeat round is stamped when created, before it leaves), less 1/8 for the drift
    /// between the replicas' clocks. Followers count ticks, which lag real time but never
    /// run ahead of it, so they refuse votes at least `(election_ticks - 1) * tick_micros`
    /// after hearing a round, longer than any lease that round confirmed.
    pub fn safe_lease_micros(election_ticks: u32, tick_micros: u64) -> u64 {
        u64::from(election_ticks.saturating_sub(2)).saturating_mul(tick_micros) / 8 * 7
    }

    /// Checks the settings are consistent.
    pub fn validate(&self) -> Result<(), RaftError> {
        let bad = |why: &str| Err(RaftError::InvalidConfig(why.to_string()));
        if self.id == 0 {
            return bad("replica id must not be 0 (0 means \"none\")");
        }
        if self.heartbeat_ticks == 0 {
            return bad("heartbeat_ticks must be at least 1");
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return bad("election_ticks must be greater than heartbeat_ticks");
        }
        if self.lease_reads && !self.check_quorum {
            return bad("lease_reads requires check_quorum");
        }
        if self.lease_reads && self.lease_micros == 0 {
            return bad("lease_reads requires lease_micros (see Config::safe_lease_micros)");
        }
        if self.follower_leases && !self.lease_reads {
            return bad("follower_leases requires lease_reads");
        }
        if self.max_entries_per_message == 0 || self.max_inflight_messages == 0 {
            return bad("max_entries_per_message and max_inflight_messages must be at least 1");
        }
        if self.max_bytes_per_message == 0 || self.max_inflight_bytes == 0 {
            return bad("max_bytes_per_message and max_inflight_bytes must be at least 1");
        }
        if self.max_uncommitted_entries == 0 {
            return bad("max_uncommitted_entries must be at least 1");
        }
        Ok(())
    }
}
