//! Protocol-level tests of the gRPC edge with a raw HTTP/2 client (`h2`), for what a
//! well-behaved gRPC client never sends: trailers-only shapes, percent-encoded messages,
//! content-type / method / encoding / timeout validation, compressed flags, request
//! message counts, DATA-frame coalescing, keepalive and idle timeouts, bidirectional streams
//! (every request message answered; a stream ending inside a message); plus the listener
//! guard against silent port sharing and the data-directory lock.
mod grpc_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use conclave_proto::atomix::runtime::election::v1::{GetTermRequest, WatchRequest};
use conclave_proto::atomix::runtime::v1::PrimitiveId;
use conclave_server::grpc::{Code, ServerConfig, Status};
use conclave_server::net::{bind_exclusive, DataDirLock, LockError};
use grpc_support::{test_config, Event, TestServer, CHAT, GET_TERM, WATCH};
use http::{HeaderMap, Method, Request, StatusCode};
use prost::Message as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// What a raw call saw: HTTP status, headers, each DATA frame, trailers, and whether the
/// response HEADERS frame ended the stream (a trailers-only response).
struct RawResponse {
    http_status: StatusCode,
    headers: HeaderMap,
    data_frames: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    trailers_only: bool,
}

impl RawResponse {
    fn status(&self) -> Status {
        let source = if self.trailers_only { &self.headers } else { self.trailers.as_ref().expect("trailers") };
        Status::read_from(source).expect("grpc-status present")
    }
}

fn framed(message: &[u8], flag: u8) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(flag);
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

fn get_term_body(name: &str) -> Bytes {
    framed(&GetTermRequest { id: Some(PrimitiveId { name: name.into() }) }.encode_to_vec(), 0)
}

async fn raw_call(addr: SocketAddr, method: Method, path: &str, headers: &[(&str, &str)], body: Bytes) -> RawResponse {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.expect("ready");
    let mut request = Request::builder().method(method).uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let (response, mut send) = client.send_request(request.body(()).expect("request"), false).expect("send");
    send.send_data(body, true).expect("body");
    let response = response.await.expect("response");
    let (parts, mut body) = response.into_parts();
    let trailers_only = body.is_end_stream();
    let mut data_frames = Vec::new();
    while let Some(frame) = body.data().await {
        let frame = frame.expect("data frame");
        let _ = body.flow_control().release_capacity(frame.len());
        data_frames.push(frame);
    }
    let trailers = body.trailers().await.expect("trailers");
    RawResponse { http_status: parts.status, headers: parts.headers, data_frames, trailers, trailers_only }
}

const GRPC: &[(&str, &str)] = &[("content-type", "application/grpc"), ("te", "trailers")];

#[tokio::test]
async fn errors_are_trailers_only_with_percent_encoded_messages() {
    let server = TestServer::start();
    let response = raw_call(server.addr, Method::POST, GET_TERM, GRPC, get_term_body("fail:5")).await;
    assert_eq!(response.http_status, StatusCode::OK);
    assert!(response.trailers_only, "an error before any message is one HEADERS frame");
    assert!(response.data_frames.is_empty());
    assert_eq!(response.headers["content-type"], "application/grpc");
    assert_eq!(response.headers["grpc-status"], "5");
    assert_eq!(response.headers["grpc-message"], "test failure NOT_FOUND %E2%80%94 100%25 %C2%ABintended%C2%BB");

    let response = raw_call(server.addr, Method::POST, GET_TERM, GRPC, get_term_body("echo")).await;
    assert!(!response.trailers_only);
    assert_eq!(response.data_frames.len(), 1);
    assert_eq!(response.status(), Status::ok());
}

#[tokio::test]
async fn requests_that_are_not_plain_grpc_are_refused_precisely() {
    let server = TestServer::start();
    let addr = server.addr;
    let body = || get_term_body("echo");

    let response = raw_call(addr, Method::POST, GET_TERM, &[("content-type", "text/plain")], body()).await;
    assert_eq!(response.http_status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(response.status().message().contains("text/plain"));

    let response = raw_call(addr, Method::PUT, GET_TERM, GRPC, body()).await;
    assert_eq!(response.http_status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.status().code(), Code::Unimplemented);

    let proto = &[("content-type", "application/grpc+proto")];
    let response = raw_call(addr, Method::POST, GET_TERM, proto, body()).await;
    assert_eq!(response.status(), Status::ok());

    let gzip = &[("content-type", "application/grpc"), ("grpc-encoding", "gzip")];
    let response = raw_call(addr, Method::POST, GET_TERM, gzip, body()).await;
    assert_eq!(response.status().code(), Code::Unimplemented);
    assert!(response.status().message().contains("gzip"));

    let message = GetTermRequest::default().encode_to_vec();
    let response = raw_call(addr, Method::POST, GET_TERM, GRPC, framed(&message, 1)).await;
    assert_eq!(response.status().code(), Code::Unimplemented);
    assert!(response.status().message().contains("compressed"));

    let bad_timeout = &[("content-type", "application/grpc"), ("grpc-timeout", "soon")];
    let response = raw_call(addr, Method::POST, GET_TERM, bad_timeout, body()).await;
    assert_eq!(response.status().code(), Code::InvalidArgument);
    assert!(response.status().message().contains("grpc-timeout"));

    let response = raw_call(addr, Method::POST, GET_TERM, GRPC, Bytes::new()).await;
    assert_eq!(response.status().code(), Code::Internal);
    assert!(response.status().message().contains("no complete message"));

    let two = [body(), body()].concat();
    let response = raw_call(addr, Method::POST, GET_TERM, GRPC, Bytes::from(two)).await;
    assert_eq!(response.status().code(), Code::Internal);
    assert!(response.status().message().contains("more than one message"));

    let response = raw_call(addr, Method::POST, GET_TERM, GRPC, framed(b"\xff\xff", 0)).await;
    assert_eq!(response.status().code(), Code::InvalidArgument);

    let response = raw_call(addr, Method::POST, "/no-slash", GRPC, body()).await;
    assert_eq!(response.status().code(), Code::Unimplemented);

    let far = &[("content-type", "application/grpc"), ("grpc-timeout", "99999999H")];
    let response = raw_call(addr, Method::POST, GET_TERM, far, body()).await;
    assert_eq!(response.status(), Status::ok(), "the largest timeout is accepted");

    let timed = &[("content-type", "application/grpc"), ("grpc-timeout", "50m")];
    let started = Instant::now();
    let response = raw_call(addr, Method::POST, GET_TERM, timed, get_term_body("sleep:2000")).await;
    assert_eq!(response.status().code(), Code::DeadlineExceeded);
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// The messages of a response's DATA frames.
fn messages_of(response: &RawResponse) -> Vec<Bytes> {
    let mut all = BytesMut::new();
    for frame in &response.data_frames {
        all.extend_from_slice(frame);
    }
    let mut all = all.freeze();
    let mut messages = Vec::new();
    while !all.is_empty() {
        assert!(all.len() >= 5 && all[0] == 0, "a framed message");
        let len = u32::from_be_bytes([all[1], all[2], all[3], all[4]]) as usize;
        messages.push(all.slice(5..5 + len));
        all = all.slice(5 + len..);
    }
    messages
}

#[tokio::test]
async fn bidirectional_streams_answer_every_message_and_refuse_a_cut_one() {
    let server = TestServer::start();
    let mut body = BytesMut::new();
    for message in [&b"one"[..], b"", b"three"] {
        body.extend_from_slice(&framed(message, 0));
    }
    let response = raw_call(server.addr, Method::POST, CHAT, GRPC, body.freeze()).await;
    assert_eq!(response.status(), Status::ok());
    assert_eq!(messages_of(&response), [&b"one"[..], b"", b"three"]);
    // No message at all is a valid stream too.
    let response = raw_call(server.addr, Method::POST, CHAT, GRPC, Bytes::new()).await;
    assert_eq!((response.status(), messages_of(&response).len()), (Status::ok(), 0));

    // A stream ending inside its second message: the first is answered, then INTERNAL.
    let mut body = BytesMut::new();
    body.extend_from_slice(&framed(b"whole", 0));
    body.extend_from_slice(&framed(b"cut short", 0)[..8]);
    let response = raw_call(server.addr, Method::POST, CHAT, GRPC, body.freeze()).await;
    assert_eq!(response.status().code(), Code::Internal);
    assert!(response.status().message().contains("inside a message"), "{:?}", response.status());
    // An oversized or compressed message ends the stream with its status.
    let oversized = framed(&vec![7u8; (64 << 10) + 1], 0);
    let response = raw_call(server.addr, Method::POST, CHAT, GRPC, oversized).await;
    assert_eq!(response.status().code(), Code::ResourceExhausted);
    let response = raw_call(server.addr, Method::POST, CHAT, GRPC, framed(b"zipped", 1)).await;
    assert_eq!(response.status().code(), Code::Unimplemented);
}

#[tokio::test]
async fn small_stream_messages_are_coalesced_into_large_data_frames() {
    let server = TestServer::start();
    let request = WatchRequest { id: Some(PrimitiveId { name: "count:5000".into() }) };
    let response = raw_call(server.addr, Method::POST, WATCH, GRPC, framed(&request.encode_to_vec(), 0)).await;
    assert_eq!(response.status(), Status::ok());
    let total: usize = response.data_frames.iter().map(Bytes::len).sum();
    let frames = response.data_frames.len();
    assert!(total > 5000 * 5, "all messages arrived: {total} bytes");
    // Each framed message is ~12 bytes; one DATA frame per message would be 5000 frames.
    assert!(frames * 20 < 5000, "{frames} DATA frames for 5000 messages");
}

#[tokio::test]
async fn unanswered_keepalive_pings_close_the_connection() {
    let config = ServerConfig {
        keepalive_interval: Some(Duration::from_millis(100)),
        keepalive_timeout: Duration::from_millis(150),
        ..test_config()
    };
    let server = TestServer::start_with(config);
    // A client that completes the HTTP/2 preface and then never answers anything.
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.expect("preface");
    let Some(Event::Opened(id)) = server.wait_for_event(Duration::from_secs(1), |e| matches!(e, Event::Opened(_))).await else {
        panic!("no connection");
    };
    let started = Instant::now();
    server.wait_for_event(Duration::from_secs(3), |e| *e == Event::Closed(id)).await.expect("closed by keepalive");
    assert!(started.elapsed() >= Duration::from_millis(200), "{:?}", started.elapsed());
    let mut sink = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut sink)).await;
    assert!(matches!(read, Ok(Ok(_)) | Ok(Err(_))), "server closed the socket");
}

#[tokio::test]
async fn idle_connections_get_goaway_when_configured() {
    let config = ServerConfig { idle_timeout: Some(Duration::from_millis(200)), ..test_config() };
    let server = TestServer::start_with(config);
    let tcp = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(3), connection).await.expect("connection ends on GOAWAY");
    assert!(ended.is_ok(), "graceful close: {ended:?}");
    assert!(started.elapsed() >= Duration::from_millis(150), "{:?}", started.elapsed());
    drop(client);
    server.wait_for_event(Duration::from_secs(1), |e| matches!(e, Event::Closed(_))).await.expect("close hook");
}

#[test]
fn a_second_listener_on_the_same_port_is_refused() {
    let first = bind_exclusive("127.0.0.1:0".parse().expect("addr")).expect("first bind");
    let addr = first.local_addr().expect("addr");
    let error = bind_exclusive(addr).expect_err("second bind must fail");
    assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse);
    assert!(error.to_string().contains(&addr.to_string()), "{error}");
    assert!(std::net::TcpListener::bind(addr).is_err(), "plain bind refused too");
    // glommio's own bind sets SO_REUSEPORT; it must not be able to share our socket.
    let glommio_result = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(grpc_support::TEST_IO_MEMORY)
        .spawn(move || async move { glommio::net::TcpListener::bind(addr).map(|_| ()).map_err(|e| e.to_string()) })
        .expect("executor")
        .join()
        .expect("join");
    assert!(glommio_result.is_err(), "glommio's SO_REUSEPORT bind must fail");
    drop(first);
    bind_exclusive(addr).expect("the port is free again once the first listener is gone");
}

#[test]
fn the_data_directory_lock_refuses_a_second_holder_and_names_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lock = DataDirLock::acquire(dir.path()).expect("first lock");
    let contents = std::fs::read_to_string(lock.path()).expect("lock file");
    assert_eq!(contents.trim(), std::process::id().to_string());
    match DataDirLock::acquire(dir.path()) {
        Err(LockError::InUse { holder_pid, .. }) => {
            assert_eq!(holder_pid, Some(std::process::id()))
        }
        other => panic!("expected InUse, got {other:?}"),
    }
    let message = DataDirLock::acquire(dir.path()).expect_err("still held").to_string();
    assert!(message.contains(&format!("pid {}", std::process::id())), "{message}");
    assert!(message.contains(&dir.path().display().to_string()), "{message}");
    drop(lock);
    DataDirLock::acquire(dir.path()).expect("free again after drop");
    let missing = DataDirLock::acquire(&dir.path().join("missing")).expect_err("no directory");
    assert!(matches!(missing, LockError::Io { .. }), "{missing}");
}

#[test]
fn server_configs_are_validated_against_protocol_limits() {
    assert_eq!(ServerConfig::default().validate(), Ok(()));
    let bad = [
        ServerConfig { max_frame_size: 1000, ..ServerConfig::default() },
        ServerConfig { initial_stream_window: u32::MAX, ..ServerConfig::default() },
        ServerConfig { target_chunk_len: 0, ..ServerConfig::default() },
        ServerConfig { max_concurrent_streams: 0, ..ServerConfig::default() },
        ServerConfig { keepalive_interval: Some(Duration::ZERO), ..ServerConfig::default() },
    ];
    for config in bad {
        assert!(config.validate().is_err(), "{config:?}");
    }
}
