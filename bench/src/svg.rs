//! The chart of a run, as a self-contained SVG written with plain string formatting: latency
//! (p50 solid, p99 dashed) per operation over time, throughput per operation over time, and
//! the whole-run percentiles as text.
use std::fmt::Write;

use crate::report::Report;

const WIDTH: f64 = 960.0;
const LEFT: f64 = 80.0;
const PLOT_WIDTH: f64 = 680.0;
const PLOT_HEIGHT: f64 = 220.0;
const LATENCY_TOP: f64 = 60.0;
const THROUGHPUT_TOP: f64 = 350.0;
const TABLE_TOP: f64 = 620.0;
const COLORS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];

/// Text safe inside an SVG element or attribute.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A "nice" axis maximum at or above `value` (1, 2 or 5 times a power of ten).
pub fn nice_ceiling(value: f64) -> f64 {
    if !(value.is_finite() && value > 0.0) {
        return 1.0;
    }
    let magnitude = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|v| *v >= value).unwrap_or(10.0 * magnitude)
}

struct Panel<'a> {
    top: f64,
    title: &'a str,
    unit: &'a str,
    y_max: f64,
    seconds: usize,
}

impl Panel<'_> {
    fn x(&self, second: usize) -> f64 {
        let span = self.seconds.max(1) as f64;
        LEFT + PLOT_WIDTH * (second as f64 + 1.0) / span
    }

    fn y(&self, value: f64) -> f64 {
        self.top + PLOT_HEIGHT - PLOT_HEIGHT * (value / self.y_max).clamp(0.0, 1.0)
    }

    fn axes(&self, out: &mut String) {
        let bottom = self.top + PLOT_HEIGHT;
        let _ =
            writeln!(out, r#"<text x="{LEFT}" y="{}" font-size="14" font-weight="bold">{}</text>"#, self.top - 10.0, escape(self.title));
        let _ =
            writeln!(out, r##"<rect x="{LEFT}" y="{}" width="{PLOT_WIDTH}" height="{PLOT_HEIGHT}" fill="none" stroke="#444"/>"##, self.top);
        for step in 0..=4 {
            let value = self.y_max * step as f64 / 4.0;
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
        let ticks = self.seconds.clamp(1, 10);
        for tick in 0..=ticks {
            let second = self.seconds * tick / ticks;
            let x = LEFT + PLOT_WIDTH * second as f64 / self.seconds.max(1) as f64;
            let _ = writeln!(out, r#"<text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{second}s</text>"#, bottom + 15.0);
        }
    }

    fn line(&self, out: &mut String, points: &[(usize, f64)], color: &str, dashed: bool) {
        if points.is_empty() {
            return;
        }
        let coords: Vec<String> = points.iter().map(|(s, v)| format!("{:.1},{:.1}", self.x(*s), self.y(*v))).collect();
        let dash = if dashed { r#" stroke-dasharray="6,4""# } else { "" };
        let _ = writeln!(out, r#"<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"#, coords.join(" "));
    }
}

fn format_value(value: f64) -> String {
    if value >= 100.0 || value == 0.0 {
        format!("{value:.0}")
    } else if value >= 1.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.3}")
    }
}

/// The chart of `report`.
pub fn render(report: &Report) -> String {
    let ops: Vec<&String> = report.ops.keys().collect();
    let seconds = report.timeline.len();
    let series = |op: &str, pick: fn(&crate::report::WindowStats) -> f64| -> Vec<(usize, f64)> {
        report.timeline.iter().enumerate().filter_map(|(s, w)| w.get(op).filter(|w| w.count > 0).map(|w| (s, pick(w)))).collect()
    };
    let max_p99_ms = report.timeline.iter().flat_map(|w| w.values()).map(|w| w.p99_us / 1_000.0).fold(0.0, f64::max);
    let max_rate = report.timeline.iter().flat_map(|w| w.values()).map(|w| w.ops_per_sec).fold(0.0, f64::max);
    let latency = Panel {
        top: LATENCY_TOP,
        title: "latency per second: p50 (solid), p99 (dashed)",
        unit: "ms",
        y_max: nice_ceiling(max_p99_ms),
        seconds,
    };
    let throughput = Panel { top: THROUGHPUT_TOP, title: "throughput per second", unit: "/s", y_max: nice_ceiling(max_rate), seconds };
    let height = TABLE_TOP + 30.0 + 18.0 * ops.len() as f64;

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
    for (i, op) in ops.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let p50: Vec<(usize, f64)> = series(op, |w| w.p50_us / 1_000.0);
        let p99: Vec<(usize, f64)> = series(op, |w| w.p99_us / 1_000.0);
        latency.line(&mut out, &p50, color, false);
        latency.line(&mut out, &p99, color, true);
        throughput.line(&mut out, &series(op, |w| w.ops_per_sec), color, false);
        let legend_y = LATENCY_TOP + 14.0 + 18.0 * i as f64;
        let legend_x = LEFT + PLOT_WIDTH + 20.0;
        let _ = writeln!(out, r#"<rect x="{legend_x}" y="{:.1}" width="12" height="12" fill="{color}"/>"#, legend_y - 10.0);
        let _ = writeln!(out, r#"<text x="{:.1}" y="{legend_y:.1}" font-size="12">{}</text>"#, legend_x + 18.0, escape(op));
    }
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{TABLE_TOP}" font-size="12" font-family="monospace" xml:space="preserve">{}</text>"#,
        escape(&format!(
            "{:<12}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}{:>8}",
            "op", "ops/s", "p50 us", "p90 us", "p99 us", "p99.9 us", "max us", "errors"
        ))
    );
    for (i, (op, s)) in report.ops.iter().enumerate() {
        let row = format!(
            "{:<12}{:>10.0}{:>10.1}{:>10.1}{:>10.1}{:>10.1}{:>10.1}{:>8}",
            op, s.ops_per_sec, s.p50_us, s.p90_us, s.p99_us, s.p999_us, s.max_us, s.errors
        );
        let _ = writeln!(
            out,
            r#"<text x="{LEFT}" y="{:.1}" font-size="12" font-family="monospace" xml:space="preserve">{}</text>"#,
            TABLE_TOP + 18.0 * (i + 1) as f64,
            escape(&row)
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(f64::NAN), 1.0);
        assert_eq!(nice_ceiling(0.7), 1.0);
        assert_eq!(nice_ceiling(1.3), 2.0);
        assert_eq!(nice_ceiling(3.0), 5.0);
        assert_eq!(nice_ceiling(5.1), 10.0);
        assert_eq!(nice_ceiling(12_000.0), 20_000.0);
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(escape(r#"a<b>&"c""#), "a&lt;b&gt;&amp;&quot;c&quot;");
    }

    #[test]
    fn chart_has_a_line_per_series_and_the_summary_rows() {
        let report = crate::report::tests::sample_report();
        let svg = render(&report);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        // p50, p99 and throughput of the one operation.
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains("stroke-dasharray"));
        assert!(svg.contains("churn against Conclave"));
        assert!(svg.contains(">enter<"), "legend names the operation");
        let p50 = format!("{:.1}", report.ops["enter"].p50_us);
        assert!(svg.contains(&p50), "the summary row carries the p50 {p50}");
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
}
