//! Serving one HTTP/2 stream as a gRPC call: request validation (method, content-type,
//! encoding, path, `grpc-timeout`), reading the single request message (or handing the
//! request stream to a bidirectional handler), running the handler under the deadline, and
//! writing the response (trailers-only on errors; for server and bidirectional streams,
//! queue draining under HTTP/2 flow control with coalesced DATA chunks).
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};

use super::framing::{frame_message, parse_grpc_timeout, MessageDecoder};
use super::requests::RequestStream;
use super::router::{CallContext, ConnectionInfo, LocalBoxFuture, Route, Router};
use super::server::{CallObserver, ServerConfig};
use super::signal::{Fired, Signal};
use super::status::{Code, Status};
use super::stream::{OverflowPolicy, StreamLimits, StreamSink};
use crate::timer_queue::{self, Sleep};

const GRPC_CONTENT_TYPE: HeaderValue = HeaderValue::from_static("application/grpc");

/// Everything a call needs from its connection and server.
pub(crate) struct CallEnv {
    pub router: Rc<Router>,
    pub config: Rc<ServerConfig>,
    pub connection: Rc<ConnectionInfo>,
    pub shutdown: Signal,
    pub call_observer: Option<Rc<dyn CallObserver>>,
}

/// Reports a routed call to the server's [`CallObserver`] when dropped, with the code set
/// last (`CANCELLED` unless the call reached an answer).
struct CallRecord {
    observer: Option<Rc<dyn CallObserver>>,
    path: Rc<str>,
    streaming: bool,
    started: Instant,
    code: Code,
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        if let Some(observer) = &self.observer {
            observer.call_finished(&self.path, self.streaming, self.code, self.started.elapsed());
        }
    }
}

/// Whether `request` is for a server or bidirectional stream (served by a task of its
/// own); unary calls and requests answered with an error at once are not.
pub(crate) fn is_streaming(request: &Request<RecvStream>, router: &Router) -> bool {
    matches!(router.resolve(request.uri().path()), Ok(Route::ServerStreaming(..) | Route::BidiStreaming(..)))
}

/// Serves one request stream to completion. Never panics on client input.
pub(crate) async fn serve_call(request: Request<RecvStream>, mut respond: SendResponse<Bytes>, env: Rc<CallEnv>) {
    let (parts, body) = request.into_parts();
    if let Err((http_status, status)) = check_request_shape(&parts.method, &parts.headers) {
        send_trailers_only(&mut respond, http_status, &status);
        return;
    }
    let path: Rc<str> = Rc::from(parts.uri.path());
    let route = match env.router.resolve(&path) {
        Ok(route) => route.clone(),
        Err(status) => {
            send_trailers_only(&mut respond, StatusCode::OK, &status);
            return;
        }
    };
    let mut record = CallRecord {
        observer: env.call_observer.clone(),
        path: Rc::clone(&path),
        streaming: !matches!(route, Route::Unary(..)),
        started: Instant::now(),
        code: Code::Cancelled,
    };
    let deadline = match parts.headers.get("grpc-timeout") {
        None => None,
        Some(value) => match parse_grpc_timeout(value.as_bytes()) {
            // A timeout too far away to represent (thousands of years) means no deadline.
            Ok(timeout) => Instant::now().checked_add(timeout).map(|at| (timeout, at)),
            Err(status) => {
                record.code = status.code();
                send_trailers_only(&mut respond, StatusCode::OK, &status);
                return;
            }
        },
    };
    // On the shard's timer queue: a call without `grpc-timeout` arms nothing.
    let mut deadline_timer = deadline.map(|(timeout, at)| (timeout, timer_queue::sleep_until(at)));
    let ctx = CallContext::new(Rc::clone(&path), deadline.map(|(_, at)| at), Rc::new(parts.headers), Rc::clone(&env.connection));
    let (handler_future, sink) = match route {
        Route::Unary(handler) => {
            let request = match read_single_request(body, &mut deadline_timer, &mut respond, &env).await {
                Ok(request) => request,
                Err(code) => {
                    record.code = code;
                    return;
                }
            };
            let outcome = race_call(handler(request, ctx), &mut deadline_timer, &mut respond, &env).await;
            match outcome {
                CallOutcome::Done(Ok(response)) => record.code = send_unary(&mut respond, response, &env),
                CallOutcome::Done(Err(status)) | CallOutcome::Deadline(status) => {
                    record.code = status.code();
                    send_trailers_only(&mut respond, StatusCode::OK, &status)
                }
                CallOutcome::ClientGone => {}
            }
            return;
        }
        Route::ServerStreaming(handler, limits) => {
            let request = match read_single_request(body, &mut deadline_timer, &mut respond, &env).await {
                Ok(request) => request,
                Err(code) => {
                    record.code = code;
                    return;
                }
            };
            let sink = StreamSink::new(limits, env.config.max_send_message_len);
            (handler(request, ctx, sink.clone()), sink)
        }
        Route::BidiStreaming(handler, limits) => {
            // The handler reads the request messages itself, while responses flow.
            let sink = StreamSink::new(limits, env.config.max_send_message_len);
            (handler(RequestStream::new(body, recv_decoder(&env)), ctx, sink.clone()), sink)
        }
    };
    let mut writer = StreamWriter {
        respond,
        send: None,
        pending: None,
        final_status: None,
        handler: Some(handler_future),
        sink,
        shutdown: env.shutdown.fired(),
        connection_closed: env.connection.closed(),
        deadline: deadline_timer,
        target_chunk_len: env.config.target_chunk_len,
    };
    poll_fn(|cx| writer.poll_drive(cx)).await;
    writer.sink.end();
    record.code = writer.final_status.as_ref().map_or(Code::Cancelled, Status::code);
}

/// Reads the one request message of a unary or server-streaming call (under the call's
/// deadline). On failure the call is answered here and its code returned (`CANCELLED`
/// when the client left).
async fn read_single_request(
    mut body: RecvStream,
    deadline_timer: &mut Option<(std::time::Duration, Sleep)>,
    respond: &mut SendResponse<Bytes>,
    env: &CallEnv,
) -> Result<Bytes, Code> {
    let request = race_call(read_request(&mut body, recv_decoder(env)), deadline_timer, respond, env).await;
    drop(body);
    match request {
        CallOutcome::Done(Ok(request)) => Ok(request),
        CallOutcome::Done(Err(status)) | CallOutcome::Deadline(status) => {
            send_trailers_only(respond, StatusCode::OK, &status);
            Err(status.code())
        }
        CallOutcome::ClientGone => Err(Code::Cancelled),
    }
}

/// Rejects requests that are not gRPC at all, or use features this server lacks.
fn check_request_shape(method: &Method, headers: &HeaderMap) -> Result<(), (StatusCode, Status)> {
    if method != Method::POST {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            Status::unimplemented(format!("HTTP method {method} is not allowed: gRPC uses POST")),
        ));
    }
    let content_type = headers.get(http::header::CONTENT_TYPE).map(HeaderValue::as_bytes);
    let is_grpc = content_type.is_some_and(|value| {
        let essence = value.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
        essence == b"application/grpc" || essence == b"application/grpc+proto"
    });
    if !is_grpc {
        let shown = content_type.map(String::from_utf8_lossy).unwrap_or("(none)".into());
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Status::invalid_argument(format!(
                "content-type {shown} is not supported: send application/grpc or \
                 application/grpc+proto"
            )),
        ));
    }
    if let Some(encoding) = headers.get("grpc-encoding") {
        if encoding.as_bytes() != b"identity" {
            return Err((
                StatusCode::OK,
                Status::unimplemented(format!(
                    "grpc-encoding {} is not supported: this server accepts identity only",
                    String::from_utf8_lossy(encoding.as_bytes())
                )),
            ));
        }
    }
    Ok(())
}

/// How a raced step of a call ended.
enum CallOutcome<T> {
    Done(T),
    Deadline(Status),
    ClientGone,
}

/// Runs `work` until it completes, the deadline passes, or the client resets the stream
/// or closes the connection.
async fn race_call<T>(
    work: impl Future<Output = T>,
    deadline: &mut Option<(std::time::Duration, Sleep)>,
    respond: &mut SendResponse<Bytes>,
    env: &CallEnv,
) -> CallOutcome<T> {
    let mut work = std::pin::pin!(work);
    let mut connection_closed = env.connection.closed();
    poll_fn(|cx| {
        if connection_closed.poll_fired(cx).is_ready() {
            return Poll::Ready(CallOutcome::ClientGone);
        }
        if let Poll::Ready(result) = work.as_mut().poll(cx) {
            return Poll::Ready(CallOutcome::Done(result));
        }
        if let Some(status) = poll_deadline(deadline, cx) {
            return Poll::Ready(CallOutcome::Deadline(status));
        }
        if respond.poll_reset(cx).is_ready() {
            return Poll::Ready(CallOutcome::ClientGone);
        }
        Poll::Pending
    })
    .await
}

fn poll_deadline(deadline: &mut Option<(std::time::Duration, Sleep)>, cx: &mut Context<'_>) -> Option<Status> {
    let (timeout, timer) = deadline.as_mut()?;
    Pin::new(timer)
        .poll(cx)
        .is_ready()
        .then(|| Status::deadline_exceeded(format!("the call's deadline of {timeout:?} (grpc-timeout) passed")))
}

/// A decoder of the call's request messages, charged to its connection's budget.
fn recv_decoder(env: &CallEnv) -> MessageDecoder {
    MessageDecoder::with_budget(env.config.max_recv_message_len, env.connection.recv_budget(env.config.max_recv_buffered_per_connection))
}

/// Reads the body of a unary or server-streaming call: exactly one message.
async fn read_request(body: &mut RecvStream, mut decoder: MessageDecoder) -> Result<Bytes, Status> {
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|error| Status::cancelled(format!("the request stream failed before its end: {error}")))?;
        // Returning the window right away is safe: the decoder refuses oversized messages.
        let _ = body.flow_control().release_capacity(chunk.len());
        decoder.push(&chunk)?;
    }
    let message = decoder
        .next_message()?
        .ok_or_else(|| Status::internal("the request carried no complete message: a unary or server-streaming call needs exactly one"))?;
    if decoder.buffered_len() > 0 {
        return Err(Status::internal("the request carried more than one message: a unary or server-streaming call takes exactly one"));
    }
    Ok(message)
}

fn response_headers(http_status: StatusCode) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = http_status;
    let headers = response.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, GRPC_CONTENT_TYPE);
    headers.insert("grpc-accept-encoding", HeaderValue::from_static("identity"));
    response
}

/// An error answered with a single HEADERS frame that ends the stream.
fn send_trailers_only(respond: &mut SendResponse<Bytes>, http_status: StatusCode, status: &Status) {
    let mut response = response_headers(http_status);
    status.write_to(response.headers_mut());
    if let Err(error) = respond.send_response(response, true) {
        tracing::debug!(%error, "could not send a trailers-only response");
    }
}

/// Sends a unary response; returns the status code the call ended with.
fn send_unary(respond: &mut SendResponse<Bytes>, response: Bytes, env: &CallEnv) -> Code {
    let max = env.config.max_send_message_len;
    if response.len() > max {
        let status = Status::resource_exhausted(format!(
            "response message of {} bytes exceeds this server's send limit of {max} bytes",
            response.len()
        ));
        send_trailers_only(respond, StatusCode::OK, &status);
        return status.code();
    }
    let sent = respond.send_response(response_headers(StatusCode::OK), false).and_then(|mut stream| {
        stream.send_data(frame_message(&response), false)?;
        let mut trailers = HeaderMap::new();
        Status::ok().write_to(&mut trailers);
        stream.send_trailers(trailers)
    });
    if let Err(error) = sent {
        tracing::debug!(%error, "could not send a unary response");
        return Code::Cancelled;
    }
    Code::Ok
}

/// The state of a server-streaming call's response.
struct StreamWriter {
    respond: SendResponse<Bytes>,
    send: Option<SendStream<Bytes>>,
    /// Part of a coalesced chunk not yet handed to h2.
    pending: Option<Bytes>,
    /// Set once the stream must end; `None` while the handler may still produce.
    final_status: Option<Status>,
    handler: Option<LocalBoxFuture<Result<(), Status>>>,
    sink: StreamSink,
    shutdown: Fired,
    connection_closed: Fired,
    deadline: Option<(std::time::Duration, Sleep)>,
    target_chunk_len: usize,
}

impl StreamWriter {
    /// Ends production: drops the handler and refuses further pushes. An error status
    /// also discards queued messages (they are not owed to the client).
    fn finish(&mut self, status: Status) {
        if self.final_status.is_some() {
            return;
        }
        self.handler = None;
        self.sink.end();
        if status.code() != super::Code::Ok {
            self.sink.discard_queued();
        }
        self.final_status = Some(status);
    }

    fn overflow_status(&self) -> Status {
        let limits: StreamLimits = self.sink.limits();
        debug_assert_eq!(limits.overflow, OverflowPolicy::EndStream);
        Status::resource_exhausted(format!(
            "the stream fell behind: more than {} messages or {} bytes were waiting for the \
             client to read them; call again to resume from the current state",
            limits.max_queued_messages, limits.max_queued_bytes
        ))
    }

    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let reset = match self.send.as_mut() {
                Some(send) => send.poll_reset(cx),
                None => self.respond.poll_reset(cx),
            };
            if reset.is_ready() || self.connection_closed.poll_fired(cx).is_ready() {
                return Poll::Ready(());
            }
            if let Some(status) = poll_deadline(&mut self.deadline, cx) {
                self.deadline = None;
                self.finish(status);
            }
            if self.shutdown.poll_fired(cx).is_ready() {
                self.finish(Status::unavailable("the server is shutting down; call again on another node"));
            }
            if let Some(handler) = self.handler.as_mut() {
                if let Poll::Ready(result) = handler.as_mut().poll(cx) {
                    self.finish(result.err().unwrap_or_else(Status::ok));
                }
            }
            if self.sink.overflowed() {
                let status = self.overflow_status();
                self.finish(status);
            }
            if self.send.is_none() {
                match &self.final_status {
                    Some(status) if self.sink.queued_messages() == 0 => {
                        send_trailers_only(&mut self.respond, StatusCode::OK, status);
                        return Poll::Ready(());
                    }
                    _ => match self.respond.send_response(response_headers(StatusCode::OK), false) {
                        Ok(send) => self.send = Some(send),
                        Err(_) => return Poll::Ready(()),
                    },
                }
            }
            let Some(send) = self.send.as_mut() else {
                unreachable!("response headers were sent above");
            };
            if self.pending.is_none() {
                self.pending = self.sink.poll_chunk(cx, self.target_chunk_len);
            }
            let Some(chunk) = self.pending.as_mut() else {
                let Some(status) = self.final_status.as_ref() else {
                    return Poll::Pending;
                };
                let mut trailers = HeaderMap::new();
                status.write_to(&mut trailers);
                if let Err(error) = send.send_trailers(trailers) {
                    tracing::debug!(%error, "could not send stream trailers");
                }
                return Poll::Ready(());
            };
            let ending_with_error = self.final_status.as_ref().is_some_and(|status| status.code() != super::Code::Ok);
            // An ending stream hands its last partial chunk to h2 without waiting for the
            // window (bounded by one chunk), so the trailers are not held back.
            let sendable = if ending_with_error {
                chunk.len()
            } else {
                send.reserve_capacity(chunk.len());
                match send.capacity() {
                    0 => match send.poll_capacity(cx) {
                        Poll::Ready(Some(Ok(_))) => continue,
                        Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                        Poll::Pending => return Poll::Pending,
                    },
                    capacity => capacity.min(chunk.len()),
                }
            };
            let part = chunk.split_to(sendable);
            if chunk.is_empty() {
                self.pending = None;
            }
            if send.send_data(part, false).is_err() {
                return Poll::Ready(());
            }
        }
    }
}
