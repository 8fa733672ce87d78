//! Counts of the work a shard runtime does, in units that do not depend on the machine:
//! loop rounds, ticks, log writes, timers armed, tasks spawned, and the Raft messages it
//! sends by kind. They make the cost of a command visible (a lone proposal on a 3-node
//! group should cost each node one log write, and the leader one append with entries and
//! one commit notice per follower, answered once) and let deterministic tests pin it, so
//! a regression fails a test rather than a benchmark.
//!
//! Plain `Cell`s shared through an `Rc` on the runtime's own thread: the runtime counts,
//! anything else on the shard (tests, a metrics scrape) reads whenever it likes.

use std::cell::Cell;

use conclave_proto::conclave::raft::v1::{Message, MessageType};

/// Declares [`ShardCounters`] (cells the runtime bumps) and [`CounterValues`] (a copy of
/// them at one moment) with the same fields.
macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// The counters of one shard runtime. All counts are totals since it was built.
        #[derive(Debug, Default)]
        pub struct ShardCounters {
            $($(#[doc = $doc])* pub $name: Cell<u64>,)*
        }

        /// Values of [`ShardCounters`] at one moment; `after.since(&before)` is the work
        /// done in between.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct CounterValues {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl ShardCounters {
            /// A copy of the current values.
            pub fn snapshot(&self) -> CounterValues {
                CounterValues { $($name: self.$name.get(),)* }
            }
        }

        impl CounterValues {
            /// The work done between `earlier` and `self`.
            pub fn since(&self, earlier: &CounterValues) -> CounterValues {
                CounterValues { $($name: self.$name.wrapping_sub(earlier.$name),)* }
            }

            /// The sum of `self` and `other` (e.g. over the nodes of a cluster).
            pub fn plus(&self, other: &CounterValues) -> CounterValues {
                CounterValues { $($name: self.$name.wrapping_add(other.$name),)* }
            }
        }
    };
}

counters! {
    /// Turns of the shard loop (each handles everything that arrived since the last).
    rounds,
    /// Raft ticks the loop ran.
    ticks,
    /// Replica-ticks: ticks handed to a group's replica.
    replica_ticks,
    /// Durable writes submitted to the log (one per round with anything to persist).
    log_writes,
    /// Group writes inside those (a round's write covers every group that had entries).
    group_writes,
    /// Timers the loop armed (its tick timer is armed once and moved, not re-created).
    timers_armed,
    /// Tasks the runtime spawned (snapshot saves).
    tasks_spawned,
    /// Bytes of the snapshots this shard took (encoded state machines and configurations).
    snapshot_bytes,
    /// Proposals handed to a leader replica on this shard (local or forwarded).
    proposals,
    /// Leadership transfers a leader here started toward its group's workload home (the
    /// node most of the group's requests came through, `RuntimeConfig::follow_workload`).
    workload_transfers,
    /// Reads (and watches' first reads) a follower or observer here served under a lease
    /// from its leader, without asking the leader (`raft::Config::follower_leases`).
    follower_lease_reads,
    /// Proposals this shard forwarded to a leader elsewhere and answered with the result
    /// the leader sent, before applying the entry here.
    forwarded_answered_by_leader,
    /// `MessageBatch`es sent to peers (one per peer per flush with anything for it).
    batches_sent,
    /// Appends carrying entries.
    appends_with_entries,
    /// Appends that only tell an in-sync follower the commit index (answered only to refuse).
    commit_notices,
    /// Times a leader held back its commit notices (`raft::Config::hold_commit_notices`):
    /// the next append carried the commit index, or a notice went after the delay.
    commit_notices_held,
    /// Other appends without entries (probes).
    empty_appends,
    append_responses,
    heartbeats,
    heartbeat_responses,
    /// Every other Raft message (votes, reads, snapshots, transfers).
    other_messages,
    /// Raft messages received and dropped as traffic of another replica incarnation (late
    /// messages of a replica deleted before its node joined the group again).
    incarnation_drops,
}

impl ShardCounters {
    pub(super) fn add(cell: &Cell<u64>, n: u64) {
        cell.set(cell.get().wrapping_add(n));
    }

    /// Counts one Raft message about to be sent.
    pub(super) fn count_message(&self, msg: &Message) {
        let cell = match MessageType::try_from(msg.msg_type) {
            Ok(MessageType::Append) if !msg.entries.is_empty() => &self.appends_with_entries,
            Ok(MessageType::Append) if msg.commit_only => &self.commit_notices,
            Ok(MessageType::Append) => &self.empty_appends,
            Ok(MessageType::AppendResponse) => &self.append_responses,
            Ok(MessageType::Heartbeat) => &self.heartbeats,
            Ok(MessageType::HeartbeatResponse) => &self.heartbeat_responses,
            _ => &self.other_messages,
        };
        Self::add(cell, 1);
    }
}

impl CounterValues {
    /// Raft messages of every kind.
    pub fn messages(&self) -> u64 {
        self.appends_with_entries
            + self.commit_notices
            + self.empty_appends
            + self.append_responses
            + self.heartbeats
            + self.heartbeat_responses
            + self.other_messages
    }
}
