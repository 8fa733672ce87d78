//! The chart of a run, as a self-contained SVG written with plain string formatting:
//! latency (p50 solid, p99 dashed) per operation over time, throughput per operation over
//! time, and the whole-run percentiles as text. Axes fit the data ([`scale`]): round linear
//! ticks, or a log scale when latencies span a wide range; the time axis is in seconds of
//! the measured phase.
//!
//! A node-kill run (a report whose configuration has a kill) also shows the failover: the
//! kill as a red line across the time panels, the gap until every probed partition took
//! commands again shaded, and a panel of the recovery times after the kill (leader,
//! commands, candidacies) on an axis of their own, so a 200 ms recovery is not a sliver of
//! a 10 s run.

pub mod scale;

use std::fmt::Write;

use crate::report::Report;
use scale::{format_ms, format_value, Scale};

pub use scale::nice_ceiling;

const WIDTH: f64 = 980.0;
const LEFT: f64 = 80.0;
const PLOT_WIDTH: f64 = 680.0;
const PLOT_HEIGHT: f64 = 220.0;
const PANEL_GAP: f64 = 70.0;
const FAILOVER_ROW: f64 = 34.0;
const COLORS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];
const KILL_COLOR: &str = "#c00000";
const RECOVERED_COLOR: &str = "#2a8a2a";
/// Operations of a node-kill report that are times after the kill, not per-second series.
const RECOVERY_OPS: [&str; 4] = ["leader_recovery", "cmd_recovery", "cmd_recovery_other", "candidacy"];

/// Text safe inside an SVG element or attribute.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// One time-series panel: seconds on x, `scale` on y.
struct Panel<'a> {
    top: f64,
    title: &'a str,
    unit: &'a str,
    scale: Scale,
    /// Length of the time axis, seconds.
    span: f64,
}

impl Panel<'_> {
    fn x(&self, seconds: f64) -> f64 {
        LEFT + PLOT_WIDTH * (seconds / self.span).clamp(0.0, 1.0)
    }

    fn y(&self, value: f64) -> f64 {
        self.top + PLOT_HEIGHT * (1.0 - self.scale.fraction(value))
    }

    fn bottom(&self) -> f64 {
        self.top + PLOT_HEIGHT
    }

    fn axes(&self, out: &mut String) {
        let title = if self.scale.is_log() { format!("{} (log scale)", self.title) } else { self.title.to_owned() };
        let _ = writeln!(out, r#"<text x="{LEFT}" y="{}" font-size="14" font-weight="bold">{}</text>"#, self.top - 10.0, escape(&title));
        let _ =
            writeln!(out, r##"<rect x="{LEFT}" y="{}" width="{PLOT_WIDTH}" height="{PLOT_HEIGHT}" fill="none" stroke="#444"/>"##, self.top);
        for value in self.scale.ticks() {
            let y = self.y(value);
            let _ = writeln!(out, r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##, LEFT + PLOT_WIDTH);
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{} {}</text>"#,
                LEFT - 6.0,
                y + 4.0,
                format_value(value),
                self.unit
            );
        }
        for second in Scale::linear(self.span, 10).ticks().into_iter().filter(|s| *s <= self.span + 1e-9) {
            let x = self.x(second);
            let _ = writeln!(
                out,
                r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#444"/>"##,
                self.bottom(),
                self.bottom() + 4.0
            );
            let _ = writeln!(
                out,
                r#"<text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}s</text>"#,
                self.bottom() + 16.0,
                format_value(second)
            );
        }
    }

    /// A series of (seconds, value) points; single points get a dot so they show.
    fn line(&self, out: &mut String, points: &[(f64, f64)], color: &str, dashed: bool) {
        if points.is_empty() {
            return;
        }
        let coords: Vec<String> = points.iter().map(|(t, v)| format!("{:.1},{:.1}", self.x(*t), self.y(*v))).collect();
        let dash = if dashed { r#" stroke-dasharray="6,4""# } else { "" };
        let _ = writeln!(out, r#"<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"#, coords.join(" "));
        for (t, v) in points {
            let _ = writeln!(out, r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{color}"/>"#, self.x(*t), self.y(*v));
        }
    }

    /// The kill and the gap until recovery, across the panel.
    fn failover(&self, out: &mut String, kill_at: f64, recovered_at: Option<f64>) {
        if let Some(recovered) = recovered_at {
            let (x0, x1) = (self.x(kill_at), self.x(recovered));
            let _ = writeln!(
                out,
                r##"<rect x="{x0:.1}" y="{}" width="{:.1}" height="{PLOT_HEIGHT}" fill="#f4b6b6" fill-opacity="0.6"/>"##,
                self.top,
                (x1 - x0).max(2.0)
            );
            let _ = writeln!(
                out,
                r#"<line x1="{x1:.1}" y1="{}" x2="{x1:.1}" y2="{:.1}" stroke="{RECOVERED_COLOR}" stroke-width="2" stroke-dasharray="4,3"/>"#,
                self.top,
                self.bottom()
            );
        }
        let x = self.x(kill_at);
        let _ = writeln!(
            out,
            r#"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{:.1}" stroke="{KILL_COLOR}" stroke-width="2"/>"#,
            self.top,
            self.bottom()
        );
    }
}

/// Seconds since the start of the measured phase at the end of each window.
fn window_end(report: &Report, index: usize) -> f64 {
    ((index + 1) as f64).min(report.elapsed_sec.max(index as f64 + 0.001))
}

/// The kill instant (seconds into the run) and the recovery ops of a node-kill report.
struct Failover {
    kill_at: f64,
    /// (op, p50 ms, p90 ms, max ms, samples), in [`RECOVERY_OPS`] order.
    rows: Vec<(&'static str, f64, f64, f64, u64)>,
    /// When every probed partition took commands again (the slowest cmd_recovery).
    recovered_at: Option<f64>,
    killed: String,
}

impl Failover {
    fn of(report: &Report) -> Option<Failover> {
        let kill = report.config.kill.as_ref()?;
        let kill_at = kill.kill_after.as_secs_f64();
        let rows: Vec<_> = RECOVERY_OPS
            .iter()
            .filter_map(|op| {
                report.ops.get(*op).filter(|s| s.count > 0).map(|s| (*op, s.p50_us / 1e3, s.p90_us / 1e3, s.max_us / 1e3, s.count))
            })
            .collect();
        let slowest_command = rows
            .iter()
            .filter(|(op, ..)| op.starts_with("cmd_recovery"))
            .map(|(_, _, _, max, _)| *max)
            .fold(None, |a: Option<f64>, m| Some(a.map_or(m, |a| a.max(m))));
        let killed = match kill.node_id {
            Some(node) => format!("node {node} killed"),
            None => "node killed".to_owned(),
        };
        Some(Failover { kill_at, rows, recovered_at: slowest_command.map(|ms| kill_at + ms / 1e3), killed })
    }

    fn height(&self) -> f64 {
        if self.rows.is_empty() {
            0.0
        } else {
            FAILOVER_ROW * self.rows.len() as f64 + 70.0
        }
    }

    /// The panel of recovery times: one row per op, a bar from the kill to the slowest
    /// sample, a mark at the p50 and the p90, on an axis of milliseconds after the kill.
    fn panel(&self, out: &mut String, top: f64) {
        if self.rows.is_empty() {
            return;
        }
        // Recovery times differ by tens (a leader in 200 ms, a candidacy after the 5 s session
        // timeout): a log axis keeps both readable.
        let scale = Scale::fit(self.rows.iter().flat_map(|(_, p50, p90, max, _)| [*p50, *p90, *max]), 5, 8.0);
        let scale = match scale {
            // The bars start at the kill: a log axis starts at its first decade instead.
            Scale::Log { min, max } => Scale::Log { min: min.min(1.0), max },
            linear => linear,
        };
        let x = |ms: f64| LEFT + PLOT_WIDTH * scale.fraction(ms);
        let height = FAILOVER_ROW * self.rows.len() as f64;
        let title =
            format!("failover: time from the kill until ... (ms after the kill{})", if scale.is_log() { ", log scale" } else { "" });
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end" fill="#555">ms</text>"##,
            LEFT - 6.0,
            top + height + 15.0
        );
        let _ = writeln!(out, r#"<text x="{LEFT}" y="{}" font-size="14" font-weight="bold">{}</text>"#, top - 10.0, escape(&title));
        let _ = writeln!(out, r##"<rect x="{LEFT}" y="{top}" width="{PLOT_WIDTH}" height="{height}" fill="none" stroke="#444"/>"##);
        for tick in scale.ticks() {
            let tx = x(tick);
            let _ = writeln!(out, r##"<line x1="{tx:.1}" y1="{top}" x2="{tx:.1}" y2="{:.1}" stroke="#ddd"/>"##, top + height);
            let _ = writeln!(
                out,
                r#"<text x="{tx:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
                top + height + 15.0,
                format_value(tick)
            );
        }
        let _ =
            writeln!(out, r#"<line x1="{LEFT}" y1="{top}" x2="{LEFT}" y2="{:.1}" stroke="{KILL_COLOR}" stroke-width="3"/>"#, top + height);
        for (i, (op, p50, p90, max, count)) in self.rows.iter().enumerate() {
            let y = top + FAILOVER_ROW * i as f64 + FAILOVER_ROW * 0.7;
            let label = match *op {
                "leader_recovery" => "a new leader",
                "cmd_recovery" => "commands work again",
                "cmd_recovery_other" => "commands work (partitions the node did not lead)",
                _ => "the next candidate leads (after the session timeout)",
            };
            let _ = writeln!(
                out,
                r##"<rect x="{LEFT}" y="{:.1}" width="{:.1}" height="8" fill="#f4b6b6"/>"##,
                y - 4.0,
                (x(*max) - LEFT).max(1.0)
            );
            for (value, color) in [(*p50, RECOVERED_COLOR), (*p90, "#555")] {
                let _ = writeln!(
                    out,
                    r#"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="{color}" stroke-width="3"/>"#,
                    x(value),
                    y - 6.0,
                    y + 6.0
                );
            }
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" font-size="11">{}: p50 {}, p90 {}, max {} ({op}, n={count})</text>"#,
                LEFT + 6.0,
                y - 7.0,
                escape(label),
                format_ms(*p50),
                format_ms(*p90),
                format_ms(*max)
            );
        }
        let _ = writeln!(
            out,
            r##"<text x="{LEFT}" y="{:.1}" font-size="11" fill="#555">red: the kill (0) to the slowest sample; green mark: p50; grey mark: p90</text>"##,
            top + height + 32.0
        );
    }
}

/// The chart of `report`.
pub fn render(report: &Report) -> String {
    let failover = Failover::of(report);
    let charted = |op: &str| failover.is_none() || !RECOVERY_OPS.contains(&op);
    let ops: Vec<&String> = report.ops.keys().filter(|op| charted(op)).collect();
    let series = |op: &str, pick: fn(&crate::report::WindowStats) -> f64| -> Vec<(f64, f64)> {
        report
            .timeline
            .iter()
            .enumerate()
            .filter_map(|(i, w)| w.get(op).filter(|w| w.count > 0).map(|w| (window_end(report, i), pick(w))))
            .collect()
    };
    let windows = || report.timeline.iter().flat_map(|w| w.iter().filter(|(op, w)| charted(op) && w.count > 0).map(|(_, w)| w));
    let latencies_ms = windows().flat_map(|w| [w.p50_us / 1e3, w.p99_us / 1e3]).collect::<Vec<_>>();
    let max_rate = windows().map(|w| w.ops_per_sec).fold(0.0, f64::max);
    let span = report.elapsed_sec.max(report.timeline.len() as f64).max(1.0);
    let latency_top = 60.0;
    let latency = Panel {
        top: latency_top,
        title: "latency per second: p50 (solid), p99 (dashed)",
        unit: "ms",
        scale: Scale::fit(latencies_ms, 4, scale::LOG_RATIO),
        span,
    };
    let throughput_top = latency_top + PLOT_HEIGHT + PANEL_GAP;
    let throughput =
        Panel { top: throughput_top, title: "throughput per second", unit: "/s", scale: Scale::linear(max_rate.max(1.0), 4), span };
    let failover_top = throughput_top + PLOT_HEIGHT + PANEL_GAP;
    let table_top = failover_top + failover.as_ref().map_or(0.0, Failover::height);
    let height = table_top + 30.0 + 18.0 * report.ops.len() as f64;

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let title = format!(
        "conclave-bench {} against {:?}: {} callers, {} elections, {:.1} s, {}",
        report.config.workload.name(),
        report.config.target,
        report.config.concurrency,
        report.config.elections,
        report.elapsed_sec,
        match report.config.load {
            crate::config::LoadMode::Closed => "closed loop".to_string(),
            crate::config::LoadMode::Open { rate_per_sec } => format!("open loop at {rate_per_sec:.0}/s"),
        }
    );
    let _ = writeln!(out, r#"<text x="{LEFT}" y="24" font-size="16" font-weight="bold">{}</text>"#, escape(&title));
    latency.axes(&mut out);
    throughput.axes(&mut out);
    if let Some(f) = &failover {
        for panel in [&latency, &throughput] {
            panel.failover(&mut out, f.kill_at, f.recovered_at);
        }
        let x = latency.x(f.kill_at);
        let below = latency_top + PLOT_HEIGHT;
        let _ = writeln!(
            out,
            r#"<text x="{x:.1}" y="{:.1}" font-size="11" fill="{KILL_COLOR}">{}</text>"#,
            below - 22.0,
            escape(&format!(" {} at {:.1} s", f.killed, f.kill_at))
        );
        if let Some(recovered) = f.recovered_at {
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" font-size="11" fill="{RECOVERED_COLOR}">{}</text>"#,
                latency.x(recovered),
                below - 8.0,
                escape(&format!(" every partition takes commands again: +{}", format_ms((recovered - f.kill_at) * 1e3)))
            );
        }
    }
    for (i, op) in ops.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        latency.line(&mut out, &series(op, |w| w.p50_us / 1e3), color, false);
        latency.line(&mut out, &series(op, |w| w.p99_us / 1e3), color, true);
        throughput.line(&mut out, &series(op, |w| w.ops_per_sec), color, false);
        let legend_y = latency_top + 14.0 + 18.0 * i as f64;
        let legend_x = LEFT + PLOT_WIDTH + 20.0;
        let _ = writeln!(out, r#"<rect x="{legend_x}" y="{:.1}" width="12" height="12" fill="{color}"/>"#, legend_y - 10.0);
        let _ = writeln!(out, r#"<text x="{:.1}" y="{legend_y:.1}" font-size="12">{}</text>"#, legend_x + 18.0, escape(op));
    }
    if let Some(f) = &failover {
        f.panel(&mut out, failover_top);
    }
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{table_top}" font-size="12" font-family="monospace" xml:space="preserve">{}</text>"#,
        escape(&format!(
            "{:<20}{:>10}{:>10}{:>10}{:>10}{:>10}{:>11}{:>8}",
            "op", "ops/s", "p50 us", "p90 us", "p99 us", "p99.9 us", "max us", "errors"
        ))
    );
    for (i, (op, s)) in report.ops.iter().enumerate() {
        let row = format!(
            "{:<20}{:>10.0}{:>10.1}{:>10.1}{:>10.1}{:>10.1}{:>11.1}{:>8}",
            op, s.ops_per_sec, s.p50_us, s.p90_us, s.p99_us, s.p999_us, s.max_us, s.errors
        );
        let _ = writeln!(
            out,
            r#"<text x="{LEFT}" y="{:.1}" font-size="12" font-family="monospace" xml:space="preserve">{}</text>"#,
            table_top + 18.0 * (i + 1) as f64,
            escape(&row)
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{OpSummary, WindowStats};
    use std::collections::BTreeMap;

    #[test]
    fn escapes_markup() {
        assert_eq!(escape(r#"a<b>&"c""#), "a&lt;b&gt;&amp;&quot;c&quot;");
    }

    #[test]
    fn chart_has_a_line_per_series_and_the_summary_rows() {
        let report = crate::report::tests::sample_report();
        let svg = render(&report);
        keep("example-churn.svg", &svg);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        // p50, p99 and throughput of the one operation.
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains("stroke-dasharray"));
        assert!(svg.contains("churn against Conclave"));
        assert!(svg.contains(">enter<"), "legend names the operation");
        let p50 = format!("{:.1}", report.ops["enter"].p50_us);
        assert!(svg.contains(&p50), "the summary row carries the p50 {p50}");
        assert!(!svg.contains("log scale"), "0.5 to 0.99 ms is a narrow range");
        // Every opened element is closed: the document is well formed enough for a browser.
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
    }

    #[test]
    fn empty_report_still_renders() {
        let mut report = crate::report::tests::sample_report();
        report.ops.clear();
        report.timeline.clear();
        let svg = render(&report);
        assert_eq!(svg.matches("<polyline").count(), 0);
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    fn summary(count: u64, p50_ms: f64, max_ms: f64) -> OpSummary {
        let us = |ms: f64| ms * 1e3;
        OpSummary {
            count,
            errors: 0,
            ops_per_sec: count as f64,
            p50_us: us(p50_ms),
            p90_us: us(p50_ms.max(max_ms * 0.95)),
            p99_us: us(max_ms),
            p999_us: us(max_ms),
            max_us: us(max_ms),
            mean_us: us(p50_ms),
        }
    }

    /// A node-kill report like the bench's: a 4 ms baseline before the kill at 2 s,
    /// commands back after ~270 ms, a candidacy moved after 5.3 s.
    fn kill_report() -> Report {
        let mut report = crate::report::tests::sample_report();
        let mut kill = crate::kill::NodeKill::new(crate::kill::KillMethod::Pid(12345), "http://127.0.0.1:1");
        kill.node_id = Some(2);
        report.config.workload = crate::Workload::Failover;
        report.config.kill = Some(kill);
        report.elapsed_sec = 7.3;
        report.ops = BTreeMap::from([
            ("command".to_string(), summary(3000, 4.0, 29.0)),
            ("cmd_recovery".to_string(), summary(4, 213.0, 273.0)),
            ("leader_recovery".to_string(), summary(2, 212.0, 270.0)),
            ("candidacy".to_string(), summary(1, 5255.0, 5255.0)),
        ]);
        let window =
            |p50: f64, p99: f64, n: u64| WindowStats { count: n, errors: 0, ops_per_sec: n as f64, p50_us: p50, p99_us: p99, max_us: p99 };
        report.timeline = vec![
            BTreeMap::from([("command".to_string(), window(3977.0, 9232.0, 1500))]),
            BTreeMap::from([("command".to_string(), window(4100.0, 9800.0, 1500))]),
            BTreeMap::new(),
            BTreeMap::new(),
            BTreeMap::new(),
            BTreeMap::new(),
            BTreeMap::new(),
            BTreeMap::from([("candidacy".to_string(), window(5_255_000.0, 5_255_000.0, 1))]),
        ];
        report
    }

    /// With `CONCLAVE_BENCH_CHART_DIR` set, the example charts are also written there (to
    /// look at them, e.g. after `rsvg-convert`).
    fn keep(name: &str, svg: &str) {
        if let Some(dir) = std::env::var_os("CONCLAVE_BENCH_CHART_DIR") {
            std::fs::write(std::path::Path::new(&dir).join(name), svg).expect("write the example chart");
        }
    }

    #[test]
    fn a_kill_run_shows_the_kill_the_gap_and_the_recovery() {
        let svg = render(&kill_report());
        keep("example-kill.svg", &svg);
        assert!(svg.contains("node 2 killed at 2.0 s"), "the kill is labelled on the time axis");
        assert!(svg.contains(&format!(r#"stroke="{KILL_COLOR}""#)), "the kill line");
        assert!(svg.contains("every partition takes commands again: +273 ms"), "the recovery is labelled");
        assert!(svg.contains("failover: time from the kill"), "the failover panel");
        assert!(svg.contains("commands work again: p50 213 ms, p90 259 ms, max 273 ms (cmd_recovery, n=4)"));
        assert!(
            svg.contains("the next candidate leads (after the session timeout): p50 5.2"),
            "slow candidacies stay in the failover panel"
        );
        assert!(svg.contains("log scale"), "213 ms and 5.3 s share a log axis");
        // Only the baseline is a per-second series: its p50, p99 and throughput lines.
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
    }
}
