//! The clocks the shard runtime reads: every reading of time in the runtime (its loop's
//! ticks and budgets, barriers, timeouts of forwarded requests, stall reports, lease reads)
//! comes from the [`MonotonicClock`] it was given, in microseconds; commands are stamped
//! from the wall [`Clock`](super::api::Clock). This file holds the default monotonic clock
//! and conversions.

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::api::MonotonicClock;

/// The runtime's monotonic clock, shared with what measures rounds (see `stall.rs`).
pub(super) type Monotonic = Rc<dyn Fn() -> u64>;

/// The process's monotonic clock, in microseconds since the runtime was built.
pub(super) fn instant_clock() -> MonotonicClock {
    let origin = Instant::now();
    Box::new(move || u64::try_from(origin.elapsed().as_micros()).unwrap_or(u64::MAX))
}

/// `duration` in microseconds (saturating).
pub(super) fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}
