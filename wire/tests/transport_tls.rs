//! The transport over mutual TLS, on real TCP on 127.0.0.1 with certificates made at test
//! time: delivery in order and reconnection; each refusal (unknown CA, expired, wrong
//! identity either way, plaintext either way, a silent dialer) named in the acceptor's log
//! line and the dialer's events, with nothing left open; certificate rotation without
//! restarting anything.

mod support;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use conclave_proto::conclave::raft::v1::Message as RaftMessage;
use conclave_wire::tls::testing::{TestCa, TestCert};
use conclave_wire::{
    BackoffConfig, ConnectionEventKind, ExpectedHost, Inbound, ListenerConfig, ListenerHandle, ListenerTls, Peer, PeerConfig, PeerListener,
    PeerTls,
};
use futures_lite::AsyncWriteExt;
use glommio::channels::local_channel::{self, LocalReceiver};
use glommio::net::TcpStream;
use support::{append, identity, run_shard, wait_until, Recorder};

const CLUSTER: &str = "tls-cluster";
const LIMIT: Duration = Duration::from_secs(30);

/// One node's certificate files in its own directory.
struct NodeFiles {
    dir: PathBuf,
}

impl NodeFiles {
    fn new(root: &Path, name: &str, ca: &TestCa, cert: &TestCert) -> NodeFiles {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let files = NodeFiles { dir };
        files.install(ca, cert);
        files
    }

    /// Replaces the files (as a rotation does).
    fn install(&self, ca: &TestCa, cert: &TestCert) {
        ca.write(&self.dir, "ca.crt");
        cert.write(&self.dir, "node");
    }

    fn load(&self) -> PeerTls {
        PeerTls::load(&self.dir.join("node.crt"), &self.dir.join("node.key"), &self.dir.join("ca.crt")).expect("usable peer TLS files")
    }
}

/// Node 1 claims to be `node1.test`; node 2 (the listener) is 127.0.0.1.
fn expected_hosts() -> ExpectedHost {
    let hosts: BTreeMap<u64, String> = [(1, "node1.test".to_string()), (2, "127.0.0.1".to_string())].into();
    Rc::new(move |node| hosts.get(&node).cloned())
}

/// Node 2, shard 0 listening at `address`, with TLS when given.
fn listen(
    address: SocketAddr,
    tls: Option<&PeerTls>,
    timeout: Duration,
) -> (ListenerHandle, SocketAddr, LocalReceiver<Inbound<RaftMessage>>) {
    let mut config = ListenerConfig::new(identity(CLUSTER, 2, 0));
    config.handshake_timeout = timeout;
    config.tls = tls.map(|tls| ListenerTls { config: tls.acceptor.clone(), expected_host: expected_hosts() });
    let listener = PeerListener::bind(address, config).expect("bind");
    let bound = listener.local_addr().expect("local address");
    let (tx, rx) = local_channel::new_bounded(64);
    (listener.spawn(tx), bound, rx)
}

/// Node 1 dialing node 2 at `address` (as `host:port`), with TLS when given.
fn dialer(address: &str, tls: Option<&PeerTls>) -> PeerConfig {
    let mut config = PeerConfig::new(identity(CLUSTER, 1, 0), 2, address);
    config.backoff = BackoffConfig { initial: Duration::from_millis(10), max: Duration::from_millis(100), seed: 1 };
    config.tls = tls.map(|tls| tls.dialer.clone());
    config
}

async fn receive(rx: &LocalReceiver<Inbound<RaftMessage>>, count: usize) -> Vec<RaftMessage> {
    let mut messages = Vec::new();
    while messages.len() < count {
        messages.extend(rx.recv().await.expect("listener alive").messages);
    }
    messages
}

/// Log lines written while the test runs on this thread.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    fn capture<T>(&self, body: impl FnOnce() -> T) -> T {
        let logs = self.clone();
        let subscriber =
            tracing_subscriber::fmt().with_ansi(false).with_max_level(tracing::Level::INFO).with_writer(move || logs.clone()).finish();
        tracing::subscriber::with_default(subscriber, body)
    }
}

#[test]
fn messages_cross_mutual_tls_in_order_and_the_dialer_reconnects_after_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let ca = TestCa::new("peer CA");
    let node1 = NodeFiles::new(root.path(), "n1", &ca, &ca.issue(&["node1.test"])).load();
    let node2 = NodeFiles::new(root.path(), "n2", &ca, &ca.issue(&["127.0.0.1"])).load();
    run_shard(LIMIT, async move {
        let (listener, address, rx) = listen("127.0.0.1:0".parse().unwrap(), Some(&node2), Duration::from_secs(2));
        let events = Recorder::default();
        let peer: Peer<RaftMessage> = Peer::spawn(dialer(&address.to_string(), Some(&node1)), events.sink());
        for index in 1..=2000 {
            peer.send(append(1, index, Bytes::from(format!("entry {index}")))).await.expect("queued");
        }
        let received = receive(&rx, 2000).await;
        let indexes: Vec<u64> = received.iter().map(|m| m.entries[0].index).collect();
        assert_eq!(indexes, (1..=2000).collect::<Vec<_>>());
        assert_eq!(received[1999].entries[0].data, Bytes::from("entry 2000"));
        assert!(peer.stats().writes < 2000, "writes were coalesced: {:?}", peer.stats());

        drop(listener);
        drop(rx);
        wait_until(LIMIT, "the broken connection to be reported", || events.count(false) >= 1).await;
        let (_listener, _, rx) = listen(address, Some(&node2), Duration::from_secs(2));
        peer.send(append(1, 2001, Bytes::from_static(b"after"))).await.expect("queued");
        assert_eq!(receive(&rx, 1).await[0].entries[0].index, 2001);
        assert_eq!(events.count(true), 2, "events: {:?}", events.events());
    });
}

/// A dialer set up to fail: what the acceptor logs and what the dialer reports.
struct Refusal {
    name: &'static str,
    dialer: Option<PeerTls>,
    listener: Option<PeerTls>,
    acceptor_log: &'static str,
    dialer_reason: &'static str,
}

#[test]
fn each_refusal_is_named_on_both_sides_and_leaves_nothing_open() {
    let root = tempfile::tempdir().unwrap();
    let ca = TestCa::new("peer CA");
    let stranger = TestCa::new("another CA");
    let listener_tls = NodeFiles::new(root.path(), "n2", &ca, &ca.issue(&["127.0.0.1"])).load();
    let files = |name: &str, ca_of_files: &TestCa, cert: TestCert| NodeFiles::new(root.path(), name, ca_of_files, &cert).load();
    let refusals = vec![
        Refusal {
            name: "a certificate of another CA",
            dialer: Some(files("foreign", &ca, stranger.issue(&["node1.test"]))),
            listener: Some(listener_tls.clone()),
            acceptor_log: "certificate from an unknown CA",
            dialer_reason: "UnknownCA",
        },
        Refusal {
            name: "an expired certificate",
            dialer: Some(files("expired", &ca, ca.issue_expired(&["node1.test"]))),
            listener: Some(listener_tls.clone()),
            acceptor_log: "certificate expired or not yet valid",
            dialer_reason: "CertificateExpired",
        },
        Refusal {
            name: "a valid certificate naming another node",
            dialer: Some(files("impostor", &ca, ca.issue(&["node3.test"]))),
            listener: Some(listener_tls.clone()),
            acceptor_log: "wrong identity: node 1 is at node1.test, but the certificate does not name node1.test",
            dialer_reason: "peer refused the handshake: wrong identity",
        },
        Refusal {
            name: "an acceptor whose certificate does not name the address dialed",
            dialer: Some(files("n1", &ca, ca.issue(&["node1.test"]))),
            listener: Some(files("misnamed", &ca, ca.issue(&["127.0.0.9"]))),
            // The dialer's line names the problem; it hangs up without an alert.
            acceptor_log: "connection closed during the TLS handshake",
            dialer_reason: "wrong identity: invalid peer certificate: certificate not valid for name \"127.0.0.1\"",
        },
        Refusal {
            name: "a plaintext dialer",
            dialer: None,
            listener: Some(listener_tls.clone()),
            acceptor_log: "plaintext connection on a TLS port",
            dialer_reason: "",
        },
        Refusal {
            name: "a TLS dialer to a plaintext listener",
            dialer: Some(files("n1b", &ca, ca.issue(&["node1.test"]))),
            listener: None,
            acceptor_log: "the peer started a TLS handshake, but peer TLS is not configured on this node",
            dialer_reason: "",
        },
    ];
    for refusal in refusals {
        let logs = Logs::default();
        let name = refusal.name;
        let events = logs.capture(|| {
            run_shard(LIMIT, async move {
                let (listener, address, rx) = listen("127.0.0.1:0".parse().unwrap(), refusal.listener.as_ref(), Duration::from_secs(2));
                let events = Recorder::default();
                let peer: Peer<RaftMessage> = Peer::spawn(dialer(&address.to_string(), refusal.dialer.as_ref()), events.sink());
                peer.send(append(1, 1, Bytes::from_static(b"never delivered"))).await.expect("queued");
                wait_until(LIMIT, "three failed attempts", || events.count(false) >= 3).await;
                drop(peer);
                wait_until(LIMIT, "the refused connections to close", || listener.open_connections() == 0).await;
                assert!(futures_lite::future::poll_once(rx.recv()).await.is_none(), "{name}: a message got through");
                events.events()
            })
        });
        let log = logs.text();
        assert!(
            log.contains("refusing peer connection") && log.contains(refusal.acceptor_log),
            "{name}: acceptor log lacks {:?}:\n{log}",
            refusal.acceptor_log
        );
        assert!(!log.contains("peer connection accepted"), "{name}: accepted:\n{log}");
        assert!(events.iter().all(|e| e.kind != ConnectionEventKind::Established), "{name}: {events:?}");
        let reasons: Vec<&str> = events
            .iter()
            .filter_map(|e| if let ConnectionEventKind::Failed { reason } = &e.kind { Some(reason.as_str()) } else { None })
            .collect();
        assert!(
            reasons.iter().all(|r| r.contains(refusal.dialer_reason)),
            "{name}: dialer reasons {reasons:?} lack {:?}",
            refusal.dialer_reason
        );
    }
}

#[test]
fn a_dialer_that_never_finishes_its_tls_handshake_is_dropped() {
    let root = tempfile::tempdir().unwrap();
    let ca = TestCa::new("peer CA");
    let listener_tls = NodeFiles::new(root.path(), "n2", &ca, &ca.issue(&["127.0.0.1"])).load();
    let logs = Logs::default();
    logs.capture(|| {
        run_shard(LIMIT, async move {
            let (listener, address, _rx) = listen("127.0.0.1:0".parse().unwrap(), Some(&listener_tls), Duration::from_millis(200));
            // Silent, and a TLS record header that never gets its body.
            let silent = TcpStream::connect(address).await.expect("connect");
            let mut stalled = TcpStream::connect(address).await.expect("connect");
            stalled.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await.expect("write");
            wait_until(LIMIT, "both connections to be dropped", || listener.open_connections() == 0).await;
            for mut stream in [silent, stalled] {
                let mut buffer = [0u8; 64];
                let read = futures_lite::AsyncReadExt::read(&mut stream, &mut buffer).await;
                assert!(matches!(read, Ok(0) | Err(_)), "connection left open: {read:?}");
            }
        })
    });
    assert_eq!(logs.text().matches("handshake timed out").count(), 2, "{}", logs.text());
}

#[test]
fn rotated_certificates_apply_to_new_connections_without_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let old_ca = TestCa::new("old peer CA");
    let new_ca = TestCa::new("new peer CA");
    let n1_files = NodeFiles::new(root.path(), "n1", &old_ca, &old_ca.issue(&["node1.test"]));
    let n2_files = NodeFiles::new(root.path(), "n2", &old_ca, &old_ca.issue(&["127.0.0.1"]));
    let (node1, node2) = (n1_files.load(), n2_files.load());
    let files = Rc::new(RefCell::new((n1_files, n2_files)));
    let new_ca = Rc::new(new_ca);
    run_shard(LIMIT, async move {
        let (_listener, address, rx) = listen("127.0.0.1:0".parse().unwrap(), Some(&node2), Duration::from_secs(2));
        let events = Recorder::default();
        let peer: Peer<RaftMessage> = Peer::spawn(dialer(&address.to_string(), Some(&node1)), events.sink());
        peer.send(append(1, 1, Bytes::from_static(b"old certificates"))).await.expect("queued");
        assert_eq!(receive(&rx, 1).await[0].entries[0].index, 1);

        // The listener's node moves to the new CA; the established connection carries on.
        files.borrow().1.install(&new_ca, &new_ca.issue(&["127.0.0.1"]));
        peer.send(append(1, 2, Bytes::from_static(b"same connection"))).await.expect("queued");
        assert_eq!(receive(&rx, 1).await[0].entries[0].index, 2);
        assert_eq!(events.count(true), 1);

        // A new connection meets the new files: node 1 (old CA) is refused, and refuses.
        drop(peer);
        let events = Recorder::default();
        let peer: Peer<RaftMessage> = Peer::spawn(dialer(&address.to_string(), Some(&node1)), events.sink());
        wait_until(LIMIT, "the old certificate to be refused", || events.count(false) >= 2).await;
        assert_eq!(events.count(true), 0, "{:?}", events.events());
        assert_eq!(node2.acceptor.generation(), 2, "the listener re-read its files");

        // Node 1 rotates too: its next attempt succeeds, nothing restarted.
        files.borrow().0.install(&new_ca, &new_ca.issue(&["node1.test"]));
        peer.send(append(1, 3, Bytes::from_static(b"new certificates"))).await.expect("queued");
        assert_eq!(receive(&rx, 1).await[0].entries[0].index, 3);
        assert_eq!(events.count(true), 1);
        assert_eq!(node1.dialer.generation(), 2, "the dialer re-read its files");
    });
}

#[test]
fn connections_refused_before_the_listener_first_polls_them_are_cleaned_up() {
    // Bytes already waiting when the listener accepts let it refuse the connection without
    // ever waiting (glommio may run such a task to its end inside spawn).
    let root = tempfile::tempdir().unwrap();
    let ca = TestCa::new("peer CA");
    let listener_tls = NodeFiles::new(root.path(), "n2", &ca, &ca.issue(&["127.0.0.1"])).load();
    run_shard(LIMIT, async move {
        let mut config = ListenerConfig::new(identity(CLUSTER, 2, 0));
        config.tls = Some(ListenerTls { config: listener_tls.acceptor.clone(), expected_host: expected_hosts() });
        let listener = PeerListener::bind("127.0.0.1:0".parse().unwrap(), config).expect("bind");
        let address = listener.local_addr().expect("address");
        let mut early: Vec<std::net::TcpStream> = (0..4)
            .map(|_| {
                let mut stream = std::net::TcpStream::connect(address).expect("connect");
                stream.write_all(b"CNCW plaintext before the listener serves").expect("write");
                stream
            })
            .collect();
        let (tx, _rx) = local_channel::new_bounded::<Inbound<RaftMessage>>(4);
        let serving = listener.spawn(tx);
        wait_until(LIMIT, "the early connections to be refused", || serving.open_connections() == 0).await;
        glommio::timer::sleep(Duration::from_millis(50)).await;
        assert_eq!(serving.open_connections(), 0);
        for stream in &mut early {
            stream.set_read_timeout(Some(LIMIT)).unwrap();
            let mut rest = Vec::new();
            let read = std::io::Read::read_to_end(stream, &mut rest);
            assert!(matches!(read, Ok(0)) || read.is_err(), "connection left open: {read:?}");
        }
    });
}
