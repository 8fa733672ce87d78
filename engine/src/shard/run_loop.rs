//! The shard loop: [`ShardRuntime::run`] waits for whatever comes first — a request, the
//! oldest write in flight becoming durable, the tick timer — then runs one round: the
//! requests queued (within a budget), the tick when it is due (`tick`: Raft timers of the
//! groups due, liveness, the leaders' checks), Raft output drained (`ready.rs`), snapshots
//! and removals (`upkeep.rs`). With no group awake it sleeps past the ticks at which nothing
//! is due (`idle.rs`); a request wakes it at once.

use std::rc::Rc;
use std::time::Duration;

use futures_lite::future;

use super::api::{LogStore, Request, ShardEvent};
use super::clock::micros;
use super::counters::ShardCounters;
use super::error::ShardError;
use super::runtime::ShardRuntime;
use super::stall::{Phase, RoundTimer};

/// The most time one round spends taking queued requests (peer frames may carry thousands
/// of messages each); what is left waits for the next round, after the loop let the
/// shard's other tasks run, so a flood (every group electing at once) cannot hold it.
const ROUND_REQUEST_BUDGET: Duration = Duration::from_millis(10);

/// What woke the shard loop.
enum Wake {
    Request(Option<Request>),
    Durable(Result<(), String>),
    Tick,
    /// The previous round left touched groups for this one: no wait.
    CarriedOver,
}

impl<L: LogStore> ShardRuntime<L> {
    /// Runs until a [`Request::Shutdown`] or a storage failure. Returns the failure, if any.
    ///
    /// The loop never waits for the disk: a round's writes are submitted to the log and the
    /// loop goes on serving requests, peers and ticks while they are on their way; what
    /// waits for them (Raft's acknowledgement, messages that need them durable) is released
    /// when they are.
    pub async fn run(mut self) -> Result<(), ShardError> {
        let tick = self.cfg.tick;
        let tick_us = micros(tick);
        // When (on the monotonic clock, in µs) tick `self.ticks + 1` is due.
        let mut next_tick = self.now_micros().saturating_add(tick_us);
        // Drive any output recovery left (e.g. entries to re-apply) before serving.
        for (group, replica) in self.groups.replicas() {
            (self.events)(group, &ShardEvent::MemberReady { membership: replica.raft().membership().clone() });
        }
        self.process_ready().await?;
        // One timer for the loop's whole life, moved to each next wake-up (not one per wake).
        let mut tick_timer = glommio::timer::Timer::new(tick);
        ShardCounters::add(&self.counters.timers_armed, 1);
        let mut timer_at = next_tick;
        loop {
            // With no group awake the loop sleeps through the ticks at which nothing is due
            // (see `ticks_until_due`); a request wakes it at once.
            let wake_at = next_tick.saturating_add(tick_us.saturating_mul(self.ticks_until_due() - 1));
            // Held commit notices are due before that, maybe.
            let wake_at = self.commit_notices_due.map_or(wake_at, |due| due.min(wake_at));
            if timer_at != wake_at {
                tick_timer.reset(Duration::from_micros(wake_at.saturating_sub(self.now_micros())));
                timer_at = wake_at;
            }
            let woke = if self.schedule.has_dirty() {
                Wake::CarriedOver
            } else {
                let receiver = &self.receiver;
                let request = async { Wake::Request(receiver.recv().await) };
                let timer = async {
                    (&mut tick_timer).await;
                    Wake::Tick
                };
                match self.in_flight.front_mut() {
                    Some(write) => {
                        let durable = async { Wake::Durable((&mut write.durable).await) };
                        future::or(durable, future::or(request, timer)).await
                    }
                    None => future::or(request, timer).await,
                }
            };
            let now = self.now_micros();
            // The ticks slept through count as elapsed, up to the planned wake-up (none when
            // it was the next tick): a loop held up beyond it counts one tick for the hold-up,
            // as when groups are awake (their Raft timers must not jump).
            let slept = now.min(wake_at).saturating_sub(next_tick);
            let skipped = slept / tick_us.max(1);
            self.ticks += skipped;
            next_tick = next_tick.saturating_add(tick_us.saturating_mul(skipped));
            let mut round = RoundTimer::start(self.cfg.stall_warn, Rc::clone(&self.monotonic));
            ShardCounters::add(&self.counters.rounds, 1);
            let late = Duration::from_micros(now.saturating_sub(wake_at));
            if !self.cfg.stall_warn.is_zero() && late >= self.cfg.stall_warn {
                self.credit_pause(late);
            }
            let mut stop = false;
            match woke {
                Wake::Request(Some(request)) => stop |= self.handle_request(request),
                Wake::Request(None) => stop = true,
                Wake::Durable(result) => {
                    let write = self.in_flight.pop_front().expect("the front write woke the loop");
                    self.write_done(write.acks, result)?;
                    self.settle_durable_writes().await?;
                }
                Wake::CarriedOver => self.settle_durable_writes().await?,
                Wake::Tick => {}
            }
            // Take what else is queued (within the round's budget): it joins this round.
            let budget_end = self.now_micros().saturating_add(micros(ROUND_REQUEST_BUDGET));
            // Requests may still be queued when the budget ran out: what peers sent may be
            // among them, so no peer counts as silent at this round's tick.
            let mut backlog = false;
            loop {
                if self.now_micros() >= budget_end {
                    backlog = true;
                    break;
                }
                let Some(Some(request)) = future::poll_once(self.receiver.recv()).await else { break };
                stop |= self.handle_request(request);
            }
            if stop {
                self.shutdown().await;
                self.drain_in_flight().await?;
                self.abandon_snapshot_saves().await;
                return self.log.close().await.map_err(ShardError::Storage);
            }
            round.lap(Phase::Requests);
            let now = self.now_micros();
            self.flush_due_commit_notices(now);
            if now >= next_tick {
                round.tick_ran(Duration::from_micros(now - next_tick));
                next_tick = now.saturating_add(tick_us);
                self.tick(backlog);
                round.lap(Phase::Tick);
            }
            self.process_ready().await?;
            round.lap(Phase::Ready);
            self.snapshot_due_groups().await?;
            round.lap(Phase::Snapshots);
            self.remove_pending().await?;
            round.lap(Phase::Removals);
            if let Some(report) = round.finish() {
                report.log(self.cfg.node_id);
            }
            // The next round may be due at once (a tick already late, requests queued): let
            // the shard's other tasks (peer connections, events, gRPC) run first, or a
            // loaded shard starves them, hears no peer and elects no leader (10,000 awake
            // groups on a busy machine did just that).
            future::yield_now().await;
        }
    }

    /// One tick; `backlog`: requests were left queued this round (see `tick_liveness`).
    fn tick(&mut self, backlog: bool) {
        let now_ms = (self.clock)();
        let now_micros = (self.monotonic)();
        self.ticks += 1;
        ShardCounters::add(&self.counters.ticks, 1);
        self.forwarded.expire(now_micros, self.cfg.forward_timeout, self.cfg.membership_timeout);
        self.tick_liveness(backlog);
        // Only the groups with something due: quiet ones cost nothing (see `schedule.rs`).
        for group in self.schedule.due(self.ticks) {
            let Some(replica) = self.groups.replica_mut(group) else { continue };
            ShardCounters::add(&self.counters.replica_ticks, 1);
            replica.raft_mut().set_now(now_micros);
            // Every leader of the shard heartbeats at the same tick: one batch per peer.
            replica.raft_mut().set_shard_tick(self.ticks);
            replica.tick();
            if replica.is_leader() {
                self.tick_leader(group, now_ms);
            }
            self.schedule.touch(group);
        }
        self.log_activity();
    }

    /// A leader's checks at each of its ticks: a stopping node hands it on, rebalancing
    /// hands it to its preferred node (`rebalance.rs`), and a barrier lets sessions past
    /// their deadline expire (`expiry.rs`).
    fn tick_leader(&mut self, group: u32, now_ms: u64) {
        self.rebalance_tick(group);
        self.expiry_tick(group, now_ms);
    }
}
