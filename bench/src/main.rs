//! `conclave-bench`: the command line of the load generator. One subcommand per workload
//! (churn, read, watch, failover, mixed) plus `floor`, the machine's physical floor.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand, ValueEnum};
use conclave_bench::config::BenchTls;
use conclave_bench::{floor, BenchConfig, LoadMode, Target, Workload};

#[derive(Parser)]
#[command(name = "conclave-bench", about = "Load generator for Conclave's election API")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enter then Withdraw over the elections, each caller on its own connection (session).
    Churn(RunArgs),
    /// GetTerm over elections that each have a leader.
    Read(RunArgs),
    /// Watchers per election; latency from a command's acknowledgement to each notification.
    Watch(RunArgs),
    /// Cut the leading client's connection (or kill a node: --kill-pid); latency until
    /// watchers see the next leader.
    Failover(RunArgs),
    /// GetTerm mixed with Enter/Withdraw (--read-percent).
    Mixed(RunArgs),
    /// The physical floor of this machine: fdatasync of 4 KiB and a loopback round trip.
    Floor(FloorArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum TargetArg {
    Conclave,
    Etcd,
}

#[derive(Args)]
struct RunArgs {
    /// The system under test.
    #[arg(long, value_enum, default_value = "conclave")]
    target: TargetArg,
    /// Comma-separated endpoints (`host:port` or `http://host:port`); callers are spread
    /// over them round-robin.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:5678")]
    endpoints: Vec<String>,
    /// Callers, each with its own connection (closed loop: requests in flight).
    #[arg(long, short = 'c', default_value_t = 8)]
    concurrency: usize,
    /// Open loop: total requests per second, latency measured from each one's due time.
    #[arg(long)]
    rate: Option<f64>,
    /// Elections the workload spreads over (watch/failover: elections driven at once).
    #[arg(long, short = 'e', default_value_t = 100)]
    elections: usize,
    /// Watchers per election (watch, failover).
    #[arg(long, short = 'w', default_value_t = 4)]
    watchers: usize,
    /// Share of GetTerm in the mixed workload, in percent.
    #[arg(long, default_value_t = 80)]
    read_percent: u32,
    /// Seconds of the measured phase (0: bounded by --operations only).
    #[arg(long, short = 'd', default_value_t = 10.0)]
    duration: f64,
    /// Upper bound of measured operations (all callers together).
    #[arg(long)]
    operations: Option<u64>,
    /// Bound of every request, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Threads of the bench's own runtime (1: callers, connections and timers all on one
    /// thread, so no answer is handed from one thread to another).
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// etcd only: lease TTL of each caller, in seconds.
    #[arg(long, default_value_t = conclave_bench::etcd::DEFAULT_LEASE_TTL_SECS)]
    lease_ttl: i64,
    /// Prefix of the election names [default: bench-WORKLOAD-UNIXTIME].
    #[arg(long)]
    name_prefix: Option<String>,
    /// Write the report here as JSON, and its SVG chart beside it.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress line on stderr.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Server process ids (comma-separated) whose CPU time over the measured phase the
    /// report gives per operation (from /proc/PID/stat).
    #[arg(long, value_delimiter = ',')]
    server_pids: Vec<i32>,
    /// PEM CA certificate that the servers' certificates chain to; endpoints given without
    /// a scheme are then `https://` (Conclave only).
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// PEM client certificate, for servers started with `--client-cert-auth`.
    #[arg(long, value_name = "FILE", requires = "key", requires = "cacert")]
    cert: Option<PathBuf>,
    /// PEM private key of `--cert`.
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    #[command(flatten)]
    kill: KillArgs,
}

/// Failover by killing a cluster node (instead of cutting the leading client's connection).
#[derive(Args)]
struct KillArgs {
    /// Kill this process (SIGKILL) --kill-after-ms into the run: the node of --kill-endpoint.
    #[arg(long, conflicts_with = "kill_command", requires = "kill_endpoint")]
    kill_pid: Option<i32>,
    /// Kill the node by running this shell command (`sh -c`) --kill-after-ms into the run.
    #[arg(long, requires = "kill_endpoint")]
    kill_command: Option<String>,
    /// The killed node's client endpoint (one of --endpoints; the others survive).
    #[arg(long)]
    kill_endpoint: Option<String>,
    /// The killed node's id, to tell the groups it led (with --admin-endpoints).
    #[arg(long, requires = "admin_endpoints")]
    kill_node_id: Option<u64>,
    /// Node API (admin) endpoints of surviving nodes: leader changes per group.
    #[arg(long, value_delimiter = ',', requires = "kill_node_id")]
    admin_endpoints: Vec<String>,
    /// Partitions of the cluster: one probe election per partition.
    #[arg(long, default_value_t = 16)]
    partitions: u32,
    /// Probe only the first N partitions [default: every one, at most 4096]; 0 sends no
    /// probe, so idle partitions stay quiet and the Node API's leader reports
    /// (--admin-endpoints) are the measure.
    #[arg(long, value_name = "N")]
    probes: Option<u32>,
    /// When the node is killed, in milliseconds after the measured phase starts.
    #[arg(long, default_value_t = 2_000)]
    kill_after_ms: u64,
    /// Bound of the wait for each partition's and group's recovery after the kill.
    #[arg(long, default_value_t = 10_000)]
    recovery_timeout_ms: u64,
    /// The cluster's --session-timeout-ms, reported with the candidacy figure.
    #[arg(long)]
    session_timeout_ms: Option<u64>,
    /// With --admin-endpoints: first wait (at most 30 s) until the node to be killed leads
    /// at least this many groups.
    #[arg(long, default_value_t = 1)]
    min_led_groups: u32,
    /// With --admin-endpoints: first wait (at most 30 s) until every partition is led by
    /// its preferred node among nodes 1..=N (all nodes caught up after a restart).
    #[arg(long, value_name = "N")]
    wait_balanced: Option<u64>,
}

impl KillArgs {
    fn node_kill(self) -> Option<conclave_bench::kill::NodeKill> {
        use conclave_bench::kill::{KillMethod, NodeKill};
        let method = match (self.kill_pid, self.kill_command) {
            (Some(pid), _) => KillMethod::Pid(pid),
            (None, Some(command)) => KillMethod::Command(command),
            (None, None) => return None,
        };
        Some(NodeKill {
            node_id: self.kill_node_id,
            admin_endpoints: self.admin_endpoints.iter().map(|e| endpoint_url(e)).collect(),
            partitions: self.partitions,
            probes: self.probes,
            kill_after: Duration::from_millis(self.kill_after_ms),
            recovery_timeout: Duration::from_millis(self.recovery_timeout_ms),
            session_timeout: self.session_timeout_ms.map(Duration::from_millis),
            min_led_groups: self.min_led_groups,
            balanced_nodes: self.wait_balanced,
            ..NodeKill::new(method, endpoint_url(self.kill_endpoint.as_deref().unwrap_or("")))
        })
    }
}

#[derive(Args)]
struct FloorArgs {
    /// Directory of the synced file: put it on the disk of the server's data directory.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    #[arg(long, default_value_t = 1_000)]
    fsync_samples: usize,
    #[arg(long, default_value_t = 20_000)]
    round_trip_samples: usize,
    /// Write the result here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn endpoint_url(endpoint: &str) -> String {
    endpoint_url_with(endpoint, "http")
}

/// `endpoint` with `scheme` when it names none.
fn endpoint_url_with(endpoint: &str, scheme: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("{scheme}://{endpoint}")
    }
}

fn config_of(workload: Workload, args: RunArgs) -> Result<BenchConfig, String> {
    if !(args.duration.is_finite() && args.duration >= 0.0) {
        return Err("--duration is a number of seconds, at least 0".into());
    }
    let unix_secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let scheme = if args.cacert.is_some() { "https" } else { "http" };
    let endpoints: Vec<String> = args.endpoints.iter().filter(|e| !e.is_empty()).map(|e| endpoint_url_with(e, scheme)).collect();
    let tls = match args.cacert {
        Some(cacert) => Some(BenchTls::load(cacert, args.cert, args.key)?),
        None => None,
    };
    let target = match args.target {
        TargetArg::Conclave => Target::Conclave,
        TargetArg::Etcd => Target::Etcd,
    };
    let config = BenchConfig {
        target,
        endpoints,
        workload,
        load: match args.rate {
            Some(rate_per_sec) => LoadMode::Open { rate_per_sec },
            None => LoadMode::Closed,
        },
        concurrency: args.concurrency,
        elections: args.elections,
        watchers: args.watchers,
        read_percent: args.read_percent,
        name_prefix: args.name_prefix.unwrap_or_else(|| format!("bench-{}-{unix_secs}", workload.name())),
        duration: Duration::from_secs_f64(args.duration),
        operations: args.operations,
        request_timeout: Duration::from_millis(args.timeout_ms),
        lease_ttl_secs: args.lease_ttl,
        progress: !args.quiet,
        json: args.json,
        kill: args.kill.node_kill(),
        server_pids: args.server_pids,
        tls,
        client_threads: args.client_threads,
    };
    config.validate()?;
    Ok(config)
}

fn run_workload(workload: Workload, args: RunArgs) -> Result<(), String> {
    let config = config_of(workload, args)?;
    let json = config.json.clone();
    let report = conclave_bench::run(config).map_err(|e| e.to_string())?;
    print!("{}", report.table());
    for note in &report.notes {
        println!("note: {note}");
    }
    for (message, count) in &report.error_messages {
        println!("error x{count}: {message}");
    }
    if let Some(path) = json {
        println!("wrote {} and {}", path.display(), conclave_bench::report::svg_path_beside(&path).display());
    }
    Ok(())
}

fn run_floor(args: FloorArgs) -> Result<(), String> {
    let result = floor::measure(&args.dir, args.fsync_samples, args.round_trip_samples).map_err(|e| e.to_string())?;
    println!(
        "fdatasync 4 KiB in {}: p50 {:.1} us, p99 {:.1} us ({} samples)",
        result.directory.display(),
        result.fdatasync_4k.p50_us,
        result.fdatasync_4k.p99_us,
        result.fdatasync_4k.count
    );
    println!(
        "fdatasync 4 KiB with {} writers at once (the loopback cluster's nodes share the disk): p50 {:.1} us, p99 {:.1} us",
        floor::SHARED_DISK_WRITERS,
        result.fdatasync_4k_shared_disk.p50_us,
        result.fdatasync_4k_shared_disk.p99_us
    );
    println!(
        "loopback TCP round trip of {} bytes: p50 {:.1} us, p99 {:.1} us ({} samples)",
        floor::ROUND_TRIP_BYTES,
        result.loopback_round_trip.p50_us,
        result.loopback_round_trip.p99_us,
        result.loopback_round_trip.count
    );
    println!("floor of one Enter (fdatasync p50 + 2 round-trip p50): {:.1} us", result.enter_floor_us);
    println!("the same with the shared-disk fdatasync p50 (context, not the target): {:.1} us", result.enter_floor_shared_disk_us);
    if let Some(path) = args.json {
        let json = serde_json::to_string_pretty(&result).map_err(|e| e.to_string())?;
        std::fs::write(&path, json + "\n").map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Churn(args) => run_workload(Workload::Churn, args),
        Command::Read(args) => run_workload(Workload::Read, args),
        Command::Watch(args) => run_workload(Workload::Watch, args),
        Command::Failover(args) => run_workload(Workload::Failover, args),
        Command::Mixed(args) => run_workload(Workload::Mixed, args),
        Command::Floor(args) => run_floor(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("conclave-bench: {message}");
            ExitCode::FAILURE
        }
    }
}
