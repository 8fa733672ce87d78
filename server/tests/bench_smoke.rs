//! End-to-end smoke test of `conclave-bench` (the library behind the load generator)
//! against a real `conclave serve` on free loopback ports with a temporary data directory
//! (killed when the test ends): each workload runs briefly with zero errors, completes
//! operations, and writes its JSON report and SVG chart.
mod support;

use std::path::Path;
use std::time::Duration;

use conclave_bench::{BenchConfig, LoadMode, Report, Workload};
use support::{Node, NodeOptions, TestDir};

fn run_checked(node: &Node, out: &Path, config: BenchConfig) -> Report {
    let name = config.workload.name();
    let json = out.join(format!("{name}.json"));
    let config = BenchConfig { json: Some(json.clone()), name_prefix: format!("smoke-{name}"), ..config };
    let report = conclave_bench::run(config).unwrap_or_else(|e| panic!("{name}: {e}\nserver output:\n{}", node.output()));
    assert_eq!(report.total_errors(), 0, "{name} had errors: {:?}", report.error_messages);
    assert!(report.total_ops() > 0, "{name} completed no operation");
    // The JSON's shape is unit-tested in the bench crate; here: written, and of this run.
    let text = std::fs::read_to_string(&json).expect("JSON report written");
    assert!(text.contains(&format!("\"workload\": \"{name}\"")), "{name}: {text}");
    assert!(text.contains("\"p99_us\"") && text.contains("\"timeline\""), "{name}: {text}");
    let svg = std::fs::read_to_string(json.with_extension("svg")).expect("SVG chart written beside the JSON");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    report
}

fn count(report: &Report, op: &str) -> u64 {
    report.ops.get(op).map_or(0, |o| o.count)
}

#[test]
fn bench_workloads_run_against_a_real_server() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut dir = TestDir::new();
    let node = runtime.block_on(Node::start(&mut dir, &NodeOptions::default()));
    let out = tempfile::tempdir().expect("output dir");

    let churn = BenchConfig {
        concurrency: 8,
        elections: 50,
        duration: Duration::from_secs(2),
        server_pids: vec![node.pid()],
        ..BenchConfig::new(node.url(), Workload::Churn)
    };
    let report = run_checked(&node, out.path(), churn);
    assert!(count(&report, "enter") > 0 && count(&report, "withdraw") > 0, "{}", report.table());
    // The server's CPU over the measured phase, per operation, from /proc/PID/stat.
    let per_op = report.server_cpu_us_per_op.unwrap_or_else(|| panic!("no server CPU figure: {}", report.table()));
    assert!(per_op > 0.0 && per_op < 1e6, "server CPU per operation {per_op} us");
    assert!(report.table().contains("server CPU"), "{}", report.table());

    // On the bench's single-threaded runtime (`--client-threads 1`).
    let read = BenchConfig {
        concurrency: 8,
        elections: 50,
        duration: Duration::from_secs(2),
        client_threads: 1,
        ..BenchConfig::new(node.url(), Workload::Read)
    };
    let report = run_checked(&node, out.path(), read);
    assert!(count(&report, "get_term") > 0, "{}", report.table());

    // Open loop: no more requests than the rate allows in the time.
    let open = BenchConfig {
        concurrency: 4,
        elections: 20,
        duration: Duration::from_secs(1),
        load: LoadMode::Open { rate_per_sec: 200.0 },
        ..BenchConfig::new(node.url(), Workload::Mixed)
    };
    let report = run_checked(&node, out.path(), open);
    assert!(report.total_ops() <= 200, "{}", report.table());

    let watch =
        BenchConfig { elections: 2, watchers: 2, duration: Duration::from_secs(1), ..BenchConfig::new(node.url(), Workload::Watch) };
    let report = run_checked(&node, out.path(), watch);
    assert!(count(&report, "notify") > 0, "{}", report.table());

    let failover =
        BenchConfig { elections: 2, watchers: 2, duration: Duration::from_secs(1), ..BenchConfig::new(node.url(), Workload::Failover) };
    let report = run_checked(&node, out.path(), failover);
    assert!(count(&report, "failover") > 0, "{}", report.table());
    drop(node);
}
