//! Generates tonic client stubs of the public APIs for the end-to-end tests (tests only:
//! nothing in the server's serving path uses tonic or tokio).
use std::path::PathBuf;

fn main() {
    let root = PathBuf::from("../proto/proto");
    println!("cargo:rerun-if-changed=../proto/proto");
    let files = [
        "atomix/runtime/election/v1/election.proto",
        "atomix/multiraft/v1/partition.proto",
        "atomix/multiraft/v1/session.proto",
        "atomix/multiraft/v1/node.proto",
        "atomix/multiraft/election/v1/election.proto",
        "grpc/health/v1/health.proto",
    ];
    let fds = protox::compile(files.iter().map(|f| root.join(f)), [&root]).expect("protox failed to compile the public .proto files");
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .include_file("_test_client.rs")
        .compile_fds(fds)
        .expect("tonic-prost-build failed");
}
