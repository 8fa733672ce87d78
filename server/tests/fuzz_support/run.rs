//! Running fuzz cases against a live client listener over real TCP, and judging what came
//! back: a raw connection must end or be held open only by the server's own timeouts; a
//! call must be answered with a gRPC status, refused at the HTTP/2 level (stream reset,
//! GOAWAY) or cut with its connection, within a bound.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use conclave_server::grpc::{Code, Status};
use http::{HeaderName, HeaderValue, Method, Request};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::cases::{Conn, GrpcCase, RawCase};
use super::frames::split_frames;

/// How long a raw connection is watched right after its bytes are written; one the
/// server keeps open longer is held (see [`Held`]).
pub const RAW_WAIT: Duration = Duration::from_millis(300);
/// How long a call may take to get its response headers, and a unary call its trailers.
pub const ANSWER_BOUND: Duration = Duration::from_secs(5);
/// How long a streaming call is read before the client leaves (it may legitimately stay open).
pub const STREAM_READ: Duration = Duration::from_millis(200);
/// The longest the server may keep a connection whose client stopped talking and never
/// answers pings: its keepalive interval plus keepalive timeout (10 s + 10 s, the
/// defaults of `ServerConfig`, which `conclave serve` uses), or its 10 s handshake timeout,
/// plus 5 s of slack for a loaded machine.
pub const HOLD_BOUND: Duration = Duration::from_secs(25);
/// Most server bytes a raw connection keeps (the rest is read and dropped).
const KEEP_BYTES: usize = 1 << 20;

/// What one connection did, for the run's summary.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Seen {
    /// The server closed a raw connection within [`RAW_WAIT`].
    RawClosed,
    /// The server kept a raw connection open; it is held.
    RawHeld,
    /// A call answered with this status code.
    Status(Code),
    /// Refused by `h2` itself with HTTP 431 (the request's header list is over the
    /// server's SETTINGS_MAX_HEADER_LIST_SIZE): never reaches the gRPC layer, so no
    /// grpc-status; clients map the HTTP status to a gRPC one.
    HeadersTooLarge,
    /// A streaming call that was still open when the client left.
    StreamOpen,
    /// A call refused with RST_STREAM, GOAWAY or a closed connection.
    Refused,
    /// The `h2` client would not send this request (invalid URI or header): not sent.
    NotSent,
}

/// A raw connection the server kept open: its reader runs until the server closes it.
pub struct Held {
    pub opened: Instant,
    pub what: String,
    reader: JoinHandle<Vec<u8>>,
    _writer: OwnedWriteHalf,
}

impl Held {
    /// Waits until the server closes the connection, at most until `opened + HOLD_BOUND`.
    pub async fn closed_in_time(self) -> Result<Duration, String> {
        let left = (self.opened + HOLD_BOUND).saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.reader).await {
            Ok(_) => Ok(self.opened.elapsed()),
            Err(_) => Err(format!("the server kept a stalled connection open for over {HOLD_BOUND:?}: {}", self.what)),
        }
    }
}

/// Reads everything the server sends until it closes the connection.
async fn read_to_close(mut reader: tokio::net::tcp::OwnedReadHalf) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = KEEP_BYTES.saturating_sub(kept.len());
                kept.extend_from_slice(&buffer[..n.min(room)]);
            }
        }
    }
}

/// Writes `case` on a fresh connection. `Ok((seen, held))`: what happened, and the
/// connection when the server kept it open.
pub async fn run_raw(addr: SocketAddr, case: &RawCase) -> Result<(Seen, Option<Held>), String> {
    let opened = Instant::now();
    let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect to the client listener failed: {e}"))?;
    let (reader, mut writer) = tcp.into_split();
    let mut reader = tokio::spawn(read_to_close(reader));
    let bytes = case.encode();
    // The server may close before reading everything: a failed write is an answer too.
    let _ = tokio::time::timeout(ANSWER_BOUND, writer.write_all(&bytes)).await;
    match tokio::time::timeout(RAW_WAIT, &mut reader).await {
        Ok(read) => {
            let read = read.map_err(|e| format!("reader task failed: {e}"))?;
            if split_frames(&read).is_none() {
                return Err(format!("the server wrote bytes that are not HTTP/2 frames: {:02x?}", &read[..read.len().min(64)]));
            }
            Ok((Seen::RawClosed, None))
        }
        Err(_) => {
            let what = format!("{} bytes written: {:02x?}...", bytes.len(), &bytes[..bytes.len().min(80)]);
            Ok((Seen::RawHeld, Some(Held { opened, what, reader, _writer: writer })))
        }
    }
}

fn request_of(addr: SocketAddr, case: &GrpcCase) -> Option<Request<()>> {
    let mut request = Request::builder().method(Method::POST).uri(format!("http://{addr}{}", case.path)).body(()).ok()?;
    let headers = request.headers_mut();
    if let Some(content_type) = &case.content_type {
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_str(content_type).ok()?);
    }
    headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    if let Some(timeout) = &case.timeout {
        headers.insert("grpc-timeout", HeaderValue::from_str(timeout).ok()?);
    }
    for (name, value) in &case.headers {
        headers.append(HeaderName::from_bytes(name.as_bytes()).ok()?, HeaderValue::from_bytes(value).ok()?);
    }
    Some(request)
}

fn body_frames(case: &GrpcCase) -> Vec<Bytes> {
    let mut body = Vec::new();
    for message in &case.messages {
        message.encode(&mut body);
    }
    let mut body = Bytes::from(body);
    let mut frames = Vec::new();
    for cut in &case.cuts {
        let cut = usize::from(*cut).min(body.len());
        frames.push(body.split_to(cut));
    }
    frames.push(body);
    frames
}

/// The most response metadata a gRPC client takes by default: gRPC C-core (Python grpcio
/// and other wrapped clients) refuses header lists over 8 KiB (`GRPC_ARG_MAX_METADATA_SIZE`),
/// counted as HPACK does (name + value + 32 per field).
pub const CLIENT_METADATA_LIMIT: usize = 8 << 10;

/// The status in `headers`, which must be there, in metadata any gRPC client can read.
fn status_in(headers: &http::HeaderMap, what: &str) -> Result<Code, String> {
    let status = Status::read_from(headers).ok_or_else(|| format!("{what} without a valid grpc-status: {headers:?}"))?;
    let size: usize = headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 32).sum();
    if size > CLIENT_METADATA_LIMIT {
        return Err(format!(
            "{what} of {size} bytes, over the {CLIENT_METADATA_LIMIT} bytes a gRPC client reads: {:?}...",
            &status.to_string()[..200.min(status.to_string().len())]
        ));
    }
    Ok(status.code())
}

/// Makes `case`'s call with the `h2` client on a fresh connection and judges the answer.
pub async fn run_grpc(addr: SocketAddr, case: &GrpcCase) -> Result<Seen, String> {
    let Some(request) = request_of(addr, case) else {
        return Ok(Seen::NotSent);
    };
    let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect to the client listener failed: {e}"))?;
    let handshake = tokio::time::timeout(ANSWER_BOUND, h2::client::handshake(tcp)).await;
    let (client, connection) = handshake
        .map_err(|_| format!("no HTTP/2 handshake within {ANSWER_BOUND:?}"))?
        .map_err(|e| format!("HTTP/2 handshake failed: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let seen = call(client, request, case).await;
    driver.abort();
    seen
}

async fn call(client: h2::client::SendRequest<Bytes>, request: Request<()>, case: &GrpcCase) -> Result<Seen, String> {
    let Ok(Ok(mut client)) = tokio::time::timeout(ANSWER_BOUND, client.ready()).await else {
        return Err(format!("the connection was not ready for a request within {ANSWER_BOUND:?}"));
    };
    let (response, mut send) = match client.send_request(request, false) {
        Ok(sent) => sent,
        Err(error) if error.is_remote() || error.is_go_away() || error.is_io() => return Ok(Seen::Refused),
        Err(_) => return Ok(Seen::NotSent),
    };
    let frames = body_frames(case);
    let count = frames.len();
    for (i, frame) in frames.into_iter().enumerate() {
        let last = i + 1 == count;
        if send.send_data(frame, last).is_err() {
            break; // the server reset the stream already; the response says how
        }
    }
    let started = Instant::now();
    let response = match tokio::time::timeout(ANSWER_BOUND, response).await {
        Err(_) => return Err(format!("no response headers within {ANSWER_BOUND:?}")),
        Ok(Err(_)) => return Ok(Seen::Refused),
        Ok(Ok(response)) => response,
    };
    let (parts, mut body) = response.into_parts();
    if body.is_end_stream() {
        if parts.status == http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE && Status::read_from(&parts.headers).is_none() {
            return Ok(Seen::HeadersTooLarge);
        }
        return status_in(&parts.headers, "a trailers-only response").map(Seen::Status);
    }
    let streaming = case.streaming.unwrap_or(false);
    let bound = if streaming { STREAM_READ } else { ANSWER_BOUND.saturating_sub(started.elapsed()) };
    let rest = tokio::time::timeout(bound, async {
        while let Some(frame) = body.data().await {
            match frame {
                Ok(frame) => {
                    let _ = body.flow_control().release_capacity(frame.len());
                }
                Err(_) => return Err(()),
            }
        }
        body.trailers().await.map_err(|_| ())
    })
    .await;
    match rest {
        Err(_) if streaming => Ok(Seen::StreamOpen),
        Err(_) => Err(format!("a unary call's response did not end within {ANSWER_BOUND:?}")),
        Ok(Err(())) => Ok(Seen::Refused),
        Ok(Ok(Some(trailers))) => status_in(&trailers, "trailers").map(Seen::Status),
        Ok(Ok(None)) => Err("a response ended without trailers".to_owned()),
    }
}

/// Runs one connection of a case.
pub async fn run_conn(addr: SocketAddr, conn: &Conn) -> Result<(Seen, Option<Held>), String> {
    match conn {
        Conn::Raw(case) => run_raw(addr, case).await,
        Conn::Grpc(case) => run_grpc(addr, case).await.map(|seen| (seen, None)),
    }
}
