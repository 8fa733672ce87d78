//! The simulation has teeth: with each deliberate Raft bug switched on, the same seeds and
//! checkers that pass on the correct core must report a violation.

mod sim;

use conclave_engine::raft::DeliberateBugs;
use sim::{run_seed, SimOptions};

/// Seeds tried per bug (the CI seed budget); the first violation ends the search.
const SEED_BUDGET: u64 = 1_000;

/// Runs seeds with `bugs` until one violates a property; returns (seed, violation).
fn first_violation(bugs: DeliberateBugs) -> Option<(u64, String)> {
    (0..SEED_BUDGET).find_map(|seed| {
        let mut opts = SimOptions::for_seed(seed);
        opts.bugs = bugs;
        run_seed(seed, &opts).err().map(|v| (seed, v.0))
    })
}

fn assert_caught(name: &str, bugs: DeliberateBugs) {
    match first_violation(bugs) {
        Some((seed, violation)) => println!("{name}: caught at seed {seed}: {violation}"),
        None => panic!("{name}: no violation found in {SEED_BUDGET} seeds; the simulation lacks teeth"),
    }
}

#[test]
fn catches_votes_for_stale_logs() {
    assert_caught("vote_for_stale_log", DeliberateBugs { vote_for_stale_log: true, ..Default::default() });
}

#[test]
fn catches_old_term_commits_by_counting() {
    assert_caught(
        "commit_old_term_by_count",
        DeliberateBugs { commit_old_term_by_count: true, ..Default::default() },
    );
}

#[test]
fn catches_acks_before_persisting() {
    assert_caught("ack_before_persist", DeliberateBugs { ack_before_persist: true, ..Default::default() });
}
