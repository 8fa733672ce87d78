//! Transport tests over real TCP on 127.0.0.1: delivery and coalescing, handshake refusals,
//! reconnection after the listener restarts, peers that vanish mid-frame, byte-at-a-time
//! arrival, port conflicts, queue backpressure and the snapshot (bulk) lane.

mod support;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use conclave_proto::conclave::raft::v1::Message as RaftMessage;
use conclave_proto::conclave::wire::v1::{Handshake, HandshakeReply};
use conclave_wire::{
    encode_frame, BackoffConfig, ConnectionEventKind, FrameDecoder, FrameFlags, FrameLimits, Inbound, ListenerConfig, ListenerHandle, Peer,
    PeerConfig, PeerListener, SendError,
};
use futures_lite::AsyncWriteExt;
use glommio::channels::local_channel::{self, LocalReceiver};
use glommio::net::TcpStream;
use support::{append, identity, run_shard, wait_until, Recorder};

const CLUSTER: &str = "test-cluster";
const LIMIT: Duration = Duration::from_secs(20);

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("address")
}

/// Node 2, shard 0 listening at `address`.
fn listen(address: SocketAddr) -> (ListenerHandle, SocketAddr, LocalReceiver<Inbound<RaftMessage>>) {
    let listener = PeerListener::bind(address, ListenerConfig::new(identity(CLUSTER, 2, 0))).expect("bind");
    let bound = listener.local_addr().expect("local address");
    let (tx, rx) = local_channel::new_bounded(64);
    (listener.spawn(tx), bound, rx)
}

/// Node 1, shard 0 dialing node 2 at `address`, retrying quickly.
fn peer_config(address: SocketAddr) -> PeerConfig {
    let mut config = PeerConfig::new(identity(CLUSTER, 1, 0), 2, address.to_string());
    config.backoff = BackoffConfig { initial: Duration::from_millis(10), max: Duration::from_millis(100), seed: 1 };
    config
}

async fn receive(rx: &LocalReceiver<Inbound<RaftMessage>>, count: usize) -> Vec<Inbound<RaftMessage>> {
    let mut batches = Vec::new();
    let mut received = 0;
    while received < count {
        let batch = rx.recv().await.expect("listener alive");
        received += batch.messages.len();
        batches.push(batch);
    }
    assert_eq!(received, count, "more messages than sent");
    batches
}

/// True when no batch is waiting in the channel right now.
async fn nothing_pending(rx: &LocalReceiver<Inbound<RaftMessage>>) -> bool {
    futures_lite::future::poll_once(rx.recv()).await.is_none()
}

#[test]
fn ten_thousand_messages_cross_tcp_in_order_coalesced_into_few_writes() {
    run_shard(LIMIT, async {
        let (_listener, address, rx) = listen(any_port());
        let events = Recorder::default();
        let peer: Peer<RaftMessage> = Peer::spawn(peer_config(address), events.sink());
        for i in 0..10_000u64 {
            peer.send(append((i % 16) as u32, i, Bytes::from(i.to_le_bytes().to_vec()))).await.expect("queued");
        }
        let batches = receive(&rx, 10_000).await;
        let indexes: Vec<u64> = batches.iter().flat_map(|b| b.messages.iter().map(|m| m.entries[0].index)).collect();
        assert_eq!(indexes, (0..10_000).collect::<Vec<_>>());
        let from = batches[0].from;
        assert_eq!((from.node_id, from.shard_id, from.snapshot), (1, 0, false));
        assert!(batches.iter().all(|b| !b.bulk));
        let stats = peer.stats();
        assert_eq!(stats.messages_sent, 10_000);
        assert!(stats.writes < 10_000, "the writer did not coalesce: {} writes", stats.writes);
        let established = events.events();
        assert_eq!(established.len(), 1);
        assert_eq!(established[0].kind, ConnectionEventKind::Established);
        assert_eq!((established[0].address.as_str(), established[0].snapshot), (address.to_string().as_str(), false));
    });
}

#[test]
fn handshakes_from_another_cluster_or_shard_are_refused() {
    run_shard(LIMIT, async {
        let (listener, address, rx) = listen(any_port());
        let cases = [(identity("other-cluster", 1, 0), "cluster"), (identity(CLUSTER, 1, 5), "shard")];
        for (local, needle) in cases {
            let events = Recorder::default();
            let mut config = peer_config(address);
            config.local = local;
            let peer: Peer<RaftMessage> = Peer::spawn(config, events.sink());
            peer.try_send(append(1, 1, Bytes::from_static(b"must not arrive"))).expect("queued");
            wait_until(LIMIT, "a refusal", || {
                events.events().iter().any(|e| matches!(&e.kind, ConnectionEventKind::Failed { reason } if reason.contains(needle)))
            })
            .await;
            assert_eq!(events.count(true), 0, "a refused connection was reported established");
            drop(peer);
        }
        wait_until(LIMIT, "refused connections to close", || listener.open_connections() == 0).await;
        assert!(nothing_pending(&rx).await, "a refused peer delivered messages");
    });
}

#[test]
fn the_peer_reconnects_after_the_listener_restarts() {
    run_shard(LIMIT, async {
        let (listener, address, rx) = listen(any_port());
        let events = Recorder::default();
        let peer: Peer<RaftMessage> = Peer::spawn(peer_config(address), events.sink());
        peer.send(append(1, 1, Bytes::from_static(b"before"))).await.expect("queued");
        assert_eq!(receive(&rx, 1).await[0].messages[0].entries[0].data, Bytes::from_static(b"before"));

        drop(listener);
        drop(rx);
        wait_until(LIMIT, "the broken connection to be reported", || events.count(false) >= 1).await;
        for i in 2..=3 {
            peer.send(append(1, i, Bytes::from_static(b"after"))).await.expect("queued while disconnected");
        }
        let (_listener, _, rx) = listen(address);
        let batches = receive(&rx, 2).await;
        let indexes: Vec<u64> = batches.iter().flat_map(|b| b.messages.iter().map(|m| m.entries[0].index)).collect();
        assert_eq!(indexes, vec![2, 3]);
        assert_eq!(events.count(true), 2, "events: {:?}", events.events());
        assert!(peer.stats().connections >= 2);
    });
}

#[test]
fn redial_now_cuts_a_long_backoff_short_once_the_peer_is_back() {
    run_shard(LIMIT, async {
        let (listener, address, rx) = listen(any_port());
        drop(listener);
        drop(rx);
        // A peer whose every wait between attempts is 10-20 s.
        let mut config = peer_config(address);
        config.backoff = BackoffConfig { initial: Duration::from_secs(20), max: Duration::from_secs(20), seed: 1 };
        let events = Recorder::default();
        let peer: Peer<RaftMessage> = Peer::spawn(config, events.sink());
        wait_until(LIMIT, "the first attempt to fail", || events.count(false) >= 1).await;
        // While nothing listens, a redial fails again and the next wait starts.
        peer.redial_now();
        wait_until(LIMIT, "the redial to fail", || events.count(false) >= 2).await;
        let (_listener, _, rx) = listen(address);
        peer.send(append(1, 1, Bytes::from_static(b"back"))).await.expect("queued");
        let started = std::time::Instant::now();
        peer.redial_now();
        let batches = receive(&rx, 1).await;
        assert_eq!(batches[0].messages[0].entries[0].data, Bytes::from_static(b"back"));
        assert!(started.elapsed() < Duration::from_secs(5), "connected only after {:?}", started.elapsed());
        assert_eq!(events.count(true), 1, "events: {:?}", events.events());
        // Connected: a redial does nothing.
        peer.redial_now();
        peer.send(append(1, 2, Bytes::from_static(b"still"))).await.expect("queued");
        assert_eq!(receive(&rx, 1).await[0].messages[0].entries[0].index, 2);
        assert_eq!(peer.stats().connections, 1);
    });
}

#[test]
fn a_peer_that_discards_while_down_drops_its_backlog_and_delivers_only_what_is_current() {
    run_shard(LIMIT, async {
        let (listener, address, rx) = listen(any_port());
        let events = Recorder::default();
        let config = PeerConfig { discard_while_down: true, ..peer_config(address) };
        let peer: Peer<RaftMessage> = Peer::spawn(config, events.sink());
        peer.send(append(1, 1, Bytes::from_static(b"before"))).await.expect("queued");
        assert_eq!(receive(&rx, 1).await[0].messages[0].entries[0].data, Bytes::from_static(b"before"));

        drop(listener);
        drop(rx);
        wait_until(LIMIT, "the broken connection to be reported", || events.count(false) >= 1).await;
        let refused = peer.try_send(append(1, 2, Bytes::from_static(b"stale")));
        assert!(matches!(refused, Err(SendError::Disconnected(_))), "refused while down: {refused:?}");
        assert_eq!(peer.queued(), 0, "nothing is kept for later");

        let (_listener, _, rx) = listen(address);
        wait_until(LIMIT, "the connection to come back", || events.count(true) >= 2).await;
        peer.send(append(1, 3, Bytes::from_static(b"current"))).await.expect("queued once back");
        let batches = receive(&rx, 1).await;
        let indexes: Vec<u64> = batches.iter().flat_map(|b| b.messages.iter().map(|m| m.entries[0].index)).collect();
        assert_eq!(indexes, vec![3], "only the message sent after the reconnection arrives");
    });
}

/// A raw client that performs the handshake by hand.
async fn raw_client(address: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let hello = Handshake {
        protocol_version: 1,
        cluster_id: CLUSTER.into(),
        node_id: 1,
        shard_id: 0,
        expected_node_id: 2,
        snapshot: false,
        shard_count: 0,
    };
    let mut wire = BytesMut::new();
    encode_frame(&mut wire, FrameFlags::HANDSHAKE, FrameLimits::default(), [&hello]).expect("fits");
    stream.write_all(&wire).await.expect("write handshake");
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    let frame = decoder.read_frame(&mut stream).await.expect("reply").expect("a frame");
    let reply = frame.messages::<HandshakeReply>().next().expect("one").expect("decodes");
    assert!(reply.accepted, "refused: {}", reply.reason);
    stream
}

fn frame_of(messages: &[RaftMessage]) -> BytesMut {
    let mut wire = BytesMut::new();
    encode_frame(&mut wire, FrameFlags::NONE, FrameLimits::default(), messages).expect("fits");
    wire
}

#[test]
fn a_peer_vanishing_mid_frame_delivers_only_whole_frames() {
    run_shard(LIMIT, async {
        let (listener, address, rx) = listen(any_port());
        let mut stream = raw_client(address).await;
        let whole = frame_of(&[append(1, 1, Bytes::from_static(b"whole"))]);
        let cut = frame_of(&[append(1, 2, Bytes::from(vec![3u8; 500]))]);
        stream.write_all(&whole).await.expect("write");
        stream.write_all(&cut[..cut.len() / 2]).await.expect("write");
        drop(stream);
        let batches = receive(&rx, 1).await;
        assert_eq!(batches[0].messages[0].entries[0].index, 1);
        wait_until(LIMIT, "the connection to close", || listener.open_connections() == 0).await;
        assert!(nothing_pending(&rx).await, "the cut frame was delivered");
    });
}

#[test]
fn frames_arriving_one_byte_per_segment_are_decoded() {
    run_shard(LIMIT, async {
        let (_listener, address, rx) = listen(any_port());
        let mut stream = raw_client(address).await;
        let messages: Vec<RaftMessage> = (0..3).map(|i| append(1, i, Bytes::from(vec![i as u8; 30]))).collect();
        let wire = frame_of(&messages);
        for byte in wire.iter() {
            stream.write_all(std::slice::from_ref(byte)).await.expect("write");
            glommio::timer::sleep(Duration::from_micros(200)).await;
        }
        let batches = receive(&rx, 3).await;
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].messages, messages);
    });
}

#[test]
fn binding_a_port_in_use_fails_instead_of_sharing_it() {
    run_shard(LIMIT, async {
        let (_listener, address, _rx) = listen(any_port());
        let second = PeerListener::bind(address, ListenerConfig::new(identity(CLUSTER, 2, 0)));
        let error = second.err().expect("a second listener on the same port was allowed");
        assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse);
    });
}

#[test]
fn a_full_queue_pushes_back_until_the_peer_drains_it() {
    run_shard(LIMIT, async {
        let address = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("probe");
            probe.local_addr().expect("address")
        };
        let mut config = peer_config(address);
        config.ordinary_queue.max_messages = 4;
        let events = Recorder::default();
        let peer: Peer<RaftMessage> = Peer::spawn(config, events.sink());
        for i in 0..4 {
            peer.try_send(append(1, i, Bytes::new())).expect("room");
        }
        let refused = peer.try_send(append(1, 4, Bytes::new()));
        assert!(matches!(refused, Err(SendError::Full(_))), "{refused:?}");
        let sender = peer.sender();
        let sent = Rc::new(Cell::new(false));
        let blocked = glommio::spawn_local({
            let sent = Rc::clone(&sent);
            async move {
                let result = sender.send(append(1, 4, Bytes::new())).await;
                sent.set(true);
                result
            }
        });
        // Two refused connects take the peer through its backoff: time in which send() had
        // every chance to return, had it not waited for room.
        wait_until(LIMIT, "refused connects to be reported", || events.count(false) >= 2).await;
        assert!(!sent.get(), "send() did not wait for room");
        assert_eq!(peer.queued(), 4, "send() did not wait for room");
        assert!(events.events().iter().all(|e| matches!(&e.kind, ConnectionEventKind::Failed { reason } if reason.contains("connect"))));
        let (_listener, _, rx) = listen(address);
        blocked.await.expect("queued once room was made");
        let batches = receive(&rx, 5).await;
        let indexes: Vec<u64> = batches.iter().flat_map(|b| b.messages.iter().map(|m| m.entries[0].index)).collect();
        assert_eq!(indexes, vec![0, 1, 2, 3, 4]);
        assert_eq!(events.count(true), 1);
    });
}

#[test]
fn ordinary_traffic_overtakes_a_snapshot_in_the_bulk_lane() {
    run_shard(LIMIT, async {
        let (_listener, address, rx) = listen(any_port());
        let events = Recorder::default();
        let mut config = peer_config(address);
        config.snapshot_connection = true;
        config.bulk_frame_bytes = 64 << 10;
        let peer: Peer<RaftMessage> = Peer::spawn(config, events.sink());
        let chunk = Bytes::from(vec![0x5Au8; 128 << 10]);
        for i in 0..48 {
            peer.send_bulk(append(1, i, chunk.clone())).await.expect("bulk queued");
        }
        peer.send(append(1, 1000, Bytes::from_static(b"vote"))).await.expect("queued");
        let batches = receive(&rx, 49).await;
        let position = batches.iter().position(|b| !b.bulk).expect("the ordinary message arrived");
        assert!(position <= 1, "the ordinary message waited behind {position} bulk frames");
        assert_eq!(batches.iter().filter(|b| b.bulk).count(), 48, "each 128 KiB chunk is its own bulk frame");
        assert!(batches.iter().all(|b| b.from.snapshot));
        assert!(events.events().iter().all(|e| e.snapshot));
        let bulk: Vec<u64> = batches.iter().filter(|b| b.bulk).map(|b| b.messages[0].entries[0].index).collect();
        assert_eq!(bulk, (0..48).collect::<Vec<_>>());
    });
}

#[test]
fn oversized_messages_are_refused_at_send_time() {
    run_shard(LIMIT, async {
        let mut config = peer_config(any_port());
        config.limits.max_body_len = 1024;
        let peer: Peer<RaftMessage> = Peer::spawn(config, Rc::new(|_| {}));
        let result = peer.try_send(append(1, 1, Bytes::from(vec![0u8; 2048])));
        assert!(matches!(result, Err(SendError::TooLarge(..))), "{result:?}");
    });
}

#[test]
fn a_peer_set_follows_membership_changes() {
    run_shard(LIMIT, async {
        let (listener, address, rx) = listen(any_port());
        let mut peers: conclave_wire::PeerSet<RaftMessage> =
            conclave_wire::PeerSet::new(conclave_wire::ignore_events(), move |node_id, address| {
                let mut config = PeerConfig::new(identity(CLUSTER, 1, 0), node_id, address);
                config.backoff.initial = Duration::from_millis(10);
                config
            });
        peers.set_address(2, &address.to_string());
        peers.get(2).expect("peer 2").send(append(1, 1, Bytes::from_static(b"one"))).await.expect("queued");
        receive(&rx, 1).await;
        peers.set_address(2, &address.to_string());
        assert_eq!(peers.get(2).expect("peer 2").stats().connections, 1, "same address must keep the connection");
        assert_eq!(peers.node_ids().collect::<Vec<_>>(), vec![2]);
        assert!(peers.remove(2));
        assert!(peers.get(2).is_none());
        wait_until(LIMIT, "the removed peer's connection to close", || listener.open_connections() == 0).await;
    });
}

#[test]
fn strangers_and_silent_clients_are_disconnected() {
    run_shard(LIMIT, async {
        let mut config = ListenerConfig::new(identity(CLUSTER, 2, 0));
        config.handshake_timeout = Duration::from_millis(100);
        let listener = PeerListener::bind(any_port(), config).expect("bind");
        let address = listener.local_addr().expect("address");
        let (tx, _rx) = local_channel::new_bounded::<Inbound<RaftMessage>>(4);
        let serving = listener.spawn(tx);
        let mut silent = TcpStream::connect(address).await.expect("connect");
        let mut stranger = TcpStream::connect(address).await.expect("connect");
        stranger.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        for stream in [&mut silent, &mut stranger] {
            let mut buffer = [0u8; 64];
            let read = futures_lite::AsyncReadExt::read(stream, &mut buffer).await;
            assert!(matches!(read, Ok(0) | Err(_)), "connection left open: {read:?}");
        }
        wait_until(LIMIT, "both connections to close", || serving.open_connections() == 0).await;
    });
}
