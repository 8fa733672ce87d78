//! A cluster of `conclave serve` processes on 127.0.0.1 for the multi-node end-to-end tests
//! (`e2e_cluster.rs`): every node started with the same `--peers`, `--shards` and
//! `--partitions`, each in its own data directory; a node can be killed (-9), stopped
//! (SIGTERM) and restarted on the same ports and data. Dropping the [`Cluster`] kills every
//! process it still runs, and a failing test prints every node's log.
//!
//! Also: [`NodeEvents`], a Node-API `Watch` stream read by a background task that stamps
//! each event with its arrival time, and client-API helpers shared by the cluster tests.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use conclave_server::routing::partition_of;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use super::client::atomix::multiraft::v1 as mr;
use super::client::atomix::runtime::election::v1 as rt;
use super::{bounded, id, view, Node, Ports, TestDir, IO_MEMORY_BYTES};

pub use mr::event::Event as Ev;
pub use mr::member_config::Role;

pub type Election = rt::leader_election_client::LeaderElectionClient<Channel>;
pub type Elections = rt::leader_elections_client::LeaderElectionsClient<Channel>;
pub type NodeApi = mr::node_client::NodeClient<Channel>;
/// The client API's view of an election: (term, leader, candidates leader-first).
pub type View = (u64, String, Vec<String>);

/// Shape of a test cluster (every node gets the same).
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub nodes: u32,
    pub shards: u32,
    pub partitions: u32,
    pub replication: u32,
    pub tick_ms: u64,
    pub election_ticks: Option<u32>,
    pub heartbeat_ticks: Option<u32>,
    pub session_timeout_ms: u64,
    pub snapshot_every: Option<u64>,
    pub compaction_tail: Option<u64>,
    /// Node n listens for peers on 127.0.0.n instead of 127.0.0.1 (so peer certificates can
    /// name one node each).
    pub peer_ip_per_node: bool,
    /// Extra flags of node n (e.g. its peer TLS files).
    pub node_args: BTreeMap<u32, Vec<String>>,
}

impl Default for ClusterOptions {
    /// Three nodes, two shards, four partitions replicated on all three, 10 ms ticks.
    fn default() -> ClusterOptions {
        ClusterOptions {
            nodes: 3,
            shards: 2,
            partitions: 4,
            replication: 3,
            tick_ms: 10,
            election_ticks: None,
            heartbeat_ticks: None,
            session_timeout_ms: 3_000,
            snapshot_every: None,
            compaction_tail: None,
            peer_ip_per_node: false,
            node_args: BTreeMap::new(),
        }
    }
}

/// Ports handed out by this process: outside Linux's ephemeral range (32768–60999), so the
/// nodes' own outgoing connections never take a port reserved for a node that is not
/// listening yet; each checked free when handed out, never handed out twice.
static NEXT_PORT: AtomicU16 = AtomicU16::new(0);
const PORT_RANGE: std::ops::Range<u16> = 20_000..32_000;

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// `count` consecutive ports, free a moment ago; returns the first.
pub fn reserve_ports(count: u16) -> u16 {
    let span = PORT_RANGE.end - PORT_RANGE.start;
    // Start at a place that depends on the process, so test binaries run side by side
    // (by other people on the same machine) rarely meet.
    let _ = NEXT_PORT.compare_exchange(0, (std::process::id() % u32::from(span)) as u16, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..span {
        let offset = NEXT_PORT.fetch_add(count, Ordering::SeqCst) % span;
        let first = PORT_RANGE.start + offset;
        if first + count > PORT_RANGE.end {
            continue;
        }
        if (first..first + count).all(port_is_free) {
            return first;
        }
    }
    panic!("no {count} consecutive free ports in {PORT_RANGE:?}");
}

/// One member of the cluster: its ports (`ports.peer` is the peer port of shard 0; shard s
/// listens on it plus s), its directory, and its process while one runs.
pub struct Member {
    pub id: u32,
    pub ports: Ports,
    pub dir: TestDir,
    node: Option<Node>,
}

pub struct Cluster {
    pub options: ClusterOptions,
    members: Vec<Member>,
}

impl Cluster {
    /// Starts every node and waits until each is SERVING (every partition it hosts has a
    /// leader). Ports taken by someone else between reservation and bind make the whole
    /// start retry with new ports (a bounded number of times).
    pub async fn start(options: ClusterOptions) -> Cluster {
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            let members = (1..=options.nodes)
                .map(|id| {
                    let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
                    let peer_ip = if options.peer_ip_per_node { [127, 0, 0, id as u8] } else { [127, 0, 0, 1] };
                    let ports = Ports {
                        listen: at(reserve_ports(1)),
                        admin: at(reserve_ports(1)),
                        peer: SocketAddr::from((peer_ip, reserve_ports(options.shards as u16))),
                        metrics: at(reserve_ports(1)),
                    };
                    Member { id, ports, dir: TestDir::new(), node: None }
                })
                .collect();
            let mut cluster = Cluster { options: options.clone(), members };
            let started = Instant::now();
            for id in 1..=options.nodes {
                cluster.spawn(id);
            }
            match cluster.wait_all_ready().await {
                Ok(()) => {
                    eprintln!("cluster of {} node(s) ready in {:?}", options.nodes, started.elapsed());
                    return cluster;
                }
                Err(report) if attempt < ATTEMPTS && (report.contains("cannot bind") || report.contains("in use")) => {
                    eprintln!("cluster start attempt {attempt}: a port was taken, retrying with new ports");
                    cluster.kill_all();
                    continue;
                }
                Err(report) => {
                    cluster.kill_all();
                    panic!("the cluster did not start:\n{report}");
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    async fn wait_all_ready(&mut self) -> Result<(), String> {
        for id in 1..=self.options.nodes {
            if let Err(output) = self.member_mut(id).node.as_mut().expect("spawned").ready().await {
                return Err(format!("node {id}: {output}\n{}", self.logs()));
            }
        }
        Ok(())
    }

    /// The `--peers` value every node gets.
    pub fn peers_arg(&self) -> String {
        self.members.iter().map(|m| format!("{}={}", m.id, m.ports.peer)).collect::<Vec<_>>().join(",")
    }

    /// The arguments of `conclave serve` for node `id`.
    pub fn args(&self, id: u32) -> Vec<String> {
        let o = &self.options;
        let m = self.member(id);
        let mut args: Vec<String> = [
            "serve",
            "--node-id",
            &id.to_string(),
            "--peers",
            &self.peers_arg(),
            "--replication",
            &o.replication.to_string(),
            "--shards",
            &o.shards.to_string(),
            "--partitions",
            &o.partitions.to_string(),
            "--listen",
            &m.ports.listen.to_string(),
            "--admin-listen",
            &m.ports.admin.to_string(),
            "--metrics-listen",
            &m.ports.metrics.to_string(),
            "--data-dir",
            &m.dir.data_dir().display().to_string(),
            "--tick-ms",
            &o.tick_ms.to_string(),
            "--session-timeout-ms",
            &o.session_timeout_ms.to_string(),
            "--io-memory-bytes",
            IO_MEMORY_BYTES,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut optional = |flag: &str, value: Option<String>| {
            if let Some(value) = value {
                args.extend([flag.to_owned(), value]);
            }
        };
        optional("--election-ticks", o.election_ticks.map(|v| v.to_string()));
        optional("--heartbeat-ticks", o.heartbeat_ticks.map(|v| v.to_string()));
        optional("--snapshot-every", o.snapshot_every.map(|v| v.to_string()));
        optional("--compaction-tail", o.compaction_tail.map(|v| v.to_string()));
        args.extend(o.node_args.get(&id).into_iter().flatten().cloned());
        args
    }

    pub fn member(&self, id: u32) -> &Member {
        &self.members[(id - 1) as usize]
    }

    fn member_mut(&mut self, id: u32) -> &mut Member {
        &mut self.members[(id - 1) as usize]
    }

    pub fn ids(&self) -> Vec<u32> {
        self.members.iter().map(|m| m.id).collect()
    }

    /// The running process of node `id` (panics if it is not running).
    pub fn node(&self, id: u32) -> &Node {
        self.member(id).node.as_ref().unwrap_or_else(|| panic!("node {id} is not running"))
    }

    pub fn is_running(&self, id: u32) -> bool {
        self.member(id).node.is_some()
    }

    /// Spawns node `id` (on its own ports and data directory) without waiting for it.
    pub fn spawn(&mut self, id: u32) {
        assert!(!self.is_running(id), "node {id} already runs");
        let args = self.args(id);
        let member = self.member_mut(id);
        let node = Node::spawn(&mut member.dir, member.ports, args);
        member.node = Some(node);
    }

    /// Waits until node `id` is SERVING; panics with every node's log if it is not.
    pub async fn wait_ready(&mut self, id: u32) {
        let result = self.member_mut(id).node.as_mut().expect("spawned").ready().await;
        if let Err(output) = result {
            panic!("node {id} did not become ready: {output}\n{}", self.logs());
        }
    }

    /// Restarts node `id` on its ports and data directory and waits until it is SERVING.
    pub async fn restart(&mut self, id: u32) {
        self.spawn(id);
        self.wait_ready(id).await;
    }

    /// SIGKILL node `id` and reap it.
    pub fn kill9(&mut self, id: u32) {
        let mut node = self.member_mut(id).node.take().unwrap_or_else(|| panic!("node {id} is not running"));
        node.kill9();
    }

    /// SIGTERM node `id` and wait (bounded) for its exit status. Blocks the thread: call it
    /// from a multi-threaded runtime (it runs in `block_in_place`).
    pub fn terminate(&mut self, id: u32) -> ExitStatus {
        let mut node = self.member_mut(id).node.take().unwrap_or_else(|| panic!("node {id} is not running"));
        tokio::task::block_in_place(|| node.terminate())
    }

    fn kill_all(&mut self) {
        for m in &mut self.members {
            if let Some(mut node) = m.node.take() {
                node.kill9();
            }
        }
    }

    /// A new client connection to node `id`.
    pub async fn connect(&self, id: u32) -> Channel {
        self.node(id).connect().await
    }

    /// A new connection to node `id`'s admin listener.
    pub async fn connect_admin(&self, id: u32) -> Channel {
        self.node(id).connect_admin().await
    }

    /// A Node-API Watch on node `id`.
    pub async fn events(&self, id: u32) -> NodeEvents {
        NodeEvents::open(id, self.connect_admin(id).await).await.unwrap_or_else(|s| panic!("Watch on node {id}'s admin API: {s:?}"))
    }

    /// A Node-API Watch on node `id` opened as early as possible after it was spawned: the
    /// admin port is retried until the Watch is accepted (bounded).
    pub async fn events_early(&self, id: u32) -> NodeEvents {
        let admin = format!("http://{}", self.member(id).ports.admin);
        let deadline = Instant::now() + super::READY_TIMEOUT;
        loop {
            let connected = Endpoint::from_shared(admin.clone()).expect("url").connect_timeout(Duration::from_millis(500)).connect().await;
            if let Ok(channel) = connected {
                if let Ok(events) = NodeEvents::open(id, channel).await {
                    return events;
                }
            }
            assert!(Instant::now() < deadline, "node {id}'s admin Watch not available within {:?}\n{}", super::READY_TIMEOUT, self.logs());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A MemberConfig of node `id` (its peer port) with `role`.
    pub fn member_config(&self, id: u32, role: Role) -> mr::MemberConfig {
        let peer = self.member(id).ports.peer;
        mr::MemberConfig { node_id: id, host: peer.ip().to_string(), port: i32::from(peer.port()), role: role as i32 }
    }

    /// A GroupConfig with `members` (node id, role).
    pub fn group_config(&self, group_id: u32, members: &[(u32, Role)]) -> mr::GroupConfig {
        mr::GroupConfig { group_id, members: members.iter().map(|(id, role)| self.member_config(*id, *role)).collect() }
    }

    /// Every node's log, the ones of stopped processes included (their last lines).
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for m in &self.members {
            let mut logs: Vec<_> = std::fs::read_dir(m.dir.path())
                .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "log")).collect())
                .unwrap_or_default();
            logs.sort();
            for log in logs {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(60)..];
                let _ = writeln!(all, "----- node {} {} ({} lines, last {}) -----", m.id, log.display(), lines.len(), tail.len());
                for line in tail {
                    let _ = writeln!(all, "{line}");
                }
            }
        }
        all
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the test failed; the cluster's logs:\n{}", self.logs());
            // CONCLAVE_E2E_KEEP_LOGS=DIR keeps the whole logs of a failed test there.
            if let Ok(keep) = std::env::var("CONCLAVE_E2E_KEEP_LOGS") {
                let into =
                    std::path::Path::new(&keep).join(format!("{}-{}", std::process::id(), std::thread::current().name().unwrap_or("test")));
                for m in &self.members {
                    let target = into.join(format!("node-{}", m.id));
                    let _ = std::fs::create_dir_all(&target);
                    for entry in std::fs::read_dir(m.dir.path()).into_iter().flatten().flatten() {
                        if entry.path().extension().is_some_and(|x| x == "log") {
                            let _ = std::fs::copy(entry.path(), target.join(entry.file_name()));
                        }
                    }
                }
                eprintln!("the whole logs are in {}", into.display());
            }
        }
        self.kill_all();
    }
}

/// A Node-API Watch stream read by a background task; every event is kept with the
/// instant it arrived, so delays are measured from when it reached the test, not from when
/// the test looked.
pub struct NodeEvents {
    pub node_id: u32,
    rx: mpsc::UnboundedReceiver<(Instant, Option<prost_types::Timestamp>, Option<Ev>)>,
    seen: Vec<(Instant, Ev)>,
    /// The server's timestamp of each event of `seen`.
    stamps: Vec<Option<prost_types::Timestamp>>,
    ended: bool,
    task: tokio::task::JoinHandle<()>,
}

impl NodeEvents {
    /// Opens a Watch on `admin` (node `node_id`'s admin listener).
    pub async fn open(node_id: u32, admin: Channel) -> Result<NodeEvents, Status> {
        let mut request = tonic::Request::new(mr::WatchRequest {});
        request.set_timeout(Duration::from_secs(600));
        let mut stream = NodeApi::new(admin).watch(request).await?.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(event)) => {
                        if tx.send((Instant::now(), event.timestamp, event.event)).is_err() {
                            return;
                        }
                    }
                    Ok(None) | Err(_) => return,
                }
            }
        });
        Ok(NodeEvents { node_id, rx, seen: Vec::new(), stamps: Vec::new(), ended: false, task })
    }

    fn drain(&mut self) {
        loop {
            match self.rx.try_recv() {
                Ok((at, stamp, Some(event))) => {
                    self.seen.push((at, event));
                    self.stamps.push(stamp);
                }
                Ok((_, _, None)) => {}
                Err(mpsc::error::TryRecvError::Empty) => return,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.ended = true;
                    return;
                }
            }
        }
    }

    /// Every event received so far, in order.
    pub fn seen(&mut self) -> &[(Instant, Ev)] {
        self.drain();
        &self.seen
    }

    /// The number of events received so far (a position for [`NodeEvents::wait_for`]).
    pub fn mark(&mut self) -> usize {
        self.drain();
        self.seen.len()
    }

    /// The first event at position `from` or later that `matches`, waiting (bounded by
    /// `timeout`) for it to arrive; returns its position, arrival and the event.
    pub async fn try_wait_for(
        &mut self,
        from: usize,
        timeout: Duration,
        mut matches: impl FnMut(&Ev) -> bool,
    ) -> Option<(usize, Instant, Ev)> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut next = from;
        loop {
            self.drain();
            while next < self.seen.len() {
                let (at, event) = &self.seen[next];
                if matches(event) {
                    return Some((next, *at, event.clone()));
                }
                next += 1;
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((at, stamp, Some(event)))) => {
                    self.seen.push((at, event));
                    self.stamps.push(stamp);
                }
                Ok(Some((_, _, None))) => {}
                Ok(None) => self.ended = true,
                Err(_) => return None,
            }
        }
    }

    /// As [`NodeEvents::try_wait_for`], panicking with `what` and every event seen if no
    /// such event arrives in time.
    pub async fn wait_for(&mut self, what: &str, from: usize, timeout: Duration, matches: impl FnMut(&Ev) -> bool) -> (usize, Instant, Ev) {
        match self.try_wait_for(from, timeout, matches).await {
            Some(found) => found,
            None => {
                let seen = self.describe();
                panic!(
                    "node {}: no {what} within {timeout:?} (stream {}); events seen:\n{seen}",
                    self.node_id,
                    if self.ended { "ended" } else { "open" },
                )
            }
        }
    }

    /// Whether any event at position `from` or later matches (no waiting).
    pub fn any_since(&mut self, from: usize, mut matches: impl FnMut(&Ev) -> bool) -> bool {
        self.drain();
        self.seen[from.min(self.seen.len())..].iter().any(|(_, e)| matches(e))
    }

    /// The leader each group has according to the events so far: the leader_updated of the
    /// highest term (leader 0 means none known), by group.
    pub fn leaders(&mut self) -> BTreeMap<u32, (u64, u64)> {
        self.drain();
        let mut leaders: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
        for (_, event) in &self.seen {
            if let Ev::LeaderUpdated(e) = event {
                let entry = leaders.entry(e.group_id).or_insert((e.term, e.leader));
                if e.term >= entry.0 {
                    *entry = (e.term, e.leader);
                }
            }
        }
        leaders
    }

    /// Waits (bounded) until every group of `groups` has a known leader; returns them.
    pub async fn wait_leaders(&mut self, groups: impl IntoIterator<Item = u32> + Clone, timeout: Duration) -> BTreeMap<u32, (u64, u64)> {
        let deadline = Instant::now() + timeout;
        loop {
            let leaders = self.leaders();
            if groups.clone().into_iter().all(|g| leaders.get(&g).is_some_and(|(_, l)| *l != 0)) {
                return leaders;
            }
            if Instant::now() > deadline {
                let seen = self.describe();
                panic!("node {}: not every group has a leader within {timeout:?}: {leaders:?}; events:\n{seen}", self.node_id);
            }
            let from = self.mark();
            let _ = self.try_wait_for(from, Duration::from_millis(50), |_| true).await;
        }
    }

    /// The events from position `from`, one a line: arrival at the test (UTC time of day),
    /// the server's timestamp, the event.
    pub fn describe_from(&mut self, from: usize) -> String {
        self.drain();
        let mut text = String::new();
        for ((at, event), stamp) in self.seen.iter().zip(&self.stamps).skip(from) {
            let server = stamp.as_ref().map_or_else(|| "-".to_owned(), |t| time_of_day(t.seconds as u64, t.nanos as u32));
            let _ = writeln!(text, "  {} (server {server}) {event:?}", wall(*at));
        }
        text
    }

    /// Every event seen, as [`NodeEvents::describe_from`].
    pub fn describe(&mut self) -> String {
        self.describe_from(0)
    }
}

impl Drop for NodeEvents {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn time_of_day(seconds: u64, nanos: u32) -> String {
    let day = seconds % 86_400;
    format!("{:02}:{:02}:{:02}.{:06}", day / 3600, day / 60 % 60, day % 60, nanos / 1_000)
}

/// The UTC time of day of `at` (to line test output up with the servers' logs).
pub fn wall(at: Instant) -> String {
    static BASE: std::sync::OnceLock<(Instant, std::time::SystemTime)> = std::sync::OnceLock::new();
    let (base, system) = *BASE.get_or_init(|| (Instant::now(), std::time::SystemTime::now()));
    let system = if at >= base { system + (at - base) } else { system - (base - at) };
    let since = system.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    time_of_day(since.as_secs(), since.subsec_nanos())
}

/// The group of an event, if it names one.
pub fn group_of(event: &Ev) -> Option<u32> {
    Some(match event {
        Ev::MemberReady(e) => e.group_id,
        Ev::LeaderUpdated(e) => e.group_id,
        Ev::MembershipChanged(e) => e.group_id,
        Ev::SendSnapshotStarted(e) => e.group_id,
        Ev::SendSnapshotCompleted(e) => e.group_id,
        Ev::SendSnapshotAborted(e) => e.group_id,
        Ev::SnapshotReceived(e) => e.group_id,
        Ev::SnapshotRecovered(e) => e.group_id,
        Ev::SnapshotCreated(e) => e.group_id,
        Ev::SnapshotCompacted(e) => e.group_id,
        Ev::LogCompacted(e) => e.group_id,
        Ev::LogdbCompacted(e) => e.group_id,
        Ev::ConnectionEstablished(_) | Ev::ConnectionFailed(_) => return None,
    })
}

/// Counts leaderships by node among `groups`.
pub fn leaderships(leaders: &BTreeMap<u32, (u64, u64)>, groups: impl IntoIterator<Item = u32>) -> BTreeMap<u64, Vec<u32>> {
    let mut by_node: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for g in groups {
        if let Some((_, leader)) = leaders.get(&g) {
            by_node.entry(*leader).or_default().push(g);
        }
    }
    by_node
}

/// The node leading the most of `groups` (the lowest id among ties) and the groups it leads.
pub fn busiest_leader(leaders: &BTreeMap<u32, (u64, u64)>, groups: impl IntoIterator<Item = u32>) -> (u32, Vec<u32>) {
    let by_node = leaderships(leaders, groups);
    let (node, led) =
        by_node.iter().filter(|(n, _)| **n != 0).max_by_key(|(n, led)| (led.len(), std::cmp::Reverse(**n))).expect("some leader");
    (*node as u32, led.clone())
}

// ---- client API helpers ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Enter,
    Withdraw,
    Anoint,
    Promote,
    Demote,
    Evict,
}

/// One client-API command with `timeout`.
pub async fn apply_with(client: &mut Election, op: Op, election: &str, candidate: &str, timeout: Duration) -> Result<View, Status> {
    let (id, candidate) = (id(election), candidate.to_owned());
    fn req<T>(message: T, timeout: Duration) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(timeout);
        request
    }
    let term = match op {
        Op::Enter => client.enter(req(rt::EnterRequest { id, candidate }, timeout)).await?.into_inner().term,
        Op::Withdraw => client.withdraw(req(rt::WithdrawRequest { id, candidate }, timeout)).await?.into_inner().term,
        Op::Anoint => client.anoint(req(rt::AnointRequest { id, candidate }, timeout)).await?.into_inner().term,
        Op::Promote => client.promote(req(rt::PromoteRequest { id, candidate }, timeout)).await?.into_inner().term,
        Op::Demote => client.demote(req(rt::DemoteRequest { id, candidate }, timeout)).await?.into_inner().term,
        Op::Evict => client.evict(req(rt::EvictRequest { id, candidate }, timeout)).await?.into_inner().term,
    };
    Ok(view(term))
}

/// One client-API command bounded by the default call timeout; panics on an error.
pub async fn run(client: &mut Election, op: Op, election: &str, candidate: &str) -> View {
    apply_with(client, op, election, candidate, super::CALL_TIMEOUT)
        .await
        .unwrap_or_else(|s| panic!("{op:?}({candidate}) on {election}: {s:?}"))
}

pub async fn get_term(client: &mut Election, election: &str) -> Result<View, Status> {
    Ok(view(client.get_term(bounded(rt::GetTermRequest { id: id(election) })).await?.into_inner().term))
}

pub async fn create(channel: &Channel, election: &str) {
    Elections::new(channel.clone())
        .create(bounded(rt::CreateRequest { id: id(election), tags: vec![] }))
        .await
        .unwrap_or_else(|s| panic!("Create {election}: {s:?}"));
}

/// Election names, `per_partition` in every partition.
pub fn spread_names(prefix: &str, per_partition: usize, partitions: u32) -> Vec<String> {
    let mut counts = vec![0; partitions as usize];
    let mut names = Vec::new();
    for i in 0..100_000 {
        let name = format!("{prefix}-{i}");
        let slot = &mut counts[(partition_of(&name, partitions) - 1) as usize];
        if *slot < per_partition {
            *slot += 1;
            names.push(name);
        }
        if names.len() == per_partition * partitions as usize {
            return names;
        }
    }
    panic!("no {per_partition} names per partition");
}

/// A Watch on `election` through `channel`.
pub async fn watch(channel: &Channel, election: &str) -> tonic::Streaming<rt::WatchResponse> {
    let mut request = tonic::Request::new(rt::WatchRequest { id: id(election) });
    request.set_timeout(Duration::from_secs(600));
    Election::new(channel.clone()).watch(request).await.unwrap_or_else(|s| panic!("Watch {election}: {s:?}")).into_inner()
}

/// The next state of a client-API watch, bounded by `timeout`, with its arrival.
pub async fn next_view(stream: &mut tonic::Streaming<rt::WatchResponse>, what: &str, timeout: Duration) -> (Instant, View) {
    let message = tokio::time::timeout(timeout, stream.message())
        .await
        .unwrap_or_else(|_| panic!("{what}: no watch message within {timeout:?}"))
        .unwrap_or_else(|s| panic!("{what}: watch failed: {s:?}"))
        .unwrap_or_else(|| panic!("{what}: watch ended"));
    (Instant::now(), view(message.term))
}

/// The candidates of a view as a set.
pub fn candidate_set(view: &View) -> BTreeSet<String> {
    view.2.iter().cloned().collect()
}
