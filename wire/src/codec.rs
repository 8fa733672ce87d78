//! The frame codec: packs any number of protobuf messages into one frame, and cuts frames out
//! of a byte stream so that decoded messages slice the receive buffer instead of copying it.
//!
//! Encoding writes straight into the caller's `BytesMut` (the header slot is reserved first
//! and filled once the body's length and crc are known), so a frame is built in place and
//! written with one contiguous write. Decoding never trusts a count or a length for
//! allocation: the buffer grows only as bytes actually arrive, the body is bounded by
//! [`FrameLimits::max_body_len`], and the whole structure of a frame (checksum, lengths,
//! count) is validated before any message is handed out.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncReadExt};
use prost::Message;

use crate::frame::{FrameError, FrameFlags, FrameHeader, FrameLimits, HEADER_LEN};

/// Why a message could not be added to a frame being built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The frame has no room left for this message; finish it and start another.
    FrameFull,
    /// The message alone is larger than the frame limit and can never be sent.
    MessageTooLarge { encoded_len: usize, max_body_len: u32 },
}

impl std::fmt::Display for PushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushError::FrameFull => write!(f, "frame is full"),
            PushError::MessageTooLarge { encoded_len, max_body_len } => {
                write!(f, "message of {encoded_len} bytes does not fit in a frame body of at most {max_body_len} bytes")
            }
        }
    }
}

impl std::error::Error for PushError {}

/// Bytes a message occupies in a frame body: its length delimiter plus its encoding.
pub fn framed_len(encoded_len: usize) -> usize {
    prost::length_delimiter_len(encoded_len) + encoded_len
}

/// Builds one frame at the end of a `BytesMut`, a message at a time.
///
/// Dropping a builder without calling [`FrameBuilder::finish`] removes the partial frame.
pub struct FrameBuilder<'a> {
    dst: &'a mut BytesMut,
    start: usize,
    flags: FrameFlags,
    count: u32,
    max_body_len: usize,
    max_messages: u32,
    finished: bool,
}

impl<'a> FrameBuilder<'a> {
    /// Starts a frame at the end of `dst`, with room for at most `limits.max_body_len` body bytes.
    pub fn new(dst: &'a mut BytesMut, flags: FrameFlags, limits: FrameLimits) -> FrameBuilder<'a> {
        assert!(limits.max_messages > 0, "frame limits allow no message at all");
        let start = dst.len();
        dst.put_bytes(0, HEADER_LEN);
        FrameBuilder {
            dst,
            start,
            flags,
            count: 0,
            max_body_len: limits.max_body_len as usize,
            max_messages: limits.max_messages,
            finished: false,
        }
    }

    /// Body bytes written so far.
    pub fn body_len(&self) -> usize {
        self.dst.len() - self.start - HEADER_LEN
    }

    /// Messages added so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Appends `message` when it fits in the frame. `encoded_len` must be
    /// `message.encoded_len()` (callers that queue messages compute it once, at enqueue).
    pub fn push_with_len<M: Message>(&mut self, message: &M, encoded_len: usize) -> Result<(), PushError> {
        debug_assert_eq!(encoded_len, message.encoded_len(), "stale encoded length");
        let needed = framed_len(encoded_len);
        if needed > self.max_body_len {
            return Err(PushError::MessageTooLarge { encoded_len, max_body_len: self.max_body_len as u32 });
        }
        if self.body_len() + needed > self.max_body_len || self.count >= self.max_messages {
            return Err(PushError::FrameFull);
        }
        self.dst.reserve(needed);
        prost::encode_length_delimiter(encoded_len, self.dst).expect("BytesMut grows on demand");
        message.encode(self.dst).expect("BytesMut grows on demand");
        self.count += 1;
        Ok(())
    }

    /// Appends `message` when it fits in the frame.
    pub fn push<M: Message>(&mut self, message: &M) -> Result<(), PushError> {
        self.push_with_len(message, message.encoded_len())
    }

    /// Fills in the header and returns the frame's total length (header and body).
    pub fn finish(mut self) -> usize {
        let body_len = self.body_len();
        let header = FrameHeader {
            flags: self.flags,
            count: self.count,
            body_len: u32::try_from(body_len).expect("body bounded by max_body_len"),
            body_crc: crc32fast::hash(&self.dst[self.start + HEADER_LEN..]),
        };
        header.write_to(&mut self.dst[self.start..self.start + HEADER_LEN]);
        self.finished = true;
        HEADER_LEN + body_len
    }
}

impl Drop for FrameBuilder<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.dst.truncate(self.start);
        }
    }
}

/// Encodes all of `messages` as one frame appended to `dst`; returns the frame's length.
/// Fails, leaving `dst` unchanged, when they do not fit in one frame body.
pub fn encode_frame<'m, M: Message + 'm>(
    dst: &mut BytesMut,
    flags: FrameFlags,
    limits: FrameLimits,
    messages: impl IntoIterator<Item = &'m M>,
) -> Result<usize, PushError> {
    let mut builder = FrameBuilder::new(dst, flags, limits);
    for message in messages {
        builder.push(message)?;
    }
    Ok(builder.finish())
}

/// One validated frame: its flags, its message count and its body, a slice of the buffer it
/// was received into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The frame's flags.
    pub flags: FrameFlags,
    /// Number of messages in the body (already checked against the body's structure).
    pub count: u32,
    /// The body: `count` length-delimited messages.
    pub body: Bytes,
}

impl Frame {
    /// Checks a body against its header: checksum, every length delimiter, and the count.
    fn validate(header: FrameHeader, body: Bytes) -> Result<Frame, FrameError> {
        let actual = crc32fast::hash(&body);
        if actual != header.body_crc {
            return Err(FrameError::ChecksumMismatch { expected: header.body_crc, actual });
        }
        let mut rest: &[u8] = &body;
        let mut found = 0u32;
        while !rest.is_empty() {
            if found == header.count {
                return Err(FrameError::TrailingBytes { count: header.count, trailing: rest.len() });
            }
            let len = prost::decode_length_delimiter(&mut rest).map_err(|_| FrameError::BadLengthDelimiter { message_index: found })?;
            if len > rest.len() {
                return Err(FrameError::MessageOverrunsBody { message_index: found, len: len as u64, remaining: rest.len() });
            }
            rest.advance(len);
            found += 1;
        }
        if found != header.count {
            return Err(FrameError::MissingMessages { count: header.count, found });
        }
        Ok(Frame { flags: header.flags, count: header.count, body })
    }

    /// The messages of the frame, decoded one by one. `bytes` fields of `M` are slices of
    /// the frame body (no copy) when `M` declares them as `bytes::Bytes`.
    pub fn messages<M: Message + Default>(&self) -> Messages<M> {
        Messages { body: self.body.clone(), index: 0, marker: std::marker::PhantomData }
    }

    /// Decodes every message of the frame into `out` (appending); on error `out` keeps the
    /// messages decoded before the bad one.
    pub fn decode_into<M: Message + Default>(&self, out: &mut Vec<M>) -> Result<(), FrameError> {
        out.reserve(self.count as usize);
        for message in self.messages() {
            out.push(message?);
        }
        Ok(())
    }
}

/// Iterator over the messages of a [`Frame`].
pub struct Messages<M> {
    body: Bytes,
    index: u32,
    marker: std::marker::PhantomData<fn() -> M>,
}

impl<M: Message + Default> Iterator for Messages<M> {
    type Item = Result<M, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.body.is_empty() {
            return None;
        }
        let message_index = self.index;
        self.index += 1;
        // The frame was validated, so these errors only fire on a hand-built `Frame`.
        let len = match prost::decode_length_delimiter(&mut self.body) {
            Ok(len) => len,
            Err(_) => {
                self.body.clear();
                return Some(Err(FrameError::BadLengthDelimiter { message_index }));
            }
        };
        if len > self.body.len() {
            let remaining = self.body.len();
            self.body.clear();
            return Some(Err(FrameError::MessageOverrunsBody { message_index, len: len as u64, remaining }));
        }
        let encoded = self.body.split_to(len);
        Some(M::decode(encoded).map_err(|e| FrameError::BadMessage { message_index, reason: e.to_string() }))
    }
}

/// Most bytes requested from the socket per read.
pub const READ_CHUNK: usize = 64 * 1024;
/// Fewest bytes requested from the socket per read.
pub const MIN_READ: usize = 4 * 1024;

/// Cuts frames out of a byte stream. Feed it with [`FrameDecoder::read_from`] (or
/// [`FrameDecoder::extend_from_slice`]) and take frames with [`FrameDecoder::next_frame`].
///
/// The read size adapts between [`MIN_READ`] and [`READ_CHUNK`]: it doubles while reads fill
/// it and halves while they come back mostly empty, so light traffic does not pay for
/// preparing a large buffer on every read.
pub struct FrameDecoder {
    limits: FrameLimits,
    buffer: BytesMut,
    pending: Option<FrameHeader>,
    read_size: usize,
}

impl FrameDecoder {
    /// A decoder that refuses frames larger than `limits` allow.
    pub fn new(limits: FrameLimits) -> FrameDecoder {
        FrameDecoder { limits, buffer: BytesMut::new(), pending: None, read_size: MIN_READ }
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Appends received bytes (tests and in-memory use; sockets use `read_from`).
    pub fn extend_from_slice(&mut self, data: &[u8]) {
        self.buffer.extend_from_slice(data);
    }

    /// Reads once from `reader` into the buffer; returns the byte count, 0 at end of stream.
    pub async fn read_from<R: AsyncRead + Unpin>(&mut self, reader: &mut R) -> std::io::Result<usize> {
        let filled = self.buffer.len();
        let missing = match self.pending {
            Some(header) => (HEADER_LEN + header.body_len as usize).saturating_sub(filled),
            None => 0,
        };
        let want = self.read_size.max(missing).clamp(MIN_READ, READ_CHUNK);
        self.buffer.reserve(want);
        self.buffer.resize(filled + want, 0);
        let result = reader.read(&mut self.buffer[filled..]).await;
        let read = *result.as_ref().unwrap_or(&0);
        self.buffer.truncate(filled + read);
        if read == want {
            self.read_size = (want * 2).min(READ_CHUNK);
        } else if read < want / 4 {
            self.read_size = (self.read_size / 2).max(MIN_READ);
        }
        result
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed, or the reason the
    /// stream is corrupt (after which the connection must be closed).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let header = match self.pending {
            Some(header) => header,
            None => {
                if self.buffer.len() < HEADER_LEN {
                    return Ok(None);
                }
                let header = FrameHeader::parse(&self.buffer[..HEADER_LEN], self.limits)?;
                self.pending = Some(header);
                header
            }
        };
        let frame_len = HEADER_LEN + header.body_len as usize;
        if self.buffer.len() < frame_len {
            return Ok(None);
        }
        self.pending = None;
        let mut raw = self.buffer.split_to(frame_len).freeze();
        raw.advance(HEADER_LEN);
        Frame::validate(header, raw).map(Some)
    }

    /// Reads until a whole frame is buffered and returns it; `Ok(None)` when the stream ended
    /// cleanly between frames.
    pub async fn read_frame<R: AsyncRead + Unpin>(&mut self, reader: &mut R) -> Result<Option<Frame>, ReadError> {
        loop {
            if let Some(frame) = self.next_frame()? {
                return Ok(Some(frame));
            }
            if self.read_from(reader).await? == 0 {
                self.finish()?;
                return Ok(None);
            }
        }
    }

    /// Checks the end of the stream: an error when it ended inside a frame.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buffer.is_empty() {
            Ok(())
        } else {
            Err(FrameError::TruncatedFrame { buffered: self.buffer.len() })
        }
    }
}

/// Why reading a frame from a stream failed.
#[derive(Debug)]
pub enum ReadError {
    /// The socket failed.
    Io(std::io::Error),
    /// The bytes received are not a valid frame.
    Frame(FrameError),
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        ReadError::Io(e)
    }
}

impl From<FrameError> for ReadError {
    fn from(e: FrameError) -> Self {
        ReadError::Frame(e)
    }
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "read failed: {e}"),
            ReadError::Frame(e) => write!(f, "corrupt frame: {e}"),
        }
    }
}

impl std::error::Error for ReadError {}
