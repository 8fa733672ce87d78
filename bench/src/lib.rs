//! `conclave-bench` as a library: [`run`] drives one workload against Conclave's client API
//! and returns a [`Report`] (per-operation `hdrhistogram` percentiles, rates, errors, a
//! one-second time series), optionally written as JSON with an SVG chart beside it;
//! [`floor::measure`] measures the machine's physical floor (fdatasync, loopback RTT).
//!
//! ```no_run
//! use conclave_bench::{BenchConfig, Workload};
//! let mut config = BenchConfig::new("http://127.0.0.1:5678", Workload::Churn);
//! config.concurrency = 64;
//! config.elections = 1_000;
//! let report = conclave_bench::run(config).expect("bench run");
//! println!("{}", report.table());
//! ```
pub mod client;
pub mod conclave;
pub mod config;
pub mod error;
pub mod etcd;
pub mod etcd_watch;
pub mod floor;
pub mod kill;
pub mod node_events;
pub mod report;
pub mod schedule;
pub mod server_cpu;
pub mod stats;
pub mod subscribers;
pub mod svg;
pub mod watch;
pub mod workload;

mod runner;

pub use config::{BenchConfig, LoadMode, Target, Workload};
pub use error::BenchError;
pub use report::Report;
pub use runner::run_async;

/// Runs `config` to completion on a runtime of its own (`config.client_threads` worker
/// threads; with one, the calling thread runs everything) and returns the report; writes
/// the JSON and SVG if `config.json` is set.
pub fn run(config: BenchConfig) -> Result<Report, BenchError> {
    config.validate().map_err(BenchError::Config)?;
    let runtime = match config.client_threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        threads => tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?,
    };
    runtime.block_on(run_async(config))
}
