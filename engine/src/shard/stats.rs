//! What one shard counts about itself for the node's metrics: duration histograms of its
//! durable writes and snapshot saves ([`StorageStats`], kept by [`ShardStorage`] and read by
//! the server on the same shard), and a point-in-time view of every group it hosts
//! ([`RuntimeStats`], answered to [`Request::Stats`]). Plain cells, no atomics: each shard
//! keeps its own numbers and the node adds them up when it is scraped.
//!
//! [`ShardStorage`]: super::ShardStorage
//! [`Request::Stats`]: super::Request::Stats

use std::cell::RefCell;
use std::time::Duration;

use crate::raft::RaftRole;

use super::api::LogStore;
use super::counters::CounterValues;
use super::runtime::ShardRuntime;

/// Upper bounds (seconds) of the duration histograms: 100 µs doubling up to ~3.3 s, which
/// brackets an O_DSYNC write on a fast disk as well as an fsync on a slow one (and puts a
/// bucket boundary near 10 ms for alerting on the flush p99).
pub const DURATION_BUCKETS: [f64; 16] =
    [0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256, 0.0512, 0.1024, 0.2048, 0.4096, 0.8192, 1.6384, 3.2768];

/// A histogram of durations over [`DURATION_BUCKETS`] (plus +Inf), mergeable across shards.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DurationHistogram {
    /// Observations per bucket (not cumulative); the last one is +Inf.
    pub counts: [u64; DURATION_BUCKETS.len() + 1],
    pub count: u64,
    pub sum_seconds: f64,
}

impl DurationHistogram {
    pub fn observe(&mut self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = DURATION_BUCKETS.iter().position(|bound| seconds <= *bound).unwrap_or(DURATION_BUCKETS.len());
        self.counts[bucket] += 1;
        self.count += 1;
        self.sum_seconds += seconds;
    }

    /// Adds `other`'s observations to this one's.
    pub fn merge(&mut self, other: &DurationHistogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum_seconds += other.sum_seconds;
    }

    /// (upper bound, observations in that bucket) for every bucket, the last one's bound
    /// being `f64::MAX` (+Inf); not cumulative, as `prometheus-client` encodes them.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        DURATION_BUCKETS.iter().copied().chain(std::iter::once(f64::MAX)).zip(self.counts.iter().copied()).collect()
    }
}

/// Timings of a shard's storage, shared (`Rc`) between its [`ShardStorage`] and the server.
///
/// [`ShardStorage`]: super::ShardStorage
#[derive(Debug, Default)]
pub struct StorageStats {
    /// From submitting a round's writes to the log until they are durable.
    flush: RefCell<DurationHistogram>,
    /// From starting a snapshot save until it is durable.
    snapshot_save: RefCell<DurationHistogram>,
    /// Writes or snapshot saves that failed.
    failures: std::cell::Cell<u64>,
}

impl StorageStats {
    pub fn record_flush(&self, elapsed: Duration, ok: bool) {
        self.flush.borrow_mut().observe(elapsed);
        self.count_failure(ok);
    }

    pub fn record_snapshot_save(&self, elapsed: Duration, ok: bool) {
        self.snapshot_save.borrow_mut().observe(elapsed);
        self.count_failure(ok);
    }

    fn count_failure(&self, ok: bool) {
        if !ok {
            self.failures.set(self.failures.get() + 1);
        }
    }

    pub fn flush(&self) -> DurationHistogram {
        self.flush.borrow().clone()
    }

    pub fn snapshot_save(&self) -> DurationHistogram {
        self.snapshot_save.borrow().clone()
    }

    pub fn failures(&self) -> u64 {
        self.failures.get()
    }
}

/// One hosted group as its replica sees it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStats {
    pub group: u32,
    pub role: RaftRole,
    /// The leader this replica knows of (0: none).
    pub leader: u64,
    pub term: u64,
    pub commit_index: u64,
    /// The state machine's applied index.
    pub applied_index: u64,
    /// Proposals appended here as leader and waiting for their entry to apply.
    pub pending_proposals: u64,
    /// A witness runs no state machine: the counts below are zero.
    pub witness: bool,
    pub elections: u64,
    pub candidates: u64,
    pub sessions: u64,
    /// Watches of this replica's elections.
    pub watchers: u64,
    /// Leader changes of the group's elections since the partition began: the sum of
    /// their term numbers (elections are never deleted, so it only grows).
    pub election_term_changes: u64,
}

/// A shard's groups at one instant, plus what waits on other nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuntimeStats {
    pub groups: Vec<GroupStats>,
    /// Proposals forwarded to leaders on other nodes and not answered yet.
    pub forwarded_pending: u64,
    /// The runtime's work counters (totals since it started).
    pub work: CounterValues,
}

impl<L: LogStore> ShardRuntime<L> {
    /// The shard's groups as they are now (answers [`Request::Stats`](super::Request::Stats)).
    pub(super) fn stats(&self) -> RuntimeStats {
        let groups = self
            .groups
            .replicas()
            .map(|(group, replica)| {
                let raft = replica.raft();
                let sm = replica.state_machine();
                let witness = replica.is_witness();
                let (mut candidates, mut terms) = (0, 0);
                if !witness {
                    for primitive in sm.registry().iter() {
                        candidates += primitive.election().candidates().len() as u64;
                        terms += primitive.election().term();
                    }
                }
                let (elections, sessions) = if witness { (0, 0) } else { (sm.registry().len() as u64, sm.sessions().len() as u64) };
                GroupStats {
                    group,
                    role: raft.role(),
                    leader: raft.leader(),
                    term: raft.term(),
                    commit_index: raft.commit_index(),
                    applied_index: sm.last_applied(),
                    pending_proposals: replica.pending_proposals() as u64,
                    witness,
                    elections,
                    candidates,
                    sessions,
                    watchers: replica.watcher_count() as u64,
                    election_term_changes: terms,
                }
            })
            .collect();
        RuntimeStats { groups, forwarded_pending: self.forwarded.pending(), work: self.counters.snapshot() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_bucket_merge_and_accumulate() {
        let mut a = DurationHistogram::default();
        a.observe(Duration::from_micros(50));
        a.observe(Duration::from_millis(5));
        a.observe(Duration::from_secs(10));
        let mut b = DurationHistogram::default();
        b.observe(Duration::from_micros(100));
        a.merge(&b);
        assert_eq!(a.count, 4);
        let buckets = a.buckets();
        assert_eq!(buckets.len(), DURATION_BUCKETS.len() + 1);
        assert_eq!(buckets[0], (0.0001, 2), "50 µs and exactly 100 µs fall in the first bucket");
        assert_eq!(buckets.iter().find(|(bound, _)| *bound == 0.0064).unwrap().1, 1, "5 ms");
        assert_eq!(*buckets.last().unwrap(), (f64::MAX, 1), "10 s is past every finite bound");
        assert_eq!(buckets.iter().map(|(_, n)| n).sum::<u64>(), a.count);
        assert!((a.sum_seconds - 10.005_15).abs() < 1e-9, "{}", a.sum_seconds);
    }
}
