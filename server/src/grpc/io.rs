//! Adapter that lets `h2` (written against tokio's I/O traits) drive a glommio TCP stream,
//! with no tokio runtime involved.
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::io::{AsyncRead as _, AsyncWrite as _};
use glommio::net::TcpStream;

use crate::metrics::edge;

/// A glommio `TcpStream` seen through `tokio::io::{AsyncRead, AsyncWrite}`.
#[derive(Debug)]
pub struct GlommioIo {
    stream: TcpStream,
}

impl GlommioIo {
    /// Wraps `stream`.
    pub fn new(stream: TcpStream) -> GlommioIo {
        GlommioIo { stream }
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

impl tokio::io::AsyncRead for GlommioIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<io::Result<()>> {
        let unfilled = buf.initialize_unfilled();
        match Pin::new(&mut self.stream).poll_read(cx, unfilled) {
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
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(_))) {
            edge::count(|e| e.connection_writes += 1);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx).map(|result| not_connected_is_end(result, ()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_close(cx).map(|result| not_connected_is_end(result, ()))
    }
}
