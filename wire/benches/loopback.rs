//! Loopback throughput between two shards (two glommio executors on two threads): small
//! messages through encode → TCP → decode with the peer transport, against a raw TCP
//! baseline moving the same number of bytes between the same kind of executors in the
//! same run.
//!
//! Run: `cargo bench -p conclave-wire --bench loopback`

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use conclave_proto::conclave::raft::v1::Entry;
use conclave_wire::{framed_len, ConnectionEventKind, Inbound, ListenerConfig, LocalIdentity, Peer, PeerConfig, PeerListener};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel;
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use prost::Message;

/// Messages per criterion iteration.
const BATCH: u64 = 10_000;
/// Locked I/O memory per executor (see tuning.md, "Machine limits").
const IO_MEMORY: usize = 256 << 10;

fn small_message(index: u64) -> Entry {
    Entry { index, term: 3, kind: 0, data: Bytes::from_static(&[0x42; 16]) }
}

fn identity(node_id: u64) -> LocalIdentity {
    LocalIdentity { cluster_id: "bench".into(), node_id, shard_id: 0, shard_count: 1 }
}

async fn wait_for_stop(stop: &mpsc::Receiver<()>) {
    while stop.try_recv().is_err() {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

/// Sends `total` small messages through the transport; returns the time from the first
/// send to the last message decoded on the other shard.
fn transport_run(total: u64) -> Duration {
    let (address_tx, address_rx) = mpsc::channel::<SocketAddr>();
    let receiver = std::thread::spawn(move || {
        let executor = LocalExecutorBuilder::new(Placement::Unbound).io_memory(IO_MEMORY).make().expect("executor");
        executor.run(async move {
            let listener = PeerListener::bind("127.0.0.1:0".parse().expect("address"), ListenerConfig::new(identity(2))).expect("bind");
            address_tx.send(listener.local_addr().expect("address")).expect("main alive");
            let (tx, rx) = local_channel::new_bounded::<Inbound<Entry>>(64);
            let _serving = listener.spawn(tx);
            let mut received = 0u64;
            while received < total {
                received += rx.recv().await.expect("listener alive").messages.len() as u64;
            }
            Instant::now()
        })
    });
    let address = address_rx.recv().expect("receiver bound");
    let (start_tx, start_rx) = mpsc::channel::<Instant>();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let sender = std::thread::spawn(move || {
        let executor = LocalExecutorBuilder::new(Placement::Unbound).io_memory(IO_MEMORY).make().expect("executor");
        executor.run(async move {
            let up = Rc::new(Cell::new(false));
            let flag = up.clone();
            let events = Rc::new(move |event: conclave_wire::ConnectionEvent| {
                if event.kind == ConnectionEventKind::Established {
                    flag.set(true);
                }
            });
            let peer: Peer<Entry> = Peer::spawn(PeerConfig::new(identity(1), 2, address.to_string()), events);
            while !up.get() {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            start_tx.send(Instant::now()).expect("main alive");
            for index in 0..total {
                peer.send(small_message(index)).await.expect("queued");
            }
            wait_for_stop(&stop_rx).await;
        })
    });
    let start = start_rx.recv().expect("sender started");
    let end = receiver.join().expect("receiver finished");
    stop_tx.send(()).expect("sender alive");
    sender.join().expect("sender finished");
    end - start
}

/// Moves the bytes `total` small messages take on the wire over plain TCP between two
/// executors (no encoding, no framing, no decoding).
fn raw_run(total: u64) -> Duration {
    let bytes_total = total * framed_len(small_message(0).encoded_len()) as u64;
    let (address_tx, address_rx) = mpsc::channel::<SocketAddr>();
    let receiver = std::thread::spawn(move || {
        let executor = LocalExecutorBuilder::new(Placement::Unbound).io_memory(IO_MEMORY).make().expect("executor");
        executor.run(async move {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            address_tx.send(listener.local_addr().expect("address")).expect("main alive");
            let mut stream = listener.accept().await.expect("accept");
            let mut buffer = vec![0u8; 64 << 10];
            let mut received = 0u64;
            while received < bytes_total {
                let read = stream.read(&mut buffer).await.expect("read");
                assert!(read > 0, "sender closed early");
                received += read as u64;
            }
            Instant::now()
        })
    });
    let address = address_rx.recv().expect("receiver bound");
    let (start_tx, start_rx) = mpsc::channel::<Instant>();
    let sender = std::thread::spawn(move || {
        let executor = LocalExecutorBuilder::new(Placement::Unbound).io_memory(IO_MEMORY).make().expect("executor");
        executor.run(async move {
            let mut stream = TcpStream::connect(address).await.expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let chunk = vec![0x42u8; 256 << 10];
            start_tx.send(Instant::now()).expect("main alive");
            let mut sent = 0u64;
            while sent < bytes_total {
                let len = chunk.len().min((bytes_total - sent) as usize);
                stream.write_all(&chunk[..len]).await.expect("write");
                sent += len as u64;
            }
            // Keep the socket open until the receiver has everything.
            let mut byte = [0u8; 1];
            let _ = stream.read(&mut byte).await;
        })
    });
    let start = start_rx.recv().expect("sender started");
    let end = receiver.join().expect("receiver finished");
    sender.join().expect("sender finished");
    end - start
}

fn loopback(c: &mut Criterion) {
    let mut group = c.benchmark_group("loopback");
    group.throughput(Throughput::Elements(BATCH));
    group.sample_size(20);
    group.bench_function("raw_tcp_same_bytes", |b| b.iter_custom(|iters| raw_run(iters * BATCH)));
    group.bench_function("transport_16B_entries", |b| b.iter_custom(|iters| transport_run(iters * BATCH)));
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    targets = loopback
}
criterion_main!(benches);
