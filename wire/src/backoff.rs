//! Reconnection delays: exponential backoff with "equal jitter", driven by a seeded RNG so a
//! run (or a simulation) can be replayed exactly.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How long to wait between connection attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Upper bound of the first delay.
    pub initial: Duration,
    /// Upper bound of any delay; the bound doubles per failed attempt up to this.
    pub max: Duration,
    /// Seed of the jitter RNG. Give every peer its own (e.g. derived from node and shard ids)
    /// so that reconnecting peers spread out instead of retrying in lock step.
    pub seed: u64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig { initial: Duration::from_millis(50), max: Duration::from_secs(5), seed: 0 }
    }
}

/// The delay sequence of one peer: attempt `n` waits a uniformly random time in
/// `[bound/2, bound]` where `bound = min(max, initial * 2^n)`.
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
    rng: ChaCha8Rng,
}

impl Backoff {
    /// A fresh sequence seeded with `config.seed`.
    pub fn new(config: BackoffConfig) -> Backoff {
        assert!(config.initial <= config.max, "backoff initial delay exceeds its maximum");
        Backoff { config, attempt: 0, rng: ChaCha8Rng::seed_from_u64(config.seed) }
    }

    /// The delay before the next attempt; each call counts one more failed attempt.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32 << self.attempt.min(20);
        let bound = self.config.initial.saturating_mul(factor).min(self.config.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = bound / 2;
        let jitter_nanos = self.rng.random_range(0..=(bound - half).as_nanos() as u64);
        half + Duration::from_nanos(jitter_nanos)
    }

    /// Starts over from the initial delay (after a connection succeeded).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_within_bounds_and_reset() {
        let config = BackoffConfig { initial: Duration::from_millis(10), max: Duration::from_millis(200), seed: 7 };
        let mut backoff = Backoff::new(config);
        let mut bound = Duration::from_millis(10);
        for _ in 0..10 {
            let delay = backoff.next_delay();
            assert!(delay >= bound / 2 && delay <= bound, "{delay:?} outside [{:?}, {bound:?}]", bound / 2);
            bound = (bound * 2).min(config.max);
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(10));
    }

    #[test]
    fn same_seed_same_delays_other_seed_other_delays() {
        let config = BackoffConfig { seed: 42, ..BackoffConfig::default() };
        let run = |config| {
            let mut backoff = Backoff::new(config);
            (0..8).map(|_| backoff.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(run(config), run(config));
        assert_ne!(run(config), run(BackoffConfig { seed: 43, ..config }));
    }
}
