//! Regression tests for what the edge fuzzer (`fuzz_edge.rs`) found, each replaying the
//! shrunk case against an in-process `GrpcServer` (`grpc_support`) over TCP on 127.0.0.1.
mod fuzz_support;
mod grpc_support;

use conclave_server::grpc::Code;
use fuzz_support::cases::{GrpcCase, Len, Message};
use fuzz_support::run::{run_grpc, Seen};
use grpc_support::TestServer;

fn call(path: String, content_type: &str) -> GrpcCase {
    GrpcCase {
        path,
        streaming: None,
        content_type: Some(content_type.to_owned()),
        timeout: None,
        headers: Vec::new(),
        messages: vec![Message { flag: 0, len: Len::Exact, payload: Vec::new() }],
        cuts: Vec::new(),
    }
}

/// Found by `CONCLAVE_FUZZ_SEED=3 CONCLAVE_FUZZ_CASES=100`: an unknown service with a name
/// of some 8 KiB was answered UNIMPLEMENTED with the whole name in grpc-message, a header
/// list gRPC C-core clients (8 KiB limit) cannot read. Status messages are now cut to
/// 1 KiB; `run_grpc` checks the answer's metadata against the client limit.
#[tokio::test]
async fn statuses_quoting_huge_client_input_stay_readable() {
    let server = TestServer::start();
    let huge_service = format!("/{}/Method", "s".repeat(12_000));
    assert_eq!(run_grpc(server.addr, &call(huge_service, "application/grpc")).await, Ok(Seen::Status(Code::Unimplemented)));
    let huge_content_type = format!("text/{}", "t".repeat(12_000));
    let answer = run_grpc(server.addr, &call(grpc_support::GET_TERM.to_owned(), &huge_content_type)).await;
    assert_eq!(answer, Ok(Seen::Status(Code::InvalidArgument)));
}
