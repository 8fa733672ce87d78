//! Who may send the next request, and when: the bounds of a run (deadline, operation
//! count) and the open-loop schedule, where request k is due at `start + k / rate` whether
//! or not a caller is free then, so latency measured from that due time includes queueing.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The moment request `index` is due at `rate_per_sec` requests per second from `start`.
pub fn due_time(start: Instant, rate_per_sec: f64, index: u64) -> Instant {
    debug_assert!(rate_per_sec > 0.0 && rate_per_sec.is_finite());
    start + Duration::from_secs_f64(index as f64 / rate_per_sec)
}

/// Permission to send one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// Send now (closed loop) or at `due` (open loop); latency is measured from `due`.
    Go { index: u64, due: Instant },
    /// The run is over.
    Stop,
}

/// Hands out request slots to every caller of a run, until the deadline or the operation
/// budget is reached, or the run is stopped.
pub struct Pacer {
    /// The instant offsets are counted from.
    base: Instant,
    /// Start of the measured phase, nanoseconds after `base`; `u64::MAX` until `begin_at`.
    start_offset_nanos: AtomicU64,
    duration: Duration,
    limit: Option<u64>,
    rate_per_sec: Option<f64>,
    next: AtomicU64,
    stopped: AtomicBool,
}

impl Pacer {
    /// A closed-loop pacer: each slot is due when it is claimed. Hands out slots once
    /// `begin_at` has set the start.
    pub fn closed(duration: Duration, limit: Option<u64>) -> Pacer {
        Pacer {
            base: Instant::now(),
            start_offset_nanos: AtomicU64::new(u64::MAX),
            duration,
            limit,
            rate_per_sec: None,
            next: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        }
    }

    /// An open-loop pacer at a fixed total rate.
    pub fn open(duration: Duration, limit: Option<u64>, rate_per_sec: f64) -> Pacer {
        assert!(rate_per_sec > 0.0 && rate_per_sec.is_finite(), "the rate is validated by BenchConfig");
        Pacer { rate_per_sec: Some(rate_per_sec), ..Pacer::closed(duration, limit) }
    }

    /// Starts the measured phase at `start` (not before the pacer was made).
    pub fn begin_at(&self, start: Instant) {
        let offset = u64::try_from(start.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX - 1);
        self.start_offset_nanos.store(offset, Ordering::Release);
    }

    /// The start of the measured phase, once begun.
    pub fn start(&self) -> Option<Instant> {
        let offset = self.start_offset_nanos.load(Ordering::Acquire);
        (offset != u64::MAX).then(|| self.base + Duration::from_nanos(offset))
    }

    /// Claims the next slot as of `now`.
    pub fn claim_at(&self, now: Instant) -> Slot {
        if self.stopped.load(Ordering::Relaxed) {
            return Slot::Stop;
        }
        let Some(start) = self.start() else {
            debug_assert!(false, "slots are claimed only after begin_at");
            return Slot::Stop;
        };
        let index = self.next.fetch_add(1, Ordering::Relaxed);
        if self.limit.is_some_and(|limit| index >= limit) {
            return Slot::Stop;
        }
        let due = match self.rate_per_sec {
            Some(rate) => due_time(start, rate, index),
            None => now,
        };
        if due >= start + self.duration {
            return Slot::Stop;
        }
        Slot::Go { index, due }
    }

    /// Claims the next slot now.
    pub fn claim(&self) -> Slot {
        self.claim_at(Instant::now())
    }

    /// Ends the run for every caller (their next claim answers `Stop`).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// Slots handed out so far (claims past the end included).
    pub fn claimed(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::sync::Arc;

    #[test]
    fn open_loop_slots_are_evenly_spaced_from_start() {
        let pacer = Pacer::open(Duration::from_secs(10), None, 1_000.0);
        let start = Instant::now();
        pacer.begin_at(start);
        // Claimed late (as a busy caller would): the due times do not move.
        let late = start + Duration::from_secs(5);
        for k in 0..100u64 {
            match pacer.claim_at(late) {
                Slot::Go { index, due } => {
                    assert_eq!(index, k);
                    let expected = start + Duration::from_millis(k);
                    let error = due.max(expected) - due.min(expected);
                    assert!(error <= Duration::from_micros(1), "slot {k} due {error:?} off");
                }
                Slot::Stop => panic!("slot {k} is before the deadline"),
            }
        }
    }

    #[test]
    fn open_loop_stops_at_the_deadline() {
        let pacer = Pacer::open(Duration::from_millis(100), None, 100.0);
        let start = Instant::now();
        pacer.begin_at(start);
        let granted = std::iter::from_fn(|| match pacer.claim_at(start) {
            Slot::Go { .. } => Some(()),
            Slot::Stop => None,
        })
        .count();
        assert_eq!(granted, 10, "100/s for 100 ms is 10 requests");
    }

    #[test]
    fn closed_loop_is_due_at_claim_and_honours_the_operation_limit() {
        let pacer = Pacer::closed(Duration::from_secs(60), Some(3));
        let start = Instant::now();
        pacer.begin_at(start);
        let now = start + Duration::from_millis(7);
        assert_eq!(pacer.claim_at(now), Slot::Go { index: 0, due: now });
        assert!(matches!(pacer.claim_at(now), Slot::Go { index: 1, .. }));
        assert!(matches!(pacer.claim_at(now), Slot::Go { index: 2, .. }));
        assert_eq!(pacer.claim_at(now), Slot::Stop);
        assert_eq!(pacer.claim_at(start + Duration::from_secs(61)), Slot::Stop);
    }

    #[test]
    fn nothing_is_handed_out_before_the_start() {
        let pacer = Pacer::closed(Duration::from_secs(1), None);
        assert_eq!(pacer.start(), None);
        let start = Instant::now();
        pacer.begin_at(start);
        assert_eq!(pacer.start(), Some(start));
    }

    #[test]
    fn closed_loop_stops_after_the_deadline_or_stop() {
        let pacer = Pacer::closed(Duration::from_secs(1), None);
        let start = Instant::now();
        pacer.begin_at(start);
        assert_eq!(pacer.claim_at(start + Duration::from_secs(1)), Slot::Stop);
        assert!(matches!(pacer.claim_at(start), Slot::Go { .. }));
        pacer.stop();
        assert_eq!(pacer.claim_at(start), Slot::Stop);
    }

    #[test]
    fn concurrent_callers_get_distinct_slots_and_no_more_than_the_limit() {
        let pacer = Arc::new(Pacer::open(Duration::from_secs(3600), Some(10_000), 1e6));
        pacer.begin_at(Instant::now());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let pacer = Arc::clone(&pacer);
                std::thread::spawn(move || {
                    let mut mine = Vec::new();
                    while let Slot::Go { index, .. } = pacer.claim() {
                        mine.push(index);
                    }
                    mine
                })
            })
            .collect();
        let all: Vec<u64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        let distinct: BTreeSet<u64> = all.iter().copied().collect();
        assert_eq!(all.len(), 10_000);
        assert_eq!(distinct, (0..10_000).collect());
    }
}
