//! Shared helpers of the wire integration tests: a small glommio executor, identities,
//! sample Raft messages, an event recorder and bounded waiting.
#![allow(dead_code)]

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use conclave_proto::conclave::raft::v1::{Entry, Message as RaftMessage, MessageType};
use conclave_wire::{ConnectionEvent, EventSink, LocalIdentity};
use glommio::{LocalExecutorBuilder, Placement};

/// Locked I/O memory per test executor; `ulimit -l` is 8 MiB on the CI machines.
pub const TEST_IO_MEMORY: usize = 256 << 10;

/// Runs `future` on a fresh single-threaded glommio executor, failing if it takes longer
/// than `limit`.
pub fn run_shard<F, T>(limit: Duration, future: F) -> T
where
    F: Future<Output = T> + 'static,
    T: 'static,
{
    let executor = LocalExecutorBuilder::new(Placement::Unbound).io_memory(TEST_IO_MEMORY).make().expect("glommio executor");
    executor.run(async move {
        let deadline = async {
            glommio::timer::sleep(limit).await;
            panic!("test exceeded its {limit:?} budget");
        };
        futures_lite::FutureExt::or(future, deadline).await
    })
}

pub fn identity(cluster: &str, node_id: u64, shard_id: u32) -> LocalIdentity {
    LocalIdentity { cluster_id: cluster.into(), node_id, shard_id, shard_count: 0 }
}

/// A Raft append carrying one entry of `payload`.
pub fn append(group_id: u32, index: u64, payload: Bytes) -> RaftMessage {
    RaftMessage {
        group_id,
        from: 1,
        to: 2,
        term: 7,
        msg_type: MessageType::Append as i32,
        log_term: 7,
        index: index.saturating_sub(1),
        commit: index.saturating_sub(1),
        entries: vec![Entry { index, term: 7, kind: 0, data: payload }],
        ..Default::default()
    }
}

/// Records every connection event.
#[derive(Clone, Default)]
pub struct Recorder(pub Rc<RefCell<Vec<ConnectionEvent>>>);

impl Recorder {
    pub fn sink(&self) -> EventSink {
        let events = self.0.clone();
        Rc::new(move |event| events.borrow_mut().push(event))
    }

    pub fn events(&self) -> Vec<ConnectionEvent> {
        self.0.borrow().clone()
    }

    pub fn count(&self, established: bool) -> usize {
        self.0.borrow().iter().filter(|e| matches!(e.kind, conclave_wire::ConnectionEventKind::Established) == established).count()
    }
}

/// Polls `condition` every few milliseconds until it holds; panics after `limit`.
pub async fn wait_until(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}
