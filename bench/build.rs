//! Generates the tonic client stubs the bench speaks: Conclave's client API
//! (`atomix.runtime.election.v1`, from the shared `proto/` tree).
use std::path::PathBuf;

fn main() {
    let root = PathBuf::from("../proto/proto");
    println!("cargo:rerun-if-changed=../proto/proto/atomix/runtime");
    let files = ["atomix/runtime/election/v1/election.proto"];
    let fds = protox::compile(files.iter().map(|f| root.join(f)), [&root])
        .expect("protox failed to compile the client API .proto files");
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .include_file("_bench_client.rs")
        .compile_fds(fds)
        .expect("tonic-prost-build failed");
}
