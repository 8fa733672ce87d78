//! The result of a run: per-operation percentiles, rates and errors, the one-second time
//! series, and writing it as JSON with the SVG chart beside it.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::config::BenchConfig;

fn micros(nanos: u64) -> f64 {
    nanos as f64 / 1_000.0
}

fn rate(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

/// One operation over the whole measured phase (latencies in microseconds).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OpSummary {
    pub count: u64,
    pub errors: u64,
    pub ops_per_sec: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

impl OpSummary {
    pub fn of(latencies: &Histogram<u64>, errors: u64, elapsed: Duration) -> OpSummary {
        let at = |q: f64| {
            if latencies.is_empty() {
                0.0
            } else {
                micros(latencies.value_at_quantile(q))
            }
        };
        OpSummary {
            count: latencies.len(),
            errors,
            ops_per_sec: rate(latencies.len(), elapsed),
            p50_us: at(0.5),
            p90_us: at(0.9),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: if latencies.is_empty() { 0.0 } else { micros(latencies.max()) },
            mean_us: if latencies.is_empty() { 0.0 } else { latencies.mean() / 1_000.0 },
        }
    }
}

/// One operation during one window of the time series.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WindowStats {
    pub count: u64,
    pub errors: u64,
    pub ops_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

impl WindowStats {
    pub fn of(latencies: &Histogram<u64>, errors: u64, elapsed: Duration) -> WindowStats {
        let at = |q: f64| {
            if latencies.is_empty() {
                0.0
            } else {
                micros(latencies.value_at_quantile(q))
            }
        };
        WindowStats {
            count: latencies.len(),
            errors,
            ops_per_sec: rate(latencies.len(), elapsed),
            p50_us: at(0.5),
            p99_us: at(0.99),
            max_us: if latencies.is_empty() { 0.0 } else { micros(latencies.max()) },
        }
    }
}

/// Everything a run measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub config: BenchConfig,
    /// Length of the measured phase (setup excluded), seconds.
    pub elapsed_sec: f64,
    pub ops: BTreeMap<String, OpSummary>,
    /// One entry per second of the measured phase (the last one may be shorter).
    pub timeline: Vec<BTreeMap<String, WindowStats>>,
    /// Error counts by "operation: message" (the first few distinct messages).
    pub error_messages: BTreeMap<String, u64>,
    /// Facts a reader needs to interpret the numbers.
    pub notes: Vec<String>,
    /// CPU seconds the server processes (`server_pids`) used over the measured phase.
    pub server_cpu_sec: Option<f64>,
    /// `server_cpu_sec` per successful operation, in microseconds.
    pub server_cpu_us_per_op: Option<f64>,
}

impl Report {
    /// The report of a run that measured `recorded` over `elapsed`, written as JSON (with its
    /// chart beside it) when the configuration names a file.
    pub fn finish(
        config: &BenchConfig,
        elapsed: Duration,
        recorded: crate::stats::Recorded,
        notes: Vec<String>,
        server_cpu_sec: Option<f64>,
    ) -> Result<Report, crate::error::BenchError> {
        let crate::stats::Recorded { ops, timeline, error_messages } = recorded;
        let mut report = Report {
            config: config.clone(),
            elapsed_sec: elapsed.as_secs_f64(),
            ops: ops.iter().map(|(op, stats)| (op.clone(), stats.summary(elapsed))).collect(),
            timeline,
            error_messages,
            notes,
            server_cpu_sec,
            server_cpu_us_per_op: None,
        };
        let total = report.total_ops();
        report.server_cpu_us_per_op = server_cpu_sec.filter(|_| total > 0).map(|cpu| cpu * 1e6 / total as f64);
        if let Some(path) = &config.json {
            report.write(path).map_err(|e| crate::error::BenchError::Io(format!("writing {}: {e}", path.display())))?;
        }
        Ok(report)
    }

    /// Errors of all operations together.
    pub fn total_errors(&self) -> u64 {
        self.ops.values().map(|o| o.errors).sum()
    }

    /// Successful operations of all kinds together.
    pub fn total_ops(&self) -> u64 {
        self.ops.values().map(|o| o.count).sum()
    }

    /// A fixed-width table of the per-operation summaries, for the terminal.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<18} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8}\n",
            "op", "ops/s", "p50 us", "p90 us", "p99 us", "p99.9 us", "max us", "count", "errors"
        );
        for (op, s) in &self.ops {
            out.push_str(&format!(
                "{:<18} {:>10.0} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10} {:>8}\n",
                op, s.ops_per_sec, s.p50_us, s.p90_us, s.p99_us, s.p999_us, s.max_us, s.count, s.errors
            ));
        }
        if let (Some(cpu), Some(per_op)) = (self.server_cpu_sec, self.server_cpu_us_per_op) {
            out.push_str(&format!(
                "server CPU: {cpu:.3} s over the measured phase ({:.2} cores), {per_op:.1} us per operation\n",
                cpu / self.elapsed_sec.max(1e-9)
            ));
        }
        out
    }

    /// Writes the report as pretty JSON to `path` and the chart beside it; returns the
    /// chart's path.
    pub fn write(&self, path: &Path) -> std::io::Result<PathBuf> {
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, json + "\n")?;
        let svg_path = svg_path_beside(path);
        std::fs::write(&svg_path, crate::svg::render(self))?;
        Ok(svg_path)
    }
}

/// `run.json` → `run.svg` (a path without an extension gets `.svg` appended).
pub fn svg_path_beside(json: &Path) -> PathBuf {
    json.with_extension("svg")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Workload;
    use crate::stats::OpStats;

    pub(crate) fn sample_report() -> Report {
        let mut enter = OpStats::new();
        for micros in 1..=1000u64 {
            enter.record(Duration::from_micros(micros));
        }
        enter.errors = 3;
        let elapsed = Duration::from_secs(2);
        let ops = BTreeMap::from([("enter".to_string(), enter.summary(elapsed))]);
        let window = |n: u64| {
            BTreeMap::from([(
                "enter".to_string(),
                WindowStats { count: n, errors: 0, ops_per_sec: n as f64, p50_us: 500.0, p99_us: 990.0, max_us: 1000.0 },
            )])
        };
        Report {
            config: BenchConfig::new("http://127.0.0.1:1", Workload::Churn),
            elapsed_sec: 2.0,
            ops,
            timeline: vec![window(500), window(500)],
            error_messages: BTreeMap::from([("enter: UNAVAILABLE".to_string(), 3)]),
            notes: vec!["a note".into()],
            server_cpu_sec: None,
            server_cpu_us_per_op: None,
        }
    }

    #[test]
    fn summary_has_the_percentiles_and_rate() {
        let report = sample_report();
        let enter = &report.ops["enter"];
        assert_eq!(enter.count, 1000);
        assert_eq!(enter.errors, 3);
        assert!((enter.ops_per_sec - 500.0).abs() < 1e-9);
        assert!((enter.p50_us - 500.0).abs() <= 1.0, "{}", enter.p50_us);
        assert!((enter.p90_us - 900.0).abs() <= 1.0, "{}", enter.p90_us);
        assert!((enter.p99_us - 990.0).abs() <= 1.0, "{}", enter.p99_us);
        assert!((enter.p999_us - 999.0).abs() <= 1.0, "{}", enter.p999_us);
        assert!((enter.max_us - 1000.0).abs() <= 1.0, "{}", enter.max_us);
        assert_eq!(report.total_errors(), 3);
        assert_eq!(report.total_ops(), 1000);
        assert!(report.table().lines().nth(1).unwrap().starts_with("enter"));
    }

    #[test]
    fn empty_histogram_summarizes_to_zeros() {
        let summary = OpStats::new().summary(Duration::ZERO);
        assert_eq!(summary.count, 0);
        assert_eq!(summary.ops_per_sec, 0.0);
        assert_eq!(summary.max_us, 0.0);
    }

    #[test]
    fn writes_json_and_svg_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let json_path = dir.path().join("churn.json");
        let svg_path = sample_report().write(&json_path).unwrap();
        assert_eq!(svg_path, dir.path().join("churn.svg"));
        let value: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
        assert_eq!(value["config"]["workload"], "churn");
        assert_eq!(value["ops"]["enter"]["count"], 1000);
        assert_eq!(value["ops"]["enter"]["errors"], 3);
        assert_eq!(value["timeline"].as_array().unwrap().len(), 2);
        let back: OpSummary = serde_json::from_value(value["ops"]["enter"].clone()).unwrap();
        assert_eq!(back, sample_report().ops["enter"]);
        let svg = std::fs::read_to_string(&svg_path).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }
}
