//! Nodes of one cluster that run different shard counts cannot serve it (each finds a
//! partition's shard from the count), so the peer handshake refuses them, with a log line
//! naming both counts, instead of leaving partitions without their peers in silence.
mod support;

use std::time::{Duration, Instant};

use support::{serve_args, Node, NodeOptions, Ports, TestDir};

/// `serve_args` with `flag`'s value replaced.
fn with(mut args: Vec<String>, flag: &str, value: String) -> Vec<String> {
    let at = args.iter().position(|a| a == flag).expect("flag present") + 1;
    args[at] = value;
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_running_another_shard_count_is_refused_with_both_counts() {
    let (mut dir1, mut dir2) = (TestDir::new(), TestDir::new());
    let (ports1, ports2) = (Ports::fresh(), Ports::fresh());
    let peers = format!("1={},2={}", ports1.peer, ports2.peer);
    let node = |dir: &mut TestDir, ports: Ports, id: u32, shards: u32| {
        let options = NodeOptions { shards, ..NodeOptions::default() };
        let mut args = with(serve_args(&options, &ports, &dir.data_dir()), "--peers", peers.clone());
        args.extend(["--node-id".to_owned(), id.to_string()]);
        Node::spawn(dir, ports, args)
    };
    let one = node(&mut dir1, ports1, 1, 1);
    let two = node(&mut dir2, ports2, 2, 2);

    // Each node's shard 0 dials the other's: each refuses the other by name.
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = |node: &Node, needle: &str| node.output().contains(needle);
    while !(refused(&one, "node 2 runs --shards 2, this node --shards 1") && refused(&two, "node 1 runs --shards 1, this node --shards 2"))
    {
        assert!(
            Instant::now() < deadline,
            "no refusal naming both shard counts within 30 s\nnode 1:\n{}\nnode 2:\n{}",
            one.output(),
            two.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(one.output().contains("refusing peer connection"), "{}", one.output());
}
