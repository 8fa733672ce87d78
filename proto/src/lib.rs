//! Conclave's protocol definitions, compiled from `proto/proto/**/*.proto` by prost.
//!
//! Owns every wire contract of the project:
//! - the public Atomix APIs of `shared/spec/api.md` (`atomix.runtime.*`, `atomix.multiraft.*`)
//!   and the standard `grpc.health.v1` and `grpc.reflection.v1`/`v1alpha`, whose names and
//!   field numbers existing clients depend on (pinned by `tests/contract.rs`);
//! - the project's internal messages under `conclave.*` (state-machine commands and snapshots,
//!   Raft messages, peer envelopes), which only Conclave nodes speak.
//!
//! Module paths follow the protobuf packages, e.g. `atomix::runtime::election::v1::Term`.
//! Every `bytes` field is a `bytes::Bytes`, so decoding from a `Bytes` buffer slices rather
//! than copies.

#![allow(clippy::all)]
#![allow(missing_docs)]

include!(concat!(env!("OUT_DIR"), "/_includes.rs"));

/// The encoded `google.protobuf.FileDescriptorSet` of every compiled `.proto` file.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/file_descriptor_set.bin"));
