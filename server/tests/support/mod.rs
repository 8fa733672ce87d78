//! Shared helpers of the end-to-end tests (`e2e_*.rs`, `python_client.rs`): a real
//! `conclave serve` child process on 127.0.0.1 with free ports and a temporary data
//! directory ([`Node`], killed and reaped on drop), readiness through the health service,
//! tonic channels (one channel = one TCP connection = one client session per partition),
//! and builders for the client and driver API messages.
#![allow(dead_code)]

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

pub mod cluster;
pub mod python;

pub mod client {
    #![allow(clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/_test_client.rs"));
}

use client::atomix::multiraft::v1 as mr;
use client::atomix::runtime::election::v1 as rt;
use client::atomix::runtime::v1::PrimitiveId;
use client::grpc::health::v1::health_check_response::ServingStatus;
use client::grpc::health::v1::health_client::HealthClient;
use client::grpc::health::v1::HealthCheckRequest;

/// How long a server may take from spawn to health SERVING.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound of every single RPC a test makes (tests assert on what arrives before it).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a SIGTERM'd server may take to exit.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Locked io_uring memory per shard: small, so several test servers fit in `ulimit -l`.
const IO_MEMORY_BYTES: &str = "524288";

/// Shape of a test server.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub shards: u32,
    pub partitions: u32,
    pub session_timeout_ms: u64,
    /// `--snapshot-every`: applied entries between snapshots (the server's default if None).
    pub snapshot_every: Option<u64>,
}

impl Default for NodeOptions {
    /// Two shards and four partitions, so requests cross shards.
    fn default() -> NodeOptions {
        NodeOptions { shards: 2, partitions: 4, session_timeout_ms: 2_000, snapshot_every: None }
    }
}

/// A port that was free a moment ago, never handed out before by this test process (the
/// kernel's ephemeral `127.0.0.1:0` can give the same port twice in a row once released,
/// which once made a node's `--listen` and `--admin-listen` the same).
pub fn free_port() -> u16 {
    cluster::reserve_ports(1)
}

/// A data directory and the log files of every server started on it; removed on drop.
pub struct TestDir {
    dir: tempfile::TempDir,
    starts: u32,
}

impl TestDir {
    pub fn new() -> TestDir {
        TestDir { dir: tempfile::Builder::new().prefix("conclave-e2e-").tempdir().expect("temp dir"), starts: 0 }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The temporary directory itself (for configuration files).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn next_log(&mut self) -> PathBuf {
        self.starts += 1;
        self.dir.path().join(format!("server-{}.log", self.starts))
    }
}

/// Addresses of one server: the client API, the admin API, its peer address and its
/// metrics listener.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub peer: SocketAddr,
    pub metrics: SocketAddr,
}

impl Ports {
    pub fn fresh() -> Ports {
        let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
        // Shard s listens for peers on the peer port + s: reserve room for four shards.
        Ports { listen: at(free_port()), admin: at(free_port()), peer: at(cluster::reserve_ports(4)), metrics: at(free_port()) }
    }
}

/// A running `conclave serve` process. Dropping it kills the process and waits for it.
pub struct Node {
    child: Option<Child>,
    pub ports: Ports,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// TLS towards the client listener (a server started with `--cert-file`).
    pub client_tls: Option<ClientTlsConfig>,
}

/// The arguments of `conclave serve` for these options, ports and data directory.
pub fn serve_args(options: &NodeOptions, ports: &Ports, data_dir: &Path) -> Vec<String> {
    [
        "serve",
        "--data-dir",
        &data_dir.display().to_string(),
        "--listen",
        &ports.listen.to_string(),
        "--admin-listen",
        &ports.admin.to_string(),
        "--metrics-listen",
        &ports.metrics.to_string(),
        "--peers",
        &format!("1={}", ports.peer),
        "--shards",
        &options.shards.to_string(),
        "--partitions",
        &options.partitions.to_string(),
        "--session-timeout-ms",
        &options.session_timeout_ms.to_string(),
        "--io-memory-bytes",
        IO_MEMORY_BYTES,
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(options.snapshot_every.into_iter().flat_map(|n| ["--snapshot-every".to_owned(), n.to_string()]))
    .collect()
}

/// Runs `conclave` with `args` to completion (for processes expected to be refused),
/// returning its exit status and everything it printed.
pub fn run_to_exit(args: &[String], timeout: Duration) -> (ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_conclave"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn conclave");
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            let output = child.wait_with_output().expect("output");
            let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
            return (output.status, text);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("conclave {args:?} did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Node {
    /// Spawns a server on `dir` with fresh ports and waits until it is SERVING.
    /// Ports found free can be taken by another process before the server binds them; such
    /// a start is retried with new ports (a bounded number of times).
    pub async fn start(dir: &mut TestDir, options: &NodeOptions) -> Node {
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            let ports = Ports::fresh();
            let args = serve_args(options, &ports, &dir.data_dir());
            let mut node = Node::spawn(dir, ports, args);
            match node.ready().await {
                Ok(()) => return node,
                Err(output) if attempt < ATTEMPTS && output.contains("cannot bind") => continue,
                Err(output) => panic!("{output}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Spawns `conclave` with `args` (which must make it listen on `ports` and keep its data
    /// in `dir`), and waits until it is SERVING.
    pub async fn start_with_args(dir: &mut TestDir, ports: Ports, args: Vec<String>) -> Node {
        let mut node = Node::spawn(dir, ports, args);
        node.ready().await.unwrap_or_else(|output| panic!("{output}"));
        node
    }

    /// Like [`Node::start_with_args`] for a server whose client listener speaks TLS: it is
    /// reached (readiness included) with `client_tls`.
    pub async fn start_tls(dir: &mut TestDir, ports: Ports, args: Vec<String>, client_tls: ClientTlsConfig) -> Node {
        let mut node = Node::spawn(dir, ports, args);
        node.client_tls = Some(client_tls);
        node.ready().await.unwrap_or_else(|output| panic!("{output}"));
        node
    }

    /// Spawns `conclave` with `args` without waiting for it to be ready.
    pub fn spawn(dir: &mut TestDir, ports: Ports, args: Vec<String>) -> Node {
        let data_dir = dir.data_dir();
        let log = dir.next_log();
        let out = File::create(&log).expect("server log file");
        let err = out.try_clone().expect("log file handle");
        let child = Command::new(env!("CARGO_BIN_EXE_conclave"))
            .args(args)
            .current_dir(dir.path())
            // CONCLAVE_E2E_LOG (e.g. `info`) raises the servers' log level when debugging. The
            // shards' `group activity` lines (quiet partitions) are always on: tests read them.
            .env("CONCLAVE_LOG", std::env::var("CONCLAVE_E2E_LOG").unwrap_or_else(|_| "warn,conclave::activity=info".to_owned()))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn conclave");
        Node { child: Some(child), ports, data_dir, log, client_tls: None }
    }

    /// The server's process id.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn url(&self) -> String {
        let scheme = if self.client_tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.ports.listen)
    }

    /// The client listener's endpoint, with the node's client TLS when it has one.
    fn endpoint(&self) -> Endpoint {
        let endpoint = Endpoint::from_shared(self.url()).expect("url");
        match &self.client_tls {
            Some(tls) => endpoint.tls_config(tls.clone()).expect("client TLS configuration"),
            None => endpoint,
        }
    }

    /// Everything the server printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) for health `Check("")` to answer SERVING. If the server exits or is
    /// not ready in time, says so with everything it printed (and reaps it).
    async fn ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().expect("running").try_wait().expect("try_wait") {
                self.child = None;
                return Err(format!("conclave exited with {status} before it was ready:\n{}", self.output()));
            }
            if self.is_serving().await {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill9();
                return Err(format!("conclave not SERVING within {READY_TIMEOUT:?}:\n{}", self.output()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether health `Check("")` answers SERVING now.
    pub async fn is_serving(&self) -> bool {
        let Ok(channel) = self.endpoint().connect_timeout(Duration::from_secs(1)).connect().await else {
            return false;
        };
        let mut health = HealthClient::new(channel);
        let mut request = tonic::Request::new(HealthCheckRequest { service: String::new() });
        request.set_timeout(Duration::from_secs(2));
        matches!(health.check(request).await, Ok(r) if r.get_ref().status == ServingStatus::Serving as i32)
    }

    /// A new client connection (its own TCP connection, so its own sessions).
    pub async fn connect(&self) -> Channel {
        self.endpoint()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}\n{}", self.url(), self.output()))
    }

    /// A new connection to the admin listener.
    pub async fn connect_admin(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.ports.admin))
            .expect("url")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect to the admin API {}: {e}", self.ports.admin))
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: `pid` is our own child, not yet reaped, so it names that process.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "kill(SIGTERM) failed");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("conclave did not stop within {STOP_TIMEOUT:?} of SIGTERM:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A request bounded by [`CALL_TIMEOUT`].
pub fn bounded<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    request
}

pub fn id(name: &str) -> Option<PrimitiveId> {
    Some(PrimitiveId { name: name.to_owned() })
}

/// The client API's view of an election: (term, leader, candidates leader-first).
pub fn view(term: Option<rt::Term>) -> (u64, String, Vec<String>) {
    let term = term.expect("a response carries a term");
    (term.term, term.leader, term.candidates)
}

/// The same view built from literals, for comparisons.
pub fn expect(term: u64, leader: &str, candidates: &[&str]) -> (u64, String, Vec<String>) {
    (term, leader.to_owned(), candidates.iter().map(|c| c.to_string()).collect())
}

/// Driver request headers for a session-level command in `partition`.
pub fn command_headers(partition: u32, session_id: u64, primitive_id: u64, sequence_num: u64) -> mr::CommandRequestHeaders {
    mr::CommandRequestHeaders {
        operation: Some(mr::OperationRequestHeaders {
            session: Some(mr::PrimitiveRequestHeaders {
                session: Some(mr::SessionRequestHeaders {
                    partition: Some(mr::PartitionRequestHeaders { partition_id: partition }),
                    session_id,
                }),
                primitive_id,
            }),
        }),
        sequence_num,
    }
}

/// Driver request headers for a query in `partition`.
pub fn query_headers(partition: u32, session_id: u64, primitive_id: u64, max_received_index: u64) -> mr::QueryRequestHeaders {
    let command = command_headers(partition, session_id, primitive_id, 0);
    mr::QueryRequestHeaders { operation: command.operation, sequence_num: 0, max_received_index }
}
