//! Compiles every `.proto` under `proto/proto/` with prost-build, parsed by protox (no
//! system protoc). New files are picked up without editing this script. The encoded
//! `FileDescriptorSet` is kept in OUT_DIR so tests can pin the public contract.
use std::path::{Path, PathBuf};

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())).map(|e| e.expect("dir entry").path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|x| x == "proto") {
            out.push(path);
        }
    }
}

fn main() {
    let root = PathBuf::from("proto");
    println!("cargo:rerun-if-changed=proto");
    let mut files = Vec::new();
    collect(&root, &mut files);
    let fds = protox::compile(&files, [&root]).expect("protox failed to compile the .proto files");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let encoded = prost::Message::encode_to_vec(&fds);
    std::fs::write(out.join("file_descriptor_set.bin"), encoded).expect("write descriptor set");
    prost_build::Config::new().bytes(["."]).include_file("_includes.rs").compile_fds(fds).expect("prost-build failed");
}
