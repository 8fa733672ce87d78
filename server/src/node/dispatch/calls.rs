//! The calls in flight between shards: on the calling side, the table of pending calls
//! (one-shot answers and running watches) with the guards that forget a call when its
//! caller stops waiting; on the serving side, calls from other shards turned into runtime
//! requests whose replies go back on the mesh, and the watches served for other shards.
//! A call to a group this shard owns goes straight to the local runtime instead.

use std::cell::RefCell;
use std::rc::Rc;

use conclave_engine::shard::{oneshot, Committed, OneshotSender, ReadTerm, Request, ShardError, TermQuery, TrySendError, WatchEvent};
use conclave_engine::sm::{Command, ElectionTerm};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::{GlommioError, ResourceType};

use crate::grpc::{Status, StreamSink};
use crate::metrics::edge;

use super::mesh::{CallOp, CallResult, MeshMessage};
use super::Dispatch;

/// Receives a watch's states with the log index each was read or changed at (the first
/// state at its read index, then every change at its entry's index); returns false to stop
/// watching.
pub type WatchCallback = Box<dyn FnMut(u64, ElectionTerm) -> bool>;

/// Names a running watch, to end it when its client has gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchHandle {
    /// Served by this shard's runtime under `key`.
    Local { group: u32, key: u64 },
    /// Served by shard `owner` for call `call` of this shard.
    Remote { owner: usize, call: u64 },
}

/// A call of this shard waiting for its answer (a watch: for its first state, then its
/// changes until it ends).
pub(super) enum PendingCall {
    Once(OneshotSender<CallResult>),
    Watch { owner: usize, first: Option<LocalSender<CallResult>>, on_change: WatchCallback, ended: LocalSender<ShardError> },
}

impl Dispatch {
    /// Registers a call of this shard; returns its number (named in the answer).
    pub(super) fn start_call(&self, pending: PendingCall) -> u64 {
        let call = self.next_call.get();
        self.next_call.set(call + 1);
        self.calls.borrow_mut().insert(call, pending);
        call
    }

    /// Sends `op` on `group` to another shard, `owner`, and waits for its answer (`None`:
    /// the call was dropped, e.g. the owner is stopping). The call stays in the table until
    /// answered or abandoned.
    async fn call_on(&self, owner: usize, group: u32, op: CallOp) -> Option<CallResult> {
        let (tx, rx) = oneshot();
        let call = self.start_call(PendingCall::Once(tx));
        let _guard = CallGuard { dispatch: self, call };
        self.outbound.send(owner, MeshMessage::Call { from: self.shard, call, group, op });
        rx.await
    }

    /// Proposes once through the shard `owner` of `group` (this one: the local runtime).
    pub(super) async fn propose_once(&self, owner: usize, group: u32, command: Command) -> Result<Committed, ShardError> {
        if owner == self.shard {
            return self.local.propose(group, command).await;
        }
        match self.call_on(owner, group, CallOp::Propose(command)).await {
            Some(CallResult::Committed(result)) => result,
            _ => Err(ShardError::ShuttingDown),
        }
    }

    /// Reads once through the shard `owner` of `group` (this one: the local runtime).
    pub(super) async fn read_once(&self, owner: usize, group: u32, query: TermQuery) -> Result<ReadTerm, ShardError> {
        if owner == self.shard {
            return self.local.read(group, query).await;
        }
        match self.call_on(owner, group, CallOp::Read(query)).await {
            Some(CallResult::Read(result)) => result,
            _ => Err(ShardError::ShuttingDown),
        }
    }

    /// Starts a watch once through the shard `owner` of `group` (this one: the local
    /// runtime); answers with its first state and the guard that ends it.
    pub(super) async fn watch_once(
        self: &Rc<Self>,
        owner: usize,
        group: u32,
        query: TermQuery,
        on_change: Rc<RefCell<WatchCallback>>,
    ) -> Result<(ReadTerm, WatchGuard), ShardError> {
        let (tx, rx) = local_channel::new_bounded(1);
        let (ended_tx, ended) = local_channel::new_bounded(1);
        let handle;
        if owner == self.shard {
            let key = self.new_watch_key();
            handle = WatchHandle::Local { group, key };
            let on_first = Rc::clone(&on_change);
            // Called in the same step that subscribes the watcher: no change can come first.
            let first: Box<dyn FnOnce(Result<ReadTerm, ShardError>)> = Box::new(move |r| {
                if let Ok(ReadTerm { index, result: Ok(term) }) = &r {
                    (on_first.borrow_mut())(*index, term.clone());
                }
                let _ = tx.try_send(CallResult::Read(r));
            });
            let watcher = Box::new(move |event: WatchEvent<'_>| match event {
                WatchEvent::Changed(n) => (on_change.borrow_mut())(n.index, n.term.clone()),
                WatchEvent::Ended(error) => {
                    let _ = ended_tx.try_send(error.clone());
                    false
                }
            });
            self.local.send(Request::Watch { group, key, query, first, watcher }).await?;
        } else {
            let on_change: WatchCallback = Box::new(move |index, term| (on_change.borrow_mut())(index, term));
            let call = self.start_call(PendingCall::Watch { owner, first: Some(tx), on_change, ended: ended_tx });
            handle = WatchHandle::Remote { owner, call };
            self.outbound.send(owner, MeshMessage::Call { from: self.shard, call, group, op: CallOp::Watch(query) });
        }
        match rx.recv().await {
            Some(CallResult::Read(result)) => result.map(|read| (read, WatchGuard::new(Rc::clone(self), handle, ended))),
            _ => Err(ShardError::ShuttingDown),
        }
    }

    /// Ends a watch whose client has gone.
    pub fn unwatch(&self, handle: WatchHandle) {
        match handle {
            WatchHandle::Local { group, key } => self.unwatch_local(group, key),
            WatchHandle::Remote { owner, call } => {
                if self.calls.borrow_mut().remove(&call).is_some() {
                    self.outbound.send(owner, MeshMessage::CancelWatch { from: self.shard, call });
                }
            }
        }
    }

    fn unwatch_local(&self, group: u32, key: u64) {
        let local = self.local.clone();
        glommio::spawn_local(async move {
            let _ = local.send(Request::Unwatch { group, key }).await;
        })
        .detach();
    }

    /// A key unique among this shard's watches.
    fn new_watch_key(&self) -> u64 {
        let key = self.next_watch_key.get();
        self.next_watch_key.set(key + 1);
        key
    }

    /// The answer to call `call` of this shard came back (for a watch: its first state).
    pub(super) fn call_answered(&self, call: u64, result: CallResult) {
        let mut calls = self.calls.borrow_mut();
        match calls.remove(&call) {
            Some(PendingCall::Once(tx)) => tx.send(result),
            Some(PendingCall::Watch { owner, first, mut on_change, ended }) => {
                let started = match &result {
                    CallResult::Read(Ok(ReadTerm { index, result: Ok(term) })) => {
                        on_change(*index, term.clone());
                        true
                    }
                    _ => false,
                };
                let failed = !started;
                if let Some(tx) = first {
                    let _ = tx.try_send(result);
                }
                if !failed {
                    calls.insert(call, PendingCall::Watch { owner, first: None, on_change, ended });
                }
            }
            None => {}
        }
    }

    /// A later change seen by the watch call `call` of this shard.
    pub(super) fn watch_changed(&self, call: u64, index: u64, term: ElectionTerm) {
        let (keep, owner) = match self.calls.borrow_mut().get_mut(&call) {
            Some(PendingCall::Watch { owner, on_change, .. }) => (on_change(index, term), Some(*owner)),
            _ => (false, None),
        };
        if !keep {
            self.calls.borrow_mut().remove(&call);
            if let Some(owner) = owner {
                self.outbound.send(owner, MeshMessage::CancelWatch { from: self.shard, call });
            }
        }
    }

    /// The owning shard ended the watch call `call` of this shard (it freed its side).
    pub(super) fn watch_ended(&self, call: u64, error: ShardError) {
        if let Some(PendingCall::Watch { ended, .. }) = self.calls.borrow_mut().remove(&call) {
            let _ = ended.try_send(error);
        }
    }

    /// Shard `from` no longer watches through its call `call`, which this shard serves.
    pub(super) fn cancel_served_watch(&self, from: usize, call: u64) {
        if let Some((group, key)) = self.served_watches.borrow_mut().remove(&(from, call)) {
            self.unwatch_local(group, key);
        }
    }

    /// Serves a call from shard `from`. Proposals, reads and watches go to the runtime's
    /// queue with a reply that queues the answer on the mesh: no task per call (one is
    /// spawned only when the queue is full, and for Node API operations and metrics).
    pub(super) fn serve_call(self: &Rc<Self>, from: usize, call: u64, group: u32, op: CallOp) {
        edge::count(|e| e.mesh_calls_served += 1);
        let outbound = self.outbound.clone();
        let request = match op {
            CallOp::Propose(command) => Request::Propose {
                group,
                command,
                reply: Box::new(move |r| outbound.send(from, MeshMessage::Reply { call, result: CallResult::Committed(r) })),
            },
            CallOp::Read(query) => Request::Read {
                group,
                query,
                reply: Box::new(move |r| outbound.send(from, MeshMessage::Reply { call, result: CallResult::Read(r) })),
            },
            CallOp::Watch(query) => self.served_watch(from, call, group, query),
            CallOp::Control(op) => {
                self.spawn_served(from, call, async move |dispatch| CallResult::Control(dispatch.run_control(op).await));
                return;
            }
            CallOp::Metrics => {
                self.spawn_served(from, call, async move |dispatch| match dispatch.local_metrics().await {
                    Some(snapshot) => CallResult::Metrics(Box::new(snapshot)),
                    None => CallResult::Control(Err(Status::unavailable("the shard is still starting"))),
                });
                return;
            }
        };
        match self.local.try_send(request) {
            Ok(()) => {}
            Err(TrySendError::Closed(request)) => request.refuse(ShardError::ShuttingDown),
            Err(TrySendError::Full(request)) => {
                edge::count(|e| e.mesh_call_tasks_spawned += 1);
                let sender = self.local.sender();
                glommio::spawn_local(async move {
                    if let Err(GlommioError::Closed(ResourceType::Channel(request))) = sender.send(request).await {
                        request.refuse(ShardError::ShuttingDown);
                    }
                })
                .detach();
            }
        }
    }

    /// The runtime request of a watch served for shard `from`: its first state and every
    /// later change go back on the mesh.
    fn served_watch(self: &Rc<Self>, from: usize, call: u64, group: u32, query: TermQuery) -> Request {
        let key = self.new_watch_key();
        self.served_watches.borrow_mut().insert((from, call), (group, key));
        // The first state is queued in the same step that subscribes the watcher, so it
        // leaves before any change.
        let serving = Rc::clone(self);
        let first: Box<dyn FnOnce(Result<ReadTerm, ShardError>)> = Box::new(move |r| {
            if !matches!(r, Ok(ReadTerm { result: Ok(_), .. })) {
                serving.served_watches.borrow_mut().remove(&(from, call));
            }
            serving.outbound.send(from, MeshMessage::Reply { call, result: CallResult::Read(r) });
        });
        let ending = Rc::clone(self);
        let watcher = Box::new(move |event: WatchEvent<'_>| match event {
            WatchEvent::Changed(n) => {
                ending.outbound.send(from, MeshMessage::WatchEvent { call, index: n.index, term: n.term.clone() });
                true
            }
            WatchEvent::Ended(error) => {
                // Freed here, and the watching shard ends its stream.
                ending.served_watches.borrow_mut().remove(&(from, call));
                ending.outbound.send(from, MeshMessage::WatchEnded { call, error: error.clone() });
                false
            }
        });
        Request::Watch { group, key, query, first, watcher }
    }

    /// Serves a call from shard `from` that must wait on this shard (a Node API operation,
    /// a metrics snapshot) in a task of its own (rare: not counted as a call's task).
    fn spawn_served(self: &Rc<Self>, from: usize, call: u64, serve: impl AsyncFnOnce(Rc<Dispatch>) -> CallResult + 'static) {
        let dispatch = Rc::clone(self);
        glommio::spawn_local(async move {
            let result = serve(Rc::clone(&dispatch)).await;
            dispatch.outbound.send(from, MeshMessage::Reply { call, result });
        })
        .detach();
    }
}

/// A running watch: ends it when dropped (hold it for as long as the watch's client is
/// there; a handler future dropped by the gRPC layer drops it too), and hears when the
/// serving side ends it.
pub struct WatchGuard {
    dispatch: Rc<Dispatch>,
    handle: WatchHandle,
    ended: LocalReceiver<ShardError>,
}

impl WatchGuard {
    pub fn new(dispatch: Rc<Dispatch>, handle: WatchHandle, ended: LocalReceiver<ShardError>) -> WatchGuard {
        dispatch.counters.watch_started();
        WatchGuard { dispatch, handle, ended }
    }

    /// Serves the watch until its client leaves (`Ok`) or this node can no longer serve it
    /// (the replica was removed by Leave, stopped, or no longer applies the log): then the
    /// stream ends UNAVAILABLE, saying why, so the client watches again elsewhere.
    pub async fn until_closed(&self, sink: &StreamSink) -> Result<(), Status> {
        let ended = futures_lite::future::or(
            async {
                sink.closed().await;
                None
            },
            async { Some(self.ended.recv().await) },
        )
        .await;
        match ended {
            None => Ok(()),
            Some(Some(error)) => Err(Status::unavailable(format!("the watch ended: {error}; watch again"))),
            Some(None) => Err(Status::unavailable("the watch ended on this node; watch again")),
        }
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.dispatch.counters.watch_ended();
        self.dispatch.unwatch(self.handle);
    }
}

/// Forgets a one-shot call when its caller stops waiting (deadline, cancellation).
pub(super) struct CallGuard<'a> {
    pub(super) dispatch: &'a Dispatch,
    pub(super) call: u64,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        self.dispatch.calls.borrow_mut().remove(&self.call);
    }
}
