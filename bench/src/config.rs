//! What one bench run does: the target system, its endpoints, the workload and how load is
//! offered (closed loop or open loop), and the bounds of the run.
use std::path::PathBuf;
use std::time::Duration;

use crate::kill::NodeKill;

/// The system under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Conclave's client API, `atomix.runtime.election.v1`.
    Conclave,
    /// etcd's v3 election API (`v3electionpb.Election`), one lease per caller.
    Etcd,
}

/// The workload a run offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Each caller enters an election, then withdraws from it, over `elections` elections.
    Churn,
    /// GetTerm over `elections` elections that each have a leader.
    Read,
    /// `watchers` watchers per election; one driver per election alternates Withdraw and
    /// Enter; measured: acknowledgement of the command to each watcher's notification.
    Watch,
    /// The leader's client connection is shut down; measured: from the shutdown to each
    /// watcher seeing the next leader. With [`BenchConfig::kill`], a cluster node is
    /// killed instead (see [`crate::kill`]).
    Failover,
    /// Each caller mixes GetTerm (`read_percent` of its operations) with Enter/Withdraw.
    Mixed,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Churn => "churn",
            Workload::Read => "read",
            Workload::Watch => "watch",
            Workload::Failover => "failover",
            Workload::Mixed => "mixed",
        }
    }
}

/// How load is offered.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum LoadMode {
    /// Every caller sends its next request as soon as the previous one answered.
    Closed,
    /// Requests are due at a fixed total rate (per second); each one's latency is measured
    /// from the moment it was due, so time spent waiting for a free caller counts.
    Open { rate_per_sec: f64 },
}

/// A complete description of one run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchConfig {
    pub target: Target,
    /// `http://host:port` of each node; callers are spread over them round-robin.
    pub endpoints: Vec<String>,
    pub workload: Workload,
    pub load: LoadMode,
    /// Callers, each with its own connection (hence its own session).
    pub concurrency: usize,
    /// Elections the workload spreads over.
    pub elections: usize,
    /// Watchers per election (watch and failover).
    pub watchers: usize,
    /// Share of GetTerm among a mixed caller's operations, 0..=100.
    pub read_percent: u32,
    /// Prefix of every election name, so runs against one server do not collide.
    pub name_prefix: String,
    /// Upper bound of the measured phase.
    pub duration: Duration,
    /// Upper bound of measured operations (all callers together); `None`: only `duration`.
    pub operations: Option<u64>,
    /// Bound of every single request.
    pub request_timeout: Duration,
    /// etcd only: each caller's lease TTL in seconds (how long a silent caller keeps its
    /// leadership; etcd's floor is about 1.5 s with its default timing).
    pub lease_ttl_secs: i64,
    /// Print a progress line to stderr once a second.
    pub progress: bool,
    /// Write the report as JSON here, and the chart beside it (same name, `.svg`).
    pub json: Option<PathBuf>,
    /// Failover only: kill a cluster node instead of cutting client connections (see
    /// [`crate::kill`]).
    pub kill: Option<NodeKill>,
    /// Server processes (on this machine) whose CPU time over the measured phase the report
    /// gives, in total and per operation.
    pub server_pids: Vec<i32>,
    /// TLS of `https://` endpoints (Conclave only).
    pub tls: Option<BenchTls>,
    /// Threads of the bench's own tokio runtime; 1 runs every caller and connection on
    /// the calling thread (no hand-off of an answer between threads).
    pub client_threads: usize,
}

/// TLS towards Conclave: the CA that the servers' certificates chain to and, for servers
/// with `--client-cert-auth`, a client certificate (`--cacert`, `--cert`, `--key`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchTls {
    pub cacert: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    #[serde(skip)]
    pub client_config: tonic::transport::ClientTlsConfig,
}

impl BenchTls {
    /// Reads the PEM files.
    pub fn load(cacert: PathBuf, cert: Option<PathBuf>, key: Option<PathBuf>) -> Result<BenchTls, String> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let read = |flag: &str, path: &PathBuf| std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()));
        let mut client_config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("--cacert", &cacert)?));
        match (&cert, &key) {
            (Some(cert), Some(key)) => {
                client_config = client_config.identity(Identity::from_pem(read("--cert", cert)?, read("--key", key)?))
            }
            (None, None) => {}
            _ => return Err("--cert and --key go together".into()),
        }
        Ok(BenchTls { cacert, cert, key, client_config })
    }
}

impl BenchConfig {
    /// A closed-loop run of `workload` against one Conclave endpoint with small defaults.
    pub fn new(endpoint: impl Into<String>, workload: Workload) -> BenchConfig {
        BenchConfig {
            target: Target::Conclave,
            endpoints: vec![endpoint.into()],
            workload,
            load: LoadMode::Closed,
            concurrency: 8,
            elections: 100,
            watchers: 4,
            read_percent: 80,
            name_prefix: "bench".to_string(),
            duration: Duration::from_secs(10),
            operations: None,
            request_timeout: Duration::from_secs(10),
            lease_ttl_secs: crate::etcd::DEFAULT_LEASE_TTL_SECS,
            progress: false,
            json: None,
            kill: None,
            server_pids: Vec::new(),
            tls: None,
            client_threads: 2,
        }
    }

    /// Checks the combinations a run cannot work with.
    pub fn validate(&self) -> Result<(), String> {
        if self.endpoints.is_empty() {
            return Err("at least one endpoint is needed".into());
        }
        if self.concurrency == 0 {
            return Err("concurrency must be at least 1".into());
        }
        if self.client_threads == 0 {
            return Err("client-threads must be at least 1".into());
        }
        if self.elections == 0 {
            return Err("elections must be at least 1".into());
        }
        if matches!(self.workload, Workload::Watch | Workload::Failover) && self.watchers == 0 {
            return Err("the watch and failover workloads need at least one watcher".into());
        }
        if self.lease_ttl_secs < 1 {
            return Err("the etcd lease TTL is at least 1 second".into());
        }
        if self.read_percent > 100 {
            return Err("read-percent is at most 100".into());
        }
        if let LoadMode::Open { rate_per_sec } = self.load {
            if !(rate_per_sec.is_finite() && rate_per_sec > 0.0) {
                return Err("the open-loop rate must be a positive number".into());
            }
            if matches!(self.workload, Workload::Watch | Workload::Failover) {
                return Err("watch and failover run closed loop (one driver per election)".into());
            }
        }
        if let Some(kill) = &self.kill {
            if self.workload != Workload::Failover {
                return Err("killing a node is a failover run".into());
            }
            kill.validate(self)?;
        }
        if self.duration.is_zero() && self.operations.is_none() {
            return Err("a run needs --duration or --operations".into());
        }
        Ok(())
    }

    /// The endpoint of caller number `caller` (round-robin).
    pub fn endpoint_of(&self, caller: usize) -> &str {
        &self.endpoints[caller % self.endpoints.len()]
    }

    /// The name of election number `index`.
    pub fn election_name(&self, index: usize) -> String {
        format!("{}-{}", self.name_prefix, index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_spread_callers_over_endpoints() {
        let mut config = BenchConfig::new("http://127.0.0.1:1", Workload::Churn);
        assert_eq!(config.validate(), Ok(()));
        config.endpoints.push("http://127.0.0.1:2".into());
        assert_eq!(config.endpoint_of(0), "http://127.0.0.1:1");
        assert_eq!(config.endpoint_of(1), "http://127.0.0.1:2");
        assert_eq!(config.endpoint_of(2), "http://127.0.0.1:1");
        assert_eq!(config.election_name(7), "bench-7");
    }

    #[test]
    fn unrunnable_combinations_are_refused() {
        let base = BenchConfig::new("http://127.0.0.1:1", Workload::Churn);
        let refused = |config: BenchConfig| config.validate().is_err();
        assert!(refused(BenchConfig { endpoints: vec![], ..base.clone() }));
        assert!(refused(BenchConfig { concurrency: 0, ..base.clone() }));
        assert!(refused(BenchConfig { client_threads: 0, ..base.clone() }));
        assert!(refused(BenchConfig { elections: 0, ..base.clone() }));
        assert!(refused(BenchConfig { read_percent: 101, ..base.clone() }));
        assert!(refused(BenchConfig { load: LoadMode::Open { rate_per_sec: 0.0 }, ..base.clone() }));
        assert!(refused(BenchConfig { load: LoadMode::Open { rate_per_sec: f64::NAN }, ..base.clone() }));
        assert!(refused(BenchConfig { duration: Duration::ZERO, operations: None, ..base.clone() }));
        assert!(!refused(BenchConfig { duration: Duration::ZERO, operations: Some(10), ..base.clone() }));
        let watch = BenchConfig { workload: Workload::Watch, ..base.clone() };
        assert!(!refused(watch.clone()));
        assert!(refused(BenchConfig { watchers: 0, ..watch.clone() }));
        assert!(refused(BenchConfig { load: LoadMode::Open { rate_per_sec: 10.0 }, ..watch.clone() }));
        assert!(!refused(BenchConfig { target: Target::Etcd, ..watch }));
        assert!(refused(BenchConfig { lease_ttl_secs: 0, ..base.clone() }));
        let kill = crate::kill::NodeKill::new(crate::kill::KillMethod::Pid(12345), "http://127.0.0.1:1");
        let two_nodes = vec!["http://127.0.0.1:1".to_string(), "http://127.0.0.1:2".into()];
        assert!(refused(BenchConfig { kill: Some(kill.clone()), endpoints: two_nodes.clone(), ..base.clone() }));
        assert!(!refused(BenchConfig { kill: Some(kill.clone()), endpoints: two_nodes, workload: Workload::Failover, ..base.clone() }));
        assert!(refused(BenchConfig { kill: Some(kill), workload: Workload::Failover, ..base }));
    }
}
