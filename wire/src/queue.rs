//! The bounded two-lane send queue between the senders of a peer and its connection writer.
//!
//! The ordinary lane carries Raft traffic and forwarded requests; the bulk lane carries
//! snapshot chunks. Each lane is bounded in messages and bytes; a full lane makes `send`
//! wait (backpressure) and `try_send` fail. The writer always drains the ordinary lane first
//! and takes at most one bulk frame per write, so a snapshot never holds ordinary traffic
//! back by more than one bulk frame.

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use prost::Message;

use crate::codec::{framed_len, FrameBuilder, PushError};
use crate::frame::{FrameFlags, FrameLimits};

/// Bounds of one lane of a peer's send queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaneLimits {
    /// Most messages queued at once.
    pub max_messages: usize,
    /// Most encoded bytes queued at once (one message larger than this is still accepted
    /// into an empty lane, up to the frame limit).
    pub max_bytes: usize,
}

/// Which lane a message travels in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Lane {
    /// Latency-sensitive traffic, always written first.
    Ordinary,
    /// Bulk traffic (snapshot chunks), written one bounded frame at a time between ordinary frames.
    Bulk,
}

/// Why a message was not queued; the message is handed back.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError<M> {
    /// The lane is full (only from `try_send`).
    Full(M),
    /// The message can never fit in a frame.
    TooLarge(M, PushError),
    /// The peer was shut down.
    Closed(M),
    /// The connection is down and the peer discards messages until it is back
    /// (`PeerConfig::discard_while_down`).
    Disconnected(M),
}

impl<M> SendError<M> {
    /// The message that was not queued.
    pub fn into_message(self) -> M {
        match self {
            SendError::Full(m) | SendError::TooLarge(m, _) | SendError::Closed(m) | SendError::Disconnected(m) => m,
        }
    }
}

impl<M> std::fmt::Display for SendError<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Disconnected(_) => write!(f, "peer connection is down; messages are discarded until it is back"),
            SendError::Full(_) => write!(f, "peer send queue is full"),
            SendError::TooLarge(_, e) => write!(f, "message cannot be sent: {e}"),
            SendError::Closed(_) => write!(f, "peer is shut down"),
        }
    }
}

impl<M: std::fmt::Debug> std::error::Error for SendError<M> {}

struct LaneQueue<M> {
    items: VecDeque<(M, usize)>,
    bytes: usize,
    limits: LaneLimits,
    space_waiters: Vec<Waker>,
}

impl<M: Message> LaneQueue<M> {
    fn new(limits: LaneLimits) -> Self {
        assert!(limits.max_messages > 0, "a lane must hold at least one message");
        LaneQueue { items: VecDeque::new(), bytes: 0, limits, space_waiters: Vec::new() }
    }

    fn has_room(&self, encoded_len: usize) -> bool {
        self.items.is_empty() || (self.items.len() < self.limits.max_messages && self.bytes + encoded_len <= self.limits.max_bytes)
    }

    /// Pops messages into a frame until the frame is full, the lane is empty, or `budget`
    /// body bytes are used. Returns how many were taken.
    fn fill(&mut self, dst: &mut BytesMut, flags: FrameFlags, limits: FrameLimits, budget: usize) -> u32 {
        if self.items.is_empty() {
            return 0;
        }
        let mut builder = FrameBuilder::new(dst, flags, limits);
        while let Some((message, len)) = self.items.front() {
            if builder.count() > 0 && builder.body_len() + framed_len(*len) > budget {
                break;
            }
            match builder.push_with_len(message, *len) {
                Ok(()) => {
                    let (_, len) = self.items.pop_front().expect("front exists");
                    self.bytes -= len;
                }
                Err(PushError::FrameFull) => break,
                Err(PushError::MessageTooLarge { .. }) => unreachable!("size checked at enqueue"),
            }
        }
        let count = builder.count();
        debug_assert!(count > 0, "a queued message always fits in an empty frame");
        builder.finish();
        for waker in self.space_waiters.drain(..) {
            waker.wake();
        }
        count
    }
}

/// The send queue of one peer.
pub(crate) struct SendQueue<M> {
    ordinary: LaneQueue<M>,
    bulk: LaneQueue<M>,
    limits: FrameLimits,
    closed: bool,
    /// Set while the connection is down and messages are to be discarded meanwhile.
    discarding: bool,
    writer_waker: Option<Waker>,
}

impl<M: Message> SendQueue<M> {
    pub(crate) fn new(limits: FrameLimits, ordinary: LaneLimits, bulk: LaneLimits) -> Self {
        SendQueue {
            ordinary: LaneQueue::new(ordinary),
            bulk: LaneQueue::new(bulk),
            limits,
            closed: false,
            discarding: false,
            writer_waker: None,
        }
    }

    fn lane(&mut self, lane: Lane) -> &mut LaneQueue<M> {
        match lane {
            Lane::Ordinary => &mut self.ordinary,
            Lane::Bulk => &mut self.bulk,
        }
    }

    /// Queues the message in `slot` if the lane has room. With `cx`, a full lane registers
    /// the caller to be woken when room is made and returns `Pending`, leaving the message in
    /// `slot`; without it, a full lane is `SendError::Full`.
    pub(crate) fn offer(&mut self, lane: Lane, slot: &mut Option<M>, cx: Option<&mut Context<'_>>) -> Poll<Result<(), SendError<M>>> {
        let message = slot.take().expect("offer polled after completion");
        if self.closed {
            return Poll::Ready(Err(SendError::Closed(message)));
        }
        if self.discarding {
            return Poll::Ready(Err(SendError::Disconnected(message)));
        }
        let encoded_len = message.encoded_len();
        if framed_len(encoded_len) > self.limits.max_body_len as usize {
            let error = PushError::MessageTooLarge { encoded_len, max_body_len: self.limits.max_body_len };
            return Poll::Ready(Err(SendError::TooLarge(message, error)));
        }
        let queue = self.lane(lane);
        if !queue.has_room(encoded_len) {
            return match cx {
                Some(cx) => {
                    queue.space_waiters.push(cx.waker().clone());
                    *slot = Some(message);
                    Poll::Pending
                }
                None => Poll::Ready(Err(SendError::Full(message))),
            };
        }
        queue.bytes += encoded_len;
        queue.items.push_back((message, encoded_len));
        if let Some(waker) = self.writer_waker.take() {
            waker.wake();
        }
        Poll::Ready(Ok(()))
    }

    /// Ready when a lane holds a message (or the queue is closed).
    pub(crate) fn poll_work(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.closed || !self.ordinary.items.is_empty() || !self.bulk.items.is_empty() {
            Poll::Ready(())
        } else {
            self.writer_waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// Encodes one write's worth into `dst`: a frame of as many ordinary messages as fit,
    /// then at most one bulk frame of about `bulk_frame_bytes`. Returns (ordinary, bulk) counts.
    pub(crate) fn fill_write(&mut self, dst: &mut BytesMut, bulk_frame_bytes: usize) -> (u32, u32) {
        let limits = self.limits;
        let ordinary = self.ordinary.fill(dst, FrameFlags::NONE, limits, limits.max_body_len as usize);
        let bulk = self.bulk.fill(dst, FrameFlags::BULK, limits, bulk_frame_bytes);
        (ordinary, bulk)
    }
}

impl<M> SendQueue<M> {
    /// Messages queued in both lanes.
    pub(crate) fn len(&self) -> usize {
        self.ordinary.items.len() + self.bulk.items.len()
    }

    /// While `discarding`, refuses sends with `Disconnected`; turning it on drops what is
    /// queued (it would reach the peer late, after whatever happened meanwhile).
    pub(crate) fn set_discarding(&mut self, discarding: bool) {
        self.discarding = discarding;
        if discarding {
            self.drop_queued();
        }
    }

    /// Refuses further sends, drops what is queued and wakes every waiter.
    pub(crate) fn close(&mut self) {
        self.closed = true;
        self.drop_queued();
    }

    fn drop_queued(&mut self) {
        for lane in [&mut self.ordinary, &mut self.bulk] {
            lane.items.clear();
            lane.bytes = 0;
            for waker in lane.space_waiters.drain(..) {
                waker.wake();
            }
        }
        if let Some(waker) = self.writer_waker.take() {
            waker.wake();
        }
    }
}
