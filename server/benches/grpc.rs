//! Server CPU per unary gRPC call on the edge, against a baseline in the same run.
//!
//! Both servers run on a glommio executor thread and are called by a `tonic` client over
//! one HTTP/2 connection; what is measured is the CPU time the *server thread* consumed
//! (from `/proc/self/task/TID/schedstat`), divided by the number of calls:
//! - `h2_floor`: a bare h2 responder on the same glommio adapter that answers every
//!   request with a canned gRPC response, without routing, validation or decoding. It is
//!   the floor that HTTP/2 and the socket cost;
//! - `grpc_edge`: the real `GrpcServer` with a `unary_message` handler that decodes the
//!   request and encodes a response.
//!
//! Run: `cargo bench -p conclave-server --bench grpc`.
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use conclave_proto::atomix::runtime::election::v1::{GetTermRequest, GetTermResponse, Term};
use conclave_server::grpc::{framing, GlommioIo, GrpcServer, Router, ServerConfig, Status};
use conclave_server::net::bind_exclusive;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use glommio::{LocalExecutorBuilder, Placement};
use http::{HeaderMap, Response};
use prost::Message as _;

mod client {
    #![allow(clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/_test_client.rs"));
}
use client::atomix::runtime::election::v1::leader_election_client::LeaderElectionClient;

const GET_TERM: &str = "/atomix.runtime.election.v1.LeaderElection/GetTerm";
/// Calls kept in flight by the concurrent variant.
const CONCURRENCY: usize = 32;

fn response() -> GetTermResponse {
    GetTermResponse { term: Some(Term { term: 7, leader: "node-1".into(), candidates: vec!["node-1".into(), "node-2".into()] }) }
}

#[derive(Clone, Copy)]
enum ServerKind {
    H2Floor,
    GrpcEdge,
}

/// A server on its own glommio thread; stops when the stop channel is dropped.
struct BenchServer {
    addr: SocketAddr,
    tid: i32,
    _stop: mpsc::Sender<()>,
}

fn start(kind: ServerKind) -> BenchServer {
    let listener = bind_exclusive("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tid_tx, tid_rx) = mpsc::channel();
    let (stop, stop_rx) = mpsc::channel::<()>();
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .name("grpc-bench")
        .io_memory(512 << 10)
        .spawn(move || async move {
            // SAFETY: gettid has no preconditions.
            tid_tx.send(unsafe { libc::gettid() }).expect("report tid");
            let listener = listener.into_glommio();
            let serving = glommio::spawn_local(async move {
                match kind {
                    ServerKind::GrpcEdge => {
                        let mut router = Router::new();
                        router.unary_message(GET_TERM, |_request: GetTermRequest, _ctx| async move { Ok::<_, Status>(response()) });
                        GrpcServer::new(router, ServerConfig::default()).serve(listener).await;
                    }
                    ServerKind::H2Floor => serve_h2_floor(listener).await,
                }
            });
            while matches!(stop_rx.try_recv(), Err(mpsc::TryRecvError::Empty)) {
                glommio::timer::Timer::new(Duration::from_millis(20)).await;
            }
            drop(serving);
        })
        .expect("server executor");
    std::thread::spawn(move || handle.join());
    BenchServer { addr, tid: tid_rx.recv().expect("tid"), _stop: stop }
}

async fn serve_h2_floor(listener: glommio::net::TcpListener) {
    let canned = framing::frame_message(&response().encode_to_vec());
    while let Ok(stream) = listener.accept().await {
        let canned = canned.clone();
        glommio::spawn_local(async move {
            let Ok(mut connection) = h2::server::handshake(GlommioIo::new(stream)).await else {
                return;
            };
            while let Some(Ok((request, mut respond))) = connection.accept().await {
                let canned = canned.clone();
                glommio::spawn_local(async move {
                    let mut body = request.into_body();
                    while let Some(Ok(chunk)) = body.data().await {
                        let _ = body.flow_control().release_capacity(chunk.len());
                    }
                    let mut head = Response::new(());
                    head.headers_mut().insert("content-type", "application/grpc".parse().expect("value"));
                    if let Ok(mut send) = respond.send_response(head, false) {
                        let _ = send.send_data(canned, false);
                        let mut trailers = HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().expect("value"));
                        let _ = send.send_trailers(trailers);
                    }
                })
                .detach();
            }
        })
        .detach();
    }
}

/// Nanoseconds the thread `tid` of this process has run on a CPU.
fn thread_cpu_ns(tid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).expect("schedstat");
    stat.split_whitespace().next().and_then(|ns| ns.parse().ok()).expect("schedstat run time")
}

fn bench_unary(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("tokio runtime");
    let mut group = c.benchmark_group("server_cpu_per_unary_call");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(4));
    group.warm_up_time(Duration::from_secs(1));
    for (name, kind) in [("h2_floor", ServerKind::H2Floor), ("grpc_edge", ServerKind::GrpcEdge)] {
        let server = start(kind);
        let channel = runtime.block_on(async {
            tonic::transport::Channel::from_shared(format!("http://{}", server.addr)).expect("url").connect().await.expect("connect")
        });
        let request = || client::atomix::runtime::election::v1::GetTermRequest {
            id: Some(client::atomix::runtime::v1::PrimitiveId { name: "bench".into() }),
        };
        for concurrency in [1, CONCURRENCY] {
            group.bench_function(format!("{name}/in_flight_{concurrency}"), |b| {
                b.iter_custom(|iters| {
                    let before = thread_cpu_ns(server.tid);
                    runtime.block_on(async {
                        let per_caller = iters.div_ceil(concurrency as u64);
                        let callers = (0..concurrency).map(|_| {
                            let mut client = LeaderElectionClient::new(channel.clone());
                            tokio::spawn(async move {
                                for _ in 0..per_caller {
                                    client.get_term(request()).await.expect("call");
                                }
                            })
                        });
                        for caller in callers.collect::<Vec<_>>() {
                            caller.await.expect("caller");
                        }
                    });
                    let consumed = thread_cpu_ns(server.tid) - before;
                    // Scale to the requested iteration count (callers may round up).
                    let total = iters.div_ceil(concurrency as u64) * concurrency as u64;
                    Duration::from_nanos(consumed * iters / total)
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_unary);
criterion_main!(benches);
