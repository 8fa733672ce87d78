//! Codec tests: round trips of every message type the wire carries, batches of 1 to 10,000
//! messages, frames split at every byte boundary, zero-copy slicing, and refusal (never a
//! panic, never an unbounded buffer) of malformed, oversized and corrupted input.

mod support;

use bytes::{Bytes, BytesMut};
use conclave_proto::atomix::multiraft::v1 as atomix;
use conclave_proto::conclave::raft::v1::{Message as RaftMessage, MessageBatch};
use conclave_proto::conclave::wire::v1::{Handshake, HandshakeReply};
use conclave_wire::{
    encode_frame, Frame, FrameBuilder, FrameDecoder, FrameError, FrameFlags, FrameHeader, FrameLimits, PushError, HEADER_LEN,
};
use proptest::prelude::*;
use prost::Message;

fn decode_all<M: Message + Default>(wire: &[u8], limits: FrameLimits) -> Result<Vec<(FrameFlags, Vec<M>)>, FrameError> {
    let mut decoder = FrameDecoder::new(limits);
    decoder.extend_from_slice(wire);
    let mut frames = Vec::new();
    while let Some(frame) = decoder.next_frame()? {
        let mut messages = Vec::new();
        frame.decode_into(&mut messages)?;
        frames.push((frame.flags, messages));
    }
    decoder.finish()?;
    Ok(frames)
}

fn round_trip<M: Message + Default + Clone + PartialEq + std::fmt::Debug>(messages: &[M], flags: FrameFlags) {
    let mut wire = BytesMut::new();
    let len = encode_frame(&mut wire, flags, FrameLimits::default(), messages).expect("fits");
    assert_eq!(len, wire.len());
    let frames = decode_all::<M>(&wire, FrameLimits::default()).expect("valid frame");
    assert_eq!(frames, vec![(flags, messages.to_vec())]);
}

fn connection_event(established: bool) -> atomix::Event {
    let info = Some(atomix::ConnectionInfo { address: "10.0.0.2:7001".into(), snapshot: !established });
    let event = if established {
        atomix::event::Event::ConnectionEstablished(atomix::ConnectionEstablishedEvent { info })
    } else {
        atomix::event::Event::ConnectionFailed(atomix::ConnectionFailedEvent { info })
    };
    atomix::Event { timestamp: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 5 }), event: Some(event) }
}

#[test]
fn every_message_type_round_trips() {
    let hello = Handshake {
        protocol_version: 1,
        cluster_id: "prod".into(),
        node_id: 1,
        shard_id: 2,
        expected_node_id: 3,
        snapshot: true,
        shard_count: 4,
    };
    round_trip(&[hello], FrameFlags::HANDSHAKE);
    let reply = HandshakeReply { accepted: false, reason: "wrong cluster".into(), cluster_id: "x".into(), node_id: 3, shard_id: 2 };
    round_trip(&[reply, HandshakeReply::default()], FrameFlags::HANDSHAKE);
    round_trip(&[connection_event(true), connection_event(false)], FrameFlags::NONE);
    let appends: Vec<RaftMessage> = (1..=3).map(|i| support::append(9, i, Bytes::from(vec![i as u8; 300]))).collect();
    round_trip(&appends, FrameFlags::NONE);
    let batch = MessageBatch { from: 1, to: 2, messages: appends };
    round_trip(&[batch], FrameFlags::BULK);
    // Empty messages encode to zero bytes: each still counts and round-trips.
    round_trip(&vec![RaftMessage::default(); 5], FrameFlags::NONE);
}

#[test]
fn batches_of_one_to_ten_thousand_messages_round_trip() {
    for count in [1usize, 2, 63, 64, 1000, 10_000] {
        let messages: Vec<RaftMessage> =
            (0..count as u64).map(|i| support::append((i % 7) as u32, i, Bytes::from(i.to_le_bytes().to_vec()))).collect();
        round_trip(&messages, FrameFlags::NONE);
    }
}

#[test]
fn decoded_payloads_are_slices_of_the_receive_buffer() {
    let messages: Vec<RaftMessage> = (0..64).map(|i| support::append(1, i, Bytes::from(vec![0xAB; 256]))).collect();
    let mut wire = BytesMut::new();
    encode_frame(&mut wire, FrameFlags::NONE, FrameLimits::default(), &messages).expect("fits");
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    decoder.extend_from_slice(&wire);
    let frame = decoder.next_frame().expect("valid").expect("complete");
    let body = frame.body.as_ptr_range();
    for message in frame.messages::<RaftMessage>() {
        let data = message.expect("decodes").entries[0].data.clone();
        assert_eq!(data.len(), 256);
        let range = data.as_ptr_range();
        assert!(body.start <= range.start && range.end <= body.end, "payload was copied out of the frame");
    }
}

#[test]
fn frames_split_at_every_byte_boundary_decode_the_same() {
    let mut wire = BytesMut::new();
    let first: Vec<RaftMessage> = (0..3).map(|i| support::append(1, i, Bytes::from(vec![i as u8; 40]))).collect();
    let second = vec![support::append(2, 10, Bytes::from_static(b"snapshot chunk"))];
    encode_frame(&mut wire, FrameFlags::NONE, FrameLimits::default(), &first).expect("fits");
    encode_frame(&mut wire, FrameFlags::BULK, FrameLimits::default(), &second).expect("fits");
    let expected = vec![(FrameFlags::NONE, first), (FrameFlags::BULK, second)];
    for split in 0..=wire.len() {
        let mut decoder = FrameDecoder::new(FrameLimits::default());
        let mut frames = Vec::new();
        for part in [&wire[..split], &wire[split..]] {
            decoder.extend_from_slice(part);
            while let Some(frame) = decoder.next_frame().expect("valid at every split") {
                let mut messages = Vec::new();
                frame.decode_into(&mut messages).expect("decodes");
                frames.push((frame.flags, messages));
            }
        }
        assert_eq!(frames, expected, "split at byte {split}");
        assert_eq!(decoder.finish(), Ok(()));
    }
    // One byte at a time as well.
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    let mut count = 0;
    for byte in wire.iter() {
        decoder.extend_from_slice(std::slice::from_ref(byte));
        while decoder.next_frame().expect("valid").is_some() {
            count += 1;
        }
    }
    assert_eq!(count, 2);
}

#[test]
fn builder_fills_a_frame_up_to_the_limit_and_refuses_oversized_messages() {
    let limits = FrameLimits { max_body_len: 1000, max_messages: 1000 };
    let message = support::append(1, 1, Bytes::from(vec![1u8; 100]));
    let mut wire = BytesMut::new();
    let mut builder = FrameBuilder::new(&mut wire, FrameFlags::NONE, limits);
    let mut pushed = 0;
    while builder.push(&message).is_ok() {
        pushed += 1;
    }
    assert_eq!(builder.push(&message), Err(PushError::FrameFull));
    assert!(builder.body_len() <= 1000);
    let len = builder.finish();
    assert_eq!(len, wire.len());
    assert_eq!(decode_all::<RaftMessage>(&wire, limits).expect("valid")[0].1.len(), pushed);

    let huge = support::append(1, 1, Bytes::from(vec![1u8; 2000]));
    let before = wire.len();
    let result = encode_frame(&mut wire, FrameFlags::NONE, limits, [&huge]);
    assert!(matches!(result, Err(PushError::MessageTooLarge { .. })), "{result:?}");
    assert_eq!(wire.len(), before, "a refused frame leaves no partial bytes behind");
}

fn valid_frame() -> BytesMut {
    let messages: Vec<RaftMessage> = (0..4).map(|i| support::append(1, i, Bytes::from(vec![7u8; 20]))).collect();
    let mut wire = BytesMut::new();
    encode_frame(&mut wire, FrameFlags::NONE, FrameLimits::default(), &messages).expect("fits");
    wire
}

/// Re-encodes a header over `wire` with a fresh crc, so only the structure is wrong.
fn rewrite_header(wire: &mut BytesMut, count: u32) {
    let body_crc = crc32fast::hash(&wire[HEADER_LEN..]);
    let body_len = (wire.len() - HEADER_LEN) as u32;
    FrameHeader { flags: FrameFlags::NONE, count, body_len, body_crc }.write_to(&mut wire[..HEADER_LEN]);
}

#[test]
fn corrupted_frames_are_refused_with_precise_errors() {
    let limits = FrameLimits::default();
    let mut flipped = valid_frame();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    assert!(matches!(decode_all::<RaftMessage>(&flipped, limits), Err(FrameError::ChecksumMismatch { .. })));

    let mut fewer = valid_frame();
    rewrite_header(&mut fewer, 3);
    assert!(matches!(decode_all::<RaftMessage>(&fewer, limits), Err(FrameError::TrailingBytes { count: 3, .. })));

    let mut more = valid_frame();
    rewrite_header(&mut more, 5);
    assert_eq!(decode_all::<RaftMessage>(&more, limits), Err(FrameError::MissingMessages { count: 5, found: 4 }));

    let mut overrun = BytesMut::new();
    encode_frame(&mut overrun, FrameFlags::NONE, limits, [&support::append(1, 1, Bytes::from_static(b"x"))]).expect("fits");
    assert!(overrun.len() - HEADER_LEN < 0x7f);
    overrun[HEADER_LEN] = 0x7f; // the only message claims 127 bytes, more than the body
    rewrite_header(&mut overrun, 1);
    assert!(matches!(decode_all::<RaftMessage>(&overrun, limits), Err(FrameError::MessageOverrunsBody { .. })));

    let mut garbage = valid_frame();
    garbage[HEADER_LEN + 1] = 0xff; // a field key with an invalid wire type
    rewrite_header(&mut garbage, 4);
    assert!(matches!(decode_all::<RaftMessage>(&garbage, limits), Err(FrameError::BadMessage { message_index: 0, .. })));

    let truncated = valid_frame();
    assert_eq!(
        decode_all::<RaftMessage>(&truncated[..truncated.len() - 3], limits),
        Err(FrameError::TruncatedFrame { buffered: truncated.len() - 3 })
    );
}

#[test]
fn an_oversized_frame_is_refused_from_its_header_alone() {
    let mut header = [0u8; HEADER_LEN];
    FrameHeader { flags: FrameFlags::NONE, count: 1, body_len: u32::MAX, body_crc: 0 }.write_to(&mut header);
    let mut decoder = FrameDecoder::new(FrameLimits { max_body_len: 1 << 20, max_messages: 1 << 16 });
    decoder.extend_from_slice(&header);
    assert!(matches!(decoder.next_frame(), Err(FrameError::TooLarge { body_len: u32::MAX, .. })));
}

#[test]
fn a_frame_body_decodes_as_a_frame_by_hand() {
    // A hand-built Frame whose body lies about its structure yields errors, not panics.
    let frame = Frame { flags: FrameFlags::NONE, count: 1, body: Bytes::from_static(&[0xff, 0xff]) };
    let results: Vec<_> = frame.messages::<RaftMessage>().collect();
    assert_eq!(results.len(), 1);
    assert!(results[0].is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Arbitrary bytes never panic the decoder, and it never buffers more than what it was
    /// given: nothing is pre-allocated from a count or a length field.
    #[test]
    fn arbitrary_bytes_never_panic_or_over_allocate(input in proptest::collection::vec(any::<u8>(), 0..4096), magic_prefix in any::<bool>()) {
        let mut bytes = input.clone();
        if magic_prefix && bytes.len() >= 6 {
            bytes[..4].copy_from_slice(b"CNCW");
            bytes[4] = 1;
            bytes[5] &= 3;
        }
        let limits = FrameLimits { max_body_len: 1 << 20, max_messages: 1 << 16 };
        let mut decoder = FrameDecoder::new(limits);
        decoder.extend_from_slice(&bytes);
        loop {
            prop_assert!(decoder.buffered() <= bytes.len());
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    for message in frame.messages::<RaftMessage>() {
                        let _ = message;
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
    }

    /// Any single corrupted byte of a valid frame is detected (checksum or header checks);
    /// the decoder never returns messages from it. The flags byte (offset 5) is the one
    /// exception: the crc covers the body, as specified, and flipping a flag into another
    /// known flag is a valid header.
    #[test]
    fn a_corrupted_byte_is_always_detected(position in 0usize..1000, xor in 1u8..=255) {
        let mut wire = valid_frame();
        let position = position % wire.len();
        prop_assume!(position != 5);
        wire[position] ^= xor;
        let result = decode_all::<RaftMessage>(&wire, FrameLimits::default());
        prop_assert!(result.is_err(), "corruption at byte {} accepted", position);
    }
}

/// A reader handing out at most `piece` bytes per read.
struct Trickle<'a> {
    data: &'a [u8],
    piece: usize,
}

impl futures_lite::AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let n = self.piece.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        std::task::Poll::Ready(Ok(n))
    }
}

#[test]
fn read_frame_reassembles_small_and_large_frames_from_any_read_pattern() {
    let small: Vec<RaftMessage> = (0..500).map(|i| support::append(1, i, Bytes::from(vec![1u8; 16]))).collect();
    let large: Vec<RaftMessage> = (0..4).map(|i| support::append(2, i, Bytes::from(vec![2u8; 100_000]))).collect();
    let mut wire = BytesMut::new();
    for chunk in small.chunks(50) {
        encode_frame(&mut wire, FrameFlags::NONE, FrameLimits::default(), chunk).expect("fits");
    }
    encode_frame(&mut wire, FrameFlags::BULK, FrameLimits::default(), &large).expect("fits");
    for piece in [7usize, 4096, 1 << 20] {
        let mut reader = Trickle { data: &wire, piece };
        let mut decoder = FrameDecoder::new(FrameLimits::default());
        let mut decoded = Vec::new();
        futures_lite::future::block_on(async {
            while let Some(frame) = decoder.read_frame(&mut reader).await.expect("valid stream") {
                frame.decode_into::<RaftMessage>(&mut decoded).expect("decodes");
            }
        });
        assert_eq!(decoded.len(), 504, "pieces of {piece} bytes");
        assert_eq!(&decoded[..500], &small[..]);
        assert_eq!(&decoded[500..], &large[..]);
    }
}
