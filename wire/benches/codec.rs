//! Encode and decode cost of typical Raft append messages: one entry of 16 B, 256 B or
//! 4 KiB per message, 1 or 64 messages per frame.
//!
//! Run: `cargo bench -p conclave-wire --bench codec`

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use conclave_proto::conclave::raft::v1::Message as RaftMessage;
use conclave_wire::{encode_frame, FrameDecoder, FrameFlags, FrameLimits};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const PAYLOADS: [usize; 3] = [16, 256, 4096];
const PER_FRAME: [usize; 2] = [1, 64];

fn appends(payload: usize, count: usize) -> Vec<RaftMessage> {
    (0..count as u64).map(|i| support::append(1, i + 1, Bytes::from(vec![0xA5u8; payload]))).collect()
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for payload in PAYLOADS {
        for per_frame in PER_FRAME {
            let messages = appends(payload, per_frame);
            let mut buffer = BytesMut::with_capacity(per_frame * (payload + 64) + 64);
            group.throughput(Throughput::Elements(per_frame as u64));
            group.bench_function(BenchmarkId::new(format!("{payload}B"), format!("{per_frame}/frame")), |b| {
                b.iter(|| {
                    buffer.clear();
                    encode_frame(&mut buffer, FrameFlags::NONE, FrameLimits::default(), &messages).expect("fits")
                })
            });
        }
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for payload in PAYLOADS {
        for per_frame in PER_FRAME {
            let mut wire = BytesMut::new();
            encode_frame(&mut wire, FrameFlags::NONE, FrameLimits::default(), &appends(payload, per_frame)).expect("fits");
            let mut decoder = FrameDecoder::new(FrameLimits::default());
            let mut out: Vec<RaftMessage> = Vec::with_capacity(per_frame);
            group.throughput(Throughput::Elements(per_frame as u64));
            group.bench_function(BenchmarkId::new(format!("{payload}B"), format!("{per_frame}/frame")), |b| {
                b.iter(|| {
                    // Copying the frame in stands for the socket read that fills the buffer.
                    decoder.extend_from_slice(&wire);
                    let frame = decoder.next_frame().expect("valid").expect("complete");
                    out.clear();
                    frame.decode_into(&mut out).expect("decodes");
                    out.len()
                })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = encode, decode
}
criterion_main!(benches);
