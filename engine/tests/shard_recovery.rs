//! The shard runtime on real storage (the io_uring log and the snapshot store in a temp
//! directory): commands survive a restart, snapshots are taken every N entries, the log is
//! compacted below them, and a restart restores the newest snapshot plus the entries after it
//! with identical state.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use conclave_engine::log::{Log, LogOptions, SnapshotStore};
use conclave_engine::raft::{Config, Membership};
use conclave_engine::shard::{
    load_snapshot, recover_replica, Request, RuntimeConfig, ShardError, ShardHandle, ShardRuntime, ShardStorage, TermQuery,
};
use conclave_engine::sm::{command, Command, ElectionOp, ElectionTerm, Output, PrimitiveRef};
use glommio::LocalExecutorBuilder;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

struct Opened {
    handle: ShardHandle,
    task: glommio::Task<Result<(), ShardError>>,
    compacted: u64,
    snapshot_index: Option<u64>,
}

async fn open(dir: &Path, snapshot_every: u64) -> Opened {
    let (log, recovery) = Log::open(dir.join("log"), LogOptions::with_segment_bytes(1 << 20)).await.unwrap();
    let snapshots = SnapshotStore::open(dir.join("snapshots")).await.unwrap();
    let snapshot = load_snapshot(&snapshots, 1).await.unwrap();
    let snapshot_index = snapshot.as_ref().map(|s| s.index);
    let compacted = recovery.groups.get(&1).map_or(0, |g| g.compacted);
    let mut cfg = Config::new(1, 1);
    cfg.election_ticks = 3;
    cfg.heartbeat_ticks = 1;
    let replica =
        recover_replica(cfg, Membership::voters([1]).unwrap(), snapshot, recovery.groups.get(&1), ChaCha8Rng::seed_from_u64(1)).unwrap();
    let runtime = ShardRuntime::new(
        RuntimeConfig {
            node_id: 1,
            tick: Duration::from_millis(1),
            request_queue: 1024,
            expiry_check: Duration::from_millis(50),
            snapshot_every,
            compaction_tail: 5,
            ..RuntimeConfig::new(1, Duration::from_millis(1))
        },
        BTreeMap::from([(1, replica)]),
        ShardStorage::new(log, snapshots),
        Box::new(|_, _| panic!("a single-voter group sends nothing")),
        Box::new(|_, _| {}),
        Box::new(|| 1_000_000),
    );
    let handle = runtime.handle();
    let task = glommio::spawn_local(runtime.run());
    Opened { handle, task, compacted, snapshot_index }
}

async fn propose(handle: &ShardHandle, cmd: Command) -> Output {
    for _ in 0..2_000 {
        match handle.propose(1, cmd.clone()).await {
            Ok(c) => return c.result.expect("state machine accepts"),
            Err(ShardError::NotLeader { .. }) => glommio::timer::sleep(Duration::from_millis(1)).await,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    panic!("no leader");
}

async fn term(handle: &ShardHandle, name: &str) -> ElectionTerm {
    for _ in 0..2_000 {
        match handle
            .read(1, TermQuery { session_id: None, primitive: PrimitiveRef::Name(name.into()), min_index: 0, sequence_num: 0 })
            .await
        {
            Ok(r) => return r.result.expect("election exists"),
            Err(ShardError::NotLeader { .. }) => glommio::timer::sleep(Duration::from_millis(1)).await,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    panic!("no leader");
}

async fn stop(opened: Opened) {
    opened.handle.send(Request::Shutdown).await.unwrap();
    opened.task.await.unwrap();
}

#[test]
fn snapshots_compact_the_log_and_restarts_restore_identical_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let ex = LocalExecutorBuilder::default().io_memory(1 << 20).make().unwrap();
    ex.run(async move {
        // First life: 30 elections, each with candidates entering; snapshots every 25 entries.
        let first = open(&path, 25).await;
        assert_eq!((first.compacted, first.snapshot_index), (0, None));
        let Output::SessionOpened { session_id } = propose(&first.handle, command::open_session(0, 3_600_000)).await else { panic!() };
        let mut seq = 0;
        let mut expected = BTreeMap::new();
        for e in 0..30 {
            let name = format!("e{e}");
            seq += 1;
            propose(&first.handle, command::create_primitive(0, session_id, seq, &name)).await;
            for c in 0..(e % 4) {
                seq += 1;
                let cmd = command::election(0, session_id, seq, PrimitiveRef::Name(name.clone()), ElectionOp::Enter, &format!("c{c}"));
                propose(&first.handle, cmd).await;
            }
            expected.insert(name.clone(), term(&first.handle, &name).await);
        }
        stop(first).await;

        // Second life: a snapshot was restored and the log below it compacted.
        let second = open(&path, 25).await;
        let snapshot = second.snapshot_index.expect("a snapshot was taken");
        assert!(snapshot >= 25, "snapshot at {snapshot}");
        assert!(second.compacted >= 25 && second.compacted <= snapshot, "log compacted to {}", second.compacted);
        for (name, want) in &expected {
            assert_eq!(&term(&second.handle, name).await, want, "election {name} after restart");
        }
        // It keeps working: the same session still exists and its sequence continues.
        seq += 1;
        let cmd = command::election(0, session_id, seq, PrimitiveRef::Name("e0".into()), ElectionOp::Enter, "late");
        let Output::Term(t) = propose(&second.handle, cmd).await else { panic!() };
        assert_eq!(names(&t), vec!["late".to_string()]);
        stop(second).await;

        // Third life without snapshots enabled: state still identical.
        let third = open(&path, 0).await;
        assert_eq!(names(&term(&third.handle, "e0").await), vec!["late".to_string()]);
        assert_eq!(&term(&third.handle, "e29").await, &expected["e29"]);
        stop(third).await;
    });
}

/// The candidates of a term as owned strings, leader first.
fn names(term: &conclave_engine::sm::ElectionTerm) -> Vec<String> {
    term.candidates.iter().map(|c| c.to_string()).collect()
}
