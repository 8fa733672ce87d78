//! Regression tests for what the edge fuzzer (`fuzz_edge.rs`) found, each replaying the
//! shrunk case against an in-process `GrpcServer` (`grpc_support`) over TCP on 127.0.0.1.
mod fuzz_support;
mod grpc_support;

use std::time::Duration;

use bytes::Bytes;
use conclave_proto::atomix::runtime::election::v1::GetTermRequest;
use conclave_proto::atomix::runtime::v1::PrimitiveId;
use conclave_server::grpc::{Code, ServerConfig, Status};
use fuzz_support::cases::{GrpcCase, Len, Message};
use fuzz_support::run::{run_grpc, Seen};
use grpc_support::TestServer;
use prost::Message as _;

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

/// Opens a call to `path` on `client` and sends `body` without ending the stream.
async fn open_call(
    client: &mut h2::client::SendRequest<Bytes>,
    addr: std::net::SocketAddr,
    path: &str,
    body: Bytes,
    end: bool,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .body(())
        .expect("request");
    *client = client.clone().ready().await.expect("ready");
    let (response, mut send) = client.send_request(request, false).expect("send");
    send.send_data(body, end).expect("data");
    (response, send)
}

/// Found probing what the fuzzer's bounded sizes miss: the server returns flow-control
/// window as it buffers request bytes, so one connection opening 32 calls, each sending all
/// but the end of a maximum-size message, made a `conclave serve` hold 150 MiB more
/// (4 GiB possible with 1024 streams of 4 MiB). Now the calls of a connection share a
/// budget of unfinished request bytes (`max_recv_buffered_per_connection`): past it, calls
/// end with RESOURCE_EXHAUSTED, and bytes are given back when a call ends.
#[tokio::test]
async fn unfinished_requests_of_a_connection_are_bounded() {
    let too_small = ServerConfig { max_recv_buffered_per_connection: 4 << 20, ..ServerConfig::default() };
    assert!(too_small.validate().is_err(), "the budget must hold one message of the largest size and its prefix");
    let config = ServerConfig { max_recv_buffered_per_connection: 256 << 10, ..grpc_support::test_config() };
    let server = TestServer::start_with(config);
    let tcp = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
    let (mut client, connection) = h2::client::handshake(tcp).await.expect("handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    // Each call announces a 64 KiB message (the limit) and sends all but its last 4 KiB.
    let mut partial = vec![0u8];
    partial.extend_from_slice(&(64u32 << 10).to_be_bytes());
    partial.extend_from_slice(&[7u8; 60 << 10]);
    let partial = Bytes::from(partial);
    let mut calls = Vec::new();
    for _ in 0..32 {
        calls.push(open_call(&mut client, server.addr, grpc_support::GET_TERM, partial.clone(), false).await);
    }
    let mut refused = 0;
    let mut pending = Vec::new();
    for (response, send) in calls {
        match tokio::time::timeout(Duration::from_secs(2), response).await {
            Ok(Ok(response)) => {
                let status = Status::read_from(response.headers()).expect("trailers-only status");
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("unfinished request messages"), "{status:?}");
                refused += 1;
            }
            Ok(Err(error)) => panic!("the call failed at the HTTP/2 level: {error}"),
            Err(_) => pending.push(send),
        }
    }
    // 256 KiB holds four calls' 60 KiB; every other call was refused.
    assert_eq!((pending.len(), refused), (4, 28));
    // Cancelling the waiting calls gives their bytes back: a whole message fits again.
    for mut send in pending {
        send.send_reset(h2::Reason::CANCEL);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let request = GetTermRequest { id: Some(PrimitiveId { name: "echo".into() }) }.encode_to_vec();
    let mut whole = vec![0u8];
    whole.extend_from_slice(&(request.len() as u32).to_be_bytes());
    whole.extend_from_slice(&request);
    let (response, _send) = open_call(&mut client, server.addr, grpc_support::GET_TERM, Bytes::from(whole), true).await;
    let response = tokio::time::timeout(Duration::from_secs(5), response).await.expect("answered").expect("response");
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        chunk.expect("data");
    }
    let trailers = body.trailers().await.expect("trailers").expect("present");
    assert_eq!(Status::read_from(&trailers).map(|s| s.code()), Some(Code::Ok));
}
