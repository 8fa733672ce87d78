//! Routing: which shard of this node owns a group, which node leads each group (the
//! leader table every shard keeps from every shard's reports), which client partitions this
//! node serves (hosts and knows a leader of), and the retries of requests a leader change
//! interrupts.
//!
//! Requests a leader change interrupts are retried here, within a bounded budget, when
//! retrying is safe: anything refused with "not the leader" (nothing was done), and a
//! command whose outcome is unknown when the state machine deduplicates it (every command
//! but OpenSession carries a session and sequence number or is idempotent).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use conclave_engine::shard::{Committed, ReadTerm, ShardError, TermQuery};
use conclave_engine::sm::Command;
use conclave_proto::conclave::sm::v1::command::Operation;

use crate::routing::shard_of;

use super::calls::{WatchCallback, WatchGuard};
use super::mesh::MeshMessage;
use super::Dispatch;

/// How long a request keeps being retried through leader changes.
const RETRY_BUDGET: Duration = Duration::from_secs(5);
/// The longest pause between two retries.
const MAX_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// The leaders known for every group of the node (from every shard's reports).
pub type LeaderTable = Rc<RefCell<BTreeMap<u32, (u64, u64)>>>;

impl Dispatch {
    /// The shard of this node that owns `group`.
    pub(super) fn owner(&self, group: u32) -> usize {
        shard_of(group, self.shards as u32) as usize
    }

    /// Proposes a command to `group` wherever its shard and leader are, and waits until it
    /// is applied, retrying through leader changes where that is safe.
    pub async fn propose(&self, group: u32, command: Command) -> Result<Committed, ShardError> {
        let resendable = !matches!(command.operation, Some(Operation::OpenSession(_)));
        let mut retry = Retry::new();
        loop {
            let result = self.propose_once(self.owner(group), group, command.clone()).await;
            match &result {
                Err(ShardError::NotLeader { .. }) if retry.again().await => {}
                Err(ShardError::LeadershipLost) if resendable && retry.again().await => {}
                Err(_) => {
                    self.counters.proposal_failed();
                    return result;
                }
                Ok(_) => return result,
            }
        }
    }

    /// Reads an election of `group` linearizably, retrying while no leader is known.
    pub async fn read(&self, group: u32, query: TermQuery) -> Result<ReadTerm, ShardError> {
        let mut retry = Retry::new();
        loop {
            let result = self.read_once(self.owner(group), group, query.clone()).await;
            match &result {
                Err(ShardError::NotLeader { .. } | ShardError::LeadershipLost) if retry.again().await => {}
                _ => return result,
            }
        }
    }

    /// Watches an election: `on_change` gets its current state first, then every later
    /// change, in order, until it returns false. The returned result tells whether the
    /// watch started (an unknown election, say, is an `Ok` whose `result` is an error).
    /// While the partition has no leader the watch waits for one, as reads do.
    ///
    /// The returned [`WatchGuard`] ends the watch once dropped (its client has gone), so a
    /// quiet election does not keep dead watchers, and tells when the serving side ended it.
    pub async fn watch(
        self: &Rc<Self>,
        group: u32,
        query: TermQuery,
        on_change: WatchCallback,
    ) -> Result<(ReadTerm, WatchGuard), ShardError> {
        let on_change = Rc::new(RefCell::new(on_change));
        let mut retry = Retry::new();
        loop {
            let result = self.watch_once(self.owner(group), group, query.clone(), Rc::clone(&on_change)).await;
            match &result {
                Err(ShardError::NotLeader { .. } | ShardError::LeadershipLost) if retry.again().await => {}
                _ => return result,
            }
        }
    }

    /// Whether this node left client partition `group` through the Node API.
    pub fn has_left(&self, group: u32) -> bool {
        self.left.borrow().contains(&group)
    }

    /// Whether this node serves client partition `group`: it hosts a replica and knows
    /// a leader for it.
    pub fn serves(&self, group: u32) -> bool {
        !self.left.borrow().contains(&group) && self.leaders.borrow().get(&group).is_some_and(|(_, leader)| *leader != 0)
    }

    /// Sets the number of client partitions (1..=`partitions`) that
    /// [`Dispatch::serves_all`] counts.
    pub fn set_partitions(&self, partitions: u32) {
        self.partitions.set(partitions);
        self.served.set((1..=partitions).filter(|g| self.serves(*g)).count() as u32);
    }

    /// Whether this node serves every client partition (see [`Dispatch::serves`]).
    pub fn serves_all(&self) -> bool {
        self.served.get() == self.partitions.get()
    }

    /// Runs `change` on the table of `group`, keeping the count of served partitions.
    fn count_served(&self, group: u32, change: impl FnOnce()) {
        let counted = group >= 1 && group <= self.partitions.get();
        let before = counted && self.serves(group);
        change();
        let after = counted && self.serves(group);
        match (before, after) {
            (false, true) => self.served.set(self.served.get() + 1),
            (true, false) => self.served.set(self.served.get() - 1),
            _ => {}
        }
    }

    /// Records whether this node hosts client partition `group` (this shard owns it) and
    /// tells every other shard.
    pub fn broadcast_hosting(&self, group: u32, hosted: bool) {
        self.record_hosting(group, hosted);
        for to in (0..self.shards).filter(|s| *s != self.shard) {
            self.outbound.send(to, MeshMessage::Hosting { group, hosted });
        }
        self.table_changed();
    }

    pub(super) fn table_changed(&self) {
        let on_change = self.on_table_change.borrow().clone();
        if let Some(on_change) = on_change {
            on_change();
        }
    }

    pub(super) fn record_hosting(&self, group: u32, hosted: bool) {
        self.count_served(group, || {
            let mut left = self.left.borrow_mut();
            if hosted {
                left.remove(&group);
            } else {
                left.insert(group);
            }
        });
    }

    /// Records a leader report (ignoring reports older than what is known).
    pub fn record_leader(&self, group: u32, term: u64, leader: u64) {
        self.count_served(group, || {
            let mut leaders = self.leaders.borrow_mut();
            let entry = leaders.entry(group).or_insert((0, 0));
            if term >= entry.0 {
                *entry = (term, leader);
            }
        });
    }

    /// Reports a leader change of a group this shard owns to every other shard.
    pub fn broadcast_leader(&self, group: u32, term: u64, leader: u64) {
        self.record_leader(group, term, leader);
        for to in (0..self.shards).filter(|s| *s != self.shard) {
            self.outbound.send(to, MeshMessage::Leader { group, term, leader });
        }
    }
}

/// Paces retries: short pauses growing to [`MAX_RETRY_PAUSE`], within [`RETRY_BUDGET`].
struct Retry {
    deadline: Instant,
    pause: Duration,
}

impl Retry {
    fn new() -> Retry {
        Retry { deadline: Instant::now() + RETRY_BUDGET, pause: Duration::from_millis(1) }
    }

    /// Waits before the next attempt; false when the budget is spent.
    async fn again(&mut self) -> bool {
        if Instant::now() + self.pause > self.deadline {
            return false;
        }
        crate::timer_queue::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(MAX_RETRY_PAUSE);
        true
    }
}
