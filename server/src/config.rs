//! Node configuration: embedded defaults, an optional TOML file and command-line flags.
//!
//! Precedence is flag > file > default, field by field. Everything is validated once, here,
//! so the rest of the node works with a [`Config`] that is known to make sense; a bad value is
//! reported with the flag or key that carried it.

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::routing::LeaderPlacement;

/// Default client-API address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5678";
/// Default Node control API address (loopback only).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:5679";
/// Default metrics and probes (HTTP) address (loopback only); below the client port, clear
/// of the peer ports (the peer port plus each shard index).
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:5677";
/// Default peer (node-to-node) address of a single-node deployment.
pub const DEFAULT_PEER_LISTEN: &str = "127.0.0.1:5680";
/// Default number of partitions (Raft groups) of a cluster.
pub const DEFAULT_PARTITIONS: u32 = 16;
/// Default Raft tick.
pub const DEFAULT_TICK_MS: u64 = 10;
/// Default election timeout, in ticks (randomised in [t, 2t) by the Raft core).
pub const DEFAULT_ELECTION_TICKS: u32 = 15;
/// Default heartbeat interval, in ticks.
pub const DEFAULT_HEARTBEAT_TICKS: u32 = 3;
/// Default client session timeout.
pub const DEFAULT_SESSION_TIMEOUT_MS: u64 = 5_000;
/// Default log segment size.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// Default number of applied entries between two snapshots of a group.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 10_000;
/// A snapshot waits until the entries since the last one weigh this many times it.
pub const DEFAULT_SNAPSHOT_LOG_RATIO: u64 = 1;
/// Default number of entries kept in memory below a snapshot.
pub const DEFAULT_COMPACTION_TAIL: u64 = 1_000;
/// Default spin before a shard sleeps (off).
pub const DEFAULT_SPIN_BEFORE_PARK_US: u64 = 0;
/// Default time a client or admin connection has to finish its TLS and HTTP/2 handshakes.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Default time a leader holds back a commit notice that no append carried yet (not at
/// all: see `--commit-notice-delay-us`).
pub const DEFAULT_COMMIT_NOTICE_DELAY_US: u64 = 0;
/// Default cluster name, checked in every peer handshake.
pub const DEFAULT_CLUSTER_ID: &str = "conclave";
/// Default interval at which a leader checks whether its group's preferred leader has
/// caught up and hands the group over.
pub const DEFAULT_REBALANCE_MS: u64 = 2_000;
/// Default locked io_uring memory per shard (glommio's own default of 10 MiB exceeds the
/// common `ulimit -l` of 8 MiB).
pub const DEFAULT_IO_MEMORY_BYTES: usize = 2 << 20;

#[derive(Debug, Parser)]
#[command(name = "conclave", version, about = "Conclave: a leader-election storage server")]
pub struct Cli {
    #[command(subcommand)]
    pub command: CliCommand,
    /// Format of the log lines on stderr: `text` (coloured only on a terminal) or `json`
    /// (one object per line).
    #[arg(long, global = true, value_enum, default_value_t = crate::logging::LogFormat::Text)]
    pub log_format: crate::logging::LogFormat,
}

// Parsed once at startup: the size difference of the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Run a node. With no flags: a single-node cluster on embedded defaults.
    Serve(ServeArgs),
    /// The command-line client (elect, leader, watch, ..., node ...).
    #[command(flatten)]
    Client(crate::cli::ClientCommand),
}

/// Flags of `conclave serve`; each overrides the same key of the `--config` file.
#[derive(Debug, Default, Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServeArgs {
    /// A TOML file with any of the keys below (kebab-case, as the flags).
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Directory of the write-ahead logs, snapshots and lock file [default: ./data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Client API (gRPC) address [default: 127.0.0.1:5678].
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<SocketAddr>,
    /// Node control API address; loopback by default [default: 127.0.0.1:5679].
    #[arg(long, value_name = "HOST:PORT")]
    pub admin_listen: Option<SocketAddr>,
    /// Metrics (`/metrics`, Prometheus) and probes (`/livez`, `/readyz`) over plain HTTP;
    /// `off` or port 0 disables it [default: 127.0.0.1:5677].
    #[arg(long, value_name = "HOST:PORT|off")]
    pub metrics_listen: Option<String>,
    /// Number of partitions (Raft groups) of the cluster [default: 16].
    #[arg(long, value_name = "P")]
    pub partitions: Option<u32>,
    /// Number of shards (one per core). A node keeps the count it first ran with: its data
    /// directory holds one log per shard, so a different count is refused [default: the
    /// count the data directory was written with; for a new one the number of available
    /// cores, divided among the nodes when every `--peers` address is a loopback one (they
    /// share this machine), at least 1].
    #[arg(long, value_name = "S")]
    pub shards: Option<u32>,
    /// This node's id within `--peers` [default: 1].
    #[arg(long, value_name = "N")]
    pub node_id: Option<u32>,
    /// Every member's peer address, this node's included: `1=HOST:PORT,2=HOST:PORT,...`
    /// [default: 1=127.0.0.1:5680].
    #[arg(long, value_name = "ID=HOST:PORT,...")]
    pub peers: Option<String>,
    /// Voting replicas per partition, spread round robin over the peers; every other peer
    /// keeps a non-voting observer copy, so any node serves reads and watches locally
    /// [default: min(3, number of peers)].
    #[arg(long, value_name = "R")]
    pub replication: Option<u32>,
    /// Name of the cluster; nodes refuse peer connections from another cluster
    /// [default: conclave].
    #[arg(long, value_name = "NAME")]
    pub cluster_id: Option<String>,
    /// How often (ms) a leader checks whether its group's preferred node (groups are
    /// spread evenly over nodes) has caught up, and hands the group over; 0 disables
    /// [default: 2000].
    #[arg(long, value_name = "MS")]
    pub rebalance_ms: Option<u64>,
    /// Lead a partition from the node its requests come through: when, over a rebalancing
    /// period, three quarters of a partition's commands and reads (at least 16) came
    /// through one node, its leader hands it to that node (or keeps it, when that is
    /// itself) instead of the preferred node, so they stop being forwarded. Requests spread
    /// over nodes leave partitions spread. Needs `--rebalance-ms` above 0 [default: true].
    #[arg(long, value_name = "BOOL")]
    pub follow_workload: Option<bool>,
    /// Which node each partition prefers as its leader: `spread` (round robin by partition
    /// over the nodes in id order) or `pack` (each partition's lowest-id voter, node 1 for
    /// all when every node votes: fewer frames and log writes per command, as the followers
    /// hear from one leader, but that node does all the leading). Voters are the same
    /// either way [default: spread].
    #[arg(long, value_enum, value_name = "PLACEMENT")]
    pub leader_placement: Option<LeaderPlacement>,
    /// Raft tick interval in milliseconds [default: 10].
    #[arg(long, value_name = "MS")]
    pub tick_ms: Option<u64>,
    /// Election timeout in ticks [default: 15].
    #[arg(long, value_name = "TICKS")]
    pub election_ticks: Option<u32>,
    /// Heartbeat interval in ticks [default: 3].
    #[arg(long, value_name = "TICKS")]
    pub heartbeat_ticks: Option<u32>,
    /// Session timeout of client-API sessions, in milliseconds [default: 5000].
    #[arg(long, value_name = "MS")]
    pub session_timeout_ms: Option<u64>,
    /// Size of each write-ahead log segment file in bytes [default: 64 MiB].
    #[arg(long, value_name = "BYTES")]
    pub segment_bytes: Option<u64>,
    /// Locked io_uring memory per shard in bytes [default: 2 MiB].
    #[arg(long, value_name = "BYTES")]
    pub io_memory_bytes: Option<usize>,
    /// Snapshot a group (and compact its log) every N applied entries [default: 10000].
    #[arg(long, value_name = "N")]
    pub snapshot_every: Option<u64>,
    /// A group's snapshot also waits until the entries applied since its last one weigh R
    /// times that snapshot, so a large state is not rewritten for every N small commands;
    /// 0: --snapshot-every alone decides [default: 1].
    #[arg(long, value_name = "R")]
    pub snapshot_log_ratio: Option<u64>,
    /// Entries kept in memory below a group's snapshot for followers slightly behind it
    /// [default: 1000].
    #[arg(long, value_name = "N")]
    pub compaction_tail: Option<u64>,
    /// Microseconds a shard spins looking for work before it sleeps; spinning trades CPU
    /// for the latency of waking a sleeping shard [default: 0].
    #[arg(long, value_name = "US")]
    pub spin_before_park_us: Option<u64>,
    /// How a log flush becomes durable: `dsync` (segments opened with O_DSYNC: one direct
    /// write, durable when it completes) or `fdatasync` (a direct write, then an fdatasync)
    /// [default: dsync].
    #[arg(long, value_name = "MODE")]
    pub log_sync: Option<String>,
    /// Let idle partitions go quiet: once a partition's members hold its whole log, its
    /// leader stops heartbeating and its replicas are not ticked, so idle partitions cost
    /// (almost) nothing; any request or message wakes one, and a node that fails (its
    /// connection drops, or its once-per-heartbeat ping stops for an election timeout)
    /// wakes the partitions it led, so they elect again. `false` heartbeats every
    /// partition all the time [default: true].
    #[arg(long, value_name = "BOOL")]
    pub quiesce: Option<bool>,
    /// PEM certificate (chain) of the client and admin listeners: they speak TLS (ALPN
    /// `h2`) when set. Re-read on SIGHUP and when it changes on disk.
    #[arg(long, value_name = "FILE")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `--cert-file`.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// PEM CA certificate(s) that client certificates must chain to. Once set, the admin
    /// listener requires a client certificate; the client listener too with
    /// `--client-cert-auth`.
    #[arg(long, value_name = "FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Require and verify a client certificate (chaining to `--trusted-ca-file`) on the
    /// client listener [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub client_cert_auth: Option<bool>,
    /// Peer TLS: the PEM certificate chain this node presents to its peers. Peer TLS is
    /// mutual and all-or-nothing: set it with --peer-key-file and --peer-trusted-ca-file.
    /// The certificate must name (SAN IP or DNS) this node's --peers address.
    #[arg(long, value_name = "FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Peer TLS: the PEM private key of --peer-cert-file.
    #[arg(long, value_name = "FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// Peer TLS: the PEM CA bundle that every peer's certificate must chain to.
    #[arg(long, value_name = "FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Let a partition's leader answer GetTerm from a lease: while a quorum acknowledged a
    /// heartbeat round sent less than a lease ago (measured on the monotonic clock, shorter
    /// than the election timeout by a margin for clock drift), no other leader can have
    /// been elected, so the leader answers at once instead of confirming each read with a
    /// heartbeat round (ReadIndex, still used when the lease is not valid). Followers
    /// refuse votes while they hear from a live leader. `false` confirms every read with a
    /// round [default: true].
    #[arg(long, value_name = "BOOL")]
    pub lease_reads: Option<bool>,
    /// Followers (and observers) serve reads themselves under a lease from the partition's
    /// leader, instead of asking it for a read index each time. While a follower's lease
    /// may run, the leader commits a command only once that follower holds it too, so
    /// commands wait for the slower follower while reads reach followers. Needs
    /// `--lease-reads` [default: true].
    #[arg(long, value_name = "BOOL")]
    pub follower_reads: Option<bool>,
    /// Longest lease a leader grants a follower for `--follower-reads`, in milliseconds (at
    /// most the leader's own lease, 7/8 of election ticks − 2). A follower that dies
    /// holding one stalls its partitions' commands until it runs out; shorter leases bound
    /// that stall and are renewed more often [default: 0, the leader's lease].
    #[arg(long, value_name = "MS")]
    pub follower_read_lease_ms: Option<u64>,
    /// Microseconds a partition's leader waits before telling followers a commit index
    /// that no append has carried to them yet. Under load the next append carries it, so a
    /// follower gets one message per round instead of an append and a commit notice; when
    /// nothing follows, followers apply (and serve reads and watches of) the last entry up
    /// to this much later. Shorter than a heartbeat interval and at most 100000; 0 tells
    /// them at once [default: 0].
    #[arg(long, value_name = "US")]
    pub commit_notice_delay_us: Option<u64>,
    /// Milliseconds a client or admin connection has to complete its TLS handshake (with
    /// TLS on) and the HTTP/2 preface; one that has not is closed and logged. 100 to 600000
    /// [default: 10000].
    #[arg(long, value_name = "MS")]
    pub handshake_timeout_ms: Option<u64>,
}

/// The validated configuration of one node.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// The metrics and probes listener (`None`: off).
    pub metrics_listen: Option<SocketAddr>,
    pub partitions: u32,
    pub shards: u32,
    pub node_id: u32,
    /// Peer addresses by node id (this node's included), in id order.
    pub peers: BTreeMap<u32, SocketAddr>,
    pub replication: u32,
    /// The cluster's name, checked in peer handshakes.
    pub cluster_id: String,
    /// Interval of the leaders' rebalancing check (zero: off).
    pub rebalance: Duration,
    /// Leadership follows where a partition's requests come from (`--follow-workload`).
    pub follow_workload: bool,
    /// Which node each partition prefers as its leader (`--leader-placement`).
    pub leader_placement: LeaderPlacement,
    pub tick: Duration,
    pub election_ticks: u32,
    pub heartbeat_ticks: u32,
    pub session_timeout: Duration,
    pub segment_bytes: u64,
    pub io_memory_bytes: usize,
    pub snapshot_every: u64,
    pub snapshot_log_ratio: u64,
    pub compaction_tail: u64,
    pub spin_before_park: Duration,
    /// Log segments are opened with O_DSYNC (`--log-sync dsync`).
    pub log_dsync: bool,
    /// Idle groups go quiet (`--quiesce`).
    pub quiesce: bool,
    /// Leaders answer reads from a lease when it is valid (`--lease-reads`).
    pub lease_reads: bool,
    /// Followers serve reads under leases from their leader (`--follower-reads`; only
    /// with `lease_reads`).
    pub follower_reads: bool,
    /// Longest follower lease (`--follower-read-lease-ms`; zero: the leader's lease).
    pub follower_read_lease: Duration,
    /// How long a leader holds back a commit notice (`--commit-notice-delay-us`; zero: not
    /// at all).
    pub commit_notice_delay: Duration,
    /// How long a client or admin connection has for its TLS and HTTP/2 handshakes
    /// (`--handshake-timeout-ms`).
    pub handshake_timeout: Duration,
    /// TLS of the client and admin listeners (`None`: plaintext).
    pub edge_tls: Option<EdgeTlsFiles>,
    /// Mutual TLS between peers (`--peer-cert-file` and friends; `None`: plaintext).
    pub peer_tls: Option<PeerTlsFiles>,
}

/// The files of the client and admin listeners' TLS (`--cert-file`, `--key-file`,
/// `--trusted-ca-file`, `--client-cert-auth`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeTlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CA of client certificates; when set, the admin listener requires them.
    pub trusted_ca_file: Option<PathBuf>,
    /// The client listener requires client certificates too.
    pub client_cert_auth: bool,
}

/// Checks the edge TLS flags together: a key needs a certificate and the other way round,
/// client certificates need a CA, a CA needs a server certificate.
fn resolve_edge_tls(args: &ServeArgs) -> Result<Option<EdgeTlsFiles>, ConfigError> {
    let client_cert_auth = args.client_cert_auth.unwrap_or(false);
    match (&args.cert_file, &args.key_file) {
        (Some(cert_file), Some(key_file)) => {
            if client_cert_auth && args.trusted_ca_file.is_none() {
                return err("--client-cert-auth needs --trusted-ca-file (the CA that client certificates must chain to)");
            }
            Ok(Some(EdgeTlsFiles {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
                trusted_ca_file: args.trusted_ca_file.clone(),
                client_cert_auth,
            }))
        }
        (Some(_), None) => err("--cert-file needs --key-file"),
        (None, Some(_)) => err("--key-file needs --cert-file"),
        (None, None) if args.trusted_ca_file.is_some() || client_cert_auth => {
            err("--trusted-ca-file and --client-cert-auth need --cert-file and --key-file (the listeners' own certificate)")
        }
        (None, None) => Ok(None),
    }
}

/// The files of peer TLS (all three are needed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTlsFiles {
    /// This node's certificate chain (`--peer-cert-file`).
    pub cert: PathBuf,
    /// Its private key (`--peer-key-file`).
    pub key: PathBuf,
    /// The peer CA bundle (`--peer-trusted-ca-file`).
    pub trusted_ca: PathBuf,
}

/// Peer TLS from its three flags: all set, or none.
fn peer_tls_files(args: &ServeArgs) -> Result<Option<PeerTlsFiles>, ConfigError> {
    let flags = [
        ("--peer-cert-file", &args.peer_cert_file),
        ("--peer-key-file", &args.peer_key_file),
        ("--peer-trusted-ca-file", &args.peer_trusted_ca_file),
    ];
    match (&args.peer_cert_file, &args.peer_key_file, &args.peer_trusted_ca_file) {
        (None, None, None) => Ok(None),
        (Some(cert), Some(key), Some(ca)) => Ok(Some(PeerTlsFiles { cert: cert.clone(), key: key.clone(), trusted_ca: ca.clone() })),
        _ => {
            let missing: Vec<&str> = flags.iter().filter(|(_, value)| value.is_none()).map(|(flag, _)| *flag).collect();
            err(format!(
                "peer TLS is mutual and needs all of --peer-cert-file, --peer-key-file and --peer-trusted-ca-file; missing: {}",
                missing.join(", ")
            ))
        }
    }
}

/// A configuration that cannot be used, with the key that carried the bad value.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// Parses `--metrics-listen`: `HOST:PORT`, or `off` / port 0 for no listener.
pub fn parse_metrics_listen(text: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if text.trim().eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let addr: SocketAddr = text.trim().parse().map_err(|_| ConfigError(format!("--metrics-listen: `{text}` is not HOST:PORT or off")))?;
    Ok((addr.port() != 0).then_some(addr))
}

/// Parses `1=HOST:PORT,2=HOST:PORT,...`.
pub fn parse_peers(text: &str) -> Result<BTreeMap<u32, SocketAddr>, ConfigError> {
    let mut peers = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((id, addr)) = item.split_once('=') else {
            return err(format!("--peers: `{item}` is not of the form ID=HOST:PORT"));
        };
        let id: u32 = id.trim().parse().map_err(|_| ConfigError(format!("--peers: node id `{id}` is not a number")))?;
        if id == 0 {
            return err("--peers: node ids start at 1");
        }
        let addr: SocketAddr = addr.trim().parse().map_err(|_| ConfigError(format!("--peers: `{addr}` is not a HOST:PORT address")))?;
        if peers.insert(id, addr).is_some() {
            return err(format!("--peers: node {id} is listed twice"));
        }
    }
    if peers.is_empty() {
        return err("--peers: no peers given");
    }
    Ok(peers)
}

impl ServeArgs {
    /// Fills every unset flag from `file` (flags win).
    fn or(self, file: ServeArgs) -> ServeArgs {
        ServeArgs {
            config: self.config,
            data_dir: self.data_dir.or(file.data_dir),
            listen: self.listen.or(file.listen),
            admin_listen: self.admin_listen.or(file.admin_listen),
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
            partitions: self.partitions.or(file.partitions),
            shards: self.shards.or(file.shards),
            node_id: self.node_id.or(file.node_id),
            peers: self.peers.or(file.peers),
            replication: self.replication.or(file.replication),
            cluster_id: self.cluster_id.or(file.cluster_id),
            rebalance_ms: self.rebalance_ms.or(file.rebalance_ms),
            follow_workload: self.follow_workload.or(file.follow_workload),
            leader_placement: self.leader_placement.or(file.leader_placement),
            tick_ms: self.tick_ms.or(file.tick_ms),
            election_ticks: self.election_ticks.or(file.election_ticks),
            heartbeat_ticks: self.heartbeat_ticks.or(file.heartbeat_ticks),
            session_timeout_ms: self.session_timeout_ms.or(file.session_timeout_ms),
            segment_bytes: self.segment_bytes.or(file.segment_bytes),
            io_memory_bytes: self.io_memory_bytes.or(file.io_memory_bytes),
            snapshot_every: self.snapshot_every.or(file.snapshot_every),
            snapshot_log_ratio: self.snapshot_log_ratio.or(file.snapshot_log_ratio),
            spin_before_park_us: self.spin_before_park_us.or(file.spin_before_park_us),
            compaction_tail: self.compaction_tail.or(file.compaction_tail),
            log_sync: self.log_sync.or(file.log_sync),
            quiesce: self.quiesce.or(file.quiesce),
            cert_file: self.cert_file.or(file.cert_file),
            key_file: self.key_file.or(file.key_file),
            trusted_ca_file: self.trusted_ca_file.or(file.trusted_ca_file),
            client_cert_auth: self.client_cert_auth.or(file.client_cert_auth),
            peer_cert_file: self.peer_cert_file.or(file.peer_cert_file),
            peer_key_file: self.peer_key_file.or(file.peer_key_file),
            peer_trusted_ca_file: self.peer_trusted_ca_file.or(file.peer_trusted_ca_file),
            lease_reads: self.lease_reads.or(file.lease_reads),
            follower_reads: self.follower_reads.or(file.follower_reads),
            follower_read_lease_ms: self.follower_read_lease_ms.or(file.follower_read_lease_ms),
            commit_notice_delay_us: self.commit_notice_delay_us.or(file.commit_notice_delay_us),
            handshake_timeout_ms: self.handshake_timeout_ms.or(file.handshake_timeout_ms),
        }
    }
}

/// The shard count of a node without `--shards`: the available cores, shared among the
/// nodes when every peer address is a loopback one (they all run on this machine, and
/// thread-per-core shards on oversubscribed cores only add cross-shard hops and wake-ups).
fn default_shards(cores: u32, peers: &BTreeMap<u32, SocketAddr>) -> u32 {
    let cores = cores.max(1);
    if peers.len() > 1 && peers.values().all(|addr| addr.ip().is_loopback()) {
        (cores / peers.len() as u32).max(1)
    } else {
        cores
    }
}

/// How many shards wrote the data directory `dir` (one `shard-N` directory each), if any did.
fn shards_in_data_dir(dir: &Path) -> Option<u32> {
    let entries = std::fs::read_dir(dir).ok()?;
    let indexes = entries.filter_map(|entry| entry.ok()?.file_name().to_str()?.strip_prefix("shard-")?.parse::<u32>().ok());
    indexes.max().map(|highest| highest.saturating_add(1))
}

/// The shard count: `--shards`, else what the data directory was written with, else the
/// default; refused when it differs from the data directory's (each shard owns the
/// partitions `g` with `(g - 1) % shards == index`, and its log holds only theirs: another
/// count would leave partitions' logs unread).
fn resolve_shards(args: &ServeArgs, data_dir: &Path, peers: &BTreeMap<u32, SocketAddr>, cores: u32) -> Result<u32, ConfigError> {
    let written = shards_in_data_dir(data_dir);
    let shards = args.shards.or(written).unwrap_or_else(|| default_shards(cores, peers));
    if shards == 0 || shards > 1024 {
        return err(format!("--shards {shards} must be between 1 and 1024"));
    }
    if let Some(written) = written.filter(|w| *w != shards) {
        return err(format!(
            "--shards {shards}: the data directory {} holds the logs of {written} shards (shard-0 to shard-{}); a node cannot \
             change its shard count, so run it with --shards {written} (or start it on a new data directory)",
            data_dir.display(),
            written - 1
        ));
    }
    Ok(shards)
}

/// Reads a TOML configuration file.
pub fn read_file(path: &Path) -> Result<ServeArgs, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError(format!("--config {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| ConfigError(format!("--config {}: {e}", path.display())))
}

impl Config {
    /// Resolves flags, the optional file and the defaults into a validated configuration.
    /// `cores` is the number of cores available to the process (the default shard count).
    pub fn resolve(args: ServeArgs, cores: u32) -> Result<Config, ConfigError> {
        let args = match &args.config {
            Some(path) => {
                let file = read_file(path)?;
                args.or(file)
            }
            None => args,
        };
        let peers = match &args.peers {
            Some(text) => parse_peers(text)?,
            None => parse_peers(&format!("1={DEFAULT_PEER_LISTEN}"))?,
        };
        let node_id = args.node_id.unwrap_or(1);
        if !peers.contains_key(&node_id) {
            return err(format!("--node-id {node_id} is not one of the --peers ids {:?}", peers.keys().collect::<Vec<_>>()));
        }
        let members = peers.len() as u32;
        let replication = args.replication.unwrap_or(members.min(3));
        if replication == 0 || replication > members {
            return err(format!("--replication {replication} must be between 1 and the number of peers ({members})"));
        }
        let cluster_id = args.cluster_id.clone().unwrap_or_else(|| DEFAULT_CLUSTER_ID.to_string());
        if cluster_id.is_empty() || cluster_id.len() > 255 {
            return err("--cluster-id must be 1 to 255 bytes");
        }
        let data_dir = args.data_dir.clone().unwrap_or_else(|| PathBuf::from("data"));
        let shards = resolve_shards(&args, &data_dir, &peers, cores)?;
        for (id, addr) in &peers {
            if u32::from(addr.port()) + shards > 65_536 {
                return err(format!("--peers: node {id} listens on ports {}.. (one per shard), past 65535", addr.port()));
            }
        }
        let partitions = args.partitions.unwrap_or(DEFAULT_PARTITIONS);
        if partitions == 0 || partitions > 1_000_000 {
            return err(format!("--partitions {partitions} must be between 1 and 1000000"));
        }
        let listen = args.listen.unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default"));
        let admin_listen = args.admin_listen.unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.parse().expect("valid default"));
        if listen == admin_listen {
            return err(format!("--admin-listen {admin_listen} must differ from --listen: the control API never shares the client port"));
        }
        if peers[&node_id] == listen || peers[&node_id] == admin_listen {
            return err(format!("the peer address {} of node {node_id} must differ from --listen and --admin-listen", peers[&node_id]));
        }
        let metrics_listen = parse_metrics_listen(args.metrics_listen.as_deref().unwrap_or(DEFAULT_METRICS_LISTEN))?;
        if let Some(metrics) = metrics_listen {
            let peer = peers[&node_id];
            let in_peer_ports =
                metrics.ip() == peer.ip() && (peer.port()..peer.port().saturating_add(shards as u16)).contains(&metrics.port());
            if metrics == listen || metrics == admin_listen || in_peer_ports {
                return err(format!("--metrics-listen {metrics} must differ from --listen, --admin-listen and the peer ports"));
            }
        }
        let tick_ms = args.tick_ms.unwrap_or(DEFAULT_TICK_MS);
        if tick_ms == 0 || tick_ms > 10_000 {
            return err(format!("--tick-ms {tick_ms} must be between 1 and 10000"));
        }
        let election_ticks = args.election_ticks.unwrap_or(DEFAULT_ELECTION_TICKS);
        let heartbeat_ticks = args.heartbeat_ticks.unwrap_or(DEFAULT_HEARTBEAT_TICKS);
        if heartbeat_ticks == 0 || election_ticks <= heartbeat_ticks {
            return err(format!(
                "--election-ticks {election_ticks} must exceed --heartbeat-ticks {heartbeat_ticks}, which must be at least 1"
            ));
        }
        let session_timeout_ms = args.session_timeout_ms.unwrap_or(DEFAULT_SESSION_TIMEOUT_MS);
        let election_ms = tick_ms * u64::from(election_ticks);
        if session_timeout_ms < 2 * election_ms {
            return err(format!(
                "--session-timeout-ms {session_timeout_ms} must be at least twice the election timeout ({election_ms} ms), or sessions expire during ordinary failovers"
            ));
        }
        let segment_bytes = args.segment_bytes.unwrap_or(DEFAULT_SEGMENT_BYTES);
        if !(1 << 20..=1 << 32).contains(&segment_bytes) || segment_bytes % 4096 != 0 {
            return err(format!("--segment-bytes {segment_bytes} must be a multiple of 4096 between 1 MiB and 4 GiB"));
        }
        let io_memory_bytes = args.io_memory_bytes.unwrap_or(DEFAULT_IO_MEMORY_BYTES);
        if io_memory_bytes < 64 << 10 {
            return err(format!("--io-memory-bytes {io_memory_bytes} must be at least 65536"));
        }
        let snapshot_every = args.snapshot_every.unwrap_or(DEFAULT_SNAPSHOT_EVERY);
        if snapshot_every == 0 {
            return err("--snapshot-every must be at least 1");
        }
        let snapshot_log_ratio = args.snapshot_log_ratio.unwrap_or(DEFAULT_SNAPSHOT_LOG_RATIO);
        if snapshot_log_ratio > 1_000 {
            return err(format!("--snapshot-log-ratio {snapshot_log_ratio} must be at most 1000"));
        }
        let spin_us = args.spin_before_park_us.unwrap_or(DEFAULT_SPIN_BEFORE_PARK_US);
        if spin_us > 10_000 {
            return err(format!("--spin-before-park-us {spin_us} must be at most 10000"));
        }
        let commit_notice_delay_us = args.commit_notice_delay_us.unwrap_or(DEFAULT_COMMIT_NOTICE_DELAY_US);
        if commit_notice_delay_us > 100_000 || commit_notice_delay_us >= tick_ms * 1000 * u64::from(heartbeat_ticks) {
            return err(format!(
                "--commit-notice-delay-us {commit_notice_delay_us} must be at most 100000 and shorter than a heartbeat interval ({} ms)",
                tick_ms * u64::from(heartbeat_ticks)
            ));
        }
        let handshake_timeout_ms = args.handshake_timeout_ms.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT_MS);
        if !(100..=600_000).contains(&handshake_timeout_ms) {
            return err(format!("--handshake-timeout-ms {handshake_timeout_ms} must be between 100 and 600000"));
        }
        let log_dsync = match args.log_sync.as_deref().unwrap_or("dsync") {
            "fdatasync" => false,
            "dsync" => true,
            other => return err(format!("--log-sync {other}: expected fdatasync or dsync")),
        };
        let edge_tls = resolve_edge_tls(&args)?;
        let peer_tls = peer_tls_files(&args)?;
        Ok(Config {
            peer_tls,
            data_dir,
            listen,
            admin_listen,
            metrics_listen,
            partitions,
            shards,
            node_id,
            peers,
            replication,
            tick: Duration::from_millis(tick_ms),
            election_ticks,
            heartbeat_ticks,
            session_timeout: Duration::from_millis(session_timeout_ms),
            segment_bytes,
            io_memory_bytes,
            snapshot_every,
            snapshot_log_ratio,
            compaction_tail: args.compaction_tail.unwrap_or(DEFAULT_COMPACTION_TAIL),
            spin_before_park: Duration::from_micros(spin_us),
            log_dsync,
            quiesce: args.quiesce.unwrap_or(true),
            edge_tls,
            lease_reads: args.lease_reads.unwrap_or(true),
            follower_reads: args.follower_reads.unwrap_or(true),
            follower_read_lease: Duration::from_millis(args.follower_read_lease_ms.unwrap_or(0)),
            commit_notice_delay: Duration::from_micros(commit_notice_delay_us),
            handshake_timeout: Duration::from_millis(handshake_timeout_ms),
            cluster_id,
            rebalance: Duration::from_millis(args.rebalance_ms.unwrap_or(DEFAULT_REBALANCE_MS)),
            follow_workload: args.follow_workload.unwrap_or(true),
            leader_placement: args.leader_placement.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(args: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["conclave", "serve"];
        argv.extend_from_slice(args);
        let CliCommand::Serve(serve) = Cli::try_parse_from(argv).expect("flags parse").command else { panic!("not serve") };
        Config::resolve(serve, 2)
    }

    #[test]
    fn no_flags_give_the_embedded_single_node_defaults() {
        let c = resolve(&[]).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("data"));
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.admin_listen.to_string(), DEFAULT_ADMIN_LISTEN);
        assert!(c.admin_listen.ip().is_loopback());
        assert_eq!((c.partitions, c.shards, c.node_id, c.replication), (DEFAULT_PARTITIONS, 2, 1, 1));
        assert_eq!(c.peers.len(), 1);
        assert!(c.log_dsync, "O_DSYNC by default");
        assert_eq!(c.metrics_listen.map(|a| a.to_string()).as_deref(), Some(DEFAULT_METRICS_LISTEN));
        assert_eq!(resolve(&["--metrics-listen", "off"]).unwrap().metrics_listen, None);
        assert_eq!(resolve(&["--metrics-listen", "127.0.0.1:0"]).unwrap().metrics_listen, None);
        assert!(!resolve(&["--log-sync", "fdatasync"]).unwrap().log_dsync);
        assert!(c.quiesce, "idle groups go quiet by default");
        assert!(!resolve(&["--quiesce", "false"]).unwrap().quiesce);
        assert!(c.follow_workload, "leadership follows the workload by default");
        assert!(!resolve(&["--follow-workload", "false"]).unwrap().follow_workload);
        assert_eq!(c.leader_placement, LeaderPlacement::Spread, "leaderships spread over the nodes by default");
        assert_eq!(resolve(&["--leader-placement", "pack"]).unwrap().leader_placement, LeaderPlacement::Pack);
        assert!(c.lease_reads, "leaders answer reads from a valid lease by default");
        assert!(!resolve(&["--lease-reads", "false"]).unwrap().lease_reads);
        assert!(c.follower_reads, "followers serve reads under leases by default");
        assert!(!resolve(&["--follower-reads", "false"]).unwrap().follower_reads);
        assert_eq!(c.follower_read_lease, Duration::ZERO, "follower leases as long as the leader's by default");
        assert_eq!(resolve(&["--follower-read-lease-ms", "30"]).unwrap().follower_read_lease, Duration::from_millis(30));
        assert_eq!(c.commit_notice_delay, Duration::ZERO, "commit notices are not held by default");
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert_eq!(resolve(&["--handshake-timeout-ms", "1500"]).unwrap().handshake_timeout, Duration::from_millis(1500));
        assert!(resolve(&["--handshake-timeout-ms", "99"]).is_err());
        assert!(resolve(&["--handshake-timeout-ms", "600001"]).is_err());
        assert_eq!(resolve(&["--commit-notice-delay-us", "2000"]).unwrap().commit_notice_delay, Duration::from_millis(2));
        // Longer than a heartbeat interval (30 ms by default) is refused: heartbeats carry it.
        assert!(resolve(&["--commit-notice-delay-us", "30000"]).is_err());
        assert!(resolve(&["--commit-notice-delay-us", "100001", "--tick-ms", "100"]).is_err());
        assert_eq!((c.snapshot_every, c.snapshot_log_ratio), (DEFAULT_SNAPSHOT_EVERY, 1), "snapshots wait for the log to outweigh them");
        assert_eq!(resolve(&["--snapshot-log-ratio", "0"]).unwrap().snapshot_log_ratio, 0);
    }

    #[test]
    fn nodes_sharing_this_machine_share_its_cores_by_default() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let data = data.to_str().unwrap();
        let loopback = "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003";
        let resolve_with = |peers: &str, cores: u32, extra: &[&str]| {
            let mut argv = vec!["conclave", "serve", "--data-dir", data, "--peers", peers];
            argv.extend_from_slice(extra);
            let CliCommand::Serve(serve) = Cli::try_parse_from(argv).expect("flags parse").command else { panic!("not serve") };
            Config::resolve(serve, cores)
        };
        assert_eq!(resolve_with(loopback, 2, &[]).unwrap().shards, 1, "3 nodes on 2 cores: one shard each");
        assert_eq!(resolve_with(loopback, 8, &[]).unwrap().shards, 2, "3 nodes on 8 cores: two shards each");
        assert_eq!(resolve_with("1=127.0.0.1:7001", 8, &[]).unwrap().shards, 8, "a lone node takes every core");
        assert_eq!(resolve_with("1=10.0.0.1:7001,2=10.0.0.2:7001,3=10.0.0.3:7001", 8, &[]).unwrap().shards, 8);
        assert_eq!(resolve_with(loopback, 2, &["--shards", "2"]).unwrap().shards, 2, "the flag wins");
    }

    #[test]
    fn a_node_keeps_the_shard_count_its_data_directory_was_written_with() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        for shard in 0..3 {
            std::fs::create_dir_all(data.join(format!("shard-{shard}"))).unwrap();
        }
        let data = data.to_str().unwrap();
        let c = resolve(&["--data-dir", data]).unwrap();
        assert_eq!(c.shards, 3, "the data directory's count, not the 2 cores");
        assert_eq!(resolve(&["--data-dir", data, "--shards", "3"]).unwrap().shards, 3);
        for other in ["1", "2", "4"] {
            let error = resolve(&["--data-dir", data, "--shards", other]).unwrap_err().to_string();
            assert!(error.contains("holds the logs of 3 shards") && error.contains("--shards 3"), "{error}");
        }
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conclave.toml");
        std::fs::write(
            &path,
            "partitions = 8\nshards = 1\ndata-dir = \"/tmp/x\"\nsnapshot-log-ratio = 4\nfollow-workload = false\nleader-placement = \"pack\"\n",
        )
        .unwrap();
        let c = resolve(&["--config", path.to_str().unwrap(), "--partitions", "4"]).unwrap();
        assert_eq!((c.partitions, c.shards, c.snapshot_log_ratio, c.follow_workload), (4, 1, 4, false));
        assert_eq!(c.leader_placement, LeaderPlacement::Pack);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        std::fs::write(&path, "leader-placement = \"everywhere\"\n").unwrap();
        let e = resolve(&["--config", path.to_str().unwrap()]).unwrap_err();
        assert!(e.0.contains("everywhere"), "{e}");
    }

    #[test]
    fn unknown_file_keys_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conclave.toml");
        std::fs::write(&path, "partitons = 8\n").unwrap();
        let e = resolve(&["--config", path.to_str().unwrap()]).unwrap_err();
        assert!(e.0.contains("partitons"), "{e}");
    }

    #[test]
    fn bad_values_name_their_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&["--partitions", "0"], "--partitions"),
            (&["--shards", "0"], "--shards"),
            (&["--admin-listen", "127.0.0.1:5678"], "--admin-listen"),
            (&["--peers", "1=127.0.0.1:1,1=127.0.0.1:2"], "listed twice"),
            (&["--peers", "x=127.0.0.1:1"], "not a number"),
            (&["--peers", "1=nowhere"], "HOST:PORT"),
            (&["--log-sync", "sometimes"], "--log-sync"),
            (&["--node-id", "4"], "--node-id"),
            (&["--replication", "2"], "--replication"),
            (&["--election-ticks", "3"], "--election-ticks"),
            (&["--session-timeout-ms", "10"], "--session-timeout-ms"),
            (&["--segment-bytes", "1000"], "--segment-bytes"),
            (&["--snapshot-every", "0"], "--snapshot-every"),
            (&["--snapshot-log-ratio", "1001"], "--snapshot-log-ratio"),
            (&["--spin-before-park-us", "20000"], "--spin-before-park-us"),
            (&["--metrics-listen", "nowhere"], "--metrics-listen"),
            (&["--metrics-listen", "127.0.0.1:5679"], "--metrics-listen"),
            (&["--metrics-listen", "127.0.0.1:5681"], "--metrics-listen"),
        ];
        for (args, needle) in cases {
            let e = resolve(args).unwrap_err();
            assert!(e.0.contains(needle), "{args:?}: {e}");
        }
    }

    #[test]
    fn edge_tls_flags_are_checked_together() {
        assert_eq!(resolve(&[]).unwrap().edge_tls, None);
        let c = resolve(&["--cert-file", "c.pem", "--key-file", "k.pem", "--trusted-ca-file", "ca.pem", "--client-cert-auth"]).unwrap();
        let tls = c.edge_tls.expect("TLS configured");
        assert_eq!((tls.cert_file, tls.key_file), (PathBuf::from("c.pem"), PathBuf::from("k.pem")));
        assert_eq!((tls.trusted_ca_file, tls.client_cert_auth), (Some(PathBuf::from("ca.pem")), true));
        let c = resolve(&["--cert-file", "c.pem", "--key-file", "k.pem"]).unwrap();
        assert_eq!(c.edge_tls.map(|t| (t.trusted_ca_file, t.client_cert_auth)), Some((None, false)));
        let e = resolve(&["--cert-file", "c.pem", "--key-file", "k.pem", "--client-cert-auth"]).unwrap_err();
        assert!(e.0.contains("--trusted-ca-file"), "{e}");
        let e = resolve(&["--trusted-ca-file", "ca.pem"]).unwrap_err();
        assert!(e.0.contains("--cert-file"), "{e}");
    }

    #[test]
    fn edge_tls_keys_come_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conclave.toml");
        std::fs::write(&path, "cert-file = \"c.pem\"\nkey-file = \"k.pem\"\ntrusted-ca-file = \"ca.pem\"\nclient-cert-auth = true\n")
            .unwrap();
        let tls = resolve(&["--config", path.to_str().unwrap()]).unwrap().edge_tls.expect("TLS configured");
        assert!(tls.client_cert_auth);
        assert_eq!(tls.trusted_ca_file, Some(PathBuf::from("ca.pem")));
    }

    #[test]
    fn peer_tls_takes_all_three_files_or_none() {
        assert_eq!(resolve(&[]).unwrap().peer_tls, None);
        let all = ["--peer-cert-file", "n.crt", "--peer-key-file", "n.key", "--peer-trusted-ca-file", "ca.crt"];
        let files = resolve(&all).unwrap().peer_tls.expect("peer TLS on");
        assert_eq!((files.cert, files.key, files.trusted_ca), ("n.crt".into(), "n.key".into(), "ca.crt".into()));
        let e = resolve(&all[..4]).unwrap_err();
        assert!(e.0.contains("missing: --peer-trusted-ca-file"), "{e}");
        let e = resolve(&all[4..]).unwrap_err();
        assert!(e.0.contains("missing: --peer-cert-file, --peer-key-file"), "{e}");
    }

    #[test]
    fn three_node_peers_default_to_replication_three() {
        let c = resolve(&["--node-id", "2", "--peers", "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003"]).unwrap();
        assert_eq!((c.node_id, c.replication, c.peers.len()), (2, 3, 3));
    }
}
