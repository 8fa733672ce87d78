//! The request side of a client-streaming or bidirectional call: a [`RequestStream`] reads
//! the client's messages one at a time from the HTTP/2 request body, as the handler asks for
//! them. Flow-control window is returned only for the DATA a read consumes, so a client that
//! sends faster than the handler reads is held back by HTTP/2 rather than buffered here.
use bytes::Bytes;
use h2::RecvStream;

use super::framing::MessageDecoder;
use super::status::Status;

/// The client's messages of one call, in order.
#[derive(Debug)]
pub struct RequestStream {
    body: RecvStream,
    decoder: MessageDecoder,
    /// The client half-closed its side (END_STREAM received).
    ended: bool,
}

impl RequestStream {
    pub(crate) fn new(body: RecvStream, decoder: MessageDecoder) -> RequestStream {
        RequestStream { body, decoder, ended: false }
    }

    /// The next request message, or `None` once the client has closed its side of the
    /// stream. A message split across DATA frames is reassembled; a message over the
    /// server's receive limit, a compressed one, or a stream that ends inside a message is an
    /// error, and so is a stream the client reset.
    pub async fn message(&mut self) -> Result<Option<Bytes>, Status> {
        loop {
            if let Some(message) = self.decoder.next_message()? {
                return Ok(Some(message));
            }
            if self.ended {
                if self.decoder.buffered_len() > 0 {
                    return Err(Status::internal(format!(
                        "the request stream ended inside a message ({} bytes of it arrived)",
                        self.decoder.buffered_len()
                    )));
                }
                return Ok(None);
            }
            match self.body.data().await {
                Some(Ok(chunk)) => {
                    // Safe to return at once: the decoder refuses an oversized message
                    // before buffering it, and only this read's chunk is held.
                    let _ = self.body.flow_control().release_capacity(chunk.len());
                    self.decoder.push(&chunk)?;
                }
                Some(Err(error)) => return Err(Status::cancelled(format!("the request stream failed before its end: {error}"))),
                None => self.ended = true,
            }
        }
    }

    /// The next request message decoded as `M` (`INVALID_ARGUMENT` when it does not
    /// decode), or `None` once the client has closed its side.
    pub async fn message_of<M: prost::Message + Default>(&mut self) -> Result<Option<M>, Status> {
        let Some(bytes) = self.message().await? else {
            return Ok(None);
        };
        M::decode(bytes)
            .map(Some)
            .map_err(|error| Status::invalid_argument(format!("could not decode a request message of the stream: {error}")))
    }
}
