//! Peer TLS end to end (issue 16): three `conclave serve` processes whose peers talk mutual
//! TLS, each node on its own loopback address (127.0.0.n) with a certificate naming it.
//! - The cluster elects and serves; a fourth process claiming to be a member is refused
//!   with a log line saying why, whether its certificate is of another CA or of the right
//!   CA but naming another address, and so is a plaintext peer, while the cluster keeps
//!   electing (a member killed and restarted meanwhile).
//! - Certificates rotate to a new CA without a restart: files replaced, SIGHUP, in three
//!   steps (trust both CAs, present the new certificates, trust only the new CA); a member
//!   restarted at the end trusts only the new CA, so it can only rejoin if the others
//!   really present their new certificates. A broken file on SIGHUP keeps the old ones.
mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use conclave_wire::tls::testing::{TestCa, TestCert};
use support::client::atomix::runtime::election::v1::CreateRequest;
use support::cluster::{apply_with, get_term, reserve_ports, run, spread_names, Cluster, ClusterOptions, Election, Elections, Op};
use support::{bounded, expect, free_port, id, Node, Ports, TestDir};

/// Bound of every wait for a log line or for the cluster to serve again.
const WAIT: Duration = Duration::from_secs(30);

/// The two tests run one after the other: two clusters starting at once on a loaded
/// two-core machine made cluster starts time out. Each test has its own runtime, so a test
/// holding the guard across awaits only keeps the other test's thread waiting, as meant.
static ONE_CLUSTER_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_cluster_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_CLUSTER_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One node's peer TLS files, replaced atomically (write aside, rename) as a rotation should.
struct PeerFiles {
    dir: PathBuf,
}

impl PeerFiles {
    fn new(root: &Path, name: &str, ca_pem: &str, cert: &TestCert) -> PeerFiles {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let files = PeerFiles { dir };
        files.trust(ca_pem);
        files.present(cert);
        files
    }

    fn replace(&self, name: &str, content: &str) {
        let aside = self.dir.join(format!(".{name}.new"));
        std::fs::write(&aside, content).unwrap();
        std::fs::rename(&aside, self.dir.join(name)).unwrap();
    }

    fn trust(&self, ca_pem: &str) {
        self.replace("ca.crt", ca_pem);
    }

    fn present(&self, cert: &TestCert) {
        self.replace("node.key", &cert.key_pem);
        self.replace("node.crt", &cert.cert_pem);
    }

    fn flags(&self) -> Vec<String> {
        let path = |name: &str| self.dir.join(name).display().to_string();
        ["--peer-cert-file", &path("node.crt"), "--peer-key-file", &path("node.key"), "--peer-trusted-ca-file", &path("ca.crt")]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
}

fn node_ip(id: u32) -> String {
    format!("127.0.0.{id}")
}

/// A three-node cluster whose node n is at 127.0.0.n with a certificate of `ca` naming it.
fn tls_cluster(root: &Path, ca: &TestCa) -> (ClusterOptions, Vec<PeerFiles>) {
    let files: Vec<PeerFiles> = (1..=3).map(|id| PeerFiles::new(root, &format!("n{id}"), &ca.pem(), &ca.issue(&[&node_ip(id)]))).collect();
    let options = ClusterOptions {
        peer_ip_per_node: true,
        node_args: (1..=3).map(|id| (id, files[id as usize - 1].flags())).collect(),
        ..ClusterOptions::default()
    };
    (options, files)
}

/// `args` with `flag` set to `value` (replacing its value if present).
fn with_flag(mut args: Vec<String>, flag: &str, value: String) -> Vec<String> {
    match args.iter().position(|a| a == flag) {
        Some(at) => args[at + 1] = value,
        None => args.extend([flag.to_owned(), value]),
    }
    args
}

/// A process claiming to be node `claims`, at 127.0.0.`ip_last` on the peer network, with `files`.
fn spawn_impostor(cluster: &Cluster, dir: &mut TestDir, claims: u32, ip_last: u8, files: &PeerFiles) -> Node {
    let at = |port| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let peer = std::net::SocketAddr::from(([127, 0, 0, ip_last], reserve_ports(cluster.options.shards as u16)));
    let ports = Ports { listen: at(free_port()), admin: at(free_port()), peer, metrics: at(free_port()) };
    let peers: Vec<String> = cluster
        .ids()
        .into_iter()
        .map(|id| if id == claims { format!("{id}={peer}") } else { format!("{id}={}", cluster.member(id).ports.peer) })
        .collect();
    let mut args = cluster.args(claims);
    for (flag, value) in [
        ("--peers", peers.join(",")),
        ("--listen", ports.listen.to_string()),
        ("--admin-listen", ports.admin.to_string()),
        ("--metrics-listen", ports.metrics.to_string()),
        ("--data-dir", dir.data_dir().display().to_string()),
    ] {
        args = with_flag(args, flag, value);
    }
    for pair in files.flags().chunks(2) {
        args = with_flag(args, &pair[0], pair[1].clone());
    }
    Node::spawn(dir, ports, args)
}

/// Waits until node `id`'s log has a line containing every one of `needles`.
async fn wait_for_log_line(cluster: &Cluster, id: u32, needles: &[&str]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = cluster.node(id).output();
        if log.lines().any(|line| needles.iter().all(|n| line.contains(n))) {
            return;
        }
        assert!(Instant::now() < deadline, "node {id} logged no line with {needles:?} within {WAIT:?}:\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Create, Enter, read back through every reader, then Withdraw, in every partition;
/// retried (bounded) while partitions fail over.
async fn elects_through(cluster: &Cluster, through: u32, readers: &[u32], prefix: &str) {
    let names = spread_names(prefix, 1, cluster.options.partitions);
    let deadline = Instant::now() + WAIT;
    let channel = cluster.connect(through).await;
    let mut client = Election::new(channel.clone());
    let mut elections = Elections::new(channel);
    for name in &names {
        loop {
            let created = elections.create(bounded(CreateRequest { id: id(name), tags: vec![] })).await;
            let entered = match created {
                Ok(_) => apply_with(&mut client, Op::Enter, name, "tls-candidate", Duration::from_secs(2)).await,
                Err(status) => Err(status),
            };
            match entered {
                Ok(view) => {
                    assert_eq!(view, expect(1, "tls-candidate", &["tls-candidate"]), "{name}");
                    break;
                }
                Err(status) => {
                    assert!(
                        Instant::now() < deadline,
                        "{name}: Create+Enter through node {through} still fails: {status:?}\n{}",
                        cluster.logs()
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        for &reader in readers {
            let mut other = Election::new(cluster.connect(reader).await);
            let seen = get_term(&mut other, name).await.unwrap_or_else(|s| panic!("{name}: GetTerm through node {reader}: {s:?}"));
            assert_eq!(seen, expect(1, "tls-candidate", &["tls-candidate"]), "{name} through node {reader}");
        }
        run(&mut client, Op::Withdraw, name, "tls-candidate").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)]
async fn a_peer_tls_cluster_serves_and_refuses_impostors_and_plaintext_peers() {
    let _serial = one_cluster_at_a_time();
    let root = tempfile::tempdir().unwrap();
    let ca = TestCa::new("cluster peer CA");
    let (options, _files) = tls_cluster(root.path(), &ca);
    let mut cluster = Cluster::start(options).await;
    elects_through(&cluster, 1, &[2, 3], "tls-start").await;

    // The right CA, but a certificate naming 127.0.0.4, while claiming to be node 3 (at 127.0.0.3).
    let misnamed = PeerFiles::new(root.path(), "misnamed", &ca.pem(), &ca.issue(&["127.0.0.4"]));
    let mut misnamed_dir = TestDir::new();
    let misnamed_node = spawn_impostor(&cluster, &mut misnamed_dir, 3, 4, &misnamed);
    wait_for_log_line(
        &cluster,
        1,
        &["refusing peer connection", "wrong identity: node 3 is at 127.0.0.3, but the certificate does not name 127.0.0.3"],
    )
    .await;

    // Another CA's certificate, claiming to be node 2. The impostor trusts the cluster's CA
    // (a CA certificate is public), so it accepts node 1's certificate and presents its own:
    // node 1's own check refuses it. (An impostor that also distrusted node 1 would hang up
    // first, and node 1 could only log a closed handshake.)
    let stranger_ca = TestCa::new("stranger CA");
    let foreign = PeerFiles::new(root.path(), "foreign", &ca.pem(), &stranger_ca.issue(&["127.0.0.5"]));
    let mut foreign_dir = TestDir::new();
    let foreign_node = spawn_impostor(&cluster, &mut foreign_dir, 2, 5, &foreign);
    wait_for_log_line(&cluster, 1, &["refusing peer connection", "certificate from an unknown CA"]).await;

    // A plaintext peer (a wire handshake frame without TLS) is told apart and closed.
    let mut plaintext = std::net::TcpStream::connect(cluster.member(3).ports.peer).unwrap();
    plaintext.set_read_timeout(Some(WAIT)).unwrap();
    plaintext.write_all(b"CNCW\x01\x01\x00\x00\x00\x10plaintext handshake").unwrap();
    let mut rest = Vec::new();
    let _ = plaintext.read_to_end(&mut rest);
    wait_for_log_line(&cluster, 3, &["refusing peer connection", "plaintext connection on a TLS port"]).await;

    // The impostors never got in, and say so themselves.
    let misnamed_log = misnamed_node.output();
    assert!(misnamed_log.contains("peer refused the handshake: wrong identity"), "impostor's log:\n{misnamed_log}");
    assert!(!misnamed_log.contains("peer connection established"), "impostor's log:\n{misnamed_log}");
    assert!(!foreign_node.output().contains("peer connection established"), "{}", foreign_node.output());

    // With the impostors still knocking, the cluster fails over and serves.
    cluster.kill9(1);
    elects_through(&cluster, 2, &[3], "tls-failover").await;
    cluster.restart(1).await;
    elects_through(&cluster, 1, &[2, 3], "tls-rejoined").await;
    drop((misnamed_node, foreign_node));
}

/// One step of a rotation: its name and what it does to node n's files.
type RotationStep<'a> = (&'a str, Box<dyn Fn(u32, &PeerFiles) + 'a>);

fn sighup(node: &Node) {
    // SAFETY: the pid is the test's own running child process.
    assert_eq!(unsafe { libc::kill(node.pid(), libc::SIGHUP) }, 0, "kill(SIGHUP) failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)]
async fn peer_certificates_rotate_to_a_new_ca_with_sighup_and_no_restart() {
    let _serial = one_cluster_at_a_time();
    let root = tempfile::tempdir().unwrap();
    let old_ca = TestCa::new("old peer CA");
    let new_ca = TestCa::new("new peer CA");
    let (options, files) = tls_cluster(root.path(), &old_ca);
    let mut cluster = Cluster::start(options).await;
    elects_through(&cluster, 1, &[2, 3], "rotate-start").await;
    let pids: Vec<i32> = (1..=3).map(|id| cluster.node(id).pid()).collect();

    // A broken key on SIGHUP: refused, the old certificates stay in use.
    std::fs::write(files[0].dir.join("node.key"), "not a key").unwrap();
    sighup(cluster.node(1));
    wait_for_log_line(&cluster, 1, &["TLS reload failed; keeping the certificates in use", "node.key"]).await;
    elects_through(&cluster, 1, &[2, 3], "rotate-broken").await;
    files[0].present(&old_ca.issue(&[&node_ip(1)]));
    sighup(cluster.node(1));

    let both = format!("{}{}", old_ca.pem(), new_ca.pem());
    let steps: [RotationStep; 3] = [
        ("trust both CAs", Box::new(|_, f: &PeerFiles| f.trust(&both))),
        ("present certificates of the new CA", Box::new(|id, f: &PeerFiles| f.present(&new_ca.issue(&[&node_ip(id)])))),
        ("trust only the new CA", Box::new(|_, f: &PeerFiles| f.trust(&new_ca.pem()))),
    ];
    for (step, change) in &steps {
        for id in 1..=3 {
            change(id, &files[id as usize - 1]);
            sighup(cluster.node(id));
        }
        elects_through(&cluster, 2, &[1, 3], &format!("rotate-{}", step.replace(' ', "-"))).await;
    }
    // Node 3 restarted trusts only the new CA: nodes 1 and 2 must present new certificates.
    cluster.kill9(3);
    cluster.restart(3).await;
    elects_through(&cluster, 3, &[1, 2], "rotate-end").await;
    assert_eq!(pids[..2], [cluster.node(1).pid(), cluster.node(2).pid()], "nodes 1 and 2 were not restarted");
    for id in 1..=3 {
        let log = cluster.node(id).output();
        assert!(!log.contains("certificate from an unknown CA"), "node {id} refused a rotated peer:\n{log}");
    }
}
