//! Generates the tonic client stubs the bench speaks: Conclave's client API
//! (`atomix.runtime.election.v1`) and Node API (`atomix.multiraft.v1.Node`, whose Watch
//! reports leader changes during a node-kill failover), both from the shared `proto/` tree,
//! and the subset of etcd's v3 election and lease API under `bench/proto/etcd/`.
use std::path::PathBuf;

fn main() {
    let root = PathBuf::from("../proto/proto");
    println!("cargo:rerun-if-changed=../proto/proto/atomix/runtime");
    println!("cargo:rerun-if-changed=../proto/proto/atomix/multiraft/v1/node.proto");
    let files = ["atomix/runtime/election/v1/election.proto", "atomix/multiraft/v1/node.proto"];
    let fds = protox::compile(files.iter().map(|f| root.join(f)), [&root]).expect("protox failed to compile the client API .proto files");
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .include_file("_bench_client.rs")
        .compile_fds(fds)
        .expect("tonic-prost-build failed");

    let etcd_root = PathBuf::from("proto");
    println!("cargo:rerun-if-changed=proto");
    let etcd_files = ["etcd/election.proto", "etcd/rpc.proto"];
    let etcd_fds =
        protox::compile(etcd_files.iter().map(|f| etcd_root.join(f)), [&etcd_root]).expect("protox failed to compile bench/proto/etcd");
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .include_file("_etcd_client.rs")
        .compile_fds(etcd_fds)
        .expect("tonic-prost-build failed for etcd");
}
