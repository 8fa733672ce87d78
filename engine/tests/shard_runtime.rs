//! The shard runtime end to end on one glommio executor: a single-voter group elects
//! itself, proposals are applied exactly once and answered, reads are linearizable, watchers
//! see every change in order, every answered entry was handed to the log first, and
//! shutdown answers what is still waiting.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use conclave_engine::raft::{Config, Membership, RaftNode};
use conclave_engine::shard::{
    Durable, GroupWrite, LogStore, ReadTerm, Replica, Request, RuntimeConfig, ShardError, ShardHandle, ShardRuntime, TermQuery, WatchEvent,
    Watcher,
};
use conclave_engine::sm::{command, ElectionOp, Output, PrimitiveRef, StateMachine};
use glommio::LocalExecutorBuilder;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Records what the runtime made durable (this test checks the runtime, not the disk).
#[derive(Clone, Default)]
struct RecordingLog {
    persisted: Rc<RefCell<BTreeMap<u64, u64>>>,
    /// Writes handed to the log (durable or not yet).
    submitted: Rc<RefCell<usize>>,
    /// Writes made durable.
    rounds: Rc<RefCell<usize>>,
    snapshots: Rc<RefCell<Vec<(u32, u64, usize)>>>,
    /// Extra time a write takes to become durable (on top of 200 µs).
    slowness: Rc<RefCell<Duration>>,
    /// Time a snapshot takes to become durable.
    snapshot_slowness: Rc<RefCell<Duration>>,
    /// Every entry's payload, in the order made durable.
    payloads: Rc<RefCell<Vec<bytes::Bytes>>>,
}

impl LogStore for RecordingLog {
    /// "Durable" 200 µs after submission: the writes are recorded only then.
    fn submit(&mut self, writes: Vec<GroupWrite>) -> Result<Durable, String> {
        *self.submitted.borrow_mut() += 1;
        let log = self.clone();
        let latency = Duration::from_micros(200) + *self.slowness.borrow();
        Ok(Box::pin(async move {
            glommio::timer::sleep(latency).await;
            *log.rounds.borrow_mut() += 1;
            let mut persisted = log.persisted.borrow_mut();
            for w in writes {
                if let Some(first) = w.entries.first() {
                    persisted.retain(|i, _| *i < first.index);
                }
                for e in w.entries {
                    persisted.insert(e.index, e.term);
                    log.payloads.borrow_mut().push(e.data);
                }
            }
            Ok(())
        }))
    }

    /// Recorded once "durable", `snapshot_slowness` after it was asked for.
    fn save_snapshot(&mut self, group: u32, index: u64, _term: u64, data: bytes::Bytes) -> Durable {
        let snapshots = Rc::clone(&self.snapshots);
        let latency = *self.snapshot_slowness.borrow();
        Box::pin(async move {
            glommio::timer::sleep(latency).await;
            snapshots.borrow_mut().push((group, index, data.len()));
            Ok(())
        })
    }

    async fn compact(&mut self, _group: u32, index: u64, _term: u64) -> Result<bool, String> {
        self.persisted.borrow_mut().retain(|i, _| *i > index);
        Ok(false)
    }

    async fn remove_group(&mut self, _group: u32) -> Result<(), String> {
        self.persisted.borrow_mut().clear();
        Ok(())
    }

    async fn close(self) -> Result<(), String> {
        Ok(())
    }
}

fn single_voter_runtime(log: RecordingLog, snapshot_every: u64, snapshot_log_ratio: u64) -> ShardRuntime<RecordingLog> {
    let mut cfg = Config::new(1, 1);
    cfg.election_ticks = 3;
    cfg.heartbeat_ticks = 1;
    let raft = RaftNode::new(cfg, Membership::voters([1]).unwrap(), ChaCha8Rng::seed_from_u64(7)).unwrap();
    let mut replicas = BTreeMap::new();
    replicas.insert(1, Replica::new(raft, StateMachine::new()));
    let clock_ms = Rc::new(RefCell::new(1_000u64));
    ShardRuntime::new(
        RuntimeConfig {
            node_id: 1,
            tick: Duration::from_millis(1),
            request_queue: 1024,
            expiry_check: Duration::from_millis(5),
            snapshot_every,
            snapshot_log_ratio,
            compaction_tail: 0,
            ..RuntimeConfig::new(1, Duration::from_millis(1))
        },
        replicas,
        log,
        Box::new(|to, message| panic!("a single-voter group sends nothing, got {message:?} for {to}")),
        Box::new(|_, _| {}),
        Box::new(move || {
            let mut t = clock_ms.borrow_mut();
            *t += 1;
            *t
        }),
    )
}

/// Runs `test` on its own executor against a single-voter runtime (with its log and a
/// handle) that takes no snapshots, then shuts the runtime down and waits for it to end.
fn on_single_voter<F, Fut>(test: F)
where
    F: FnOnce(RecordingLog, ShardHandle) -> Fut + 'static,
    Fut: std::future::Future<Output = ()>,
{
    on_single_voter_snapshotting(0, test)
}

/// [`on_single_voter`] with a snapshot every `snapshot_every` applied entries.
fn on_single_voter_snapshotting<F, Fut>(snapshot_every: u64, test: F)
where
    F: FnOnce(RecordingLog, ShardHandle) -> Fut + 'static,
    Fut: std::future::Future<Output = ()>,
{
    on_single_voter_with(snapshot_every, 0, test)
}

/// [`on_single_voter_snapshotting`] where a snapshot also waits until the entries applied
/// since the last one weigh `snapshot_log_ratio` times it.
fn on_single_voter_with<F, Fut>(snapshot_every: u64, snapshot_log_ratio: u64, test: F)
where
    F: FnOnce(RecordingLog, ShardHandle) -> Fut + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let ex = LocalExecutorBuilder::default().io_memory(1 << 20).make().unwrap();
    ex.run(async move {
        let log = RecordingLog::default();
        let runtime = single_voter_runtime(log.clone(), snapshot_every, snapshot_log_ratio);
        let handle = runtime.handle();
        let task = glommio::spawn_local(runtime.run());
        test(log, handle.clone()).await;
        // The test may have shut the runtime down itself.
        let _ = handle.send(Request::Shutdown).await;
        task.await.unwrap();
    });
}

/// Proposes until the group has elected itself.
async fn propose_when_led(handle: &ShardHandle, cmd: conclave_engine::sm::Command) -> Output {
    for _ in 0..1_000 {
        match handle.propose(1, cmd.clone()).await {
            Ok(c) => return c.result.expect("state machine accepts"),
            Err(ShardError::NotLeader { .. }) => glommio::timer::sleep(Duration::from_millis(1)).await,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    panic!("no leader within 1000 attempts");
}

/// Opens a session once the group has a leader and creates election "e" with it (sequence
/// number 1); returns the session id.
async fn open_session_with_election(handle: &ShardHandle) -> u64 {
    let Output::SessionOpened { session_id } = propose_when_led(handle, command::open_session(0, 60_000)).await else {
        panic!("open_session answers SessionOpened");
    };
    let created = propose_when_led(handle, command::create_primitive(0, session_id, 1, "e")).await;
    assert!(matches!(created, Output::PrimitiveCreated { .. }));
    session_id
}

/// Watches election "e" of group 1 (key 1) with `watcher`; returns its first state.
async fn watch_election_e(handle: &ShardHandle, watcher: Watcher) -> ReadTerm {
    let (first_tx, first_rx) = glommio::channels::local_channel::new_bounded(1);
    handle
        .send(Request::Watch {
            group: 1,
            key: 1,
            query: TermQuery { session_id: None, primitive: PrimitiveRef::Name("e".into()), min_index: 0, sequence_num: 0 },
            first: Box::new(move |r| {
                let _ = first_tx.try_send(r);
            }),
            watcher,
        })
        .await
        .unwrap();
    first_rx.recv().await.unwrap().unwrap()
}

#[test]
fn single_voter_group_serves_commands_reads_and_watches() {
    on_single_voter(|log, handle| async move {
        let session_id = open_session_with_election(&handle).await;

        // A watcher registered before any candidate sees each change in order.
        let seen = Rc::new(RefCell::new(Vec::new()));
        let seen_by_watcher = seen.clone();
        let first = watch_election_e(
            &handle,
            Box::new(move |event| {
                if let WatchEvent::Changed(n) = event {
                    seen_by_watcher.borrow_mut().push(n.term.clone());
                }
                true
            }),
        )
        .await;
        assert_eq!(first.result.unwrap().term, 0);

        let enter = |seq, who: &str| command::election(0, session_id, seq, PrimitiveRef::Name("e".into()), ElectionOp::Enter, who);
        let Output::Term(t) = propose_when_led(&handle, enter(2, "a")).await else { panic!() };
        assert_eq!((t.term, names(&t)), (1, vec!["a".to_string()]));
        let Output::Term(t) = propose_when_led(&handle, enter(3, "b")).await else { panic!() };
        assert_eq!(names(&t), vec!["a".to_string(), "b".to_string()]);
        // A retried sequence number is answered from the cache, not applied again.
        let Output::Term(t) = propose_when_led(&handle, enter(3, "b")).await else { panic!() };
        assert_eq!(names(&t), vec!["a".to_string(), "b".to_string()]);

        let read = handle
            .read(1, TermQuery { session_id: None, primitive: PrimitiveRef::Name("e".into()), min_index: 0, sequence_num: 0 })
            .await
            .unwrap();
        assert_eq!(names(&read.result.unwrap()), vec!["a".to_string(), "b".to_string()]);
        let missing = handle
            .read(1, TermQuery { session_id: None, primitive: PrimitiveRef::Name("nope".into()), min_index: 0, sequence_num: 0 })
            .await
            .unwrap();
        assert!(missing.result.is_err());

        // Closing the session removes its candidates in one change.
        propose_when_led(&handle, command::close_session(0, session_id)).await;
        let terms: Vec<(u64, usize)> = seen.borrow().iter().map(|t| (t.term, t.candidates.len())).collect();
        assert_eq!(terms, vec![(1, 1), (1, 2), (1, 0)]);

        // Everything answered was handed to the log: the applied index is persisted.
        assert!(log.persisted.borrow().len() >= 6);
        assert!(*log.rounds.borrow() >= 1);

        assert_eq!(
            handle
                .read(9, TermQuery { session_id: None, primitive: PrimitiveRef::Name("e".into()), min_index: 0, sequence_num: 0 })
                .await
                .unwrap_err(),
            ShardError::UnknownGroup(9)
        );
        handle.send(Request::Shutdown).await.unwrap();
        assert!(matches!(handle.propose(1, command::leader_barrier(0)).await, Err(ShardError::ShuttingDown)));
    });
}

#[test]
fn a_slow_disk_does_not_hold_reads_or_ticks_while_a_write_is_on_its_way() {
    on_single_voter(|log, handle| async move {
        let session_id = open_session_with_election(&handle).await;

        // Every write now takes 300 ms to become durable.
        *log.slowness.borrow_mut() = Duration::from_millis(300);
        let submitted_before = *log.submitted.borrow();
        let answered = Rc::new(RefCell::new(false));
        let enter = {
            let (handle, answered) = (handle.clone(), answered.clone());
            glommio::spawn_local(async move {
                let cmd = command::election(0, session_id, 2, PrimitiveRef::Name("e".into()), ElectionOp::Enter, "a");
                let committed = handle.propose(1, cmd).await;
                *answered.borrow_mut() = true;
                committed
            })
        };
        wait_for("the Enter to be handed to the slow disk", || *log.submitted.borrow() > submitted_before).await;
        // The loop still serves while the Enter is on its way to disk: a read is answered
        // (from what is committed, so without the Enter), and the Enter is not.
        let read = handle
            .read(1, TermQuery { session_id: None, primitive: PrimitiveRef::Name("e".into()), min_index: 0, sequence_num: 0 })
            .await
            .unwrap();
        assert!(!*answered.borrow(), "the read waited for the slow write");
        assert_eq!(read.result.unwrap().candidates.len(), 0, "the read saw an entry that is not durable");
        // The Enter is answered once durable, and only then visible.
        let Output::Term(t) = enter.await.unwrap().result.unwrap() else { panic!("Enter answers a term") };
        assert_eq!(names(&t), vec!["a".to_string()]);
        assert!(log.persisted.borrow().len() >= 3, "the Enter is durable before it is answered");
    });
}

#[test]
fn a_slow_snapshot_save_does_not_hold_the_loop_and_the_log_is_compacted_only_behind_it() {
    on_single_voter_snapshotting(8, |log, handle| async move {
        // A snapshot takes 2 s to become durable.
        *log.snapshot_slowness.borrow_mut() = Duration::from_secs(2);
        let session_id = open_session_with_election(&handle).await;
        // Well past 8 applied entries: a snapshot save starts, and every command is
        // answered while it is still on its way.
        for seq in 2..14 {
            let op = if seq % 2 == 0 { ElectionOp::Enter } else { ElectionOp::Withdraw };
            let cmd = command::election(0, session_id, seq, PrimitiveRef::Name("e".into()), op, "a");
            handle.propose(1, cmd).await.unwrap().result.unwrap();
        }
        assert!(log.snapshots.borrow().is_empty(), "the commands waited for the snapshot save");
        assert!(log.persisted.borrow().contains_key(&1), "the log was compacted before its snapshot was durable");
        // Once durable, the log is compacted behind it (and not before: checked above).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while log.snapshots.borrow().is_empty() || log.persisted.borrow().contains_key(&1) {
            assert!(std::time::Instant::now() < deadline, "the snapshot was not saved and compacted behind within 10 s");
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        let (group, index, _) = log.snapshots.borrow()[0];
        assert_eq!(group, 1);
        assert!(index >= 8, "the snapshot covers the entries applied when it was due (index {index})");
        assert!(log.persisted.borrow().keys().all(|i| *i > index), "entries up to the snapshot are compacted");
        // The group goes on serving with the snapshot in place ("a" withdrew last).
        let cmd = command::election(0, session_id, 14, PrimitiveRef::Name("e".into()), ElectionOp::Enter, "b");
        let Output::Term(t) = handle.propose(1, cmd).await.unwrap().result.unwrap() else { panic!("Enter answers a term") };
        assert_eq!(names(&t), vec!["b".to_string()]);
    });
}

#[test]
fn a_snapshot_waits_until_the_entries_since_the_last_one_outweigh_it() {
    on_single_voter_with(1, 1, |log, handle| async move {
        let session_id = open_session_with_election(&handle).await;
        // A state of some size: 16 candidates with long names.
        for (seq, i) in (2..18).zip(0..) {
            let name = format!("a-candidate-with-a-rather-long-name-{i:03}");
            let cmd = command::election(0, session_id, seq, PrimitiveRef::Name("e".into()), ElectionOp::Enter, &name);
            handle.propose(1, cmd).await.unwrap().result.unwrap();
        }
        // Let the snapshots those commands allowed land.
        let mut seen = usize::MAX;
        while log.snapshots.borrow().len() != seen {
            seen = log.snapshots.borrow().len();
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
        let (_, last_index, last_size) = *log.snapshots.borrow().last().expect("the state took snapshots");
        // Keep-alives, each far smaller than the snapshot, one at a time, until the next.
        for _ in 0..10_000 {
            if log.snapshots.borrow().len() > seen {
                break;
            }
            handle.propose(1, command::keep_alive(0, session_id, 17)).await.unwrap().result.unwrap();
            glommio::timer::sleep(Duration::from_millis(3)).await;
        }
        let (_, index, _) = *log.snapshots.borrow().get(seen).expect("a snapshot once the log outweighs the last one");
        // Entry i's payload is payloads[i - 1]: a single voter makes them durable in order.
        let bytes = |from: u64, to: u64| -> usize { log.payloads.borrow()[from as usize - 1..to as usize].iter().map(|p| p.len()).sum() };
        assert!(index > last_index + 10, "many small entries went by before the next snapshot ({last_index} -> {index})");
        assert!(bytes(last_index + 1, index) >= last_size, "the entries since snapshot {last_index} outweigh its {last_size} bytes");
        assert!(
            bytes(last_index + 1, index - 1) < last_size,
            "the snapshot came at the first index where they did ({} bytes before {index}, snapshot {last_size})",
            bytes(last_index + 1, index - 1)
        );
    });
}

#[test]
fn a_leader_held_up_credits_every_session_with_the_pause() {
    on_single_voter(|log, handle| async move {
        let session_id = open_session_with_election(&handle).await;
        // A watcher that holds the shard's thread for 300 ms on the first change it sees:
        // the loop is held up as by a paused machine.
        watch_election_e(
            &handle,
            Box::new(|_| {
                std::thread::sleep(Duration::from_millis(300));
                false
            }),
        )
        .await;
        let enter = command::election(0, session_id, 2, PrimitiveRef::Name("e".into()), ElectionOp::Enter, "a");
        propose_when_led(&handle, enter).await;
        // The next command comes after the pause; the leader proposed a pause barrier first.
        propose_when_led(&handle, command::keep_alive(0, session_id, 2)).await;
        let credited: Vec<u64> = log
            .payloads
            .borrow()
            .iter()
            .filter_map(|p| match command::decode(p).ok()?.operation? {
                conclave_proto::conclave::sm::v1::command::Operation::LeaderBarrier(b) if b.paused_ms > 0 => Some(b.paused_ms),
                _ => None,
            })
            .collect();
        assert_eq!(credited.len(), 1, "one pause barrier: {credited:?}");
        assert!((250..2_000).contains(&credited[0]), "credited {} ms for a 300 ms pause", credited[0]);
    });
}

#[test]
fn concurrent_proposals_share_durable_rounds() {
    on_single_voter(|log, handle| async move {
        propose_when_led(&handle, command::leader_barrier(0)).await;
        // A lone proposal costs one durable round: the commit index that advances after it
        // is not synced on its own.
        for _ in 0..5 {
            let before = *log.submitted.borrow();
            handle.propose(1, command::leader_barrier(0)).await.unwrap();
            // A read is handled in a later turn of the loop than the one that answered the
            // proposal: by then any write of that turn's commit index was submitted.
            handle
                .read(1, TermQuery { session_id: None, primitive: PrimitiveRef::Name("e".into()), min_index: 0, sequence_num: 0 })
                .await
                .unwrap();
            assert_eq!(*log.submitted.borrow() - before, 1, "one proposal, one durable round");
        }
        let rounds_before = *log.rounds.borrow();
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let h = handle.clone();
            tasks.push(glommio::spawn_local(async move { h.propose(1, command::open_session(0, 60_000)).await }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            match t.await.unwrap().result.unwrap() {
                Output::SessionOpened { session_id } => ids.push(session_id),
                other => panic!("{other:?}"),
            }
        }
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 200, "every proposal applied once with its own index");
        let rounds = *log.rounds.borrow() - rounds_before;
        assert!(rounds < 100, "200 concurrent proposals took {rounds} durable rounds: no group commit");
    });
}

/// Polls `condition` every millisecond until it holds; panics after 10 s.
async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "{what}: not within 10 s");
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

/// The candidates of a term as owned strings, leader first.
fn names(term: &conclave_engine::sm::ElectionTerm) -> Vec<String> {
    term.candidates.iter().map(|c| c.to_string()).collect()
}
