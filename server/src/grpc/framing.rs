//! gRPC message framing (the 5-byte length prefix: a compressed flag and a big-endian u32
//! length), the per-connection budget of unfinished request bytes, and the `grpc-timeout`
//! header format.
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::status::Status;

/// Size of the prefix in front of every gRPC message.
pub const PREFIX_LEN: usize = 5;

/// Appends `message` to `out` with its gRPC length prefix (uncompressed).
pub fn encode_message(message: &[u8], out: &mut BytesMut) {
    let len = u32::try_from(message.len()).unwrap_or_else(|_| panic!("a gRPC message is at most 4 GiB, got {}", message.len()));
    out.reserve(PREFIX_LEN + message.len());
    out.put_u8(0);
    out.put_u32(len);
    out.put_slice(message);
}

/// `message` with its gRPC length prefix, as one buffer.
pub fn frame_message(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(PREFIX_LEN + message.len());
    encode_message(message, &mut out);
    out.freeze()
}

/// The request bytes the decoders of one connection's calls hold (messages not yet
/// complete), against a limit. The server returns flow-control window as it buffers, so
/// without it a client could make one connection hold `max_concurrent_streams` unfinished
/// messages of `max_recv_message_len` bytes each (4 GiB with the defaults).
#[derive(Debug)]
pub struct RecvBudget {
    limit: usize,
    held: Cell<usize>,
}

impl RecvBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> RecvBudget {
        RecvBudget { limit, held: Cell::new(0) }
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.get()
    }
}

/// Reassembles length-prefixed messages from DATA frames as they arrive, refusing
/// compressed or oversized messages before buffering their bodies.
#[derive(Debug)]
pub struct MessageDecoder {
    buffer: BytesMut,
    max_message_len: usize,
    /// Charged with every buffered byte (`buffer.len()`) while this decoder holds it.
    budget: Option<Rc<RecvBudget>>,
}

impl MessageDecoder {
    /// A decoder that rejects messages longer than `max_message_len` bytes.
    pub fn new(max_message_len: usize) -> MessageDecoder {
        MessageDecoder { buffer: BytesMut::new(), max_message_len, budget: None }
    }

    /// A decoder that also charges what it buffers to `budget`, shared by the calls of a
    /// connection, and fails when the budget is exceeded.
    pub fn with_budget(max_message_len: usize, budget: Rc<RecvBudget>) -> MessageDecoder {
        MessageDecoder { buffer: BytesMut::new(), max_message_len, budget: Some(budget) }
    }

    /// Adds received bytes. Fails as soon as a prefix announces a compressed message or a
    /// length over the limit, so an oversized body is never buffered, and when the
    /// connection's unfinished request messages would hold more than its budget.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), Status> {
        if let Some(budget) = &self.budget {
            if budget.held.get() + chunk.len() > budget.limit {
                return Err(Status::resource_exhausted(format!(
                    "this connection's calls hold more than {} bytes of unfinished request messages; \
                     finish or cancel some calls, or spread them over connections",
                    budget.limit
                )));
            }
            budget.held.set(budget.held.get() + chunk.len());
        }
        self.buffer.extend_from_slice(chunk);
        self.check_prefix()
    }

    fn release(&self, len: usize) {
        if let Some(budget) = &self.budget {
            budget.held.set(budget.held.get() - len);
        }
    }

    fn check_prefix(&self) -> Result<(), Status> {
        if self.buffer.len() < PREFIX_LEN {
            return Ok(());
        }
        match self.buffer[0] {
            0 => {}
            1 => {
                return Err(Status::unimplemented(
                    "compressed messages are not supported by this server; \
                     send uncompressed messages (grpc-encoding: identity)",
                ))
            }
            flag => return Err(Status::internal(format!("invalid gRPC message prefix: compressed flag is {flag}, expected 0 or 1"))),
        }
        let len = u32::from_be_bytes([self.buffer[1], self.buffer[2], self.buffer[3], self.buffer[4]]) as usize;
        if len > self.max_message_len {
            return Err(Status::resource_exhausted(format!(
                "request message of {len} bytes exceeds this server's limit of {} bytes",
                self.max_message_len
            )));
        }
        Ok(())
    }

    /// Takes the next complete message, if one is buffered.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, Status> {
        self.check_prefix()?;
        if self.buffer.len() < PREFIX_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buffer[1], self.buffer[2], self.buffer[3], self.buffer[4]]) as usize;
        if self.buffer.len() < PREFIX_LEN + len {
            return Ok(None);
        }
        self.buffer.advance(PREFIX_LEN);
        let message = self.buffer.split_to(len).freeze();
        self.release(PREFIX_LEN + len);
        // Later messages (if any) still need their prefix checked on the next call.
        Ok(Some(message))
    }

    /// Bytes received but not yet returned as a message.
    pub fn buffered_len(&self) -> usize {
        self.buffer.len()
    }
}

impl Drop for MessageDecoder {
    fn drop(&mut self) {
        self.release(self.buffer.len());
    }
}

/// Longest value the gRPC protocol allows in `grpc-timeout` digits.
const MAX_TIMEOUT_DIGITS: usize = 8;

/// Parses a `grpc-timeout` value: 1 to 8 ASCII digits followed by a unit, one of
/// `H` (hours), `M` (minutes), `S`, `m` (milliseconds), `u` (microseconds), `n` (nanoseconds).
pub fn parse_grpc_timeout(value: &[u8]) -> Result<Duration, Status> {
    let malformed = || {
        Status::invalid_argument(format!(
            "malformed grpc-timeout header {:?}: expected 1 to 8 digits followed by \
             one of H, M, S, m, u, n",
            String::from_utf8_lossy(value)
        ))
    };
    let (unit, digits) = value.split_last().ok_or_else(malformed)?;
    if digits.is_empty() || digits.len() > MAX_TIMEOUT_DIGITS || !digits.iter().all(u8::is_ascii_digit) {
        return Err(malformed());
    }
    let amount = digits.iter().fold(0u64, |acc, digit| acc * 10 + u64::from(digit - b'0'));
    let duration = match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return Err(malformed()),
    };
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::Code;

    #[test]
    fn decoder_reassembles_split_messages() {
        let mut wire = BytesMut::new();
        encode_message(b"hello", &mut wire);
        encode_message(b"", &mut wire);
        let mut decoder = MessageDecoder::new(64);
        for byte in wire.iter() {
            decoder.push(&[*byte]).expect("valid prefix");
        }
        assert_eq!(decoder.next_message().expect("ok").as_deref(), Some(&b"hello"[..]));
        assert_eq!(decoder.next_message().expect("ok").as_deref(), Some(&b""[..]));
        assert_eq!(decoder.next_message().expect("ok"), None);
        assert_eq!(decoder.buffered_len(), 0);
    }

    #[test]
    fn decoder_refuses_oversized_and_compressed_prefixes() {
        let mut decoder = MessageDecoder::new(4);
        let err = decoder.push(&[0, 0, 0, 0, 5]).expect_err("too long");
        assert_eq!(err.code(), Code::ResourceExhausted);
        let mut decoder = MessageDecoder::new(4);
        let err = decoder.push(&[1, 0, 0, 0, 1, 7]).expect_err("compressed");
        assert_eq!(err.code(), Code::Unimplemented);
        let mut decoder = MessageDecoder::new(4);
        let err = decoder.push(&[9, 0, 0, 0, 1, 7]).expect_err("bad flag");
        assert_eq!(err.code(), Code::Internal);
    }

    #[test]
    fn decoders_of_a_connection_share_its_budget() {
        let budget = Rc::new(RecvBudget::new(16));
        let mut first = MessageDecoder::with_budget(64, Rc::clone(&budget));
        first.push(&[0, 0, 0, 0, 20, 1, 2, 3, 4, 5]).expect("10 of 16 bytes");
        let mut second = MessageDecoder::with_budget(64, Rc::clone(&budget));
        second.push(&[0, 0, 0, 0, 1, 9]).expect("16 of 16 bytes");
        assert_eq!(second.next_message().expect("ok").as_deref(), Some(&[9u8][..]));
        assert_eq!(budget.held(), 10, "a complete message is no longer charged");
        let err = first.push(&[0; 7]).expect_err("over the budget");
        assert_eq!(err.code(), Code::ResourceExhausted);
        drop(first);
        assert_eq!(budget.held(), 0, "a dropped decoder releases what it held");
        second.push(&[0; 16]).expect("room again");
    }

    #[test]
    fn timeouts_parse_every_unit_and_reject_garbage() {
        assert_eq!(parse_grpc_timeout(b"2H").expect("ok"), Duration::from_secs(7200));
        assert_eq!(parse_grpc_timeout(b"3M").expect("ok"), Duration::from_secs(180));
        assert_eq!(parse_grpc_timeout(b"4S").expect("ok"), Duration::from_secs(4));
        assert_eq!(parse_grpc_timeout(b"99999999m").expect("ok"), Duration::from_millis(99_999_999));
        assert_eq!(parse_grpc_timeout(b"5u").expect("ok"), Duration::from_micros(5));
        assert_eq!(parse_grpc_timeout(b"6n").expect("ok"), Duration::from_nanos(6));
        for bad in [&b""[..], b"S", b"123456789S", b"12x", b"-1S", b"1.5S"] {
            let err = parse_grpc_timeout(bad).expect_err("malformed");
            assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
        }
    }
}
