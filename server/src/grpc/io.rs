//! Adapter that lets `h2` (written against tokio's I/O traits) drive a glommio TCP stream,
//! plain or inside a TLS session (futures-rustls), with no tokio runtime involved.
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use conclave_wire::tls::futures_rustls::server::TlsStream;
use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use crate::metrics::edge;

/// A glommio `TcpStream`, or a TLS session on one, seen through
/// `tokio::io::{AsyncRead, AsyncWrite}`.
#[derive(Debug)]
pub struct GlommioIo {
    transport: Transport,
}

#[derive(Debug)]
enum Transport {
    Plain(TcpStream),
    // Boxed: a TLS session's buffers are large next to a bare stream.
    Tls(Box<TlsStream<TcpStream>>),
}

impl GlommioIo {
    /// Wraps a plaintext `stream`.
    pub fn new(stream: TcpStream) -> GlommioIo {
        GlommioIo { transport: Transport::Plain(stream) }
    }

    /// Wraps a TLS session whose handshake has completed.
    pub fn tls(stream: TlsStream<TcpStream>) -> GlommioIo {
        GlommioIo { transport: Transport::Tls(Box::new(stream)) }
    }

    /// Whether the connection is a TLS session.
    pub fn is_tls(&self) -> bool {
        matches!(self.transport, Transport::Tls(_))
    }
}

/// glommio reports reads, writes and shutdowns on a connection the peer already closed as
/// `ENOTCONN`; for h2 that is an orderly end, not an error.
fn not_connected_is_end<T>(result: io::Result<T>, end: T) -> io::Result<T> {
    match result {
        Err(error) if error.kind() == io::ErrorKind::NotConnected => Ok(end),
        other => other,
    }
}

impl Transport {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self {
            Transport::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self {
            Transport::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Transport::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    /// For TLS: sends close_notify, then closes the stream.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Transport::Plain(stream) => Pin::new(stream).poll_close(cx),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_close(cx),
        }
    }
}

impl tokio::io::AsyncRead for GlommioIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<io::Result<()>> {
        let unfilled = buf.initialize_unfilled();
        match self.transport.poll_read(cx, unfilled) {
            Poll::Ready(result) => {
                let read = not_connected_is_end(result, 0)?;
                buf.advance(read);
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl tokio::io::AsyncWrite for GlommioIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let written = self.transport.poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(_))) {
            edge::count(|e| e.connection_writes += 1);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.transport.poll_flush(cx).map(|result| not_connected_is_end(result, ()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.transport.poll_close(cx).map(|result| not_connected_is_end(result, ()))
    }
}
