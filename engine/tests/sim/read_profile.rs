//! The fault profile aimed at reads: lease reads on (mostly), a fast network so a new
//! leader can commit while an old one still believes it leads, no random crashes or
//! partitions, and instead the read nemesis of `cluster/reads.rs` (a leader cut off, a
//! challenger with an up-to-date log that stops hearing the leader, a leader whose node
//! stalls and whose clock then jumps), with clients reading from the old leader. Each node
//! has its own clock drifting within [`MAX_DRIFT_PPM`] of real time.

use super::SimOptions;

/// Largest drift of a node's monotonic clock from real time, in parts per million. The
/// lease's margin (`Config::safe_lease_micros`: 1/8 of it and two ticks) covers it.
pub const MAX_DRIFT_PPM: u64 = 20_000;

/// The first seed of the read-profile run (the eager-rejoin run of `raft_sim` starts at the
/// same number, under other options).
pub const READ_SEEDS_FROM: u64 = 2 << 32;

impl SimOptions {
    /// The read-safety profile of seed `seed` (sizes drawn as in `for_seed`).
    pub fn reads_for_seed(seed: u64) -> Self {
        use rand::{Rng, SeedableRng};
        let base = SimOptions::for_seed(seed);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x00ea_d5af_e7e5);
        SimOptions {
            groups: rng.random_range(1..=2),
            max_net_delay: rng.random_range(1..=6),
            max_disk_delay: rng.random_range(1..=6),
            loss: rng.random_range(0.0..0.03),
            duplicate: rng.random_range(0.0..0.03),
            crash: 0.0,
            crash_leader: 0.0,
            partition: 0.0,
            membership_change: 0.0,
            transfer: rng.random_range(0.0..0.005),
            lease_reads: rng.random_bool(0.8),
            quiesce: rng.random_bool(0.3),
            // Drawn last, so the options drawn before it are those the seed always had.
            follower_leases: rng.random_bool(0.6) || base.follower_leases,
            short_follower_leases: rng.random_bool(0.3),
            read_faults: true,
            ..base
        }
    }
}
