//! Shard runtimes of several nodes in one glommio executor, each on its own real storage
//! (the io_uring log and the snapshot store in a temp directory per node), talking through
//! an in-memory network that can cut a node off, heal it, or lose chosen Raft messages.
//!
//! Checked end to end: a follower forwards proposals to the leader and answers them with
//! the applied result; followers serve linearizable reads (ReadIndex); a proposal forwarded
//! to a leader that was cut off fails with a retryable error within the forward timeout and
//! nothing acknowledged is lost across the partition; a follower that fell behind the
//! leaders' compacted logs catches up through a snapshot and keeps it across a restart;
//! replicas join as observers and witnesses and leave again through membership changes
//! forwarded to the leader; leadership moves on a hand-off and to a preferred leader.
//!
//! The last tests are regressions of engine defects this file found (see their comments).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use conclave_engine::log::{Log, LogOptions, SnapshotStore};
use conclave_engine::raft::{Config, Membership, Message, MessageType, RaftEvent, RaftNode, RaftRole, Role};
use conclave_engine::shard::{
    load_snapshot, recover_replica, Committed, ReadTerm, Replica, Request, RuntimeConfig, ShardCounters, ShardError, ShardEvent,
    ShardHandle, ShardRuntime, ShardStorage, TermQuery,
};
use conclave_engine::sm::{command, Command, ElectionOp, ElectionTerm, Output, PrimitiveRef, StateMachine};
use conclave_proto::conclave::peer::v1::{peer_message::Body, PeerMessage};
use futures_lite::future;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::{LocalExecutorBuilder, Task};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const GROUP: u32 = 1;
const TICK: Duration = Duration::from_millis(2);
const ELECTION_TICKS: u32 = 20;
const HEARTBEAT_TICKS: u32 = 4;
/// The longest election timeout: `2 * ELECTION_TICKS` ticks of 2 ms.
const ELECTION_TIMEOUT: Duration = Duration::from_millis(2 * 2 * ELECTION_TICKS as u64);
/// The bound on anything that should converge (generous: the machine is shared).
const DEADLINE: Duration = Duration::from_secs(15);
const HOUR_MS: u64 = 3_600_000;
/// The engine's bound on a read waiting for its index to be confirmed, in ticks
/// (`shard::replica::READ_CONFIRM_TICKS`, not exported).
const READ_CONFIRM_TICKS: u32 = 200;

// ----- the in-memory network ------------------------------------------------------------

/// One message on the wire: (from, to, message).
type Wire = (u64, u64, PeerMessage);

/// Drops single Raft messages it returns true for: (from, to, message).
type Filter = Box<dyn FnMut(u64, u64, &Message) -> bool>;

/// The network between the runtimes: every transport pushes into one FIFO queue, and one
/// task delivers it to the destination's handle unless either end is cut off.
#[derive(Default)]
struct Net {
    handles: RefCell<BTreeMap<u64, ShardHandle>>,
    cut: RefCell<BTreeSet<u64>>,
    filter: RefCell<Option<Filter>>,
    delivered: Cell<u64>,
    dropped: Cell<u64>,
    /// Peer requests sent, by (kind, from, to): "proposal", "membership".
    sent: RefCell<BTreeMap<(&'static str, u64, u64), u64>>,
}

impl Net {
    fn cut(&self, node: u64) {
        self.cut.borrow_mut().insert(node);
    }

    fn heal(&self, node: u64) {
        self.cut.borrow_mut().remove(&node);
    }

    fn sent(&self, kind: &'static str, from: u64, to: u64) -> u64 {
        self.sent.borrow().get(&(kind, from, to)).copied().unwrap_or(0)
    }

    /// Peer requests of `kind` node `from` sent to any node.
    fn sent_from(&self, kind: &'static str, from: u64) -> u64 {
        self.sent.borrow().iter().filter(|((k, f, _), _)| *k == kind && *f == from).map(|(_, n)| n).sum()
    }

    fn record(&self, from: u64, to: u64, message: &PeerMessage) {
        let kind = match &message.body {
            Some(Body::Proposal(_)) => "proposal",
            Some(Body::MembershipRequest(_)) => "membership",
            _ => return,
        };
        *self.sent.borrow_mut().entry((kind, from, to)).or_default() += 1;
    }

    /// Applies the cut switches and the message filter; None: dropped.
    fn pass(&self, from: u64, to: u64, mut message: PeerMessage) -> Option<PeerMessage> {
        let cut = self.cut.borrow();
        if cut.contains(&from) || cut.contains(&to) {
            return None;
        }
        if let (Some(Body::Raft(batch)), Some(filter)) = (&mut message.body, self.filter.borrow_mut().as_mut()) {
            batch.messages.retain(|m| !filter(from, to, m));
            if batch.messages.is_empty() {
                return None;
            }
        }
        Some(message)
    }
}

async fn deliver(net: Rc<Net>, queue: LocalReceiver<Wire>) {
    while let Some((from, to, message)) = queue.recv().await {
        let Some(message) = net.pass(from, to, message) else {
            net.dropped.set(net.dropped.get() + 1);
            continue;
        };
        let handle = net.handles.borrow().get(&to).cloned();
        match handle {
            Some(handle) if handle.send(Request::Peer { from, message }).await.is_ok() => net.delivered.set(net.delivered.get() + 1),
            _ => net.dropped.set(net.dropped.get() + 1),
        }
    }
}

// ----- the cluster ----------------------------------------------------------------------

#[derive(Clone)]
struct Opts {
    snapshot_every: u64,
    compaction_tail: u64,
    forward_timeout: Duration,
    membership_timeout: Duration,
    rebalance_ticks: u64,
    follow_workload: bool,
    /// Idle groups go quiet (`raft::Config::quiesce`).
    quiesce: bool,
    preferred_leader: Option<u64>,
    /// Node-level liveness: each shard pings nodes 1 to 4 (but itself) every heartbeat
    /// interval and reports one silent after an election timeout (`RuntimeConfig::liveness_*`).
    liveness: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            snapshot_every: 0,
            compaction_tail: 0,
            forward_timeout: Duration::from_millis(500),
            membership_timeout: Duration::from_secs(5),
            rebalance_ticks: 0,
            follow_workload: false,
            quiesce: false,
            preferred_leader: None,
            liveness: false,
        }
    }
}

#[derive(Clone, Debug)]
struct Ev {
    node: u64,
    group: u32,
    event: ShardEvent,
}

struct Node {
    handle: ShardHandle,
    task: Task<Result<(), ShardError>>,
    counters: Rc<ShardCounters>,
}

/// What a node found in its storage when it started.
#[derive(Debug)]
struct Started {
    snapshot_index: Option<u64>,
    compacted: u64,
    log_last_index: u64,
}

struct Cluster {
    root: tempfile::TempDir,
    opts: Opts,
    net: Rc<Net>,
    queue: Rc<LocalSender<Wire>>,
    events: Rc<RefCell<Vec<Ev>>>,
    /// Each running node's latest role (from its RoleChanged events) and term.
    roles: Rc<RefCell<BTreeMap<u64, (RaftRole, u64)>>>,
    /// Each running node's latest known leader (from its LeaderChanged events).
    known_leader: Rc<RefCell<BTreeMap<u64, u64>>>,
    nodes: BTreeMap<u64, Node>,
    starts: BTreeMap<u64, u64>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn raft_config(id: u64) -> Config {
    let mut cfg = Config::new(id, GROUP);
    cfg.election_ticks = ELECTION_TICKS;
    cfg.heartbeat_ticks = HEARTBEAT_TICKS;
    cfg
}

fn voters(ids: &[u64]) -> Membership {
    Membership::voters(ids.iter().copied()).unwrap()
}

/// A fresh replica of node `id` joining a group whose voters are `existing` (it is not
/// among them: the leader adds it through a membership change).
fn joining_replica(id: u64, existing: &[u64]) -> Replica {
    let raft = RaftNode::new(raft_config(id), voters(existing), ChaCha8Rng::seed_from_u64(id * 1_000 + 77)).unwrap();
    Replica::new(raft, StateMachine::new())
}

impl Cluster {
    /// Starts runtimes for `members` (bootstrapping a group of them as voters) and, for
    /// `empty`, runtimes that host no replica yet. Nodes in `cut` start cut off.
    async fn start(opts: Opts, members: &[u64], empty: &[u64], cut: &[u64]) -> Cluster {
        let (sender, receiver) = local_channel::new_unbounded();
        let net = Rc::new(Net::default());
        for node in cut {
            net.cut(*node);
        }
        glommio::spawn_local(deliver(net.clone(), receiver)).detach();
        let mut cluster = Cluster {
            root: tempfile::tempdir().unwrap(),
            opts,
            net,
            queue: Rc::new(sender),
            events: Rc::default(),
            roles: Rc::default(),
            known_leader: Rc::default(),
            nodes: BTreeMap::new(),
            starts: BTreeMap::new(),
        };
        for id in members {
            cluster.start_node(*id, Some(voters(members))).await;
        }
        for id in empty {
            cluster.start_node(*id, None).await;
        }
        cluster
    }

    /// Starts node `id` from whatever its directory holds; with `bootstrap`, it hosts the
    /// group (recovered from its snapshot and log, or fresh with that configuration).
    async fn start_node(&mut self, id: u64, bootstrap: Option<Membership>) -> Started {
        assert!(!self.nodes.contains_key(&id), "node {id} is running");
        let starts = self.starts.entry(id).or_default();
        *starts += 1;
        let seed = id * 1_000 + *starts;
        let dir = self.root.path().join(format!("node{id}"));
        let (log, recovery) = Log::open(dir.join("log"), LogOptions::with_segment_bytes(1 << 20)).await.unwrap();
        let snapshots = SnapshotStore::open(dir.join("snapshots")).await.unwrap();
        let recovered = recovery.groups.get(&GROUP);
        let mut started = Started {
            snapshot_index: None,
            compacted: recovered.map_or(0, |g| g.compacted),
            log_last_index: recovered.map_or(0, |g| g.last_index()),
        };
        let mut replicas = BTreeMap::new();
        if let Some(bootstrap) = bootstrap {
            let snapshot = load_snapshot(&snapshots, GROUP).await.unwrap();
            started.snapshot_index = snapshot.as_ref().map(|s| s.index);
            let raft = Config { quiesce: self.opts.quiesce, ..raft_config(id) };
            let mut replica = recover_replica(raft, bootstrap, snapshot, recovered, ChaCha8Rng::seed_from_u64(seed)).unwrap();
            replica.set_preferred_leader(self.opts.preferred_leader);
            replicas.insert(GROUP, replica);
        }
        let cfg = RuntimeConfig {
            request_queue: 4096,
            expiry_check: Duration::from_millis(50),
            snapshot_every: self.opts.snapshot_every,
            compaction_tail: self.opts.compaction_tail,
            forward_timeout: self.opts.forward_timeout,
            membership_timeout: self.opts.membership_timeout,
            rebalance_ticks: self.opts.rebalance_ticks,
            follow_workload: self.opts.follow_workload,
            liveness_peers: if self.opts.liveness { (1..=4).filter(|n| *n != id).collect() } else { Vec::new() },
            liveness_ping_ticks: u64::from(HEARTBEAT_TICKS),
            liveness_silence_ticks: u64::from(ELECTION_TICKS),
            ..RuntimeConfig::new(id, TICK)
        };
        let queue = self.queue.clone();
        let net = self.net.clone();
        let transport = Box::new(move |to: u64, message: PeerMessage| {
            net.record(id, to, &message);
            let _ = queue.try_send((id, to, message));
        });
        let (events, roles, known_leader) = (self.events.clone(), self.roles.clone(), self.known_leader.clone());
        let sink = Box::new(move |group: u32, event: &ShardEvent| {
            if group == GROUP {
                match event {
                    ShardEvent::Raft(RaftEvent::RoleChanged { role, term }) => {
                        roles.borrow_mut().insert(id, (*role, *term));
                    }
                    ShardEvent::Raft(RaftEvent::LeaderChanged { leader, .. }) => {
                        known_leader.borrow_mut().insert(id, *leader);
                    }
                    ShardEvent::MemberRemoved => {
                        roles.borrow_mut().remove(&id);
                        known_leader.borrow_mut().remove(&id);
                    }
                    _ => {}
                }
            }
            events.borrow_mut().push(Ev { node: id, group, event: event.clone() });
        });
        let runtime = ShardRuntime::new(cfg, replicas, ShardStorage::new(log, snapshots), transport, sink, Box::new(now_ms));
        let handle = runtime.handle();
        let counters = runtime.counters();
        let task = glommio::spawn_local(runtime.run());
        self.net.handles.borrow_mut().insert(id, handle.clone());
        self.nodes.insert(id, Node { handle, task, counters });
        started
    }

    /// Shuts node `id` down (its storage stays) and forgets what it said about roles.
    async fn stop_node(&mut self, id: u64) {
        let node = self.nodes.remove(&id).expect("node is running");
        self.net.handles.borrow_mut().remove(&id);
        node.handle.send(Request::Shutdown).await.unwrap();
        within("a runtime to stop", DEADLINE, node.task).await.unwrap();
        self.roles.borrow_mut().remove(&id);
        self.known_leader.borrow_mut().remove(&id);
    }

    async fn stop_all(mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop_node(id).await;
        }
    }

    fn handle(&self, id: u64) -> ShardHandle {
        self.nodes[&id].handle.clone()
    }

    /// Leadership transfers node `id` started toward its group's workload home.
    fn workload_transfers(&self, id: u64) -> u64 {
        self.nodes[&id].counters.workload_transfers.get()
    }

    /// The node of `among` that leads at the highest term any of them has reached, if any.
    fn leader_among(&self, among: &[u64]) -> Option<(u64, u64)> {
        let roles = self.roles.borrow();
        let top = among.iter().filter_map(|n| roles.get(n)).map(|(_, t)| *t).max()?;
        among.iter().find(|n| roles.get(n) == Some(&(RaftRole::Leader, top))).map(|n| (*n, top))
    }

    /// Waits for a leader among `among` at a term above `above`; returns (leader, term).
    async fn wait_leader(&self, among: &[u64], above: u64) -> (u64, u64) {
        let mut found = None;
        eventually(&format!("a leader among {among:?} above term {above}"), DEADLINE, || {
            found = self.leader_among(among).filter(|(_, term)| *term > above);
            found.is_some()
        })
        .await;
        found.unwrap()
    }

    /// Waits until every node of `nodes` knows `leader` leads.
    async fn wait_known_leader(&self, nodes: &[u64], leader: u64) {
        eventually(&format!("{nodes:?} to know leader {leader}"), DEADLINE, || {
            let known = self.known_leader.borrow();
            nodes.iter().all(|n| known.get(n) == Some(&leader))
        })
        .await;
    }

    /// Waits until every node of `nodes` knows some leader; returns the one the first knows.
    async fn wait_knows_a_leader(&self, nodes: &[u64]) -> u64 {
        eventually(&format!("{nodes:?} to know a leader"), DEADLINE, || {
            let known = self.known_leader.borrow();
            nodes.iter().all(|n| known.get(n).is_some_and(|l| *l != 0))
        })
        .await;
        self.known_leader.borrow()[&nodes[0]]
    }

    fn role(&self, node: u64) -> Option<RaftRole> {
        self.roles.borrow().get(&node).map(|(role, _)| *role)
    }

    /// Every event of `node` for the group, in order.
    fn events_of(&self, node: u64) -> Vec<ShardEvent> {
        self.events.borrow().iter().filter(|e| e.node == node && e.group == GROUP).map(|e| e.event.clone()).collect()
    }

    fn event_count(&self) -> usize {
        self.events.borrow().len()
    }

    /// Events of `node` after the first `from` events of the whole cluster.
    fn events_since(&self, from: usize, node: u64) -> Vec<ShardEvent> {
        self.events.borrow()[from..].iter().filter(|e| e.node == node && e.group == GROUP).map(|e| e.event.clone()).collect()
    }

    async fn change_membership(&self, via: u64, node: u64, role: Option<Role>) -> Result<u64, ShardError> {
        self.change_membership_through(via, node, role, 0).await
    }

    /// A membership change sent to node `at`, which forwards it to `through` while it knows
    /// no leader (0: to another member it knows).
    async fn change_membership_through(&self, at: u64, node: u64, role: Option<Role>, through: u64) -> Result<u64, ShardError> {
        let (tx, rx) = local_channel::new_bounded(1);
        let reply = Box::new(move |r| {
            let _ = tx.try_send(r);
        });
        self.handle(at).send(Request::ChangeMembership { group: GROUP, node, role, via: through, reply }).await?;
        within("a membership change", DEADLINE, rx.recv()).await.expect("answered")
    }

    /// A membership change through `via`, retried while the group has no leader to take it.
    async fn change_membership_retrying(&self, via: u64, node: u64, role: Option<Role>) -> u64 {
        let start = Instant::now();
        loop {
            match self.change_membership(via, node, role).await {
                Ok(index) => return index,
                Err(e @ (ShardError::NotLeader { .. } | ShardError::LeadershipLost | ShardError::Unavailable(_)))
                    if start.elapsed() < DEADLINE =>
                {
                    eprintln!("membership change via {via} refused ({e}); retrying");
                    sleep_ms(10).await
                }
                Err(e) => panic!("membership change of node {node} via {via}: {e}"),
            }
        }
    }

    /// Waits until `node` recovered a snapshot (installed one from the leader) after event
    /// `from`; returns its index.
    async fn wait_snapshot_recovered(&self, what: &str, from: usize, node: u64) -> u64 {
        let mut installed = 0;
        eventually(what, DEADLINE, || {
            installed = self
                .events_since(from, node)
                .iter()
                .find_map(|e| if let ShardEvent::SnapshotRecovered { index } = e { Some(*index) } else { None })
                .unwrap_or(0);
            installed > 0
        })
        .await;
        installed
    }

    async fn add_replica(&self, node: u64, replica: Replica) -> Result<(), ShardError> {
        let (tx, rx) = local_channel::new_bounded(1);
        let reply = Box::new(move |r| {
            let _ = tx.try_send(r);
        });
        self.handle(node).send(Request::AddReplica { group: GROUP, replica: Box::new(replica), reply }).await?;
        within("AddReplica", DEADLINE, rx.recv()).await.expect("answered")
    }

    async fn remove_replica(&self, node: u64) -> Result<(), ShardError> {
        let (tx, rx) = local_channel::new_bounded(1);
        let reply = Box::new(move |r| {
            let _ = tx.try_send(r);
        });
        self.handle(node).send(Request::RemoveReplica { group: GROUP, reply }).await?;
        within("RemoveReplica", DEADLINE, rx.recv()).await.expect("answered")
    }

    async fn hand_off(&self, node: u64) -> usize {
        let (tx, rx) = local_channel::new_bounded(1);
        let reply = Box::new(move |r| {
            let _ = tx.try_send(r);
        });
        self.handle(node).send(Request::HandOffLeadership { reply }).await.unwrap();
        within("HandOffLeadership", DEADLINE, rx.recv()).await.expect("answered")
    }
}

// ----- helpers ------------------------------------------------------------------------

fn run<F: Future<Output = ()> + 'static>(test: F) {
    let ex = LocalExecutorBuilder::default().io_memory(4 << 20).make().unwrap();
    ex.run(test);
}

async fn sleep_ms(ms: u64) {
    glommio::timer::sleep(Duration::from_millis(ms)).await;
}

/// `fut`'s output, or a panic naming `what` once `limit` passed: nothing here may hang.
async fn within<T>(what: &str, limit: Duration, fut: impl Future<Output = T>) -> T {
    let out = future::or(async { Some(fut.await) }, async {
        glommio::timer::sleep(limit).await;
        None
    })
    .await;
    out.unwrap_or_else(|| panic!("{what} did not finish within {limit:?}"))
}

/// `fut`'s output, or None once `limit` passed.
async fn before<T>(limit: Duration, fut: impl Future<Output = T>) -> Option<T> {
    future::or(async { Some(fut.await) }, async {
        glommio::timer::sleep(limit).await;
        None
    })
    .await
}

/// Polls `cond` every 2 ms until it holds; panics after `limit`.
async fn eventually(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        sleep_ms(2).await;
    }
}

/// Checks `cond` every 2 ms for `window`: it must hold at every check (a property that must
/// not break while time passes, not a wait for something to happen).
async fn holds_throughout(what: &str, window: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < window {
        assert!(cond(), "{what}: broke after {:?}", start.elapsed());
        sleep_ms(2).await;
    }
    assert!(cond(), "{what}: broke at the end of {window:?}");
}

fn retryable(e: &ShardError) -> bool {
    matches!(e, ShardError::NotLeader { .. } | ShardError::LeadershipLost)
}

/// Proposes `cmd` through `handle`, retrying while the group has no leader or lost it.
/// Only commands that are safe to retry (sequenced ones) should rely on the retry.
async fn propose(handle: &ShardHandle, cmd: &Command) -> Committed {
    let start = Instant::now();
    loop {
        match within("a proposal", DEADLINE, handle.propose(GROUP, cmd.clone())).await {
            Ok(committed) => return committed,
            Err(e) if retryable(&e) && start.elapsed() < DEADLINE => sleep_ms(5).await,
            Err(e) => panic!("proposal {cmd:?} failed: {e}"),
        }
    }
}

fn query(name: &str, min_index: u64) -> TermQuery {
    TermQuery { session_id: None, primitive: PrimitiveRef::Name(name.into()), min_index, sequence_num: 0 }
}

/// A linearizable read through `handle`, retried while the group has no leader.
async fn read(handle: &ShardHandle, name: &str, min_index: u64) -> ReadTerm {
    let start = Instant::now();
    loop {
        match within("a read", DEADLINE, handle.read(GROUP, query(name, min_index))).await {
            Ok(read) => return read,
            Err(e) if retryable(&e) && start.elapsed() < DEADLINE => sleep_ms(5).await,
            Err(e) => panic!("read of {name} failed: {e}"),
        }
    }
}

async fn candidates(handle: &ShardHandle, name: &str, min_index: u64) -> Vec<String> {
    names(&read(handle, name, min_index).await.result.unwrap_or_else(|e| panic!("election {name}: {e}")))
}

fn names(term: &ElectionTerm) -> Vec<String> {
    term.candidates.iter().map(|c| c.to_string()).collect()
}

fn term_of(committed: &Committed) -> ElectionTerm {
    match &committed.result {
        Ok(Output::Term(term)) => term.clone(),
        other => panic!("expected an election term, got {other:?}"),
    }
}

/// A client session: sequenced commands, each with its own sequence number.
struct Client {
    session: u64,
    seq: u64,
}

impl Client {
    async fn open(handle: &ShardHandle) -> Client {
        let committed = propose(handle, &command::open_session(0, HOUR_MS)).await;
        match committed.result {
            Ok(Output::SessionOpened { session_id }) => {
                assert_eq!(session_id, committed.index, "a session's id is its entry's index");
                Client { session: session_id, seq: 0 }
            }
            other => panic!("open_session answered {other:?}"),
        }
    }

    fn next(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn create(&mut self, name: &str) -> Command {
        let seq = self.next();
        command::create_primitive(0, self.session, seq, name)
    }

    /// `who` enters election `name`; returns the command and its sequence number.
    fn enter(&mut self, name: &str, who: &str) -> (Command, u64) {
        let seq = self.next();
        (self.enter_at(seq, name, who), seq)
    }

    fn enter_at(&self, seq: u64, name: &str, who: &str) -> Command {
        command::election(0, self.session, seq, PrimitiveRef::Name(name.into()), ElectionOp::Enter, who)
    }
}

fn others(all: &[u64], but: &[u64]) -> Vec<u64> {
    all.iter().copied().filter(|n| !but.contains(n)).collect()
}

// ----- 1. forwarding and follower reads ---------------------------------------------------

/// A follower forwards a command to the leader and answers its caller with the result it
/// applied itself; every follower serves a linearizable read that sees it.
#[test]
fn follower_forwards_proposals_and_serves_linearizable_reads() {
    run(async {
        let c = Cluster::start(Opts::default(), &[1, 2, 3], &[], &[]).await;
        let (leader, term) = c.wait_leader(&[1, 2, 3], 0).await;
        let followers = others(&[1, 2, 3], &[leader]);
        c.wait_known_leader(&followers, leader).await;
        let (f, g) = (followers[0], followers[1]);

        let mut client = Client::open(&c.handle(f)).await;
        assert!(c.net.sent_from("proposal", f) >= 1, "open_session through follower {f} was forwarded to the leader");
        let created = propose(&c.handle(f), &client.create("e")).await;
        assert!(matches!(created.result, Ok(Output::PrimitiveCreated { .. })), "{created:?}");

        let (alice, alice_seq) = client.enter("e", "alice");
        let entered = propose(&c.handle(f), &alice).await;
        let t = term_of(&entered);
        assert_eq!((t.term, names(&t)), (1, vec!["alice".to_string()]), "the follower answers with the applied result");
        assert!(entered.index > created.index);

        // Through the other follower: the next candidate queues behind alice.
        let (bob, _) = client.enter("e", "bob");
        let entered_bob = propose(&c.handle(g), &bob).await;
        assert_eq!(names(&term_of(&entered_bob)), vec!["alice", "bob"]);
        assert!(c.net.sent_from("proposal", g) >= 1, "follower {g} forwarded too");

        // A retry of alice's sequence number through the other follower is answered from
        // the session's cache, not applied again.
        let retried = propose(&c.handle(g), &client.enter_at(alice_seq, "e", "alice")).await;
        assert_eq!(names(&term_of(&retried)), vec!["alice"], "the cached answer of the first application");

        // Each follower (ReadIndex through the leader) and the leader read the same state,
        // at an index at least that of the last acknowledged command.
        for node in [f, g, leader] {
            let r = read(&c.handle(node), "e", 0).await;
            assert!(r.index >= retried.index, "node {node} read at {} before the acknowledged {}", r.index, retried.index);
            assert_eq!(names(&r.result.unwrap()), vec!["alice", "bob"], "read on node {node}");
        }
        // A session-scoped read through a follower.
        let scoped =
            within("a session read", DEADLINE, c.handle(f).read(GROUP, TermQuery { session_id: Some(client.session), ..query("e", 0) }))
                .await
                .unwrap();
        assert_eq!(names(&scoped.result.unwrap()), vec!["alice", "bob"]);
        // A missing election reads as the state machine's error, not a shard error.
        assert!(read(&c.handle(f), "missing", 0).await.result.is_err());

        if c.leader_among(&[1, 2, 3]) != Some((leader, term)) {
            eprintln!("note: leadership moved during the test (a slow disk?): {:?}", c.leader_among(&[1, 2, 3]));
        }
        c.stop_all().await;
    });
}

// ----- 2. a leader cut off ------------------------------------------------------------

/// A proposal a follower forwards to a leader that was just cut off is answered with a
/// retryable error within the forward timeout; the majority elects a new leader and keeps
/// serving; the old leader's own pending proposal is answered once it rejoins; afterwards
/// every node takes proposals and every node holds every acknowledged command.
#[test]
fn a_cut_off_leader_fails_forwarded_proposals_in_time_and_loses_nothing_acknowledged() {
    run(async {
        let opts = Opts { forward_timeout: Duration::from_millis(300), ..Opts::default() };
        let forward_timeout = opts.forward_timeout;
        let c = Cluster::start(opts, &[1, 2, 3], &[], &[]).await;
        let (old, old_term) = c.wait_leader(&[1, 2, 3], 0).await;
        let followers = others(&[1, 2, 3], &[old]);
        c.wait_known_leader(&followers, old).await;
        let (f, o) = (followers[0], followers[1]);

        let mut client = Client::open(&c.handle(f)).await;
        propose(&c.handle(f), &client.create("e")).await;
        // Every name acknowledged (or whose outcome is unknown), with its sequence number.
        let mut acked: Vec<(String, u64)> = Vec::new();
        let mut unknown: Vec<(String, u64, u64)> = Vec::new(); // (name, seq, via)
        let (cmd, seq) = client.enter("e", "before");
        propose(&c.handle(f), &cmd).await;
        acked.push(("before".into(), seq));

        // Cut the leader off. It still leads for a moment and takes a proposal of its own,
        // which cannot commit while it is cut off.
        c.net.cut(old);
        let (cmd, isolated_seq) = client.enter("e", "on-isolated-leader");
        let old_handle = c.handle(old);
        let on_isolated = glommio::spawn_local(async move { old_handle.propose(GROUP, cmd).await });
        unknown.push(("on-isolated-leader".into(), isolated_seq, old));
        // A read there cannot be confirmed by a quorum: it fails once the leader steps down.
        let old_handle = c.handle(old);
        let read_on_isolated = glommio::spawn_local(async move { old_handle.read(GROUP, query("e", 0)).await });
        // A proposal through each follower goes to the old leader and is lost. One
        // follower's transport reports the connection down: its proposal fails at once; the
        // other's fails at the forward timeout.
        let forwarded_before = c.net.sent("proposal", f, old);
        let forwarded_before_o = c.net.sent("proposal", o, old);
        let (cmd, down_seq) = client.enter("e", "forwarded-connection-down");
        let o_handle = c.handle(o);
        let on_o = glommio::spawn_local(async move { o_handle.propose(GROUP, cmd).await });
        let (cmd, lost_seq) = client.enter("e", "forwarded-while-cut");
        let started = Instant::now();
        let on_f = glommio::spawn_local({
            let f_handle = c.handle(f);
            async move { f_handle.propose(GROUP, cmd).await }
        });
        eventually("both proposals to be forwarded to the old leader", DEADLINE, || {
            c.net.sent("proposal", o, old) > forwarded_before_o && c.net.sent("proposal", f, old) > forwarded_before
        })
        .await;
        c.handle(o).send(Request::PeerDown { node: old }).await.unwrap();
        let down_outcome = within("a proposal forwarded over a failed connection", Duration::from_secs(2), on_o).await;
        let down_took = started.elapsed();
        eprintln!("forwarded over a connection reported down: {down_outcome:?} after {down_took:?}");
        assert_eq!(down_outcome.map(|c| c.index), Err(ShardError::LeadershipLost), "outcome unknown, retryable");
        assert!(down_took < forward_timeout, "failed at once ({down_took:?}), not at the forward timeout");
        unknown.push(("forwarded-connection-down".into(), down_seq, f));
        let outcome = within("a forwarded proposal", forward_timeout + Duration::from_secs(2), on_f).await;
        let took = started.elapsed();
        eprintln!("forwarded proposal to the cut-off leader: {outcome:?} after {took:?}");
        match outcome {
            Err(e) => assert!(retryable(&e), "a retryable error, got {e}"),
            Ok(c) => panic!("the proposal cannot have committed without the leader: {c:?}"),
        }
        assert!(took <= forward_timeout + Duration::from_millis(500), "answered after {took:?}");
        assert!(c.net.sent("proposal", f, old) > forwarded_before, "it was forwarded to the old leader");
        unknown.push(("forwarded-while-cut".into(), lost_seq, o));

        let isolated_read = within("a read on the cut-off leader", DEADLINE, read_on_isolated).await;
        assert!(
            matches!(isolated_read, Err(ShardError::NotLeader { .. })),
            "a read on a leader cut off from its quorum fails once it steps down: {isolated_read:?}"
        );

        // The majority elects a new leader and serves through both of its nodes.
        let (new, new_term) = c.wait_leader(&[f, o], old_term).await;
        eprintln!("new leader {new} at term {new_term} (old {old} at {old_term})");
        for (via, who) in [(o, "majority-1"), (f, "majority-2")] {
            let (cmd, seq) = client.enter("e", who);
            propose(&c.handle(via), &cmd).await;
            acked.push((who.into(), seq));
        }
        let seen = candidates(&c.handle(f), "e", 0).await;
        assert_eq!(seen, vec!["before", "majority-1", "majority-2"], "the majority side's state");

        // Heal. The old leader's own proposal is answered: its entry was replaced.
        c.net.heal(old);
        for (via, who) in [(old, "after-old"), (f, "after-f"), (o, "after-o")] {
            let (cmd, seq) = client.enter("e", who);
            propose(&c.handle(via), &cmd).await;
            acked.push((who.into(), seq));
        }
        let isolated_outcome = within("the isolated leader's proposal", DEADLINE, on_isolated).await;
        eprintln!("the isolated leader's own proposal: {isolated_outcome:?}");
        assert_eq!(isolated_outcome, Err(ShardError::LeadershipLost), "its entry was replaced by the new leader's");

        // Commands of unknown outcome are retried with their sequence numbers: each is
        // applied exactly once, wherever it is retried.
        for (who, seq, via) in &unknown {
            let retried = propose(&c.handle(*via), &client.enter_at(*seq, "e", who)).await;
            assert!(names(&term_of(&retried)).contains(who), "{who} entered on retry");
            acked.push((who.clone(), *seq));
        }
        let last = propose(&c.handle(old), &command::leader_barrier(0)).await.index;

        // Every node holds every acknowledged command, once, in the same order.
        let mut lists = Vec::new();
        for node in [1, 2, 3] {
            lists.push(candidates(&c.handle(node), "e", last).await);
        }
        let expected: BTreeSet<String> = acked.iter().map(|(n, _)| n.clone()).collect();
        for (node, list) in [1, 2, 3].iter().zip(&lists) {
            let set: BTreeSet<String> = list.iter().cloned().collect();
            assert_eq!(set.len(), list.len(), "node {node} holds a candidate twice: {list:?}");
            assert_eq!(set, expected, "node {node}");
        }
        assert!(lists.windows(2).all(|w| w[0] == w[1]), "nodes disagree: {lists:?}");
        assert_eq!(&lists[0][..3], ["before", "majority-1", "majority-2"]);
        assert!(c.net.dropped.get() > 0, "the cut dropped traffic");
        c.stop_all().await;
    });
}

/// A follower's read whose ReadIndex request is lost on the wire (the follower keeps
/// hearing from the leader, so nothing else fails it) is answered with a retryable error
/// within the engine's bound (`READ_CONFIRM_TICKS`), and a retry succeeds.
#[test]
fn a_follower_read_whose_read_index_request_is_lost_fails_in_time_and_a_retry_succeeds() {
    run(async {
        let c = Cluster::start(Opts::default(), &[1, 2, 3], &[], &[]).await;
        let (leader, _) = c.wait_leader(&[1, 2, 3], 0).await;
        let follower = others(&[1, 2, 3], &[leader])[0];
        c.wait_known_leader(&[follower], leader).await;
        let mut client = Client::open(&c.handle(leader)).await;
        propose(&c.handle(leader), &client.create("e")).await;
        assert!(candidates(&c.handle(follower), "e", 0).await.is_empty());
        let (cmd, _) = client.enter("e", "a");
        let entered = propose(&c.handle(leader), &cmd).await;

        // Lose the follower's next ReadIndex request, once.
        let lost = Rc::new(Cell::new(false));
        let lost_in_filter = lost.clone();
        *c.net.filter.borrow_mut() = Some(Box::new(move |from, _to, m| {
            let drop = from == follower && m.msg_type == MessageType::ReadIndex as i32 && !lost_in_filter.get();
            if drop {
                lost_in_filter.set(true);
            }
            drop
        }));
        let since = c.event_count();
        let started = Instant::now();
        let outcome = before(Duration::from_secs(5), c.handle(follower).read(GROUP, query("e", 0))).await;
        let took = started.elapsed();
        eprintln!("the read: {outcome:?} after {took:?}; the follower's events meanwhile: {:?}", c.events_since(since, follower));
        assert!(lost.get(), "the request was lost");
        let outcome = outcome.expect("a follower read whose ReadIndex request was lost is answered");
        match outcome {
            Err(e) => assert!(retryable(&e), "a retryable error: {e}"),
            Ok(r) => panic!("the read cannot have been confirmed: {r:?}"),
        }
        let bound = TICK * READ_CONFIRM_TICKS + Duration::from_millis(500);
        assert!(took <= bound, "answered after {took:?}, beyond {bound:?}");
        let r = read(&c.handle(follower), "e", 0).await;
        assert!(r.index >= entered.index);
        assert_eq!(names(&r.result.unwrap()), vec!["a"], "the retry reads the state");
        c.stop_all().await;
    });
}

// ----- 3. snapshot install ----------------------------------------------------------------

/// A follower cut off while the others snapshot and compact their logs catches up through
/// the leader's snapshot (SnapshotReceived, SnapshotRecovered), serves the latest state,
/// and restarts from the installed snapshot with the same state.
#[test]
fn a_lagging_follower_catches_up_through_a_snapshot_and_keeps_it_across_a_restart() {
    run(async {
        let opts = Opts { snapshot_every: 10, compaction_tail: 2, ..Opts::default() };
        let mut c = Cluster::start(opts, &[1, 2, 3], &[], &[]).await;
        let (leader, _) = c.wait_leader(&[1, 2, 3], 0).await;
        let followers = others(&[1, 2, 3], &[leader]);
        c.wait_known_leader(&followers, leader).await;
        let (lag, other) = (followers[0], followers[1]);

        let mut client = Client::open(&c.handle(leader)).await;
        propose(&c.handle(leader), &client.create("e0")).await;
        let (cmd, _) = client.enter("e0", "early");
        let early = propose(&c.handle(lag), &cmd).await;
        assert_eq!(candidates(&c.handle(lag), "e0", early.index).await, vec!["early"]);

        c.net.cut(lag);
        let cut_at = c.event_count();
        let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
        expected.insert("e0".into(), vec!["early".into()]);
        let mut last = 0;
        for e in 1..=20 {
            let name = format!("e{e}");
            let via = if e % 2 == 0 { leader } else { other };
            propose(&c.handle(via), &client.create(&name)).await;
            for k in 0..(e % 3 + 1) {
                let who = format!("c{k}");
                let (cmd, _) = client.enter(&name, &who);
                last = propose(&c.handle(via), &cmd).await.index;
                expected.entry(name.clone()).or_default().push(who);
            }
        }
        // The two connected nodes snapshotted and compacted well past the lagging one (a
        // command forwarded by `other` is answered with the leader's result, before
        // `other` applied it: wait for its snapshots).
        for node in [leader, other] {
            let compacted_past = |events: &[ShardEvent]| {
                let snapshots = events.iter().filter(|e| matches!(e, ShardEvent::SnapshotCreated { .. })).count();
                snapshots >= 3
                    && events.iter().any(|e| matches!(e, ShardEvent::SnapshotCompacted { .. }))
                    && events.iter().any(|e| matches!(e, ShardEvent::LogCompacted { index } if *index > early.index + 10))
            };
            eventually("the connected nodes compacted", Duration::from_secs(20), || compacted_past(&c.events_since(cut_at, node))).await;
            let events = c.events_since(cut_at, node);
            let snapshots: Vec<u64> =
                events.iter().filter_map(|e| if let ShardEvent::SnapshotCreated { index } = e { Some(*index) } else { None }).collect();
            assert!(snapshots.len() >= 3, "node {node} snapshots: {snapshots:?}");
            assert!(snapshots.iter().any(|i| *i > early.index + 10), "node {node} snapshots: {snapshots:?}");
            assert!(events.iter().any(|e| matches!(e, ShardEvent::LogCompacted { index } if *index > early.index + 10)));
            assert!(events.iter().any(|e| matches!(e, ShardEvent::SnapshotCompacted { .. })));
        }
        assert!(
            !c.events_since(cut_at, lag).iter().any(|e| matches!(e, ShardEvent::SnapshotRecovered { .. })),
            "nothing reached the cut-off follower"
        );

        let healed_at = c.event_count();
        c.net.heal(lag);
        let mut installed = 0;
        eventually("the lagging follower to install a snapshot", DEADLINE, || {
            let events = c.events_since(healed_at, lag);
            let received = events.iter().find_map(|e| match e {
                ShardEvent::Raft(RaftEvent::SnapshotReceived { from, index }) => Some((*from, *index)),
                _ => None,
            });
            let recovered = events.iter().find_map(|e| match e {
                ShardEvent::SnapshotRecovered { index } => Some(*index),
                _ => None,
            });
            if let (Some((from, received)), Some(recovered)) = (received, recovered) {
                assert!(from != lag && [1, 2, 3].contains(&from), "the snapshot came from the leader, not {from}");
                assert_eq!(received, recovered, "the snapshot received is the one installed");
                installed = recovered;
                true
            } else {
                false
            }
        })
        .await;
        assert!(installed > early.index + 10, "installed snapshot {installed}");
        // Then it drops the log the snapshot covers.
        eventually("the follower to compact its log at the snapshot", DEADLINE, || {
            c.events_since(healed_at, lag).iter().any(|e| matches!(e, ShardEvent::LogCompacted { index } if *index == installed))
        })
        .await;
        // The leader reports the send complete once the follower acknowledged it.
        eventually("the leader to report the snapshot sent", DEADLINE, || {
            [leader, other].iter().any(|n| {
                c.events_since(healed_at, *n)
                    .iter()
                    .any(|e| matches!(e, ShardEvent::Raft(RaftEvent::SnapshotSendCompleted { to, .. }) if *to == lag))
            })
        })
        .await;

        // Reads on the follower show the latest state.
        for (name, want) in &expected {
            assert_eq!(&candidates(&c.handle(lag), name, last).await, want, "election {name} on the caught-up follower");
        }
        let (cmd, _) = client.enter("e0", "late");
        let late = propose(&c.handle(lag), &cmd).await;
        expected.get_mut("e0").unwrap().push("late".into());
        assert_eq!(names(&term_of(&late)), expected["e0"]);

        // Restart it from its storage: the installed snapshot (or a later one) and the log.
        c.stop_node(lag).await;
        let started = c.start_node(lag, Some(voters(&[1, 2, 3]))).await;
        eprintln!("the follower restarted from {started:?} (installed {installed})");
        let snapshot = started.snapshot_index.expect("the follower stored a snapshot");
        assert!(snapshot >= installed, "restarted from snapshot {snapshot}, installed {installed}");
        assert!(started.compacted >= installed && started.compacted <= snapshot);
        assert!(started.log_last_index >= late.index, "the log holds what it acknowledged: {started:?}");
        for (name, want) in &expected {
            assert_eq!(&candidates(&c.handle(lag), name, late.index).await, want, "election {name} after the restart");
        }
        // It applies new commands after the restart.
        let (cmd, _) = client.enter("e1", "after-restart");
        let entered = propose(&c.handle(lag), &cmd).await;
        expected.get_mut("e1").unwrap().push("after-restart".into());
        assert_eq!(names(&term_of(&entered)), expected["e1"]);
        c.stop_all().await;
    });
}

// ----- 4. membership: observer and witness -----------------------------------------------

/// A 4th node joins as an observer through a change sent to a follower (forwarded to the
/// leader), catches up (through a snapshot: the leaders compacted), forwards proposals and
/// reads, leaves again and drops its replica; then it joins as a witness, which votes (a
/// quorum with it elects after the leader dies) but serves no reads.
#[test]
fn a_node_joins_as_observer_leaves_and_rejoins_as_a_voting_witness() {
    run(async {
        let opts = Opts { snapshot_every: 16, compaction_tail: 4, ..Opts::default() };
        let mut c = Cluster::start(opts, &[1, 2, 3], &[4], &[]).await;
        let (leader, _) = c.wait_leader(&[1, 2, 3], 0).await;
        let followers = others(&[1, 2, 3], &[leader]);
        c.wait_known_leader(&followers, leader).await;
        let (f, o) = (followers[0], followers[1]);

        let mut client = Client::open(&c.handle(f)).await;
        propose(&c.handle(f), &client.create("e")).await;
        let mut expected: Vec<String> = Vec::new();
        for k in 0..24 {
            let who = format!("m{k}");
            let (cmd, _) = client.enter("e", &who);
            propose(&c.handle(leader), &cmd).await;
            expected.push(who);
        }

        // The observer must find the log compacted (snapshots are saved in the background,
        // and the log compacted behind them once durable): wait for that before it joins.
        eventually("the leader's log compacted behind its snapshot", DEADLINE, || {
            c.events_of(leader).iter().any(|e| matches!(e, ShardEvent::LogCompacted { index } if *index > 0))
        })
        .await;

        // --- observer ---
        c.add_replica(4, joining_replica(4, &[1, 2, 3])).await.unwrap();
        assert!(c.events_of(4).iter().any(|e| matches!(e, ShardEvent::MemberReady { .. })));
        assert_eq!(
            c.add_replica(4, joining_replica(4, &[1, 2, 3])).await.map_err(|e| matches!(e, ShardError::Invalid(_))),
            Err(true),
            "a second replica of the group on one node is refused"
        );
        let sent_before = c.net.sent_from("membership", f);
        let index = c.change_membership_retrying(f, 4, Some(Role::Observer)).await;
        assert!(index > 0, "answered with the committed change's index");
        assert!(c.net.sent_from("membership", f) > sent_before, "the follower forwarded the change to the leader");
        // Asking again changes nothing and answers 0.
        assert_eq!(c.change_membership_retrying(f, 4, Some(Role::Observer)).await, 0);

        // The observer learns the leader and forwards a proposal of its own, answered with
        // the result it applied (having caught up first).
        c.wait_knows_a_leader(&[4]).await;
        let (cmd, _) = client.enter("e", "via-observer");
        let entered = propose(&c.handle(4), &cmd).await;
        expected.push("via-observer".into());
        assert_eq!(names(&term_of(&entered)), expected, "the observer applied the whole history");
        assert_eq!(candidates(&c.handle(4), "e", entered.index).await, expected, "a read on the observer");
        let events4 = c.events_of(4);
        eprintln!("observer events: {events4:?}");
        assert!(
            events4.iter().any(|e| matches!(e, ShardEvent::SnapshotRecovered { .. })),
            "the observer joined after compaction: it catches up through a snapshot"
        );
        assert!(
            !events4.iter().any(|e| matches!(e, ShardEvent::Raft(RaftEvent::RoleChanged { role, .. }) if *role != RaftRole::Follower)),
            "an observer never campaigns: {events4:?}"
        );

        // --- removal ---
        let removed_at = c.change_membership_retrying(o, 4, None).await;
        assert!(removed_at > index);
        c.remove_replica(4).await.unwrap();
        assert_eq!(c.events_of(4).last(), Some(&ShardEvent::MemberRemoved));
        assert_eq!(
            within("a read", DEADLINE, c.handle(4).read(GROUP, query("e", 0))).await.unwrap_err(),
            ShardError::UnknownGroup(GROUP),
            "the replica is gone"
        );
        assert_eq!(c.remove_replica(4).await, Err(ShardError::UnknownGroup(GROUP)));
        // The group goes on without it.
        let (cmd, _) = client.enter("e", "after-removal");
        propose(&c.handle(o), &cmd).await;
        expected.push("after-removal".into());

        // --- witness ---
        // This time the joining node asks for its own addition. Knowing no leader, it sends
        // the request to the node named (`via`); a follower refuses it naming the leader,
        // and the request through the leader succeeds.
        c.add_replica(4, joining_replica(4, &[1, 2, 3])).await.unwrap();
        let (leader, _) = c.wait_leader(&[1, 2, 3], 0).await;
        let follower = others(&[1, 2, 3], &[leader])[0];
        c.wait_known_leader(&[follower], leader).await;
        match c.change_membership_through(4, 4, Some(Role::Witness), follower).await {
            Err(ShardError::NotLeader { leader: hint, .. }) => assert_eq!(hint, leader, "the follower names the leader"),
            other => panic!("a follower refuses a request it cannot forward again: {other:?}"),
        }
        let mut added = None;
        for _ in 0..50 {
            let (leader, _) = c.wait_leader(&[1, 2, 3], 0).await;
            match c.change_membership_through(4, 4, Some(Role::Witness), leader).await {
                Ok(index) => {
                    added = Some(index);
                    break;
                }
                Err(e) if retryable(&e) => sleep_ms(10).await,
                Err(e) => panic!("adding the witness through the leader: {e}"),
            }
        }
        assert!(added.is_some_and(|i| i > removed_at), "the witness was added: {added:?}");
        eventually("node 4 to learn it is a witness", DEADLINE, || {
            c.events_of(4).iter().any(|e| {
                matches!(e, ShardEvent::Raft(RaftEvent::MembershipChanged { membership, .. }) if membership.role(4) == Some(Role::Witness))
            })
        })
        .await;
        let (cmd, _) = client.enter("e", "with-witness");
        propose(&c.handle(o), &cmd).await;
        expected.push("with-witness".into());
        match within("a read on the witness", DEADLINE, c.handle(4).read(GROUP, query("e", 0))).await {
            Err(ShardError::Unavailable(why)) => eprintln!("a read on the witness: {why}"),
            other => panic!("a read on a witness must fail: {other:?}"),
        }

        // Four voting members: a quorum is three. With the leader dead, the two remaining
        // voters elect and commit only with the witness's votes and acknowledgements.
        let (old_leader, old_term) = c.leader_among(&[1, 2, 3]).expect("a leader");
        c.stop_node(old_leader).await;
        let rest = others(&[1, 2, 3], &[old_leader]);
        let (new_leader, _) = c.wait_leader(&[1, 2, 3, 4], old_term).await;
        assert!(rest.contains(&new_leader), "a voter leads, never the witness: {new_leader}");
        let (cmd, _) = client.enter("e", "after-leader-death");
        let after = propose(&c.handle(rest[0]), &cmd).await;
        expected.push("after-leader-death".into());
        assert_eq!(names(&term_of(&after)), expected);
        for node in &rest {
            assert_eq!(candidates(&c.handle(*node), "e", after.index).await, expected, "node {node}");
        }
        assert!(
            !c.events_of(4).iter().any(|e| matches!(e, ShardEvent::Raft(RaftEvent::RoleChanged { role, .. }) if *role == RaftRole::Leader)),
            "the witness never leads"
        );

        // The dead leader restarts from its storage and catches up.
        c.start_node(old_leader, Some(voters(&[1, 2, 3]))).await;
        assert_eq!(candidates(&c.handle(old_leader), "e", after.index).await, expected, "the restarted node");
        c.stop_all().await;
    });
}

/// Removing the leader itself: the leader hands leadership over first and answers
/// NotLeader; retried, the new leader commits the removal; the removed node drops its
/// replica and the two remaining voters go on serving.
#[test]
fn removing_the_leader_hands_leadership_over_first() {
    run(async {
        let c = Cluster::start(Opts::default(), &[1, 2, 3], &[], &[]).await;
        let (leader, term) = c.wait_leader(&[1, 2, 3], 0).await;
        let mut client = Client::open(&c.handle(leader)).await;
        propose(&c.handle(leader), &client.create("e")).await;

        match c.change_membership(leader, leader, None).await {
            Err(ShardError::NotLeader { .. }) => {}
            other => panic!("a leader removing itself hands over first and answers NotLeader: {other:?}"),
        }
        let rest = others(&[1, 2, 3], &[leader]);
        let (next, _) = c.wait_leader(&rest, term).await;
        let index = c.change_membership_retrying(next, leader, None).await;
        assert!(index > 0);
        c.remove_replica(leader).await.unwrap();
        assert_eq!(c.events_of(leader).last(), Some(&ShardEvent::MemberRemoved));

        // Two voters left: both must acknowledge, and both serve.
        for via in &rest {
            let (cmd, _) = client.enter("e", &format!("via-{via}"));
            propose(&c.handle(*via), &cmd).await;
        }
        for node in &rest {
            let seen = candidates(&c.handle(*node), "e", 0).await;
            assert_eq!(seen, rest.iter().map(|v| format!("via-{v}")).collect::<Vec<_>>(), "node {node}");
        }
        assert!(
            !c.events_of(next).iter().any(|e| matches!(e, ShardEvent::Raft(RaftEvent::MembershipChanged { membership, .. }) if membership.role(leader).is_some() && membership.voting_count() != 3)),
            "membership changes one voter at a time"
        );
        c.stop_all().await;
    });
}

// ----- 5. leadership hand-off and rebalancing ---------------------------------------------

/// HandOffLeadership on the leader moves leadership to another voter within a few election
/// timeouts; the old leader then forwards proposals like any follower.
#[test]
fn hand_off_moves_leadership_to_another_voter() {
    run(async {
        let c = Cluster::start(Opts::default(), &[1, 2, 3], &[], &[]).await;
        let (leader, term) = c.wait_leader(&[1, 2, 3], 0).await;
        let mut client = Client::open(&c.handle(leader)).await;
        propose(&c.handle(leader), &client.create("e")).await;

        // A follower hands nothing off.
        let follower = others(&[1, 2, 3], &[leader])[0];
        assert_eq!(c.hand_off(follower).await, 0);

        let started = Instant::now();
        assert_eq!(c.hand_off(leader).await, 1, "one transfer started");
        let (next, next_term) = c.wait_leader(&[1, 2, 3], term).await;
        let took = started.elapsed();
        eprintln!("leadership moved from {leader} to {next} (term {term} -> {next_term}) in {took:?}");
        assert_ne!(next, leader);
        assert!(took < 4 * ELECTION_TIMEOUT + Duration::from_millis(500), "hand-off took {took:?}");
        assert_ne!(c.role(leader), Some(RaftRole::Leader));

        let (cmd, _) = client.enter("e", "after-hand-off");
        let entered = propose(&c.handle(leader), &cmd).await;
        assert_eq!(names(&term_of(&entered)), vec!["after-hand-off"]);
        c.stop_all().await;
    });
}

/// A stopping leader hands its group to a voter that is not silent, even when a silent one
/// holds as much of the log (a TimeoutNow to it would be lost).
#[test]
fn hand_off_skips_a_silent_voter() {
    run(async {
        let c = Cluster::start(Opts { quiesce: true, liveness: true, ..Opts::default() }, &[1, 2, 3], &[], &[]).await;
        let (leader, term) = c.wait_leader(&[1, 2, 3], 0).await;
        let mut client = Client::open(&c.handle(leader)).await;
        propose(&c.handle(leader), &client.create("e")).await;
        wait_quiet(&c, leader).await;
        // Both followers hold the whole log; the one that would win a tie goes silent.
        let followers = others(&[1, 2, 3], &[leader]);
        let (reachable, silent) = (followers[0], followers[1]);
        c.net.cut(silent);
        sleep_ms(3 * ELECTION_TIMEOUT.as_millis() as u64).await;
        assert_eq!(c.hand_off(leader).await, 1, "one transfer started");
        let (next, _) = c.wait_leader(&[leader, reachable], term).await;
        assert_eq!(next, reachable, "handed to the voter that is not silent");
        let (cmd, _) = client.enter("e", "after-hand-off");
        let entered = propose(&c.handle(reachable), &cmd).await;
        assert_eq!(names(&term_of(&entered)), vec!["after-hand-off"]);
        c.stop_all().await;
    });
}

/// Waits until `node`'s group stopped ticking: a leader's group goes quiet only once every
/// follower holds the whole log.
async fn wait_quiet(c: &Cluster, node: u64) {
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < DEADLINE, "the group did not go quiet");
        let ticks = c.nodes[&node].counters.replica_ticks.get();
        sleep_ms(40).await;
        if c.nodes[&node].counters.replica_ticks.get() == ticks {
            return;
        }
    }
}

/// With a preferred leader set and rebalancing on, leadership moves to the preferred node
/// once it has caught up, and stays there.
#[test]
fn rebalancing_moves_leadership_to_the_preferred_node() {
    run(async {
        let opts = Opts { rebalance_ticks: 20, preferred_leader: Some(3), ..Opts::default() };
        // Node 3 starts cut off: one of the others leads first.
        let c = Cluster::start(opts, &[1, 2, 3], &[], &[3]).await;
        let (first, term) = c.wait_leader(&[1, 2], 0).await;
        let mut client = Client::open(&c.handle(first)).await;
        propose(&c.handle(first), &client.create("e")).await;
        for k in 0..5 {
            let (cmd, _) = client.enter("e", &format!("c{k}"));
            propose(&c.handle(first), &cmd).await;
        }
        // Five rebalancing periods (of 20 ticks): the leader stays while node 3 is cut off.
        holds_throughout("no move to a cut-off node", Duration::from_millis(100), || {
            c.leader_among(&[1, 2, 3]).map(|(n, _)| n) == Some(first)
        })
        .await;

        c.net.heal(3);
        let started = Instant::now();
        let (now, now_term) = c.wait_leader(&[1, 2, 3], term).await;
        eprintln!("leadership moved from {first} to {now} (term {term} -> {now_term}) in {:?}", started.elapsed());
        assert_eq!(now, 3, "leadership moves to the preferred node");
        let events3 = c.events_of(3);
        assert!(
            events3.iter().any(|e| matches!(e, ShardEvent::Raft(RaftEvent::RoleChanged { role: RaftRole::Candidate, .. }))),
            "it campaigned (on the transfer)"
        );
        // It stays there (or comes back there) after fifteen rebalancing periods (an
        // observation window, not a wait for an event), and serves.
        sleep_ms(300).await;
        let later = c.leader_among(&[1, 2, 3]);
        assert_eq!(later.map(|(n, _)| n), Some(3), "leadership stays on the preferred node");
        if later != Some((3, now_term)) {
            eprintln!("note: leadership moved and came back: {later:?}");
        }
        let (cmd, _) = client.enter("e", "on-preferred");
        let entered = propose(&c.handle(first), &cmd).await;
        assert_eq!(names(&term_of(&entered)).len(), 6);
        c.stop_all().await;
    });
}

/// A 3-node cluster (node 4 may join later) whose group is led by its preferred node 1,
/// and a client session that created election "e" there.
async fn led_by_node_1(opts: Opts) -> (Cluster, Client) {
    let c = Cluster::start(Opts { preferred_leader: Some(1), ..opts }, &[1, 2, 3], &[4], &[]).await;
    eventually("leadership on the preferred node", DEADLINE, || c.leader_among(&[1, 2, 3]).map(|(n, _)| n) == Some(1)).await;
    let mut client = Client::open(&c.handle(1)).await;
    propose(&c.handle(1), &client.create("e")).await;
    c.wait_known_leader(&[2, 3], 1).await;
    (c, client)
}

/// Enters a new candidate of "e" through `node`.
async fn enter_through(c: &Cluster, client: &mut Client, node: u64) -> Committed {
    let who = format!("via-{node}-{}", client.seq + 1);
    let (cmd, _) = client.enter("e", &who);
    propose(&c.handle(node), &cmd).await
}

/// Commands through `node` until it leads the group (bounded); returns how many it took.
async fn enter_through_until_it_leads(c: &Cluster, client: &mut Client, node: u64) -> usize {
    let started = Instant::now();
    let mut sent = 0;
    while c.leader_among(&[1, 2, 3]).map(|(n, _)| n) != Some(node) {
        assert!(started.elapsed() < DEADLINE, "leadership did not follow the commands to node {node} ({sent} sent)");
        enter_through(c, client, node).await;
        sent += 1;
    }
    eprintln!("leadership followed the commands to node {node} after {sent} of them, in {:?}", started.elapsed());
    sent
}

/// Commands through `node` for `window`, the group led by `leader` (leader, term) after
/// each; returns how many were sent.
async fn enter_through_while_led_by(c: &Cluster, client: &mut Client, node: u64, window: Duration, leader: (u64, u64)) -> usize {
    let until = Instant::now() + window;
    let mut sent = 0;
    while Instant::now() < until {
        enter_through(c, client, node).await;
        sent += 1;
        assert_eq!(c.leader_among(&[1, 2, 3]), Some(leader), "leadership stays");
    }
    sent
}

/// Leadership follows the workload, in periods of 25 ticks (50 ms): each needs 16 requests
/// to say where the workload is.
fn workload_opts() -> Opts {
    Opts { rebalance_ticks: 25, follow_workload: true, ..Opts::default() }
}

/// With leadership following the workload, a group whose requests come through one
/// follower is led from that follower (its commands and reads stop being forwarded), stays
/// there while they keep coming, and goes back to its preferred node once requests come
/// through every node alike.
#[test]
fn leadership_follows_the_workload_and_returns_to_the_preferred_node_when_it_spreads() {
    run(async {
        let (c, mut client) = led_by_node_1(workload_opts()).await;
        // Commands through node 2 only: node 1 forwards nothing, node 2 forwards them all.
        let sent = enter_through_until_it_leads(&c, &mut client, 2).await;
        assert!(sent >= 16, "a period of fewer than 16 requests moves nothing (moved after {sent})");
        assert_eq!(c.workload_transfers(1), 1, "node 1 handed the group to its workload home once");
        let (_, term) = c.leader_among(&[1, 2, 3]).unwrap();

        // Reads through node 2 for six periods: served by its own leader, which keeps the
        // group (its preferred node is 1).
        let until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < until {
            read(&c.handle(2), "e", 0).await;
            assert_eq!(c.leader_among(&[1, 2, 3]), Some((2, term)), "the workload's node keeps the group");
        }
        assert_eq!(c.workload_transfers(2), 0);

        // Reads through every node alike: no node has three quarters of them, so the
        // group goes back to its preferred node.
        let started = Instant::now();
        let mut k = 0;
        while c.leader_among(&[1, 2, 3]).map(|(n, _)| n) != Some(1) {
            assert!(started.elapsed() < DEADLINE, "leadership did not go back to the preferred node");
            read(&c.handle(1 + k % 3), "e", 0).await;
            k += 1;
        }
        eprintln!("back on the preferred node after {k} spread reads, in {:?}", started.elapsed());
        assert_eq!(c.workload_transfers(2), 0, "going back to the preferred node is ordinary rebalancing");
        let entered = enter_through(&c, &mut client, 3).await;
        assert_eq!(names(&term_of(&entered)).len(), sent + 1);
        c.stop_all().await;
    });
}

/// A group led from its workload's node goes back to its preferred node after ten quiet
/// periods, also when it went quiet (no ticks) in between.
#[test]
fn a_quiet_group_forgets_its_workload_home_and_goes_back_to_the_preferred_node() {
    run(async {
        let (c, mut client) = led_by_node_1(Opts { quiesce: true, ..workload_opts() }).await;
        let mut sent = enter_through_until_it_leads(&c, &mut client, 3).await;
        // The commands keep coming through node 3 for twelve periods (past the ten in
        // which a leader does not hand a group back to the node that handed it over), and
        // it keeps the group.
        let (_, term) = c.leader_among(&[1, 2, 3]).unwrap();
        sent += enter_through_while_led_by(&c, &mut client, 3, Duration::from_millis(600), (3, term)).await;
        // No requests now: the group goes quiet, and is back on node 1 once ten quiet
        // periods of 50 ms made node 3 forget the workload (a quiet leader wakes for that).
        let quiet_from = Instant::now();
        let ticks = c.nodes[&3].counters.replica_ticks.get();
        eventually("leadership back on the preferred node", DEADLINE, || c.leader_among(&[1, 2, 3]).is_some_and(|(n, _)| n == 1)).await;
        let took = quiet_from.elapsed();
        let ticked = c.nodes[&3].counters.replica_ticks.get() - ticks;
        eprintln!("back on node 1 {took:?} after the last of {sent} commands through node 3; it ticked {ticked} times meanwhile");
        assert!(took >= Duration::from_millis(450), "the home is kept for ten quiet periods (back after {took:?})");
        assert!(ticked < 100, "the group went quiet meanwhile ({ticked} ticks in {took:?})");
        let entered = enter_through(&c, &mut client, 2).await;
        assert_eq!(names(&term_of(&entered)).len(), sent + 1);
        c.stop_all().await;
    });
}

/// A leader does not hand its group to a preferred node that went silent (the TimeoutNow
/// would be lost, and the leader would refuse commands for an election timeout waiting for
/// it, again every period); once that node is heard from again, the group goes there.
#[test]
fn a_silent_preferred_node_is_not_handed_the_group_until_it_is_heard_from_again() {
    run(async {
        let opts = Opts { quiesce: true, liveness: true, ..workload_opts() };
        let (c, mut client) = led_by_node_1(opts).await;
        // Led from node 3, its workload's home, while node 1 is preferred.
        let sent = enter_through_until_it_leads(&c, &mut client, 3).await;
        let (_, term) = c.leader_among(&[1, 2, 3]).unwrap();
        wait_quiet(&c, 3).await;
        // Node 1 goes silent. Ten quiet periods later node 3 forgets the workload's home,
        // and its group would go to node 1 but for the silence: for thirty periods it stays.
        c.net.cut(1);
        let since = c.event_count();
        holds_throughout("node 3 keeps the group and tries no transfer", Duration::from_millis(1_500), || {
            let aborted = c.events_since(since, 3).iter().any(|e| matches!(e, ShardEvent::Raft(RaftEvent::TransferAborted { .. })));
            !aborted && c.leader_among(&[2, 3]) == Some((3, term))
        })
        .await;
        // Heard from again: the group goes to node 1 at node 3's next period.
        c.net.heal(1);
        eventually("leadership back on the preferred node", DEADLINE, || c.leader_among(&[1, 2, 3]).is_some_and(|(n, _)| n == 1)).await;
        let entered = enter_through(&c, &mut client, 2).await;
        assert_eq!(names(&term_of(&entered)).len(), sent + 1);
        c.stop_all().await;
    });
}

/// Commands through an observer's node, which cannot lead, leave leadership on the
/// preferred node (and do not keep a leader elsewhere from going there).
#[test]
fn a_workload_through_an_observer_leaves_leadership_on_the_preferred_node() {
    run(async {
        let opts = Opts { preferred_leader: Some(3), ..workload_opts() };
        // Node 3 (preferred) starts cut off: node 1 or 2 leads first.
        let c = Cluster::start(opts, &[1, 2, 3], &[4], &[3]).await;
        let (first, term) = c.wait_leader(&[1, 2], 0).await;
        let mut client = Client::open(&c.handle(first)).await;
        propose(&c.handle(first), &client.create("e")).await;
        c.add_replica(4, joining_replica(4, &[1, 2, 3])).await.unwrap();
        c.change_membership_retrying(first, 4, Some(Role::Observer)).await;
        c.wait_knows_a_leader(&[4]).await;
        // Commands through the observer for six periods, then node 3 is back: the group
        // goes to node 3 while they keep coming through node 4.
        let sent = enter_through_while_led_by(&c, &mut client, 4, Duration::from_millis(300), (first, term)).await;
        assert!(sent >= 32, "{sent} commands in six periods");
        c.net.heal(3);
        let healed = Instant::now();
        while c.leader_among(&[1, 2, 3]).map(|(n, _)| n) != Some(3) {
            assert!(healed.elapsed() < DEADLINE, "leadership did not go to the preferred node");
            enter_through(&c, &mut client, 4).await;
        }
        eprintln!("on the preferred node {:?} after node 3 was healed", healed.elapsed());
        assert_eq!(c.workload_transfers(first), 0, "the observer's node is no home");
        c.stop_all().await;
    });
}

/// Without following the workload, commands through a follower leave leadership on the
/// preferred node.
#[test]
fn without_following_the_workload_leadership_stays_on_the_preferred_node() {
    run(async {
        let (c, mut client) = led_by_node_1(Opts { follow_workload: false, ..workload_opts() }).await;
        let (_, term) = c.leader_among(&[1, 2, 3]).unwrap();
        let sent = enter_through_while_led_by(&c, &mut client, 2, Duration::from_millis(300), (1, term)).await;
        assert!(sent >= 32, "{sent} commands in six periods");
        assert_eq!(c.workload_transfers(1), 0);
        c.stop_all().await;
    });
}

// ----- regressions: defects this file found in the engine, fixed ---------------------------

/// A linearizable read issued after a membership change, with no command after it,
/// completes. (It used to wait: The leader's read index is its commit index — the membership entry's
/// index — but `Replica::apply_committed` skips non-Normal entries without advancing the
/// state machine's applied index (`StateMachine::last_applied`), so the read waited in
/// `PendingQueries` for an index that only the next Normal entry reaches.)
#[test]
fn read_after_a_membership_change_completes() {
    run(async {
        // Node 4 is added as an observer; it need not even run for the change to commit.
        let c = Cluster::start(Opts::default(), &[1, 2, 3], &[], &[]).await;
        let (leader, _) = c.wait_leader(&[1, 2, 3], 0).await;
        let mut client = Client::open(&c.handle(leader)).await;
        let created = propose(&c.handle(leader), &client.create("e")).await;
        assert!(read(&c.handle(leader), "e", 0).await.index >= created.index);

        let index = c.change_membership(leader, 4, Some(Role::Observer)).await.unwrap();
        assert!(index > created.index);
        let done: Rc<RefCell<Option<Result<ReadTerm, ShardError>>>> = Rc::default();
        let (reader, done_by_reader) = (c.handle(leader), done.clone());
        glommio::spawn_local(async move {
            let r = reader.read(GROUP, query("e", 0)).await;
            *done_by_reader.borrow_mut() = Some(r);
        })
        .detach();
        let answered_in_time = before(Duration::from_secs(2), async {
            while done.borrow().is_none() {
                sleep_ms(2).await;
            }
        })
        .await
        .is_some();
        if !answered_in_time {
            // The next command releases it: it was waiting for the applied index.
            let barrier = propose(&c.handle(leader), &command::leader_barrier(0)).await;
            eventually("the held read after a command", DEADLINE, || done.borrow().is_some()).await;
            eprintln!(
                "the read was answered only after the command at {}: {:?}",
                barrier.index,
                done.borrow().as_ref().unwrap().as_ref().map(|r| r.index)
            );
        }
        assert!(answered_in_time, "a read on the leader after the membership change at {index} did not complete in 2 s");
        c.stop_all().await;
    });
}

/// A proposal through a witness is refused at once: a witness applies no entries, so it
/// could never learn the command's result. Nothing is forwarded or applied.
#[test]
fn a_proposal_through_a_witness_is_refused() {
    run(async {
        let c = Cluster::start(Opts::default(), &[1, 2, 3], &[4], &[]).await;
        let (leader, _) = c.wait_leader(&[1, 2, 3], 0).await;
        let mut client = Client::open(&c.handle(leader)).await;
        propose(&c.handle(leader), &client.create("e")).await;
        c.add_replica(4, joining_replica(4, &[1, 2, 3])).await.unwrap();
        c.change_membership_retrying(leader, 4, Some(Role::Witness)).await;
        c.wait_known_leader(&[4], leader).await;

        let (cmd, _) = client.enter("e", "via-witness");
        let outcome = before(Duration::from_secs(2), c.handle(4).propose(GROUP, cmd)).await;
        assert!(
            matches!(outcome, Some(Err(ShardError::Unavailable(_)))),
            "a proposal through the witness is refused as unavailable: {outcome:?}"
        );
        assert_eq!(c.net.sent_from("proposal", 4), 0, "the witness forwarded nothing");
        let applied = candidates(&c.handle(leader), "e", 0).await;
        assert!(applied.is_empty(), "nothing was applied: {applied:?}");
        c.stop_all().await;
    });
}

/// After HandOffLeadership on the preferred leader (a graceful stop), the new leader does
/// not rebalance leadership straight back to it.
#[test]
fn hand_off_from_the_preferred_leader_is_not_undone_by_rebalancing() {
    run(async {
        let opts = Opts { rebalance_ticks: 20, preferred_leader: Some(3), ..Opts::default() };
        let c = Cluster::start(opts, &[1, 2, 3], &[], &[]).await;
        let (_, _) = c.wait_leader(&[1, 2, 3], 0).await;
        let mut client = Client::open(&c.handle(1)).await;
        propose(&c.handle(1), &client.create("e")).await;
        let mut term = 0;
        eventually("the preferred node to lead", DEADLINE, || {
            c.leader_among(&[1, 2, 3]).is_some_and(|(n, t)| {
                term = t;
                n == 3
            })
        })
        .await;

        assert_eq!(c.hand_off(3).await, 1);
        let (next, next_term) = c.wait_leader(&[1, 2, 3], term).await;
        assert_ne!(next, 3);
        // The node handing off stops soon; leadership must not come back to it meanwhile.
        let handed_at = Instant::now();
        let mut back = None;
        while handed_at.elapsed() < Duration::from_millis(20 * 2 * 10) {
            // ten rebalancing periods
            if back.is_none() && c.leader_among(&[1, 2, 3]).is_some_and(|(n, _)| n == 3) {
                back = Some(handed_at.elapsed());
            }
            sleep_ms(1).await;
        }
        let roles3: Vec<RaftRole> = c
            .events_of(3)
            .iter()
            .filter_map(|e| if let ShardEvent::Raft(RaftEvent::RoleChanged { role, .. }) = e { Some(*role) } else { None })
            .collect();
        // A Candidate right after Follower, without a PreCandidate round: a TimeoutNow.
        eprintln!("leadership handed from 3 to {next} at term {next_term}; back on 3 after {back:?}; node 3's roles: {roles3:?}");
        assert_eq!(c.leader_among(&[1, 2, 3]), Some((next, next_term)), "leadership went back to node 3 after it handed off");
        c.stop_all().await;
    });
}

/// A node that left a group as a witness joins again, as an observer with a new replica
/// (incarnation 2), and the leader sends that replica a snapshot taken before the removal,
/// whose configuration still lists the node as the witness it was. The new replica is not
/// that witness: it restores the state machine the snapshot holds and applies every entry
/// after it. (It took the role for its own: it restored an empty state machine, as a
/// witness does, skipped the committed entries before the one re-adding it, and then served
/// reads from that; eager-rejoin simulation seed 8589962636.)
#[test]
fn a_replica_rejoining_after_leaving_as_a_witness_keeps_the_state_of_the_snapshot_it_is_sent() {
    run(async {
        let opts = Opts { snapshot_every: 10, compaction_tail: 2, ..Opts::default() };
        let c = Cluster::start(opts, &[1, 2, 3], &[4], &[]).await;
        let (leader, _) = c.wait_leader(&[1, 2, 3], 0).await;
        let mut client = Client::open(&c.handle(leader)).await;
        propose(&c.handle(leader), &client.create("e")).await;
        c.add_replica(4, joining_replica(4, &[1, 2, 3])).await.unwrap();
        c.change_membership_retrying(leader, 4, Some(Role::Witness)).await;
        // Commands until the leader takes a snapshot, which lists node 4 as a witness.
        let mark = c.event_count();
        let mut snapshot = 0;
        for k in 0..40 {
            let (cmd, _) = client.enter("e", &format!("w{k}"));
            propose(&c.handle(leader), &cmd).await;
            let taken = c.events_since(mark, leader).iter().find_map(|e| match e {
                ShardEvent::SnapshotCreated { index } => Some(*index),
                _ => None,
            });
            if let Some(index) = taken {
                snapshot = index;
                break;
            }
        }
        assert!(snapshot > 0, "the leader took no snapshot");
        // One more command, then node 4 leaves: both before the next snapshot.
        let (cmd, _) = client.enter("e", "after-the-snapshot");
        propose(&c.handle(leader), &cmd).await;
        c.change_membership_retrying(leader, 4, None).await;
        c.remove_replica(4).await.unwrap();
        // It joins again with a new replica, asking through itself (so with its incarnation).
        let mut cfg = raft_config(4);
        cfg.incarnation = 2;
        let raft = RaftNode::new(cfg, voters(&[1, 2, 3]), ChaCha8Rng::seed_from_u64(4_002)).unwrap();
        let installed_from = c.event_count();
        c.add_replica(4, Replica::new(raft, StateMachine::new())).await.unwrap();
        let start = Instant::now();
        while let Err(e) = c.change_membership_through(4, 4, Some(Role::Observer), leader).await {
            assert!(start.elapsed() < DEADLINE, "node 4 could not join again: {e}");
            sleep_ms(10).await;
        }
        let installed = c.wait_snapshot_recovered("the new replica to install a snapshot", installed_from, 4).await;
        assert_eq!(installed, snapshot, "the leader sent the snapshot that lists node 4 as a witness");
        let everyone = candidates(&c.handle(leader), "e", 0).await;
        assert!(everyone.contains(&"after-the-snapshot".to_string()), "{everyone:?}");
        let (cmd, _) = client.enter("e", "last");
        let last = propose(&c.handle(leader), &cmd).await;
        let on_4 = candidates(&c.handle(4), "e", last.index).await;
        assert_eq!(on_4, names(&term_of(&last)), "the rejoined observer holds the whole election");
        c.stop_all().await;
    });
}

/// A witness that installed a snapshot restarts. (It could not: a witness that fell behind the
/// leaders' compaction is sent a snapshot whose configuration names it a witness;
/// `ShardRuntime::install_snapshot` then stores `encode_envelope(membership,
/// StateMachine::new())` — an empty state machine, `last_applied` 0 — under the snapshot's
/// index, and `load_snapshot` refuses exactly that on the next start ("claims index N but
/// its state machine applied 0"), so the node could not recover the group.)
#[test]
fn a_witness_restarts_after_installing_a_snapshot() {
    run(async {
        let opts = Opts { snapshot_every: 10, compaction_tail: 2, ..Opts::default() };
        let mut c = Cluster::start(opts, &[1, 2, 3], &[4], &[]).await;
        let (leader, _) = c.wait_leader(&[1, 2, 3], 0).await;
        let mut client = Client::open(&c.handle(leader)).await;
        propose(&c.handle(leader), &client.create("e")).await;
        c.add_replica(4, joining_replica(4, &[1, 2, 3])).await.unwrap();
        c.change_membership_retrying(leader, 4, Some(Role::Witness)).await;
        let (cmd, _) = client.enter("e", "first");
        propose(&c.handle(leader), &cmd).await;

        c.net.cut(4);
        let mut expected = vec!["first".to_string()];
        for k in 0..30 {
            let who = format!("w{k}");
            let (cmd, _) = client.enter("e", &who);
            propose(&c.handle(leader), &cmd).await;
            expected.push(who);
        }
        let healed_at = c.event_count();
        c.net.heal(4);
        let installed = c.wait_snapshot_recovered("the witness to install a snapshot", healed_at, 4).await;
        eprintln!("the witness installed the snapshot at {installed}");

        // What the witness stored must load again.
        c.stop_node(4).await;
        let store = SnapshotStore::open(c.root.path().join("node4").join("snapshots")).await.unwrap();
        let loaded = load_snapshot(&store, GROUP).await;
        drop(store);
        match &loaded {
            Ok(Some(s)) => assert!(s.index >= installed && s.membership.role(4) == Some(Role::Witness)),
            Ok(None) => panic!("the witness stored no snapshot"),
            Err(e) => panic!("the witness cannot load the snapshot it installed: {e}"),
        }
        c.start_node(4, Some(voters(&[1, 2, 3]))).await;

        // It still votes: with the leader dead, the other two voters need it to commit.
        let (old_leader, old_term) = c.leader_among(&[1, 2, 3]).expect("a leader");
        c.stop_node(old_leader).await;
        let rest = others(&[1, 2, 3], &[old_leader]);
        let (new_leader, _) = c.wait_leader(&[1, 2, 3, 4], old_term).await;
        assert!(rest.contains(&new_leader));
        let (cmd, _) = client.enter("e", "after");
        let after = propose(&c.handle(rest[0]), &cmd).await;
        expected.push("after".into());
        assert_eq!(names(&term_of(&after)), expected);
        c.stop_all().await;
    });
}
