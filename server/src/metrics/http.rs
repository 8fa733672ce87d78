//! A small HTTP/1.1 server on glommio for the metrics listener: `GET` (or `HEAD`) requests
//! parsed by `httparse`, answered by a handler that maps the path to a response. Requests
//! are bounded in size ([`MAX_REQUEST_BYTES`]) and in time ([`READ_TIMEOUT`] from the first
//! byte to the end of the headers, and as the idle time of a kept-alive connection); a
//! request with a body, a malformed one or one past the limits gets a 4xx answer and the
//! connection is closed. Keep-alive follows HTTP/1.1 (`Connection: close` ends it), up to
//! [`MAX_REQUESTS_PER_CONNECTION`].

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use crate::grpc::LocalBoxFuture;

/// The largest request (line and headers) read.
pub const MAX_REQUEST_BYTES: usize = 8 << 10;
/// The longest a request may take to arrive, and a kept-alive connection may stay idle.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests served on one connection before it is closed.
pub const MAX_REQUESTS_PER_CONNECTION: usize = 1000;
/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 64;
const MAX_HEADERS: usize = 64;

/// What the handler answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response { status, content_type: "text/plain; charset=utf-8", body: body.into() }
    }
}

/// Maps a request path (without its query) to a response.
pub type Handler = Rc<dyn Fn(String) -> LocalBoxFuture<Response>>;

/// Serves `listener` until the task is dropped (the shard stops).
pub async fn serve(listener: TcpListener, handler: Handler) {
    let open = Rc::new(Cell::new(0usize));
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a metrics connection failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if open.get() >= MAX_CONNECTIONS {
            tracing::debug!("too many metrics connections; closing a new one");
            drop(stream);
            continue;
        }
        open.set(open.get() + 1);
        let (handler, open) = (Rc::clone(&handler), Rc::clone(&open));
        glommio::spawn_local(async move {
            serve_connection(stream, &handler).await;
            open.set(open.get() - 1);
        })
        .detach();
    }
}

/// What reading one request gave.
enum Read {
    /// A request; the bytes past its end stay in the buffer.
    Request { method: String, path: String, keep_alive: bool },
    /// The peer closed the connection between requests.
    Closed,
    /// Answer this and close.
    Refuse(Response),
}

async fn serve_connection(mut stream: TcpStream, handler: &Handler) {
    let mut buffer = Vec::with_capacity(1024);
    for _ in 0..MAX_REQUESTS_PER_CONNECTION {
        let (method, path, keep_alive) = match read_request(&mut stream, &mut buffer).await {
            Read::Request { method, path, keep_alive } => (method, path, keep_alive),
            Read::Closed => return,
            Read::Refuse(response) => {
                let _ = write_response(&mut stream, &response, false, false).await;
                return;
            }
        };
        let response = if method == "GET" || method == "HEAD" {
            handler(path).await
        } else {
            Response::text(405, format!("method {method} is not allowed: use GET\n"))
        };
        if write_response(&mut stream, &response, method == "HEAD", keep_alive).await.is_err() || !keep_alive {
            return;
        }
    }
}

/// Reads one request's line and headers into `buffer` (which may already hold its start).
async fn read_request(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Read {
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut chunk = [0u8; 2048];
    loop {
        if !buffer.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut request = httparse::Request::new(&mut headers);
            match request.parse(buffer) {
                Ok(httparse::Status::Complete(length)) => {
                    let read = parsed(&request);
                    buffer.drain(..length);
                    return read;
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Read::Refuse(Response::text(400, format!("malformed HTTP request: {e}\n"))),
            }
            if buffer.len() >= MAX_REQUEST_BYTES {
                return Read::Refuse(Response::text(431, format!("the request headers exceed {MAX_REQUEST_BYTES} bytes\n")));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Read::Refuse(Response::text(408, "the request did not arrive in time\n"));
        }
        let want = chunk.len().min(MAX_REQUEST_BYTES - buffer.len());
        match stream.read(&mut chunk[..want]).await {
            Ok(0) if buffer.is_empty() => return Read::Closed,
            Ok(0) => return Read::Refuse(Response::text(400, "the connection closed inside a request\n")),
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut && buffer.is_empty() => return Read::Closed,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Read::Refuse(Response::text(408, "the request did not arrive in time\n"))
            }
            Err(_) => return Read::Closed,
        }
    }
}

/// The request's method, path (query cut off) and whether the connection stays open; a
/// request with a body is refused (nothing here takes one).
fn parsed(request: &httparse::Request<'_, '_>) -> Read {
    let method = request.method.unwrap_or_default().to_owned();
    let path = request.path.unwrap_or("/");
    let path = path.split_once('?').map_or(path, |(path, _)| path).to_owned();
    let header = |name: &str| request.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
    let has_body = header("transfer-encoding").is_some() || header("content-length").is_some_and(|v| v.trim_ascii() != b"0");
    if has_body {
        return Read::Refuse(Response::text(400, "requests to this listener carry no body\n"));
    }
    let connection = header("connection").map(|v| v.to_ascii_lowercase());
    let keep_alive = match request.version {
        Some(1) => !connection.as_deref().is_some_and(|v| v.windows(5).any(|w| w == b"close")),
        _ => connection.as_deref().is_some_and(|v| v.windows(10).any(|w| w == b"keep-alive")),
    };
    Read::Request { method, path, keep_alive }
}

async fn write_response(stream: &mut TcpStream, response: &Response, head_only: bool, keep_alive: bool) -> std::io::Result<()> {
    let reason = match response.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    };
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: {}\r\n",
        response.status,
        response.content_type,
        response.body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    );
    if response.status == 405 {
        head.push_str("Allow: GET, HEAD\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(response.body.as_bytes()).await?;
    }
    stream.flush().await
}
