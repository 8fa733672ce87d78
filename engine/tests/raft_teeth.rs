//! The simulation has teeth: with each deliberate Raft bug switched on, the same seeds and
//! checkers that pass on the correct core must report a violation. The read-safety bugs run
//! on the read profile's seeds, which `raft_sim` passes on the correct core (tuning.md, "Read
//! safety in the simulation").

mod sim;

use conclave_engine::raft::DeliberateBugs;
use sim::read_profile::READ_SEEDS_FROM;
use sim::{run_seed, SimOptions};

/// Seeds tried per bug (the CI seed budget); the first violation ends the search.
const SEED_BUDGET: u64 = 1_000;

/// Which fault profile a teeth test runs its seeds under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Profile {
    /// Each seed's own options (`SimOptions::for_seed`), seeds from 0.
    Regular,
    /// The "figure 8" profile that makes freshly elected leaders crash before their entries
    /// spread (Raft paper, figure 8): three nodes, leader-targeted crashes, heavy loss, one
    /// entry per append; seeds from 0.
    FigureEight,
    /// The read-safety profile of `raft_sim` (`SimOptions::reads_for_seed`), on its own
    /// seeds (from `READ_SEEDS_FROM`).
    Reads,
    /// The read-safety profile with follower read leases on in every seed.
    FollowerReads,
}

impl Profile {
    /// The seed of the `n`th run of this profile.
    fn seed(self, n: u64) -> u64 {
        match self {
            Profile::Reads | Profile::FollowerReads => READ_SEEDS_FROM + n,
            Profile::Regular | Profile::FigureEight => n,
        }
    }

    fn options(self, seed: u64) -> SimOptions {
        match self {
            Profile::Regular => SimOptions::for_seed(seed),
            Profile::FigureEight => {
                let mut opts = SimOptions::for_seed(seed);
                opts.nodes = 3;
                opts.groups = 6;
                opts.quiesce = false;
                opts.crash = 0.01;
                opts.crash_leader = 0.3;
                opts.restart = 0.3;
                opts.loss = 0.3;
                opts.max_entries_per_message = 1;
                opts
            }
            Profile::Reads => SimOptions::reads_for_seed(seed),
            Profile::FollowerReads => SimOptions { lease_reads: true, follower_leases: true, ..SimOptions::reads_for_seed(seed) },
        }
    }
}

/// Runs the profile's seeds with `bugs` until one violates a property; returns (seed,
/// violation).
fn first_violation(bugs: DeliberateBugs, profile: Profile) -> Option<(u64, String)> {
    (0..SEED_BUDGET).map(|n| profile.seed(n)).find_map(|seed| {
        let mut opts = profile.options(seed);
        opts.bugs = bugs;
        run_seed(seed, &opts).err().map(|v| (seed, v.0))
    })
}

fn assert_caught(name: &str, bugs: DeliberateBugs, profile: Profile) {
    let started = std::time::Instant::now();
    match first_violation(bugs, profile) {
        Some((seed, violation)) => {
            // A linearizability violation carries its whole history: its opening suffices here.
            let summary: String = violation.chars().take(300).collect();
            println!("{name}: caught at seed {seed} ({profile:?} profile) in {:?}: {summary}", started.elapsed())
        }
        None => panic!("{name}: no violation found in {SEED_BUDGET} seeds ({profile:?} profile); the simulation lacks teeth"),
    }
}

#[test]
fn catches_votes_for_stale_logs() {
    assert_caught("vote_for_stale_log", DeliberateBugs { vote_for_stale_log: true, ..Default::default() }, Profile::Regular);
}

#[test]
fn catches_old_term_commits_by_counting() {
    assert_caught(
        "commit_old_term_by_count",
        DeliberateBugs { commit_old_term_by_count: true, ..Default::default() },
        Profile::FigureEight,
    );
}

#[test]
fn catches_acks_before_persisting() {
    assert_caught("ack_before_persist", DeliberateBugs { ack_before_persist: true, ..Default::default() }, Profile::Regular);
}

#[test]
fn catches_read_index_without_its_round() {
    assert_caught("read_index_without_quorum", DeliberateBugs { read_index_without_quorum: true, ..Default::default() }, Profile::Reads);
}

#[test]
fn catches_votes_inside_a_lease() {
    assert_caught("vote_inside_lease", DeliberateBugs { vote_inside_lease: true, ..Default::default() }, Profile::Reads);
}

#[test]
fn catches_leases_trusted_after_they_ran_out() {
    assert_caught("lease_in_ticks", DeliberateBugs { lease_in_ticks: true, ..Default::default() }, Profile::Reads);
}

#[test]
fn catches_commits_without_the_follower_lease_holders() {
    let bugs = DeliberateBugs { commit_without_lease_holders: true, ..Default::default() };
    assert_caught("commit_without_lease_holders", bugs, Profile::FollowerReads);
}

#[test]
fn catches_new_leaders_not_waiting_for_follower_leases() {
    assert_caught("no_lease_window", DeliberateBugs { no_lease_window: true, ..Default::default() }, Profile::FollowerReads);
}

/// The hostile profile alone, without bugs, must pass: the teeth bite only on bugs.
#[test]
fn figure_eight_profile_passes_without_bugs() {
    for seed in 0..200 {
        if let Err(violation) = run_seed(seed, &Profile::FigureEight.options(seed)) {
            panic!("seed {seed} (figure 8 profile) violated: {}", violation.0);
        }
    }
}
