//! Deterministic simulation of Conclave's Raft core: N nodes × G groups driven from one
//! u64 seed, over a simulated network and simulated disks, with crashes, restarts,
//! partitions, membership changes and leadership transfers, and checkers on every step.
#![allow(dead_code)]

pub mod checker;
pub mod client;
pub mod cluster;
pub mod disk;
pub mod linearizability;
pub mod network;
pub mod read_profile;

use conclave_engine::raft::{DeliberateBugs, Membership, Role};

pub use cluster::run_seed;

/// Sizes and fault intensities of one simulated run; `for_seed` varies them per seed.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub nodes: u64,
    pub groups: u32,
    /// Ticks of chaos (faults injected), then up to `heal_ticks` with all faults healed.
    pub chaos_ticks: u64,
    pub heal_ticks: u64,
    /// Time units per tick; network and disk delays are measured in units.
    pub units_per_tick: u64,
    pub max_net_delay: u64,
    pub max_disk_delay: u64,
    pub loss: f64,
    pub duplicate: f64,
    /// Per tick probabilities.
    pub crash: f64,
    /// Probability per tick that the leader of a random group crashes (a targeted nemesis).
    pub crash_leader: f64,
    pub restart: f64,
    pub partition: f64,
    pub heal: f64,
    pub membership_change: f64,
    pub transfer: f64,
    pub client_op: f64,
    /// Node 3 of odd groups is a witness (when there are at least 3 nodes).
    pub witnesses: bool,
    /// Membership changes also remove members outright (the harness then deletes the
    /// removed replica, as a server does once its Leave committed) and add non-members as
    /// brand-new replicas with empty storage, which the leader brings up to date by entries
    /// or snapshot (a server's Join). In five-node clusters node 4 starts outside groups
    /// 1 and up. On unless `CONCLAVE_SIM_WHOLE_NODES=0`.
    pub whole_nodes: bool,
    /// A node may rejoin a group while messages of its deleted replica are still in flight,
    /// and a node whose removal committed is added back at once (off by default: a server's
    /// Join follows its Leave over the same ordered connection). Replica incarnations keep
    /// such late messages from being taken for the new replica's (see README).
    /// `CONCLAVE_SIM_EAGER_REJOIN=1` turns it on.
    pub eager_rejoin: bool,
    /// Maximum entries per append (small values exercise partial acknowledgements).
    pub max_entries_per_message: usize,
    /// Applied entries between state-machine snapshots (0: never snapshot), and how many
    /// entries below a snapshot stay in the log.
    pub snapshot_interval: u64,
    pub snapshot_tail: u64,
    /// Leaders serve reads under a lease (no heartbeat round per read).
    pub lease_reads: bool,
    /// With lease reads, followers also serve reads under leases from their leader
    /// (`Config::follower_leases`). `CONCLAVE_SIM_FOLLOWER_LEASES=1` turns them on for
    /// every seed that has lease reads.
    pub follower_leases: bool,
    /// Follower leases a quarter as long as the leader's (`Config::follower_lease_micros`).
    pub short_follower_leases: bool,
    /// Idle groups quiesce; a node-level failure detector (pings between nodes) wakes
    /// groups whose leader's node went silent.
    pub quiesce: bool,
    /// Leaders hold back commit notices (`Config::hold_commit_notices`); each node flushes
    /// the owed ones at its next tick, the latest a shard runtime does.
    pub hold_commit_notices: bool,
    /// Connection failures, as a server's shard hears of them (`Request::PeerDown`): when a
    /// node crashes, each other node may notice at once (its connection breaks), and now and
    /// then a connection fails while its peer is alive. Either way the node wakes its quiet
    /// groups led by that peer, with the successor named by group id campaigning first
    /// (`RaftNode::wake_for_leader_loss`). Only quiet groups wake, so only with `quiesce`.
    pub peer_down: bool,
    /// The read-safety profile (see `read_profile.rs`): per-node clocks that drift and
    /// stall, and a nemesis aimed at reads around the leader. Off in `for_seed`.
    pub read_faults: bool,
    pub bugs: DeliberateBugs,
}

impl SimOptions {
    /// The options of seed `seed`: sizes and fault rates drawn from the seed itself.
    pub fn for_seed(seed: u64) -> Self {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_0f0b_7105);
        let nodes = if rng.random_bool(0.7) { 3 } else { 5 };
        SimOptions {
            nodes,
            groups: rng.random_range(1..=3),
            chaos_ticks: 300,
            heal_ticks: 400,
            units_per_tick: 10,
            max_net_delay: rng.random_range(2..=30),
            max_disk_delay: rng.random_range(1..=40),
            loss: rng.random_range(0.0..0.15),
            duplicate: rng.random_range(0.0..0.1),
            crash: rng.random_range(0.0..0.03),
            crash_leader: rng.random_range(0.0..0.02),
            restart: 0.1,
            partition: rng.random_range(0.0..0.03),
            heal: 0.05,
            membership_change: rng.random_range(0.0..0.02),
            transfer: rng.random_range(0.0..0.02),
            client_op: 0.5,
            witnesses: rng.random_bool(0.3),
            whole_nodes: whole_nodes_from_env(),
            eager_rejoin: std::env::var("CONCLAVE_SIM_EAGER_REJOIN").is_ok_and(|v| v == "1"),
            max_entries_per_message: if rng.random_bool(0.5) { 1 } else { 64 },
            snapshot_interval: if rng.random_bool(0.3) { 0 } else { rng.random_range(3..=30) },
            snapshot_tail: rng.random_range(0..=5),
            lease_reads: rng.random_bool(0.5),
            quiesce: rng.random_bool(0.5),
            // Drawn last, so the options drawn before it are those the seed always had.
            hold_commit_notices: rng.random_bool(0.5),
            // Drawn after it, for the same reason.
            peer_down: rng.random_bool(0.5),
            // Drawn after it, for the same reason.
            follower_leases: rng.random_bool(0.5) || follower_leases_from_env(),
            short_follower_leases: false,
            read_faults: false,
            bugs: DeliberateBugs::default(),
        }
    }
}

fn follower_leases_from_env() -> bool {
    std::env::var("CONCLAVE_SIM_FOLLOWER_LEASES").is_ok_and(|v| v == "1")
}

/// `CONCLAVE_SIM_WHOLE_NODES=0` turns off whole-node membership changes (on by default).
fn whole_nodes_from_env() -> bool {
    match std::env::var("CONCLAVE_SIM_WHOLE_NODES") {
        Ok(text) => text != "0",
        Err(_) => true,
    }
}

impl SimOptions {
    /// Every node is a member (except node 4 of groups 1 and up in five-node clusters with
    /// `whole_nodes`: a node the group may add later); node 3 of odd groups is a witness
    /// when witnesses are on, and node 5 of group 0 starts as an observer in five-node
    /// clusters.
    pub fn initial_membership(&self, group: u32) -> Membership {
        let outside = |id: u64| self.whole_nodes && self.nodes == 5 && id == 4 && group >= 1;
        let members = (1..=self.nodes).filter(|id| !outside(*id)).map(|id| {
            let role = if self.witnesses && id == 3 && group % 2 == 1 {
                Role::Witness
            } else if self.nodes == 5 && id == 5 && group == 0 {
                Role::Observer
            } else {
                Role::Voter
            };
            (id, role)
        });
        Membership::new(members).expect("simulation memberships are well formed")
    }
}

/// The single command that replays `seed` of the `raft_sim` test.
pub fn replay_command(seed: u64) -> String {
    format!("CONCLAVE_SIM_SEED={seed} cargo test -p conclave-engine --test raft_sim -- --nocapture")
}
