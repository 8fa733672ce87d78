//! The bounded per-stream queue behind a server-streaming call: producers push messages
//! into a [`StreamSink`] without ever blocking the shard, and the call's writer drains it,
//! coalescing queued messages into DATA chunks of about `target_chunk_len` bytes.
//!
//! Overflow (a watcher that reads slower than events arrive) is decided by the route's
//! [`OverflowPolicy`]: either the stream ends with `RESOURCE_EXHAUSTED` (the default: the
//! client learns it missed messages and re-reads the state), or queued messages that were
//! not yet written are discarded in favour of the newest one (for streams where every
//! message is a complete state, such as health or election terms). Either way the memory
//! a slow stream can hold is bounded by the queue limits plus one chunk in flight.
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::{BufMut, Bytes, BytesMut};

use super::framing::PREFIX_LEN;
use super::signal::{Fired, Signal};

/// What happens when a producer pushes into a full stream queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverflowPolicy {
    /// The stream is ended with `RESOURCE_EXHAUSTED`; unsent queued messages are dropped.
    EndStream,
    /// Unsent queued messages are dropped and only the newest is kept: the client sees
    /// the latest state. Only correct when each message is a complete state.
    KeepLatest,
}

/// Bounds of one server stream's queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamLimits {
    /// Most messages queued but not yet written to HTTP/2.
    pub max_queued_messages: usize,
    /// Most message bytes (prefixes included) queued but not yet written. A single message
    /// larger than this is still accepted into an empty queue.
    pub max_queued_bytes: usize,
    /// What a push into a full queue does.
    pub overflow: OverflowPolicy,
}

impl Default for StreamLimits {
    fn default() -> StreamLimits {
        StreamLimits { max_queued_messages: 1024, max_queued_bytes: 1 << 20, overflow: OverflowPolicy::EndStream }
    }
}

/// Why a message could not be queued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendError {
    /// The stream has ended (client gone, deadline passed, server shutting down, or the
    /// handler already returned); nothing more will be delivered.
    Closed,
    /// The queue overflowed under [`OverflowPolicy::EndStream`]; the stream is ending with
    /// `RESOURCE_EXHAUSTED`.
    Overflowed,
    /// The message is longer than the server's maximum send message size.
    TooLarge { len: usize, max: usize },
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Closed => f.write_str("the stream has ended"),
            SendError::Overflowed => f.write_str("the stream's queue overflowed"),
            SendError::TooLarge { len, max } => {
                write!(f, "message of {len} bytes exceeds the send limit of {max} bytes")
            }
        }
    }
}

impl std::error::Error for SendError {}

#[derive(Debug)]
struct StreamQueue {
    messages: VecDeque<Bytes>,
    queued_bytes: usize,
    limits: StreamLimits,
    max_message_len: usize,
    overflowed: bool,
    dropped_for_latest: u64,
    writer: Option<Waker>,
    space_waiters: Vec<Waker>,
}

impl StreamQueue {
    fn is_full_for(&self, framed_len: usize) -> bool {
        !self.messages.is_empty()
            && (self.messages.len() >= self.limits.max_queued_messages || self.queued_bytes + framed_len > self.limits.max_queued_bytes)
    }

    fn push(&mut self, message: Bytes) {
        self.queued_bytes += PREFIX_LEN + message.len();
        self.messages.push_back(message);
        if let Some(waker) = self.writer.take() {
            waker.wake();
        }
    }

    fn discard_queued(&mut self) -> usize {
        let discarded = self.messages.len();
        self.messages.clear();
        self.queued_bytes = 0;
        self.wake_space_waiters();
        discarded
    }

    fn wake_space_waiters(&mut self) {
        for waker in self.space_waiters.drain(..) {
            waker.wake();
        }
    }
}

/// The producer side of a server stream, handed to a streaming handler. Cheap to clone;
/// clones may be given to other tasks of the same shard (e.g. a watcher registry).
#[derive(Clone, Debug)]
pub struct StreamSink {
    queue: Rc<RefCell<StreamQueue>>,
    ended: Signal,
}

impl StreamSink {
    pub(crate) fn new(limits: StreamLimits, max_message_len: usize) -> StreamSink {
        assert!(limits.max_queued_messages > 0, "a stream queue must hold at least one message");
        StreamSink {
            queue: Rc::new(RefCell::new(StreamQueue {
                messages: VecDeque::new(),
                queued_bytes: 0,
                limits,
                max_message_len,
                overflowed: false,
                dropped_for_latest: 0,
                writer: None,
                space_waiters: Vec::new(),
            })),
            ended: Signal::new(),
        }
    }

    /// Queues `message` (an encoded protobuf message, without gRPC prefix) without
    /// waiting. A full queue is handled by the route's [`OverflowPolicy`].
    pub fn try_send(&self, message: Bytes) -> Result<(), SendError> {
        if self.ended.is_fired() {
            return Err(SendError::Closed);
        }
        let mut queue = self.queue.borrow_mut();
        if queue.overflowed {
            return Err(SendError::Overflowed);
        }
        if message.len() > queue.max_message_len {
            return Err(SendError::TooLarge { len: message.len(), max: queue.max_message_len });
        }
        if queue.is_full_for(PREFIX_LEN + message.len()) {
            match queue.limits.overflow {
                OverflowPolicy::EndStream => {
                    queue.overflowed = true;
                    queue.discard_queued();
                    if let Some(waker) = queue.writer.take() {
                        waker.wake();
                    }
                    return Err(SendError::Overflowed);
                }
                OverflowPolicy::KeepLatest => {
                    let discarded = queue.discard_queued();
                    queue.dropped_for_latest += discarded as u64;
                }
            }
        }
        queue.push(message);
        Ok(())
    }

    /// Queues `message`, waiting while the queue is full (for producers that can afford to
    /// wait, such as a handler generating a finite result). Never applies the overflow
    /// policy.
    pub async fn send(&self, message: Bytes) -> Result<(), SendError> {
        let mut ended = self.ended.fired();
        poll_fn(|cx| self.poll_space(cx, &mut ended, PREFIX_LEN + message.len())).await?;
        self.try_send(message)
    }

    /// Encodes `message` and queues it without waiting (see [`StreamSink::try_send`]).
    pub fn try_send_message<M: prost::Message>(&self, message: &M) -> Result<(), SendError> {
        self.try_send(Bytes::from(message.encode_to_vec()))
    }

    /// Encodes `message` and queues it, waiting for room (see [`StreamSink::send`]).
    pub async fn send_message<M: prost::Message>(&self, message: &M) -> Result<(), SendError> {
        self.send(Bytes::from(message.encode_to_vec())).await
    }

    fn poll_space(&self, cx: &mut Context<'_>, ended: &mut Fired, framed_len: usize) -> Poll<Result<(), SendError>> {
        if ended.poll_fired(cx).is_ready() {
            return Poll::Ready(Err(SendError::Closed));
        }
        let mut queue = self.queue.borrow_mut();
        if queue.overflowed {
            return Poll::Ready(Err(SendError::Overflowed));
        }
        if queue.is_full_for(framed_len) {
            queue.space_waiters.push(cx.waker().clone());
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }

    /// Whether the stream has ended; further sends fail with [`SendError::Closed`].
    pub fn is_closed(&self) -> bool {
        self.ended.is_fired()
    }

    /// Completes when the stream ends for any reason (the watcher registry can then drop
    /// its clone of the sink).
    pub fn closed(&self) -> Fired {
        self.ended.fired()
    }

    /// Messages queued and not yet handed to HTTP/2.
    pub fn queued_messages(&self) -> usize {
        self.queue.borrow().messages.len()
    }

    /// Messages discarded so far by [`OverflowPolicy::KeepLatest`].
    pub fn dropped_for_latest(&self) -> u64 {
        self.queue.borrow().dropped_for_latest
    }

    pub(crate) fn end(&self) {
        self.ended.fire();
        self.queue.borrow_mut().wake_space_waiters();
    }

    pub(crate) fn discard_queued(&self) {
        self.queue.borrow_mut().discard_queued();
    }

    pub(crate) fn overflowed(&self) -> bool {
        self.queue.borrow().overflowed
    }

    pub(crate) fn limits(&self) -> StreamLimits {
        self.queue.borrow().limits
    }

    /// Writer side: takes queued messages, framed and concatenated into one chunk of at
    /// most `target_chunk_len` bytes (or one larger message alone). Registers the writer's
    /// waker and returns `None` when nothing is queued.
    pub(crate) fn poll_chunk(&self, cx: &mut Context<'_>, target_chunk_len: usize) -> Option<Bytes> {
        let mut queue = self.queue.borrow_mut();
        let Some(first) = queue.messages.pop_front() else {
            queue.writer = Some(cx.waker().clone());
            return None;
        };
        let mut chunk_len = PREFIX_LEN + first.len();
        let mut taken = 1;
        while let Some(next) = queue.messages.get(taken - 1) {
            if chunk_len + PREFIX_LEN + next.len() > target_chunk_len {
                break;
            }
            chunk_len += PREFIX_LEN + next.len();
            taken += 1;
        }
        let mut chunk = BytesMut::with_capacity(chunk_len);
        put_framed(&mut chunk, &first);
        for message in queue.messages.drain(..taken - 1) {
            put_framed(&mut chunk, &message);
        }
        debug_assert_eq!(chunk.len(), chunk_len);
        queue.queued_bytes -= chunk_len;
        queue.wake_space_waiters();
        Some(chunk.freeze())
    }
}

fn put_framed(out: &mut BytesMut, message: &[u8]) {
    let len = u32::try_from(message.len())
        .unwrap_or_else(|_| unreachable!("queued messages are bounded by the send limit, got {}", message.len()));
    out.put_u8(0);
    out.put_u32(len);
    out.put_slice(message);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn chunk(sink: &StreamSink, target: usize) -> Option<Bytes> {
        let mut cx = Context::from_waker(Waker::noop());
        sink.poll_chunk(&mut cx, target)
    }

    #[test]
    fn coalesces_small_messages_up_to_the_target() {
        let sink = StreamSink::new(StreamLimits::default(), 1 << 20);
        for _ in 0..10 {
            sink.try_send(Bytes::from_static(b"abc")).expect("room");
        }
        // 8 bytes per framed message: 3 fit in 24 bytes.
        assert_eq!(chunk(&sink, 24).expect("chunk").len(), 24);
        assert_eq!(sink.queued_messages(), 7);
        assert_eq!(chunk(&sink, 1000).expect("chunk").len(), 56);
        assert_eq!(chunk(&sink, 1000), None);
    }

    #[test]
    fn end_stream_policy_overflows_and_keep_latest_replaces() {
        let limits = StreamLimits { max_queued_messages: 2, max_queued_bytes: 1 << 20, overflow: OverflowPolicy::EndStream };
        let sink = StreamSink::new(limits, 1 << 20);
        sink.try_send(Bytes::from_static(b"1")).expect("room");
        sink.try_send(Bytes::from_static(b"2")).expect("room");
        assert_eq!(sink.try_send(Bytes::from_static(b"3")), Err(SendError::Overflowed));
        assert!(sink.overflowed());
        assert_eq!(sink.queued_messages(), 0);

        let latest = StreamSink::new(StreamLimits { overflow: OverflowPolicy::KeepLatest, ..limits }, 8);
        for n in 0..5u8 {
            latest.try_send(Bytes::from(vec![n])).expect("keep latest never fails");
        }
        assert_eq!(latest.dropped_for_latest(), 4);
        assert_eq!(chunk(&latest, 1000).expect("chunk").as_ref(), &[0, 0, 0, 0, 1, 4]);
        assert_eq!(latest.try_send(Bytes::from(vec![0; 9])), Err(SendError::TooLarge { len: 9, max: 8 }));
        latest.end();
        assert_eq!(latest.try_send(Bytes::new()), Err(SendError::Closed));
    }
}
