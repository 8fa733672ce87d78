//! Runs the deterministic Raft simulation over many seeds (1,000 by default), twice: with
//! each seed's own options (quiescence on for about half of them, held commit notices for
//! about half), and with quiescence on
//! for every seed (seeds from [`QUIET_SEEDS_FROM`] on), as the server runs by default; then
//! [`EAGER_REJOIN_SEEDS`] seeds (from [`EAGER_SEEDS_FROM`] on) with eager rejoins: removed
//! nodes join again at once, while their deleted replicas' messages are still in flight.
//! `CONCLAVE_SIM_SEEDS=N` runs N seeds of each (a soak), and `CONCLAVE_SIM_SEED_OFFSET=K`
//! starts each run K seeds after its usual first seed (a soak of seeds no earlier run
//! covered); `CONCLAVE_SIM_SEED=S` replays seed S
//! alone (`CONCLAVE_SIM_QUIESCE=1` forces quiescence on, as the second run does;
//! `CONCLAVE_SIM_EAGER_REJOIN=1` eager rejoins, as the third does). A fourth run, beside
//! them, uses the read-safety profile (`sim/read_profile.rs`: drifting and stalling clocks,
//! a nemesis around the leader, clients reading from the old leader) for [`READ_SEEDS`]
//! seeds from [`READ_SEEDS_FROM`] on (`CONCLAVE_SIM_READS=1` replays one of its seeds).
//! Eager-rejoin seed 5645 is also replayed on its own on every run (it failed before replica
//! incarnations). Every failure prints its seed and the command that replays it.

mod sim;

use sim::read_profile::READ_SEEDS_FROM;
use sim::{replay_command, run_seed, SimOptions};

const DEFAULT_SEEDS: u64 = 1_000;

/// Seeds of the read-profile run (the CI budget that must catch each read-safety bug).
const READ_SEEDS: u64 = 1_000;

fn replaying_reads() -> bool {
    std::env::var("CONCLAVE_SIM_READS").is_ok_and(|v| v == "1")
}

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(text.parse().unwrap_or_else(|_| panic!("{name} must be an unsigned integer, got {text:?}")))
}

/// The seeds of one run: seed `CONCLAVE_SIM_SEED` alone, or `CONCLAVE_SIM_SEEDS` (default
/// `default_count`) seeds from `first` plus `CONCLAVE_SIM_SEED_OFFSET`.
fn seeds_of_run(first: u64, default_count: u64) -> Vec<u64> {
    match env_u64("CONCLAVE_SIM_SEED") {
        Some(seed) => vec![seed],
        None => {
            let first = first + env_u64("CONCLAVE_SIM_SEED_OFFSET").unwrap_or(0);
            (first..first + env_u64("CONCLAVE_SIM_SEEDS").unwrap_or(default_count)).collect()
        }
    }
}

/// The first seed of the run with quiescence on for every seed (distinct from the first
/// run's seeds).
const QUIET_SEEDS_FROM: u64 = 1 << 32;

/// The first seed of the run with eager rejoins, and its default number of seeds.
const EAGER_SEEDS_FROM: u64 = 2 << 32;
const EAGER_REJOIN_SEEDS: u64 = 1_000;

#[test]
fn simulation_upholds_safety_liveness_and_linearizability() {
    if replaying_reads() {
        return; // a replay of the read profile runs in its own test
    }
    let force_quiesce = std::env::var("CONCLAVE_SIM_QUIESCE").is_ok_and(|v| v == "1");
    run_seeds(0, force_quiesce);
}

/// The server quiesces idle groups by default: every seed of this run does, with the same
/// checkers and the liveness verdict after healing (quiet followers of a crashed leader
/// elect once node-level liveness wakes them).
#[test]
fn simulation_with_quiescence_on_upholds_the_same_properties() {
    if std::env::var("CONCLAVE_SIM_SEED").is_ok() {
        return; // a replay runs in the other test
    }
    run_seeds(QUIET_SEEDS_FROM, true);
}

/// Nodes whose removal committed join again at once, with new replicas, while messages of
/// their deleted replicas are still on the wire: replica incarnations keep those late
/// messages from being taken for the new replicas' (README, "Replica incarnations").
#[test]
fn simulation_with_eager_rejoins_upholds_the_same_properties() {
    if std::env::var("CONCLAVE_SIM_SEED").is_ok() {
        return; // a replay runs in the first test (with CONCLAVE_SIM_EAGER_REJOIN=1)
    }
    run_seeds_with(EAGER_SEEDS_FROM, EAGER_REJOIN_SEEDS, false, true);
}

/// Eager-rejoin seed 5645 (issue 17), pinned: before replica incarnations the core took a
/// deleted replica's late acknowledgements for its successor's and failed it; the eager run
/// above covers other seeds, so this one is replayed on every run, as
/// `CONCLAVE_SIM_EAGER_REJOIN=1 CONCLAVE_SIM_SEED=5645` does. (The simulation has changed
/// since: today the seed rejoins nodes eagerly but no late message reaches a successor, and
/// it passes even with the drop of other incarnations' messages taken out of `step`: it pins
/// the replay, and the eager run, which requires `incarnation_drops > 0`, exercises the drops.)
#[test]
fn eager_rejoin_seed_5645_upholds_the_same_properties() {
    if std::env::var("CONCLAVE_SIM_SEED").is_ok() {
        return; // a replay runs in the first test
    }
    const SEED: u64 = 5645;
    let opts = SimOptions { eager_rejoin: true, ..SimOptions::for_seed(SEED) };
    match run_seed(SEED, &opts) {
        // Without whole-node changes (`CONCLAVE_SIM_WHOLE_NODES=0`) no node is removed.
        Ok(report) => {
            assert!(report.eager_rejoins > 0 || !opts.whole_nodes, "seed {SEED} no longer rejoins a removed node at once: {report:?}")
        }
        Err(violation) => panic!(
            "seed {SEED} (eager rejoins) violated a property: {}\noptions: {opts:?}\nreplay: CONCLAVE_SIM_EAGER_REJOIN=1 {}",
            violation.0,
            replay_command(SEED)
        ),
    }
}

/// The read-safety profile: a ReadIndex answered without its quorum round, a vote granted
/// inside a leader's lease, or a lease trusted after it ran out in real time each fail a
/// seed of this run (see tuning.md, "Read safety in the simulation").
#[test]
fn simulation_aimed_at_reads_serves_only_linearizable_reads() {
    if std::env::var("CONCLAVE_SIM_SEED").is_ok() && !replaying_reads() {
        return; // a replay of another profile
    }
    let seeds = seeds_of_run(READ_SEEDS_FROM, READ_SEEDS);
    let started = std::time::Instant::now();
    let (mut operations, mut leaders, mut follower_lease_reads) = (0, 0, 0);
    for &seed in &seeds {
        let opts = SimOptions::reads_for_seed(seed);
        match run_seed(seed, &opts) {
            Ok(report) => {
                if seeds.len() == 1 {
                    println!("seed {seed}: {opts:?}\n{report:?}");
                }
                operations += report.client_operations;
                leaders += report.leaders_elected;
                follower_lease_reads += report.follower_lease_reads;
            }
            Err(violation) => panic!(
                "seed {seed} (read profile) violated a property: {}\noptions: {opts:?}\nreplay: CONCLAVE_SIM_READS=1 {}",
                violation.0,
                replay_command(seed)
            ),
        }
    }
    println!(
        "{} read-profile seeds in {:?}: {operations} client operations, {leaders} leaders elected, {follower_lease_reads} reads served under follower leases",
        seeds.len(),
        started.elapsed()
    );
    assert!(operations > 0 && leaders > 0, "the runs did nothing");
    assert!(seeds.len() == 1 || follower_lease_reads > 0, "no follower served a read under a lease");
}

fn run_seeds(first: u64, force_quiesce: bool) {
    run_seeds_with(first, DEFAULT_SEEDS, force_quiesce, false)
}

fn run_seeds_with(first: u64, default_count: u64, force_quiesce: bool, force_eager_rejoin: bool) {
    let seeds = seeds_of_run(first, default_count);
    let started = std::time::Instant::now();
    let mut totals = sim::cluster::SimReport::default();
    let options = |seed: u64| {
        let opts = SimOptions::for_seed(seed);
        SimOptions { quiesce: opts.quiesce || force_quiesce, eager_rejoin: opts.eager_rejoin || force_eager_rejoin, ..opts }
    };
    for &seed in &seeds {
        let opts = options(seed);
        match run_seed(seed, &opts) {
            Ok(report) => {
                if seeds.len() == 1 {
                    println!("seed {seed}: {opts:?}\n{report:?}");
                }
                totals.ticks += report.ticks;
                totals.committed_entries += report.committed_entries;
                totals.client_operations += report.client_operations;
                totals.crashes += report.crashes;
                totals.leaders_elected += report.leaders_elected;
                totals.batches_delivered += report.batches_delivered;
                totals.snapshots_taken += report.snapshots_taken;
                totals.snapshots_installed += report.snapshots_installed;
                totals.quiesced_ticks += report.quiesced_ticks;
                totals.members_added += report.members_added;
                totals.members_removed += report.members_removed;
                totals.replicas_discarded += report.replicas_discarded;
                totals.eager_rejoins += report.eager_rejoins;
                totals.incarnation_drops += report.incarnation_drops;
                totals.follower_lease_reads += report.follower_lease_reads;
                totals.peer_down_wakes += report.peer_down_wakes;
            }
            Err(violation) => {
                let replay = replay_command(seed);
                let replay = if force_quiesce { format!("CONCLAVE_SIM_QUIESCE=1 {replay}") } else { replay };
                let replay = if force_eager_rejoin { format!("CONCLAVE_SIM_EAGER_REJOIN=1 {replay}") } else { replay };
                panic!("seed {seed} violated a property: {}\noptions: {opts:?}\nreplay: {replay}", violation.0)
            }
        }
    }
    println!(
        "{} seeds (quiescence forced: {force_quiesce}, eager rejoins: {force_eager_rejoin}) in {:?}: {totals:?}",
        seeds.len(),
        started.elapsed()
    );
    assert!(totals.committed_entries > 0 && totals.leaders_elected > 0, "the runs did nothing");
    if seeds.len() >= 100 {
        assert!(totals.snapshots_installed > 0, "no run streamed a snapshot to a lagging follower");
        assert!(totals.quiesced_ticks > 0, "no group ever went quiet");
        if force_quiesce {
            assert!(totals.peer_down_wakes > 0, "no connection failure woke a quiet group");
        }
        if SimOptions::for_seed(0).whole_nodes {
            assert!(totals.members_added > 0 && totals.replicas_discarded > 0, "no run added a new replica or deleted a removed one");
        }
        // Only whole-node changes remove nodes, so only they can rejoin them.
        if force_eager_rejoin && SimOptions::for_seed(0).whole_nodes {
            assert!(totals.eager_rejoins > 0, "no removed node joined again at once");
            assert!(totals.incarnation_drops > 0, "no late message of a deleted replica reached its successor's group");
        }
    }
}
