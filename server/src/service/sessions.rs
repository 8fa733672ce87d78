//! Client-API sessions, bound to client connections (api.md §4): each connection holds one
//! session per partition it touches, opened on its first command there, kept alive by this
//! shard while the connection lives, and closed the moment the connection closes — so a
//! client that disconnects loses its candidacies at once. If this node dies instead, the
//! keep-alives stop and the session expires after its timeout.
//!
//! The server numbers each session's commands itself (one connection's commands are never
//! retried through the session), and tells the state machine in every keep-alive which
//! outputs it no longer needs.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use conclave_engine::shard::Committed;
use conclave_engine::sm::{command, Output, PrimitiveId, SessionId};

use crate::grpc::{ConnectionInfo, ConnectionObserver, Signal, Status};
use crate::node::Dispatch;

use super::status::{from_shard, from_sm};

struct OpenSession {
    id: SessionId,
    next_seq: u64,
    in_flight: BTreeSet<u64>,
    /// Elections this connection created here, for Close.
    primitives: BTreeMap<String, PrimitiveId>,
}

impl OpenSession {
    /// Every output at or below this sequence number has reached the client.
    fn acknowledged(&self) -> u64 {
        self.in_flight.first().map_or(self.next_seq - 1, |s| s - 1)
    }
}

enum Slot {
    Opening(Signal),
    Open(OpenSession),
}

/// A sequence number handed out for one command, to be returned with [`ClientSessions::done`].
#[derive(Clone, Copy, Debug)]
pub struct Sequenced {
    pub session_id: SessionId,
    pub sequence_num: u64,
}

/// The client sessions of every connection served by this shard.
pub struct ClientSessions {
    dispatch: Rc<Dispatch>,
    timeout_ms: u64,
    connections: RefCell<BTreeMap<u64, BTreeMap<u32, Slot>>>,
}

impl ClientSessions {
    pub fn new(dispatch: Rc<Dispatch>, timeout_ms: u64) -> Rc<ClientSessions> {
        Rc::new(ClientSessions { dispatch, timeout_ms, connections: RefCell::new(BTreeMap::new()) })
    }

    /// The next sequence number of `connection`'s session in `partition`, opening the
    /// session on first use.
    pub async fn next(&self, connection: &Rc<ConnectionInfo>, partition: u32) -> Result<Sequenced, Status> {
        let conn = connection.id();
        loop {
            let wait = {
                let mut connections = self.connections.borrow_mut();
                let slots = connections.entry(conn).or_default();
                match slots.get_mut(&partition) {
                    Some(Slot::Open(session)) => {
                        let sequence_num = session.next_seq;
                        session.next_seq += 1;
                        session.in_flight.insert(sequence_num);
                        return Ok(Sequenced { session_id: session.id, sequence_num });
                    }
                    Some(Slot::Opening(signal)) => Some(signal.clone()),
                    None => {
                        slots.insert(partition, Slot::Opening(Signal::new()));
                        None
                    }
                }
            };
            match wait {
                Some(signal) => signal.fired().await,
                None => {
                    let mut opening = Opening { sessions: self, conn, partition, finished: false };
                    let opened = self.open(connection, partition).await;
                    opening.finished = true;
                    opened?
                }
            }
        }
    }

    async fn open(&self, connection: &Rc<ConnectionInfo>, partition: u32) -> Result<(), Status> {
        let conn = connection.id();
        let outcome = self.dispatch.propose(partition, command::open_session(0, self.timeout_ms)).await;
        let mut connections = self.connections.borrow_mut();
        let slot = connections.get_mut(&conn).and_then(|slots| slots.remove(&partition));
        if let Some(Slot::Opening(signal)) = &slot {
            signal.fire();
        }
        let session_id = match outcome {
            Ok(committed) => match committed.result {
                Ok(Output::SessionOpened { session_id }) => session_id,
                Ok(other) => return Err(Status::internal(format!("OpenSession answered {other:?}"))),
                Err(e) => return Err(from_sm(&e)),
            },
            Err(e) => return Err(from_shard(&e)),
        };
        if connection.is_closed() || !connections.contains_key(&conn) {
            drop(connections);
            self.close_later(partition, session_id);
            return Err(Status::cancelled("the connection closed while its session was opening"));
        }
        let session = OpenSession { id: session_id, next_seq: 1, in_flight: BTreeSet::new(), primitives: BTreeMap::new() };
        connections.get_mut(&conn).expect("checked above").insert(partition, Slot::Open(session));
        Ok(())
    }

    /// The command numbered `seq` got its answer (or will never need it).
    pub fn done(&self, connection: &ConnectionInfo, partition: u32, seq: Sequenced) {
        if let Some(Slot::Open(session)) = self.connections.borrow_mut().get_mut(&connection.id()).and_then(|s| s.get_mut(&partition)) {
            session.in_flight.remove(&seq.sequence_num);
        }
    }

    /// Remembers an election this connection created, for a later Close.
    pub fn remember_primitive(&self, connection: &ConnectionInfo, partition: u32, name: &str, id: PrimitiveId) {
        if let Some(Slot::Open(session)) = self.connections.borrow_mut().get_mut(&connection.id()).and_then(|s| s.get_mut(&partition)) {
            session.primitives.insert(name.to_owned(), id);
        }
    }

    /// The id of an election this connection created, if it did.
    pub fn primitive(&self, connection: &ConnectionInfo, partition: u32, name: &str) -> Option<PrimitiveId> {
        match self.connections.borrow().get(&connection.id()).and_then(|s| s.get(&partition)) {
            Some(Slot::Open(session)) => session.primitives.get(name).copied(),
            _ => None,
        }
    }

    fn close_later(&self, partition: u32, session_id: SessionId) {
        let dispatch = Rc::clone(&self.dispatch);
        glommio::spawn_local(async move {
            if let Err(e) = dispatch.propose(partition, command::close_session(0, session_id)).await {
                tracing::debug!(partition, session_id, error = %e, "closing a client session failed; it will expire");
            }
        })
        .detach();
    }

    /// Closes every session of a connection that closed.
    pub fn connection_closed(&self, conn: u64) {
        let slots = self.connections.borrow_mut().remove(&conn).unwrap_or_default();
        for (partition, slot) in slots {
            match slot {
                Slot::Open(session) => self.close_later(partition, session.id),
                // `open` sees the connection gone and closes what it opened.
                Slot::Opening(signal) => signal.fire(),
            }
        }
    }

    /// Keeps every open session alive: one entry per partition (per
    /// [`command::MAX_KEEP_ALIVE_BATCH`] sessions) carrying the keep-alives of every session
    /// this shard holds there, all partitions at once.
    pub async fn keep_alive_all(&self) {
        let mut by_partition: BTreeMap<u32, Vec<(SessionId, u64)>> = BTreeMap::new();
        for (partition, slot) in self.connections.borrow().values().flat_map(|slots| slots.iter()) {
            if let Slot::Open(s) = slot {
                by_partition.entry(*partition).or_default().push((s.id, s.acknowledged()));
            }
        }
        let mut tasks = Vec::new();
        for (partition, sessions) in by_partition {
            for batch in sessions.chunks(command::MAX_KEEP_ALIVE_BATCH) {
                let dispatch = Rc::clone(&self.dispatch);
                let entry = command::keep_alive_batch(0, batch);
                dispatch.counters.keep_alive_entry();
                tasks.push(glommio::spawn_local(async move {
                    match dispatch.propose(partition, entry).await {
                        Ok(Committed { result: Ok(Output::KeptAliveBatch { unknown_sessions }), .. }) if !unknown_sessions.is_empty() => {
                            tracing::debug!(partition, ?unknown_sessions, "keep-alive found sessions gone (closed or expired)");
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!(partition, error = %e, "keep-alive failed"),
                    }
                }));
            }
        }
        for task in tasks {
            task.await;
        }
    }

    /// The number of open sessions (for tests and metrics).
    pub fn open_sessions(&self) -> usize {
        self.connections.borrow().values().flat_map(|s| s.values()).filter(|s| matches!(s, Slot::Open(_))).count()
    }
}

/// The opening of a connection's session in a partition. If the call that opens it is
/// abandoned (deadline, client reset) before [`ClientSessions::open`] settles the slot, the
/// slot is freed and its waiters woken, so the connection's next command opens the session
/// anew instead of waiting forever. A session the abandoned proposal may still open is
/// never kept alive, so it expires.
struct Opening<'a> {
    sessions: &'a ClientSessions,
    conn: u64,
    partition: u32,
    finished: bool,
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut connections = self.sessions.connections.borrow_mut();
        let Some(slots) = connections.get_mut(&self.conn) else { return };
        if matches!(slots.get(&self.partition), Some(Slot::Opening(_))) {
            if let Some(Slot::Opening(signal)) = slots.remove(&self.partition) {
                signal.fire();
            }
        }
    }
}

/// Closes a connection's sessions when the gRPC layer reports it closed.
pub struct SessionObserver(pub Rc<ClientSessions>);

impl ConnectionObserver for SessionObserver {
    fn connection_closed(&self, connection: &Rc<ConnectionInfo>) {
        self.0.connection_closed(connection.id());
    }
}
