//! The simulation has teeth: with each deliberate Raft bug switched on, the same seeds and
//! checkers that pass on the correct core must report a violation.

mod sim;

use conclave_engine::raft::DeliberateBugs;
use sim::{run_seed, SimOptions};

/// Seeds tried per bug (the CI seed budget); the first violation ends the search.
const SEED_BUDGET: u64 = 1_000;

/// The fault profile of a seed: the regular one, or the "figure 8" one that makes freshly
/// elected leaders crash before their entries spread (Raft paper, figure 8): three nodes,
/// leader-targeted crashes, heavy loss, one entry per append.
fn options(seed: u64, figure_eight: bool) -> SimOptions {
    let mut opts = SimOptions::for_seed(seed);
    if figure_eight {
        opts.nodes = 3;
        opts.groups = 6;
        opts.quiesce = false;
        opts.crash = 0.01;
        opts.crash_leader = 0.3;
        opts.restart = 0.3;
        opts.loss = 0.3;
        opts.max_entries_per_message = 1;
    }
    opts
}

/// Runs seeds with `bugs` until one violates a property; returns (seed, violation).
fn first_violation(bugs: DeliberateBugs, figure_eight: bool) -> Option<(u64, String)> {
    (0..SEED_BUDGET).find_map(|seed| {
        let mut opts = options(seed, figure_eight);
        opts.bugs = bugs;
        run_seed(seed, &opts).err().map(|v| (seed, v.0))
    })
}

fn assert_caught(name: &str, bugs: DeliberateBugs, figure_eight: bool) {
    match first_violation(bugs, figure_eight) {
        Some((seed, violation)) => println!("{name}: caught at seed {seed}: {violation}"),
        None => panic!("{name}: no violation found in {SEED_BUDGET} seeds; the simulation lacks teeth"),
    }
}

#[test]
fn catches_votes_for_stale_logs() {
    assert_caught("vote_for_stale_log", DeliberateBugs { vote_for_stale_log: true, ..Default::default() }, false);
}

#[test]
fn catches_old_term_commits_by_counting() {
    assert_caught("commit_old_term_by_count", DeliberateBugs { commit_old_term_by_count: true, ..Default::default() }, true);
}

#[test]
fn catches_acks_before_persisting() {
    assert_caught("ack_before_persist", DeliberateBugs { ack_before_persist: true, ..Default::default() }, false);
}

/// The hostile profile alone, without bugs, must pass: the teeth bite only on bugs.
#[test]
fn figure_eight_profile_passes_without_bugs() {
    for seed in 0..200 {
        if let Err(violation) = run_seed(seed, &options(seed, true)) {
            panic!("seed {seed} (figure 8 profile) violated: {}", violation.0);
        }
    }
}
