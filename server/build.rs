//! Generates tonic client stubs of the public APIs: for the end-to-end tests (with their own
//! message types, `_test_client.rs`) and for the command-line client (`conclave elect`,
//! `conclave node ...`), whose stubs use `conclave_proto`'s message types
//! (`cli/_cli_client.rs`). Nothing in the server's serving path uses tonic or tokio.
use std::path::PathBuf;

fn main() {
    let root = PathBuf::from("../proto/proto");
    println!("cargo:rerun-if-changed=../proto/proto");
    let compile = |files: &[&str]| {
        protox::compile(files.iter().map(|f| root.join(f)), [&root]).expect("protox failed to compile the public .proto files")
    };
    let test_files = [
        "atomix/runtime/election/v1/election.proto",
        "atomix/multiraft/v1/partition.proto",
        "atomix/multiraft/v1/session.proto",
        "atomix/multiraft/v1/node.proto",
        "atomix/multiraft/election/v1/election.proto",
        "grpc/health/v1/health.proto",
        "grpc/reflection/v1/reflection.proto",
    ];
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .include_file("_test_client.rs")
        .compile_fds(compile(&test_files))
        .expect("tonic-prost-build failed");

    let cli_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("cli");
    std::fs::create_dir_all(&cli_dir).expect("create OUT_DIR/cli");
    let cli_files = ["atomix/runtime/election/v1/election.proto", "atomix/multiraft/v1/node.proto", "grpc/health/v1/health.proto"];
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .build_transport(true)
        .out_dir(&cli_dir)
        .extern_path(".atomix", "::conclave_proto::atomix")
        .extern_path(".grpc", "::conclave_proto::grpc")
        .include_file("_cli_client.rs")
        .compile_fds(compile(&cli_files))
        .expect("tonic-prost-build failed for the CLI's clients");
}
