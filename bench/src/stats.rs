//! Measurement: one `hdrhistogram` per operation for the whole measured phase, another per
//! operation for the current one-second window (the time series of the chart and of the
//! progress line), and error counts by operation and by message.
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::report::{OpSummary, WindowStats};

/// Largest latency a histogram holds; longer ones are clamped to it (and still counted).
const MAX_TRACKED_NANOS: u64 = 120_000_000_000;
/// Distinct error messages kept per run (further ones only add to the counts).
const MAX_ERROR_MESSAGES: usize = 32;

/// Latencies (nanoseconds, 3 significant digits) and errors of one operation.
#[derive(Clone, Debug)]
pub struct OpStats {
    pub latencies: Histogram<u64>,
    pub errors: u64,
}

impl OpStats {
    pub fn new() -> OpStats {
        let latencies = Histogram::new_with_bounds(1, MAX_TRACKED_NANOS, 3).expect("valid histogram bounds");
        OpStats { latencies, errors: 0 }
    }

    pub fn record(&mut self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).clamp(1, MAX_TRACKED_NANOS);
        self.latencies.record(nanos).expect("value clamped into the histogram's range");
    }

    /// Adds `other`'s latencies and errors to these.
    pub fn merge(&mut self, other: &OpStats) {
        self.latencies.add(&other.latencies).expect("histograms of the same bounds");
        self.errors += other.errors;
    }

    /// Percentiles and rates of this operation over `elapsed`.
    pub fn summary(&self, elapsed: Duration) -> OpSummary {
        OpSummary::of(&self.latencies, self.errors, elapsed)
    }
}

impl Default for OpStats {
    fn default() -> OpStats {
        OpStats::new()
    }
}

#[derive(Default)]
struct Totals {
    whole_run: BTreeMap<&'static str, OpStats>,
    window: BTreeMap<&'static str, OpStats>,
    timeline: Vec<BTreeMap<String, WindowStats>>,
    error_messages: BTreeMap<String, u64>,
}

/// Shared by every caller of a run: records each operation's outcome.
pub struct Recorder {
    totals: Mutex<Totals>,
    window_started: Mutex<Instant>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder { totals: Mutex::new(Totals::default()), window_started: Mutex::new(Instant::now()) }
    }

    /// A successful operation `op` that took `latency`.
    pub fn record(&self, op: &'static str, latency: Duration) {
        let mut totals = self.totals.lock().expect("recorder lock");
        totals.whole_run.entry(op).or_default().record(latency);
        totals.window.entry(op).or_default().record(latency);
    }

    /// A failed operation `op`.
    pub fn error(&self, op: &'static str, message: &str) {
        let mut totals = self.totals.lock().expect("recorder lock");
        totals.whole_run.entry(op).or_default().errors += 1;
        totals.window.entry(op).or_default().errors += 1;
        let key = format!("{op}: {message}");
        let kept = totals.error_messages.len();
        if let Some(count) = totals.error_messages.get_mut(&key) {
            *count += 1;
        } else if kept < MAX_ERROR_MESSAGES {
            totals.error_messages.insert(key, 1);
        }
    }

    /// Forgets everything recorded so far (the end of a warm-up or setup phase).
    pub fn reset(&self) {
        *self.totals.lock().expect("recorder lock") = Totals::default();
        *self.window_started.lock().expect("window lock") = Instant::now();
    }

    /// Closes the current window: appends it to the time series and returns it.
    pub fn close_window(&self) -> BTreeMap<String, WindowStats> {
        let now = Instant::now();
        let elapsed = {
            let mut started = self.window_started.lock().expect("window lock");
            let elapsed = now.duration_since(*started);
            *started = now;
            elapsed
        };
        let mut totals = self.totals.lock().expect("recorder lock");
        let window = std::mem::take(&mut totals.window);
        let stats: BTreeMap<String, WindowStats> =
            window.iter().map(|(op, s)| (op.to_string(), WindowStats::of(&s.latencies, s.errors, elapsed))).collect();
        totals.timeline.push(stats.clone());
        stats
    }

    /// Everything recorded: per-operation totals, the time series, the error messages.
    pub fn finish(&self) -> Recorded {
        let totals = std::mem::take(&mut *self.totals.lock().expect("recorder lock"));
        let ops = totals.whole_run.into_iter().map(|(op, s)| (op.to_string(), s)).collect();
        Recorded { ops, timeline: totals.timeline, error_messages: totals.error_messages }
    }
}

/// What a [`Recorder`] holds at the end of a run.
pub struct Recorded {
    /// Whole-run statistics by operation.
    pub ops: BTreeMap<String, OpStats>,
    /// One entry per closed window.
    pub timeline: Vec<BTreeMap<String, WindowStats>>,
    /// Error counts by "operation: message".
    pub error_messages: BTreeMap<String, u64>,
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder::new()
    }
}

/// One progress line: each operation's rate, p50, p99 and errors in the last window.
pub fn progress_line(second: usize, window: &BTreeMap<String, WindowStats>) -> String {
    let mut line = format!("[{second:>4}s]");
    if window.is_empty() {
        line.push_str(" no operations completed");
    }
    for (op, w) in window {
        line.push_str(&format!(" | {op} {:.0} ops/s p50 {:.0}us p99 {:.0}us err {}", w.ops_per_sec, w.p50_us, w.p99_us, w.errors));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_per_operation_and_counts_errors() {
        let recorder = Recorder::new();
        for micros in 1..=100u64 {
            recorder.record("enter", Duration::from_micros(micros));
        }
        recorder.record("withdraw", Duration::from_millis(3));
        recorder.error("enter", "UNAVAILABLE: no leader");
        recorder.error("enter", "UNAVAILABLE: no leader");
        let Recorded { ops, error_messages: errors, .. } = recorder.finish();
        let enter = &ops["enter"];
        assert_eq!(enter.latencies.len(), 100);
        assert_eq!(enter.errors, 2);
        let p50 = enter.latencies.value_at_quantile(0.5);
        assert!((49_900..=50_100).contains(&p50), "p50 of 1..=100 us is 50 us, got {p50} ns");
        assert_eq!(ops["withdraw"].latencies.len(), 1);
        assert_eq!(errors["enter: UNAVAILABLE: no leader"], 2);
    }

    #[test]
    fn windows_form_a_time_series_and_start_empty() {
        let recorder = Recorder::new();
        recorder.record("get_term", Duration::from_micros(200));
        let first = recorder.close_window();
        assert_eq!(first["get_term"].count, 1);
        let second = recorder.close_window();
        assert!(second.is_empty(), "a new window holds nothing yet");
        let Recorded { ops, timeline, .. } = recorder.finish();
        assert_eq!(timeline.len(), 2);
        assert_eq!(ops["get_term"].latencies.len(), 1, "windows do not drain the whole-run totals");
        assert!(progress_line(1, &first).contains("get_term"));
        assert!(progress_line(2, &second).contains("no operations"));
    }

    #[test]
    fn out_of_range_latencies_are_clamped_not_lost() {
        let mut stats = OpStats::new();
        stats.record(Duration::ZERO);
        stats.record(Duration::from_secs(3600));
        assert_eq!(stats.latencies.len(), 2);
        assert!(stats.latencies.max() >= MAX_TRACKED_NANOS - MAX_TRACKED_NANOS / 1000);
    }

    #[test]
    fn distinct_error_messages_are_bounded() {
        let recorder = Recorder::new();
        for i in 0..100 {
            recorder.error("enter", &format!("message {i}"));
        }
        let Recorded { ops, error_messages: errors, .. } = recorder.finish();
        assert_eq!(ops["enter"].errors, 100);
        assert_eq!(errors.len(), MAX_ERROR_MESSAGES);
    }
}
