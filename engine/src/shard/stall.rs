//! Stall reports of the shard loop: how long each phase of one round took, and how late the
//! round's tick came. A round that holds the loop longer than the configured threshold is
//! logged at `warn` with its phases, so a replica that stops answering its peers (its
//! election and heartbeat timers stop with the loop) can be traced to what held it.

use std::time::Duration;

use super::clock::Monotonic;

/// The phases of one round of the shard loop, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    Requests,
    Tick,
    Ready,
    Snapshots,
    Removals,
}

const PHASES: usize = 5;

/// Times the phases of one round; `finish` reports a round longer than the threshold.
pub(super) struct RoundTimer {
    threshold: Duration,
    /// The runtime's monotonic clock (µs), and its readings at the start and the last lap.
    clock: Monotonic,
    started: u64,
    mark: u64,
    phases: [Duration; PHASES],
    /// How late the round's tick ran after it was due.
    tick_late: Duration,
}

impl RoundTimer {
    pub(super) fn start(threshold: Duration, clock: Monotonic) -> Self {
        let now = clock();
        RoundTimer { threshold, clock, started: now, mark: now, phases: [Duration::ZERO; PHASES], tick_late: Duration::ZERO }
    }

    /// Ends the current phase as `phase`.
    pub(super) fn lap(&mut self, phase: Phase) {
        let now = (self.clock)();
        self.phases[phase as usize] += Duration::from_micros(now.saturating_sub(self.mark));
        self.mark = now;
    }

    pub(super) fn tick_ran(&mut self, late: Duration) {
        self.tick_late = late;
    }

    /// The round's phases, when it took longer than the threshold or its tick came later
    /// than the threshold; `None` otherwise.
    pub(super) fn finish(self) -> Option<StallReport> {
        let total = Duration::from_micros((self.clock)().saturating_sub(self.started));
        if self.threshold.is_zero() || (total < self.threshold && self.tick_late < self.threshold) {
            return None;
        }
        Some(StallReport { total, phases: self.phases, tick_late: self.tick_late })
    }
}

/// One slow round of the shard loop.
#[derive(Debug)]
pub(super) struct StallReport {
    pub total: Duration,
    pub phases: [Duration; PHASES],
    pub tick_late: Duration,
}

impl StallReport {
    pub(super) fn log(&self, node: u64) {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let [requests, tick, ready, snapshots, removals] = self.phases.map(ms);
        tracing::warn!(
            node,
            round_ms = ms(self.total),
            tick_late_ms = ms(self.tick_late),
            requests_ms = requests,
            tick_ms = tick,
            ready_ms = ready,
            snapshots_ms = snapshots,
            removals_ms = removals,
            "shard loop stalled: Raft timers and peer answers waited"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::clock::instant_clock;

    fn clock() -> Monotonic {
        std::rc::Rc::from(instant_clock())
    }

    #[test]
    fn a_quick_round_reports_nothing() {
        let mut timer = RoundTimer::start(Duration::from_secs(60), clock());
        timer.lap(Phase::Requests);
        timer.tick_ran(Duration::from_millis(1));
        assert!(timer.finish().is_none());
    }

    #[test]
    fn a_slow_phase_is_reported_with_its_duration() {
        let mut timer = RoundTimer::start(Duration::from_millis(5), clock());
        timer.lap(Phase::Requests);
        std::thread::sleep(Duration::from_millis(10));
        timer.lap(Phase::Snapshots);
        let report = timer.finish().expect("a 10 ms round is past a 5 ms threshold");
        assert!(report.phases[Phase::Snapshots as usize] >= Duration::from_millis(10));
        assert!(report.phases[Phase::Requests as usize] < Duration::from_millis(5));
        assert!(report.total >= Duration::from_millis(10));
    }

    #[test]
    fn a_late_tick_is_reported_even_when_the_round_was_quick() {
        let mut timer = RoundTimer::start(Duration::from_millis(50), clock());
        timer.tick_ran(Duration::from_millis(80));
        let report = timer.finish().expect("a tick 80 ms late is past a 50 ms threshold");
        assert_eq!(report.tick_late, Duration::from_millis(80));
    }

    #[test]
    fn a_zero_threshold_turns_reports_off() {
        let mut timer = RoundTimer::start(Duration::ZERO, clock());
        timer.tick_ran(Duration::from_secs(1));
        assert!(timer.finish().is_none());
    }
}
