//! The unary calls of one connection, served without a task each: a table of call futures
//! that the connection's own task polls. Each call has its own waker, so a turn of the
//! connection polls only the calls that were woken (a reply came, a deadline passed, the
//! client reset the stream), and every response the calls of one turn produce is queued
//! in h2 before the connection writes: one flush for the round.
//!
//! Server and bidirectional streams still get a task each (see `connection.rs`): they
//! live long, and their writer waits on flow control by itself.
use std::future::Future;
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, StreamExt as _};

use super::router::LocalBoxFuture;
use crate::metrics::edge;

/// The unary calls in flight on one connection.
#[derive(Default)]
pub(crate) struct CallTable {
    calls: FuturesUnordered<LocalBoxFuture<()>>,
}

impl CallTable {
    pub(crate) fn new() -> CallTable {
        CallTable::default()
    }

    /// Adds a call; it is first polled at the connection's next turn.
    pub(crate) fn push(&mut self, call: impl Future<Output = ()> + 'static) {
        edge::count(|e| e.unary_calls_inline += 1);
        self.calls.push(Box::pin(call));
    }

    /// Polls the calls that were woken since the last turn (all of them, up to the
    /// table's fairness budget: past it, the connection's task is woken again), and
    /// returns how many ended.
    pub(crate) fn poll_calls(&mut self, cx: &mut Context<'_>) -> usize {
        let mut ended = 0;
        while let Poll::Ready(Some(())) = self.calls.poll_next_unpin(cx) {
            ended += 1;
        }
        ended
    }

    /// Calls in flight.
    pub(crate) fn len(&self) -> usize {
        self.calls.len()
    }
}
