//! Read safety in the simulation: each node's monotonic clock (fed to its replicas with
//! `set_now`), which drifts from real time and stops while the node stalls, then jumps;
//! node stalls (no ticks, no messages, no client calls, its batches held until it resumes);
//! and, in the read profile (`SimOptions::read_faults`), a nemesis aimed at reads around
//! the leader of a group, with clients that keep reading from the old leader:
//! - **isolate**: the leader is cut off both ways; a new leader is elected and commits while
//!   the old one may still believe it leads (a ReadIndex answered without its quorum round
//!   returns stale data);
//! - **challenger**: a follower whose log is up to date stops hearing the leader (one-way
//!   partition) and campaigns; the moment it does, the leader stops hearing anyone, so its
//!   lease runs out on its own while the challenger asks the others for votes (a vote
//!   granted inside the lease lets a new leader commit while the old one serves lease
//!   reads); the old leader takes no writes meanwhile, so the challenger's log stays up to
//!   date and only the lease refuses it;
//! - **stall**: the leader's node stops for a while, its clock frozen; the others elect and
//!   commit; when it resumes its clock jumps and clients read from it before it hears of
//!   the new term (a lease trusted after it ran out in real time serves stale data);
//! - **slow follower** (with follower read leases): clients read from a follower for a
//!   while, so that it holds a lease; then everything sent to it is held back (delivered
//!   in order when the scenario ends) while clients keep reading from it, and half the time
//!   the leader hands leadership to another voter at that moment (a leader that commits
//!   without the follower, or a new leader that does not wait out the old leader's follower
//!   leases, lets it serve stale data).

use conclave_engine::raft::{MessageBatch, RaftRole};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::super::checker::Violation;
use super::super::read_profile::MAX_DRIFT_PPM;
use super::super::SimOptions;
use super::Sim;

/// Microseconds of a node's clock per simulated time unit.
pub const MICROS_PER_UNIT: u64 = 1_000;

/// Probability per chaos tick that a scenario starts when none runs.
const SCENARIO_START: f64 = 0.08;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Isolate,
    Challenger,
    Stall,
    SlowFollower,
}

#[derive(Clone, Copy, Debug)]
struct Scenario {
    kind: Kind,
    group: usize,
    /// Node indexes of the leader and (Challenger) the challenger.
    leader: usize,
    challenger: usize,
    /// The tick at which the scenario ends (links healed, the stall over).
    ends_at: u64,
    /// Challenger: the leader no longer hears anyone.
    deafened: bool,
    /// SlowFollower: the follower (in `challenger`) hears nothing from this tick on.
    deaf_at: u64,
}

/// One node's clock: `offset + real time * (1 + drift)`, frozen while the node stalls.
#[derive(Clone, Copy, Debug)]
struct NodeClock {
    offset: u64,
    /// Drift in parts per million, applied as `rate = 1_000_000 + drift_ppm`.
    drift_ppm: i64,
    frozen: Option<u64>,
}

/// Per-node clocks and stalls, and the read nemesis's state.
pub struct ReadNemesis {
    /// Separate from the run's RNG, so the other profiles' seeds stay as they were.
    rng: ChaCha8Rng,
    clocks: Vec<NodeClock>,
    stalled: Vec<bool>,
    /// Batches that reached a stalled node, delivered in order once it resumes.
    held: Vec<MessageBatch>,
    /// A node that runs but whose incoming batches are held (`Kind::SlowFollower`).
    deaf: Option<usize>,
    released: Vec<MessageBatch>,
    scenario: Option<Scenario>,
    /// Per group: the leader of the latest scenario, which clients keep reading from.
    old_leader: Vec<Option<usize>>,
}

impl ReadNemesis {
    pub fn new(seed: u64, opts: &SimOptions) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x000c_10c4_5eed);
        let drift = MAX_DRIFT_PPM as i64;
        let clocks = (0..opts.nodes)
            .map(|_| {
                if opts.read_faults {
                    NodeClock { offset: rng.random_range(0..1 << 40), drift_ppm: rng.random_range(-drift..=drift), frozen: None }
                } else {
                    NodeClock { offset: 0, drift_ppm: 0, frozen: None }
                }
            })
            .collect();
        ReadNemesis {
            rng,
            clocks,
            stalled: vec![false; opts.nodes as usize],
            held: Vec::new(),
            deaf: None,
            released: Vec::new(),
            scenario: None,
            old_leader: vec![None; opts.groups as usize],
        }
    }

    pub fn is_stalled(&self, n: usize) -> bool {
        self.stalled[n]
    }

    /// True if batches to node `n` are held for now (it stalls or is deaf).
    pub fn holds_for(&self, n: usize) -> bool {
        self.stalled[n] || self.deaf == Some(n)
    }

    /// A deaf node hears again: its held batches follow in order.
    fn hear(&mut self) {
        let Some(n) = self.deaf.take() else { return };
        let to = n as u64 + 1;
        let (mine, others): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held).into_iter().partition(|b| b.to == to);
        self.held = others;
        self.released.extend(mine);
    }

    pub fn hold(&mut self, batch: MessageBatch) {
        self.held.push(batch);
    }

    /// Batches held for nodes that resumed since the last call, in their order.
    pub fn take_released(&mut self) -> Vec<MessageBatch> {
        std::mem::take(&mut self.released)
    }

    /// Node `n`'s clock reading at real time `now` (units).
    fn clock(&self, n: usize, now: u64) -> u64 {
        let clock = self.clocks[n];
        clock.frozen.unwrap_or_else(|| {
            let real = u128::from(now * MICROS_PER_UNIT);
            let rate = (1_000_000 + clock.drift_ppm) as u128;
            clock.offset + (real * rate / 1_000_000) as u64
        })
    }

    fn stall(&mut self, n: usize, now: u64) {
        self.clocks[n].frozen = Some(self.clock(n, now));
        self.stalled[n] = true;
    }

    /// Node `n` runs again: its clock jumps to real time, its held batches follow.
    fn resume(&mut self, n: usize) {
        if !self.stalled[n] {
            return;
        }
        self.stalled[n] = false;
        self.clocks[n].frozen = None;
        let to = n as u64 + 1;
        let (mine, others): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held).into_iter().partition(|b| b.to == to);
        self.held = others;
        self.released.extend(mine);
    }

    /// A crashed node's stall ends with it (what was held for it is lost).
    pub fn node_crashed(&mut self, n: usize) {
        if self.deaf == Some(n) {
            self.hear();
        }
        self.resume(n);
        let to = n as u64 + 1;
        self.released.retain(|b| b.to != to);
    }

    /// Every fault of the nemesis ends (the network is healed by the caller).
    pub fn heal(&mut self) {
        for n in 0..self.stalled.len() {
            self.resume(n);
        }
        self.hear();
        self.scenario = None;
    }
}

impl Sim {
    /// Feeds every live replica its node's clock (a stalled node's stays frozen).
    pub(super) fn feed_clocks(&mut self) {
        for n in 0..self.nodes.len() {
            if !self.nodes[n].up {
                continue;
            }
            let now = self.reads.clock(n, self.now);
            for replica in &mut self.nodes[n].replicas {
                if let Some(raft) = replica.raft.as_mut() {
                    raft.set_now(now);
                }
            }
        }
    }

    /// The leader of group `g` with the highest term (an old leader may not know yet).
    fn newest_leader(&self, g: usize) -> Option<usize> {
        (0..self.nodes.len())
            .filter_map(|n| self.nodes[n].replicas[g].raft.as_ref().filter(|r| r.role() == RaftRole::Leader).map(|r| (r.term(), n)))
            .max()
            .map(|(_, n)| n)
    }

    /// Once per chaos tick: ends the running scenario when due, or maybe starts one.
    pub(super) fn read_nemesis(&mut self) -> Result<(), Violation> {
        let tick = self.report.ticks;
        if let Some(scenario) = self.reads.scenario {
            if scenario.kind == Kind::SlowFollower && tick == scenario.deaf_at {
                self.deafen_follower(scenario);
            }
            if tick < scenario.ends_at {
                return Ok(());
            }
            self.reads.scenario = None;
            self.net.heal();
            self.reads.resume(scenario.leader);
            self.reads.hear();
            return Ok(());
        }
        if !self.reads.rng.random_bool(SCENARIO_START) {
            return Ok(());
        }
        let g = self.reads.rng.random_range(0..self.opts.groups as usize);
        let Some(leader) = self.newest_leader(g) else { return Ok(()) };
        let kinds = if self.opts.follower_leases { 4 } else { 3 };
        let kind = match self.reads.rng.random_range(0..kinds) {
            0 => Kind::Isolate,
            1 => Kind::Challenger,
            2 => Kind::Stall,
            _ => Kind::SlowFollower,
        };
        let raft = self.nodes[leader].replicas[g].raft.as_ref().expect("leader is up");
        let (last, membership) = (raft.last_index(), raft.membership().clone());
        // A challenger with a log as long as the leader's: only the lease stands in its way.
        let challengers: Vec<usize> = membership
            .voting()
            .map(|id| id as usize - 1)
            .filter(|&n| n != leader && self.nodes[n].replicas[g].raft.as_ref().is_some_and(|r| r.last_index() >= last))
            .collect();
        let challenger = match kind {
            Kind::Challenger | Kind::SlowFollower if challengers.is_empty() => return Ok(()),
            Kind::Challenger | Kind::SlowFollower => challengers[self.reads.rng.random_range(0..challengers.len())],
            _ => leader,
        };
        let ends_at = tick + self.reads.rng.random_range(20..=45);
        let deaf_at = tick + 8;
        self.reads.scenario = Some(Scenario { kind, group: g, leader, challenger, ends_at, deafened: false, deaf_at });
        // Clients read from the follower of a slow-follower scenario (it takes a lease).
        self.reads.old_leader[g] = Some(if kind == Kind::SlowFollower { challenger } else { leader });
        let (l, c) = (leader as u64 + 1, challenger as u64 + 1);
        match kind {
            Kind::Isolate => self.net.isolate(l, self.opts.nodes),
            Kind::Challenger => self.net.block(l, c),
            Kind::Stall => self.reads.stall(leader, self.now),
            Kind::SlowFollower => {}
        }
        Ok(())
    }

    /// The slow follower stops hearing anything; half the time the group's leader hands
    /// leadership to another voter at the same moment.
    fn deafen_follower(&mut self, scenario: Scenario) {
        let (g, follower) = (scenario.group, scenario.challenger);
        if !self.nodes[follower].up {
            return;
        }
        self.reads.deaf = Some(follower);
        if !self.reads.rng.random_bool(0.5) {
            return;
        }
        let Some(leader) = self.newest_leader(g) else { return };
        let raft = self.nodes[leader].replicas[g].raft.as_mut().expect("leader is up");
        let to = raft.membership().voting().find(|&id| id as usize - 1 != leader && id as usize - 1 != follower);
        if let Some(to) = to {
            let _ = raft.transfer_leadership(to);
        }
    }

    /// After every time unit: a challenger that started campaigning deafens the leader.
    pub(super) fn read_nemesis_unit(&mut self) {
        let Some(scenario) = self.reads.scenario.as_mut() else { return };
        if scenario.kind != Kind::Challenger || scenario.deafened {
            return;
        }
        let c = scenario.challenger;
        let campaigning = self.nodes[c]
            .replicas
            .iter()
            .any(|r| r.raft.as_ref().is_some_and(|r| matches!(r.role(), RaftRole::PreCandidate | RaftRole::Candidate)));
        if campaigning {
            scenario.deafened = true;
            let l = scenario.leader as u64 + 1;
            for from in (1..=self.opts.nodes).filter(|from| *from != l) {
                self.net.block(from, l);
            }
        }
    }

    /// Client traffic of the read profile: two operations per group and tick; writes go to
    /// the newest leader, reads often to the old leader of the latest scenario.
    pub(super) fn read_profile_traffic(&mut self) -> Result<(), Violation> {
        for g in 0..self.opts.groups as usize {
            for _ in 0..2 {
                if !self.rng.random_bool(self.opts.client_op) {
                    continue;
                }
                let write = self.rng.random_bool(0.5);
                let newest = self.newest_leader(g);
                let old = self.reads.old_leader[g].filter(|n| self.nodes[*n].up);
                let n = match (write, old, newest) {
                    (false, Some(old), _) if self.rng.random_bool(0.6) => old,
                    (_, _, Some(newest)) if self.rng.random_bool(0.8) => newest,
                    _ => self.rng.random_range(0..self.nodes.len()),
                };
                // The challenger's log must stay as long as the leader's: the old leader
                // takes no writes while it challenges (the newer leader does).
                let challenged = self.reads.scenario.is_some_and(|s| s.kind == Kind::Challenger && s.group == g && s.leader == n);
                if self.reads.is_stalled(n) || (write && challenged) {
                    continue;
                }
                self.client_op(n, g, write)?;
            }
        }
        Ok(())
    }
}
