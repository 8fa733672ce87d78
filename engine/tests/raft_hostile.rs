//! Hostile peers: no message from a peer may panic a `RaftNode` or corrupt its state.
//!
//! Each property starts one replica of a group of three voters and an observer (1, 2, 3
//! voters, 4 observer) in one situation: a fresh follower, an up-to-date follower, a
//! lagging follower, the observer, a pre-candidate, a candidate, a leader with committed
//! entries, a leader and a follower that compacted their logs behind a snapshot (the
//! leader with a lagging voter to stream it to), and a follower whose caller is still
//! installing a snapshot from the leader; with lease reads, quiescence and a one-entry
//! flow-control window each on or off. It then feeds the replica sequences of peer
//! messages of every type (and of no valid type) from members, from itself, from node 0
//! and from strangers, with fields drawn from small values and values next to the
//! replica's own term, last index and commit index, one field at times replaced by an
//! extreme (`u64::MAX`, `u64::MAX - 1`, around 2^62); entries that are or are not
//! contiguous, of any term and kind, with valid and undecodable configurations; snapshot
//! metadata that is absent, beyond the sender's term, contradicts the log or carries a bad
//! configuration. Interleaved: plausible answers to what the replica just sent (so it
//! streams snapshots and serves reads), a majority granting its pre-vote and vote (so
//! followers become leaders), ticks, proposals, reads, leadership transfers, snapshots,
//! and drains of its output by an honest caller whose disk is at times slow (acks, the
//! messages waiting for durability and snapshot installs then complete at a later drain).
//!
//! Checked: nothing panics (debug assertions are on); a refused message changes nothing
//! (role, hard state, leader, commit, last index, configuration, quiescence); after every
//! input the watermarks stay ordered (compacted <= applied <= commit <= last index), the
//! commit index never falls and a leader's log never shrinks within its term; the output
//! is well formed (the entries to persist continue the durable log, committed entries
//! come in order, messages come from this replica and go to another node); after the
//! sequence the replica still ticks, answers its peers, proposes (or refuses with an
//! error), reads and drains, and what it made durable restarts with `RaftNode::restart`.
//! `CONCLAVE_HOSTILE_CASES=N` runs N cases per situation (a soak).

mod raft_support;

use bytes::Bytes;
use conclave_engine::raft::{Config, Entry, HardState, Membership, Message, MessageType, RaftNode, RaftRole, Recovered, Role};
use conclave_proto::conclave::raft::v1 as pb;
use proptest::prelude::*;
use prost::Message as _;
use raft_support::{node_with, Cluster};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const GROUP: u32 = 7;
/// Cases per starting situation; `CONCLAVE_HOSTILE_CASES=N` runs N (a soak).
const DEFAULT_CASES: u32 = 2000;

fn cases() -> u32 {
    match std::env::var("CONCLAVE_HOSTILE_CASES") {
        Ok(text) => text.parse().unwrap_or_else(|_| panic!("CONCLAVE_HOSTILE_CASES must be an unsigned integer, got {text:?}")),
        Err(_) => DEFAULT_CASES,
    }
}

fn members() -> Membership {
    Membership::new([(1, Role::Voter), (2, Role::Voter), (3, Role::Voter), (4, Role::Observer)]).expect("valid")
}

// ---------------------------------------------------------------- the replica under test

/// What the honest caller made durable: the hard state, the log and the latest snapshot
/// (index, term, configuration).
#[derive(Debug)]
struct Disk {
    hard: HardState,
    entries: Vec<Entry>,
    snapshot: Option<(u64, u64, Membership)>,
}

/// One write of the caller: what to acknowledge once durable, and the messages that wait for it.
struct Write {
    ack: Option<(u64, u64)>,
    messages: Vec<Message>,
}

/// The replica under test, its caller's durable state, and what it last sent.
struct Subject {
    raft: RaftNode,
    cfg: Config,
    disk: Disk,
    /// Highest index handed out for applying.
    applied: u64,
    /// Highest commit index seen (it must never fall).
    commit: u64,
    /// While leader: the term and the last index seen (a leader's log never shrinks).
    leading: Option<(u64, u64)>,
    /// Messages the replica sent in its latest drain; the peers answer some of them.
    sent: Vec<Message>,
    /// Writes in progress.
    writing: Vec<Write>,
    /// A snapshot handed out for installing and not installed yet.
    installing: Option<conclave_engine::raft::Snapshot>,
}

impl Subject {
    /// Takes over a replica whose state is entirely durable (as after `Cluster::settle`).
    fn settled(raft: RaftNode, cfg: Config) -> Self {
        let compacted = raft.compacted_index();
        let snapshot = raft.latest_snapshot().filter(|s| s.index == compacted).map(|s| (s.index, s.term, s.membership.clone()));
        assert!(compacted == 0 || snapshot.is_some(), "a compacted replica holds its snapshot");
        let disk = Disk { hard: raft.hard_state(), entries: raft.entries().cloned().collect(), snapshot };
        Subject {
            cfg,
            applied: raft.applied_index(),
            commit: raft.commit_index(),
            leading: None,
            disk,
            raft,
            sent: Vec::new(),
            writing: Vec::new(),
            installing: None,
        }
    }

    fn id(&self) -> u64 {
        self.raft.id()
    }

    fn compacted(&self) -> u64 {
        self.disk.snapshot.as_ref().map_or(0, |s| s.0)
    }

    /// Drains the output like an honest caller. With `slow_disk` the writes and the snapshot
    /// installation complete only at the next drain without it: the acknowledgements and the
    /// messages that wait for durability are held back until then.
    fn drain(&mut self, slow_disk: bool) {
        self.sent.clear();
        let mut rounds = 0;
        while self.raft.has_ready() {
            rounds += 1;
            assert!(rounds <= 64, "has_ready() stays true after {rounds} drains");
            let ready = self.raft.ready();
            if let Some(hard) = ready.hard_state {
                assert!(hard.term >= self.disk.hard.term, "the durable term falls from {} to {}", self.disk.hard.term, hard.term);
                self.disk.hard = hard;
            }
            if let Some(first) = ready.entries.first() {
                for pair in ready.entries.windows(2) {
                    assert_eq!(pair[1].index, pair[0].index + 1, "entries to persist are not contiguous");
                }
                self.disk.entries.retain(|e| e.index < first.index);
                let durable_last = self.disk.entries.last().map_or(self.compacted(), |e| e.index);
                assert_eq!(first.index, durable_last + 1, "entries to persist do not continue the durable log");
                self.disk.entries.extend(ready.entries.iter().cloned());
            }
            for msg in ready.messages.iter().chain(&ready.persisted_messages) {
                assert_eq!((msg.group_id, msg.from), (GROUP, self.id()), "a message not from this replica: {msg:?}");
                assert!(msg.to != self.id() && msg.to != 0, "a message to {}: {msg:?}", msg.to);
            }
            let ack = ready.persist_ack();
            self.sent.extend(ready.messages);
            self.writing.push(Write { ack, messages: ready.persisted_messages });
            for entry in &ready.committed_entries {
                assert_eq!(entry.index, self.applied + 1, "committed entries out of order");
                self.applied = entry.index;
            }
            // A witness (a hostile configuration may make the replica one) is handed none.
            self.applied = self.applied.max(self.raft.applied_index());
            if let Some(snapshot) = ready.snapshot {
                assert!(self.installing.is_none(), "a second snapshot to install before the first was installed");
                self.installing = Some(snapshot);
            }
            if !slow_disk {
                self.complete_writes();
            }
        }
        if !slow_disk {
            self.complete_writes();
        }
    }

    /// The writes handed out so far are durable: acknowledge them, send what waited for
    /// them, install the snapshot.
    fn complete_writes(&mut self) {
        for Write { ack, messages } in std::mem::take(&mut self.writing) {
            if let Some((index, term)) = ack {
                self.raft.persisted(index, term);
            }
            self.sent.extend(messages);
        }
        if let Some(snapshot) = self.installing.take() {
            self.disk.entries.clear();
            self.disk.snapshot = Some((snapshot.index, snapshot.term, snapshot.membership.clone()));
            self.applied = snapshot.index;
            self.raft.snapshot_installed(snapshot.index);
        }
    }

    /// Steps a peer's message: a refused one changes nothing.
    fn step(&mut self, msg: Message) {
        let before = self.state();
        let shown = format!("{msg:?}");
        if let Err(e) = self.raft.step(msg) {
            assert_eq!(self.state(), before, "the refused message changed the replica ({e}): {shown}");
        }
    }

    /// What a refused message must leave alone.
    fn state(&self) -> String {
        let raft = &self.raft;
        format!(
            "{:?} {:?} leader {} commit {} last {} {:?} quiesced {}",
            raft.role(),
            raft.hard_state(),
            raft.leader(),
            raft.commit_index(),
            raft.last_index(),
            raft.membership(),
            raft.is_quiesced()
        )
    }

    /// The watermarks stay ordered and the commit index never falls.
    fn check(&mut self) {
        let raft = &self.raft;
        let (compacted, applied, commit, last) = (raft.compacted_index(), raft.applied_index(), raft.commit_index(), raft.last_index());
        assert!(
            compacted <= applied && applied <= commit && commit <= last,
            "watermarks out of order: compacted {compacted}, applied {applied}, commit {commit}, last {last}"
        );
        assert!(commit >= self.commit, "the commit index fell from {} to {commit}", self.commit);
        self.commit = commit;
        let leading = (raft.role() == RaftRole::Leader).then(|| (raft.term(), last));
        if let (Some((term, before)), Some((now_term, now))) = (self.leading, leading) {
            assert!(term != now_term || now >= before, "the leader's log shrank from {before} to {now} in term {term}");
        }
        self.leading = leading;
    }

    /// Restarts a replica from what the caller made durable; it must come up and run.
    fn restart_from_disk(&self) {
        let (compacted_index, compacted_term, membership) = self.disk.snapshot.clone().unwrap_or((0, 0, members()));
        let entries: Vec<Entry> = self.disk.entries.iter().filter(|e| e.index > compacted_index).cloned().collect();
        let recovered =
            Recovered { hard_state: self.disk.hard, compacted_index, compacted_term, membership, entries, applied: compacted_index };
        let mut raft = match RaftNode::restart(self.cfg.clone(), recovered, ChaCha8Rng::seed_from_u64(99)) {
            Ok(raft) => raft,
            Err(e) => panic!("the durable state does not restart: {e}\n{:?}", self.disk),
        };
        for _ in 0..30 {
            raft.tick();
            let ready = raft.ready();
            if let Some((index, term)) = ready.persist_ack() {
                raft.persisted(index, term);
            }
        }
    }
}

// ---------------------------------------------------------------- starting situations

#[derive(Clone, Copy, Debug)]
enum Start {
    FreshFollower,
    Follower,
    LaggingFollower,
    Observer,
    PreCandidate,
    Candidate,
    Leader,
    CompactedLeader,
    CompactedFollower,
    /// The lagging follower, holding a snapshot from the leader that its caller is still
    /// installing.
    Installing,
}

/// Optional features of the group's replicas.
#[derive(Clone, Copy, Debug)]
struct Features {
    lease_reads: bool,
    quiesce: bool,
    /// One entry per append and two appends in flight, so replication goes in many steps.
    tight_flow: bool,
}

fn features() -> impl Strategy<Value = Features> {
    (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(lease_reads, quiesce, tight_flow)| Features {
        lease_reads,
        quiesce,
        tight_flow,
    })
}

fn config(id: u64, features: Features) -> Config {
    let mut cfg = Config::new(id, GROUP);
    cfg.lease_reads = features.lease_reads;
    cfg.lease_micros = Config::safe_lease_micros(cfg.election_ticks, 10_000);
    cfg.follower_leases = features.lease_reads;
    cfg.quiesce = features.quiesce;
    if features.tight_flow {
        cfg.max_entries_per_message = 1;
        cfg.max_inflight_messages = 2;
    }
    cfg
}

/// The voter left behind while the others commit entries.
const LAGGING: u64 = 3;

/// A group that elected a leader, then committed three entries without `LAGGING`; with
/// `compact`, every replica but `LAGGING` then snapshots and compacts its log.
fn established(features: Features, compact: bool) -> (Cluster, u64, RaftNode) {
    let mut cluster = Cluster::new(members());
    for (id, raft) in cluster.nodes.iter_mut() {
        *raft = node_with(config(*id, features), &members());
    }
    let leader = cluster.tick_until_leader();
    assert_ne!(leader, LAGGING, "the deterministic election picks another leader");
    let lagging = cluster.nodes.remove(&LAGGING).expect("member");
    for i in 0..3u8 {
        cluster.nodes.get_mut(&leader).unwrap().propose([Bytes::from(vec![i])]).unwrap();
        cluster.settle();
    }
    for raft in cluster.nodes.values_mut() {
        raft.tick();
    }
    cluster.settle();
    if compact {
        for raft in cluster.nodes.values_mut() {
            let applied = raft.applied_index();
            raft.snapshot_taken(applied, Bytes::from_static(b"state")).unwrap();
            raft.compact(applied);
        }
    }
    (cluster, leader, lagging)
}

fn start(start: Start, features: Features) -> Subject {
    let (mut cluster, leader, lagging) =
        established(features, matches!(start, Start::CompactedLeader | Start::CompactedFollower | Start::Installing));
    let follower = [1, 2].into_iter().find(|id| *id != leader).expect("a voter other than the leader and 3");
    let mut take = |id: u64| Subject::settled(cluster.nodes.remove(&id).expect("member"), config(id, features));
    let subject = match start {
        Start::FreshFollower => Subject::settled(node_with(config(1, features), &members()), config(1, features)),
        Start::LaggingFollower => Subject::settled(lagging, config(LAGGING, features)),
        Start::Installing => {
            let leader = &cluster.nodes[&leader];
            let snapshot = leader.latest_snapshot().expect("the leader compacted");
            let chunk = Message {
                group_id: GROUP,
                from: leader.id(),
                to: LAGGING,
                term: leader.term(),
                msg_type: MessageType::Snapshot as i32,
                snapshot: Some(pb::SnapshotMeta {
                    index: snapshot.index,
                    term: snapshot.term,
                    membership: Some(snapshot.membership.to_proto()),
                }),
                context: snapshot.data.clone(),
                snapshot_done: true,
                ..Message::default()
            };
            let mut subject = Subject::settled(lagging, config(LAGGING, features));
            subject.raft.step(chunk).unwrap();
            subject.drain(true);
            assert!(subject.installing.is_some());
            subject
        }
        Start::Observer => take(4),
        Start::Leader | Start::CompactedLeader => take(leader),
        Start::Follower | Start::CompactedFollower | Start::PreCandidate | Start::Candidate => {
            let mut subject = take(follower);
            if matches!(start, Start::PreCandidate | Start::Candidate) {
                subject.raft.wake();
                for _ in 0..100 {
                    if subject.raft.role() == RaftRole::PreCandidate {
                        break;
                    }
                    subject.raft.tick();
                    subject.drain(false);
                }
            }
            if matches!(start, Start::Candidate) {
                let grant = Message {
                    group_id: GROUP,
                    from: leader,
                    to: follower,
                    term: subject.raft.term() + 1,
                    msg_type: MessageType::PreVoteResponse as i32,
                    ..Message::default()
                };
                subject.raft.step(grant).unwrap();
                subject.drain(false);
            }
            subject
        }
    };
    let expected = match start {
        Start::Leader | Start::CompactedLeader => RaftRole::Leader,
        Start::PreCandidate => RaftRole::PreCandidate,
        Start::Candidate => RaftRole::Candidate,
        _ => RaftRole::Follower,
    };
    assert_eq!(subject.raft.role(), expected, "{start:?} with {features:?}");
    subject
}

// ---------------------------------------------------------------- hostile inputs

/// A number relative to the replica's state when the message is sent.
#[derive(Clone, Copy, Debug)]
enum Num {
    Lit(u64),
    Term(i8),
    Last(i8),
    Commit(i8),
    /// `u64::MAX - k`.
    Max(u8),
    /// `2^62 + d`: around the largest term or index a group can reach.
    Huge(i8),
}

/// The replica's (term, last index, commit index) that `Num`s are relative to.
#[derive(Clone, Copy)]
struct Here {
    term: u64,
    last: u64,
    commit: u64,
}

impl Num {
    fn at(self, here: Here) -> u64 {
        match self {
            Num::Lit(n) => n,
            Num::Term(d) => here.term.saturating_add_signed(i64::from(d)),
            Num::Last(d) => here.last.saturating_add_signed(i64::from(d)),
            Num::Commit(d) => here.commit.saturating_add_signed(i64::from(d)),
            Num::Max(k) => u64::MAX - u64::from(k),
            Num::Huge(d) => (1u64 << 62).saturating_add_signed(i64::from(d)),
        }
    }
}

/// An index or counter: small, or next to the replica's last or commit index.
fn num() -> impl Strategy<Value = Num> {
    prop_oneof![
        3 => (0u64..5).prop_map(Num::Lit),
        1 => (-1i8..=2).prop_map(Num::Term),
        3 => (-2i8..=2).prop_map(Num::Last),
        2 => (-2i8..=2).prop_map(Num::Commit),
    ]
}

/// A term: mostly next to the replica's own.
fn term_num() -> impl Strategy<Value = Num> {
    prop_oneof![
        8 => (-1i8..=2).prop_map(Num::Term),
        1 => (0u64..3).prop_map(Num::Lit),
    ]
}

/// The term of an entry the sender holds: mostly the replica's term or the one before.
fn prev_term() -> impl Strategy<Value = Num> {
    prop_oneof![
        4 => Just(Num::Term(0)),
        3 => Just(Num::Term(-1)),
        1 => Just(Num::Term(1)),
        2 => (0u64..3).prop_map(Num::Lit),
    ]
}

/// A value no honest peer sends.
fn extreme() -> impl Strategy<Value = Num> {
    prop_oneof![(0u8..2).prop_map(Num::Max), (-1i8..=1).prop_map(Num::Huge)]
}

/// The field of a message an extreme value replaces.
#[derive(Clone, Copy, Debug)]
enum Field {
    Term,
    LogTerm,
    Index,
    Commit,
    RejectHint,
    ReadSeq,
    SnapshotOffset,
    SnapshotIndex,
    SnapshotTerm,
    EntryIndex,
    EntryTerm,
}

fn field() -> impl Strategy<Value = Field> {
    use Field::*;
    prop::sample::select(vec![
        Term,
        LogTerm,
        Index,
        Commit,
        RejectHint,
        ReadSeq,
        SnapshotOffset,
        SnapshotIndex,
        SnapshotTerm,
        EntryIndex,
        EntryTerm,
    ])
}

/// The sender: a member other than the replica (by position), or someone who cannot be.
#[derive(Clone, Copy, Debug)]
enum Sender {
    Peer(usize),
    Itself,
    Zero,
    Stranger,
    Max,
}

impl Sender {
    fn id(self, me: u64) -> u64 {
        match self {
            Sender::Peer(k) => [1, 2, 3, 4].into_iter().filter(|id| *id != me).nth(k % 3).expect("three peers"),
            Sender::Itself => me,
            Sender::Zero => 0,
            Sender::Stranger => 5,
            Sender::Max => u64::MAX,
        }
    }
}

fn sender() -> impl Strategy<Value = Sender> {
    prop_oneof![
        20 => (0usize..3).prop_map(Sender::Peer),
        1 => Just(Sender::Itself),
        1 => Just(Sender::Zero),
        1 => Just(Sender::Stranger),
        1 => Just(Sender::Max),
    ]
}

/// Configurations a peer may send: valid ones, an empty one, and undecodable ones.
fn membership_proto(which: u8) -> pb::Membership {
    let member = |node_id: u64, role: i32| pb::Member { node_id, role, incarnation: 0 };
    let members = match which {
        0 => vec![member(1, 0), member(2, 0), member(3, 0), member(4, 1)],
        1 => vec![member(1, 0), member(2, 0), member(3, 0)],
        2 => vec![member(1, 0), member(2, 0), member(3, 0), member(4, 0)],
        3 => vec![member(2, 0), member(3, 0), member(1, 1)],
        4 => vec![member(1, 0), member(2, 0), member(3, 2)],
        5 => vec![],
        6 => vec![member(0, 0), member(1, 0)],
        7 => vec![member(1, 0), member(1, 1)],
        _ => vec![member(1, 0), member(2, 9)],
    };
    pb::Membership { members }
}

#[derive(Clone, Debug)]
enum Payload {
    Empty,
    Raw(Vec<u8>),
    Members(u8),
}

impl Payload {
    fn bytes(&self) -> Bytes {
        match self {
            Payload::Empty => Bytes::new(),
            Payload::Raw(raw) => Bytes::from(raw.clone()),
            Payload::Members(which) => Bytes::from(membership_proto(*which).encode_to_vec()),
        }
    }
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        2 => Just(Payload::Empty),
        1 => prop::collection::vec(any::<u8>(), 1..6).prop_map(Payload::Raw),
        2 => (0u8..9).prop_map(Payload::Members),
    ]
}

#[derive(Clone, Debug)]
struct EntrySpec {
    /// None: the next index after the previous entry (or after the message's `index`).
    index: Option<Num>,
    term: Num,
    kind: i32,
    data: Payload,
}

fn entry_spec() -> impl Strategy<Value = EntrySpec> {
    let index = prop_oneof![8 => Just(None), 1 => num().prop_map(Some)];
    let term = prop_oneof![
        6 => Just(Num::Term(0)),
        2 => Just(Num::Term(-1)),
        1 => Just(Num::Term(1)),
        1 => (0u64..3).prop_map(Num::Lit),
    ];
    let kind = prop_oneof![4 => Just(0), 2 => Just(1), 2 => Just(2), 1 => Just(3)];
    (index, term, kind, payload()).prop_map(|(index, term, kind, data)| EntrySpec { index, term, kind, data })
}

#[derive(Clone, Debug)]
struct MetaSpec {
    index: Num,
    term: Num,
    /// None: no configuration.
    membership: Option<u8>,
}

#[derive(Clone, Debug)]
enum Context {
    Empty,
    Transfer,
    /// A follower's read batch number.
    Batch(u64),
    Raw(Vec<u8>),
}

#[derive(Clone, Debug)]
struct MsgSpec {
    from: Sender,
    to_self: bool,
    right_group: bool,
    msg_type: i32,
    term: Num,
    log_term: Num,
    index: Num,
    commit: Num,
    reject: bool,
    reject_hint: Num,
    read_seq: Num,
    context: Context,
    snapshot: Option<MetaSpec>,
    snapshot_offset: Num,
    snapshot_done: bool,
    quiesce: bool,
    commit_only: bool,
    lease_micros: Num,
    entries: Vec<EntrySpec>,
    /// One field replaced by a value no honest peer sends.
    extreme: Option<(Field, Num)>,
}

fn msg_spec() -> impl Strategy<Value = MsgSpec> {
    let msg_type = prop_oneof![40 => 1i32..=13, 1 => Just(0), 1 => Just(14), 1 => Just(-1)];
    let context = prop_oneof![
        4 => Just(Context::Empty),
        1 => Just(Context::Transfer),
        2 => (0u64..4).prop_map(Context::Batch),
        1 => prop::collection::vec(any::<u8>(), 0..12).prop_map(Context::Raw),
    ];
    let meta = (num(), prev_term(), prop_oneof![1 => Just(None), 4 => (0u8..9).prop_map(Some)])
        .prop_map(|(index, term, membership)| MetaSpec { index, term, membership });
    let snapshot = prop_oneof![1 => Just(None), 4 => meta.prop_map(Some)];
    let offset = prop_oneof![4 => Just(Num::Lit(0)), 1 => num()];
    let header = (sender(), prop::bool::weighted(0.97), prop::bool::weighted(0.97), msg_type, term_num());
    let log = (prev_term(), num(), num(), prop::collection::vec(entry_spec(), 0..4));
    let extreme = prop_oneof![6 => Just(None), 1 => (field(), extreme()).prop_map(Some)];
    let rest = (
        any::<bool>(),
        num(),
        num(),
        context,
        snapshot,
        offset,
        any::<bool>(),
        (prop::bool::weighted(0.2), prop::bool::weighted(0.2), num()),
    );
    (header, log, rest, extreme).prop_map(
        |(
            (from, to_self, right_group, msg_type, term),
            (log_term, index, commit, entries),
            (reject, reject_hint, read_seq, context, snapshot, snapshot_offset, snapshot_done, (quiesce, commit_only, lease_micros)),
            extreme,
        )| MsgSpec {
            from,
            to_self,
            right_group,
            msg_type,
            term,
            log_term,
            index,
            commit,
            reject,
            reject_hint,
            read_seq,
            context,
            snapshot,
            snapshot_offset,
            snapshot_done,
            quiesce,
            commit_only,
            lease_micros,
            entries,
            extreme,
        },
    )
}

impl MsgSpec {
    fn build(&self, me: u64, here: Here) -> Message {
        let index = self.index.at(here);
        let mut next = index.wrapping_add(1);
        let entries = self
            .entries
            .iter()
            .map(|spec| {
                let at = spec.index.map_or(next, |n| n.at(here));
                next = at.wrapping_add(1);
                Entry { index: at, term: spec.term.at(here), kind: spec.kind, data: spec.data.bytes() }
            })
            .collect();
        let snapshot = self.snapshot.as_ref().map(|meta| pb::SnapshotMeta {
            index: meta.index.at(here),
            term: meta.term.at(here),
            membership: meta.membership.map(membership_proto),
        });
        let mut msg = Message {
            group_id: if self.right_group { GROUP } else { GROUP + 1 },
            from: self.from.id(me),
            to: if self.to_self { me } else { 9 },
            term: self.term.at(here),
            msg_type: self.msg_type,
            log_term: self.log_term.at(here),
            index,
            entries,
            commit: self.commit.at(here),
            reject: self.reject,
            reject_hint: self.reject_hint.at(here),
            read_seq: self.read_seq.at(here),
            context: match &self.context {
                Context::Empty => Bytes::new(),
                Context::Transfer => Bytes::from_static(b"transfer"),
                Context::Batch(n) => Bytes::copy_from_slice(&n.to_be_bytes()),
                Context::Raw(raw) => Bytes::from(raw.clone()),
            },
            snapshot,
            snapshot_offset: self.snapshot_offset.at(here),
            snapshot_done: self.snapshot_done,
            quiesce: self.quiesce,
            commit_only: self.commit_only,
            lease_micros: self.lease_micros.at(here),
            // The replicas under test are of the initial configuration (incarnation 0); other
            // incarnations are dropped before any of the content is looked at.
            from_incarnation: 0,
            to_incarnation: 0,
        };
        if let Some((field, value)) = self.extreme {
            let value = value.at(here);
            match field {
                Field::Term => msg.term = value,
                Field::LogTerm => msg.log_term = value,
                Field::Index => msg.index = value,
                Field::Commit => msg.commit = value,
                Field::RejectHint => msg.reject_hint = value,
                Field::ReadSeq => msg.read_seq = value,
                Field::SnapshotOffset => msg.snapshot_offset = value,
                Field::SnapshotIndex => msg.snapshot.get_or_insert_default().index = value,
                Field::SnapshotTerm => msg.snapshot.get_or_insert_default().term = value,
                Field::EntryIndex => msg.entries.last_mut().into_iter().for_each(|e| e.index = value),
                Field::EntryTerm => msg.entries.last_mut().into_iter().for_each(|e| e.term = value),
            }
        }
        msg
    }
}

/// The answer a peer would give to `msg`, granted or refused; None for messages that get none.
fn answer(msg: &Message, reject: bool) -> Option<Message> {
    use MessageType::*;
    let mut reply = Message { group_id: msg.group_id, from: msg.to, to: msg.from, term: msg.term, reject, ..Message::default() };
    let msg_type = match MessageType::try_from(msg.msg_type).ok()? {
        Vote => VoteResponse,
        PreVote => PreVoteResponse,
        Append => {
            if reject {
                reply.index = msg.index;
                reply.reject_hint = msg.index.saturating_sub(1);
                reply.log_term = msg.log_term.saturating_sub(1);
            } else {
                reply.index = msg.entries.last().map_or(msg.index, |e| e.index);
            }
            AppendResponse
        }
        Heartbeat => {
            reply.reject = false;
            reply.read_seq = msg.read_seq;
            HeartbeatResponse
        }
        Snapshot => {
            let meta = msg.snapshot.clone().unwrap_or_default();
            reply.index = meta.index;
            reply.snapshot_offset = msg.snapshot_offset + msg.context.len() as u64;
            reply.snapshot_done = msg.snapshot_done && !reject;
            SnapshotResponse
        }
        ReadIndex => {
            reply.reject = false;
            reply.context = msg.context.clone();
            reply.index = msg.commit;
            ReadIndexResponse
        }
        TimeoutNow | Unspecified | AppendResponse | VoteResponse | PreVoteResponse | HeartbeatResponse | ReadIndexResponse
        | SnapshotResponse => return None,
    };
    reply.msg_type = msg_type as i32;
    Some(reply)
}

#[derive(Clone, Debug)]
enum Action {
    Step(Box<MsgSpec>),
    /// Answers the message the replica sent in its latest drain at this position (mod
    /// count), or all of them.
    Answer {
        pick: Option<usize>,
        reject: bool,
    },
    /// The other voters grant the replica's pre-vote and vote (if it asked for them).
    Elect,
    Tick(u8),
    Drain {
        slow_disk: bool,
    },
    Propose(u8),
    Read,
    /// The caller snapshots the applied state and compacts the log behind it.
    Snapshot,
    Transfer(u64),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        8 => msg_spec().prop_map(|spec| Action::Step(Box::new(spec))),
        5 => (prop::option::weighted(0.7, any::<usize>()), prop::bool::weighted(0.2))
            .prop_map(|(pick, reject)| Action::Answer { pick, reject }),
        3 => (1u8..12).prop_map(Action::Tick),
        1 => Just(Action::Elect),
        4 => prop::bool::weighted(0.3).prop_map(|slow_disk| Action::Drain { slow_disk }),
        1 => (0u8..3).prop_map(Action::Propose),
        1 => Just(Action::Read),
        1 => Just(Action::Snapshot),
        1 => (2u64..=4).prop_map(Action::Transfer),
    ]
}

fn run(start_in: Start, features: Features, actions: &[Action]) {
    let mut s = start(start_in, features);
    for action in actions {
        match action {
            Action::Step(spec) => {
                let here = Here { term: s.raft.term(), last: s.raft.last_index(), commit: s.raft.commit_index() };
                let msg = spec.build(s.id(), here);
                s.step(msg);
            }
            Action::Answer { pick, reject } => {
                let sent = match pick {
                    Some(_) if s.sent.is_empty() => Vec::new(),
                    Some(pick) => vec![s.sent[pick % s.sent.len()].clone()],
                    None => s.sent.clone(),
                };
                for reply in sent.iter().filter_map(|m| answer(m, *reject)) {
                    s.step(reply);
                }
            }
            Action::Elect => {
                let me = s.id();
                for (msg_type, term) in [(MessageType::PreVoteResponse, s.raft.term() + 1), (MessageType::VoteResponse, s.raft.term())] {
                    for from in [1, 2, 3].into_iter().filter(|id| *id != me) {
                        let grant = Message { group_id: GROUP, from, to: me, term, msg_type: msg_type as i32, ..Message::default() };
                        s.step(grant);
                    }
                }
            }
            Action::Tick(n) => {
                for _ in 0..*n {
                    s.raft.tick();
                }
            }
            Action::Drain { slow_disk } => s.drain(*slow_disk),
            Action::Propose(n) => {
                let _ = s.raft.propose((0..*n).map(|i| Bytes::from(vec![i])));
            }
            Action::Read => {
                let _ = s.raft.read_index(Bytes::from_static(b"read"));
            }
            Action::Snapshot => {
                let applied = s.raft.applied_index();
                if s.raft.snapshot_taken(applied, Bytes::from_static(b"state")).is_ok() {
                    s.raft.compact(applied);
                    if let Some(snapshot) = s.raft.latest_snapshot().filter(|snap| snap.index == s.raft.compacted_index()) {
                        s.disk.snapshot = Some((snapshot.index, snapshot.term, snapshot.membership.clone()));
                    }
                }
            }
            Action::Transfer(to) => {
                let _ = s.raft.transfer_leadership(*to);
            }
        }
        s.check();
    }
    // Afterwards the replica still runs: it ticks, answers the peers, proposes or refuses,
    // reads or refuses, and drains.
    s.drain(false);
    for round in 0..40 {
        s.raft.tick();
        s.drain(false);
        let replies: Vec<Message> = s.sent.iter().filter_map(|m| answer(m, round % 7 == 3)).collect();
        for reply in replies {
            s.step(reply);
        }
        s.check();
    }
    let _ = s.raft.propose([Bytes::from_static(b"after")]);
    let _ = s.raft.read_index(Bytes::from_static(b"after"));
    s.drain(false);
    s.raft.tick();
    s.drain(false);
    s.check();
    s.restart_from_disk();
}

macro_rules! hostile {
    ($($name:ident: $start:expr;)*) => {
        proptest! {
            #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]
            $(
                #[test]
                fn $name(features in features(), actions in prop::collection::vec(action(), 1..40)) {
                    run($start, features, &actions);
                }
            )*
        }
    };
}

hostile! {
    a_fresh_follower_survives_hostile_peers: Start::FreshFollower;
    a_follower_survives_hostile_peers: Start::Follower;
    a_lagging_follower_survives_hostile_peers: Start::LaggingFollower;
    an_observer_survives_hostile_peers: Start::Observer;
    a_pre_candidate_survives_hostile_peers: Start::PreCandidate;
    a_candidate_survives_hostile_peers: Start::Candidate;
    a_leader_survives_hostile_peers: Start::Leader;
    a_compacted_leader_survives_hostile_peers: Start::CompactedLeader;
    a_compacted_follower_survives_hostile_peers: Start::CompactedFollower;
    a_follower_installing_a_snapshot_survives_hostile_peers: Start::Installing;
}
