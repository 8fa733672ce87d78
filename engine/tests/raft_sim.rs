//! Runs the deterministic Raft simulation over many seeds (1,000 by default).
//! `CONCLAVE_SIM_SEEDS=N` runs N seeds (a soak); `CONCLAVE_SIM_SEED=S` replays seed S alone.
//! Every failure prints its seed and the command that replays it.

mod sim;

use sim::{replay_command, run_seed, SimOptions};

const DEFAULT_SEEDS: u64 = 1_000;

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(text.parse().unwrap_or_else(|_| panic!("{name} must be an unsigned integer, got {text:?}")))
}

#[test]
fn simulation_upholds_safety_liveness_and_linearizability() {
    let seeds: Vec<u64> = match env_u64("CONCLAVE_SIM_SEED") {
        Some(seed) => vec![seed],
        None => (0..env_u64("CONCLAVE_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS)).collect(),
    };
    let started = std::time::Instant::now();
    let mut totals = sim::cluster::SimReport::default();
    for &seed in &seeds {
        let opts = SimOptions::for_seed(seed);
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
            }
            Err(violation) => {
                panic!("seed {seed} violated a property: {}\noptions: {opts:?}\nreplay: {}", violation.0, replay_command(seed))
            }
        }
    }
    println!("{} seeds in {:?}: {totals:?}", seeds.len(), started.elapsed());
    assert!(totals.committed_entries > 0 && totals.leaders_elected > 0, "the runs did nothing");
    if seeds.len() >= 100 {
        assert!(totals.snapshots_installed > 0, "no run streamed a snapshot to a lagging follower");
        assert!(totals.quiesced_ticks > 0, "no group ever went quiet");
        if SimOptions::for_seed(0).whole_nodes {
            assert!(totals.members_added > 0 && totals.replicas_discarded > 0, "no run added a new replica or deleted a removed one");
        }
    }
}
