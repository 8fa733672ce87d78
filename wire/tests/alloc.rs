//! Allocation counts of the decode path, measured with a counting global allocator
//! (per-thread counters, so the tests of this binary may run in parallel).
//!
//! Proves: decoding does not allocate per payload (a payload is a slice of the receive
//! buffer), the allocation count of a frame does not grow with payload size, and arbitrary
//! input never makes the decoder allocate more than a small multiple of what it received.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::{Bytes, BytesMut};
use conclave_proto::conclave::raft::v1::{Entry, Message as RaftMessage};
use conclave_wire::{encode_frame, FrameDecoder, FrameFlags, FrameLimits};
use proptest::prelude::*;

struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    static ALLOCATED_BYTES: Cell<u64> = const { Cell::new(0) };
}

fn record(bytes: usize) {
    // `try_with` because the allocator can be called while the thread is being torn down.
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
    let _ = ALLOCATED_BYTES.try_with(|c| c.set(c.get() + bytes as u64));
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// (allocations, bytes allocated) by `f` on this thread.
fn measure<T>(f: impl FnOnce() -> T) -> (T, u64, u64) {
    let (count0, bytes0) = (ALLOCATIONS.with(Cell::get), ALLOCATED_BYTES.with(Cell::get));
    let value = f();
    let (count1, bytes1) = (ALLOCATIONS.with(Cell::get), ALLOCATED_BYTES.with(Cell::get));
    (value, count1 - count0, bytes1 - bytes0)
}

fn encoded<M: prost::Message>(messages: &[M]) -> BytesMut {
    let mut wire = BytesMut::new();
    encode_frame(&mut wire, FrameFlags::NONE, FrameLimits::default(), messages).expect("fits");
    wire
}

/// Allocations to cut one frame out of the stream and decode every message into a
/// pre-reserved vector.
fn decode_allocations<M: prost::Message + Default>(wire: &[u8], out: &mut Vec<M>) -> u64 {
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    decoder.extend_from_slice(wire);
    let (_, allocations, _) = measure(|| {
        let frame = decoder.next_frame().expect("valid").expect("complete");
        frame.decode_into(out).expect("decodes");
    });
    allocations
}

#[test]
fn decoding_payload_messages_allocates_nothing_per_payload() {
    // Entries are the payload carriers: decoding 1,000 of them, 16 B to 4 KiB each, costs
    // the same small constant (turning the receive buffer into a shared `Bytes`).
    let mut per_size = Vec::new();
    for size in [16usize, 256, 4096] {
        let entries: Vec<Entry> = (0..1000).map(|i| Entry { index: i, term: 3, kind: 0, data: Bytes::from(vec![5u8; size]) }).collect();
        let wire = encoded(&entries);
        let mut out: Vec<Entry> = Vec::with_capacity(entries.len());
        let allocations = decode_allocations(&wire, &mut out);
        assert_eq!(out, entries);
        per_size.push(allocations);
        println!("1000 entries of {size} B: {allocations} allocations");
        assert!(allocations <= 2, "{allocations} allocations decoding 1000 payloads of {size} B");
    }
    assert!(per_size.windows(2).all(|w| w[0] == w[1]), "allocations vary with payload size: {per_size:?}");
}

#[test]
fn decoding_raft_appends_allocates_only_the_entry_list() {
    // A Raft append owns a `Vec<Entry>`: one allocation per message for the list, none
    // for the payload bytes, whatever their size.
    let mut per_size = Vec::new();
    for size in [16usize, 256, 4096] {
        let appends: Vec<RaftMessage> = (0..64).map(|i| support::append(1, i, Bytes::from(vec![9u8; size]))).collect();
        let wire = encoded(&appends);
        let mut out: Vec<RaftMessage> = Vec::with_capacity(appends.len());
        let allocations = decode_allocations(&wire, &mut out);
        assert_eq!(out, appends);
        per_size.push(allocations);
        println!("64 appends of {size} B: {allocations} allocations");
        assert!(allocations <= 64 + 2, "{allocations} allocations decoding 64 appends of {size} B");
    }
    assert!(per_size.windows(2).all(|w| w[0] == w[1]), "allocations vary with payload size: {per_size:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever the bytes, and whatever counts and lengths they claim, decoding allocates at
    /// most a small multiple of the input plus a constant: nothing is sized from a header.
    #[test]
    fn arbitrary_input_allocates_in_proportion_to_its_size(
        input in proptest::collection::vec(any::<u8>(), 0..2048),
        header_count in any::<u32>(),
        header_len in any::<u32>(),
        honest_header in any::<bool>(),
    ) {
        // Half the cases claim the true length and a plausible count, so the body is checked
        // and decoded; the other half claim anything at all.
        let (header_count, header_len) = if honest_header {
            (header_count % (input.len() as u32 + 2), input.len() as u32)
        } else {
            (header_count, header_len)
        };
        let mut bytes = Vec::with_capacity(20 + input.len());
        bytes.extend_from_slice(b"CNCW\x01\x00\x00\x00");
        bytes.extend_from_slice(&header_count.to_le_bytes());
        bytes.extend_from_slice(&header_len.to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&input).to_le_bytes());
        bytes.extend_from_slice(&input);
        let mut decoder = FrameDecoder::new(FrameLimits::default());
        let (_, _, allocated) = measure(|| {
            decoder.extend_from_slice(&bytes);
            if let Ok(Some(frame)) = decoder.next_frame() {
                let mut out: Vec<RaftMessage> = Vec::new();
                let _ = frame.decode_into(&mut out);
            }
        });
        let bound = 4 * bytes.len() as u64 * std::mem::size_of::<RaftMessage>() as u64 + 64 * 1024;
        prop_assert!(allocated <= bound, "allocated {} bytes for {} input bytes", allocated, bytes.len());
    }
}
