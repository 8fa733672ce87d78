//! Hand-built HTTP/2 bytes for the edge fuzzer: frames with any header (lying lengths,
//! unknown types, any flags and stream ids) and HPACK header blocks made only of literal
//! fields without indexing (RFC 7541 §6.2.2), which can carry any name and value bytes —
//! including the ones a real HTTP/2 library refuses to send. A minimal reader splits what
//! the server wrote back into frames.

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// Appends a frame whose header announces `declared_len` (only the low 24 bits are sent)
/// followed by `payload`, whatever its real length.
pub fn put_frame_lying(out: &mut Vec<u8>, declared_len: u32, kind: u8, flags: u8, stream_id: u32, payload: &[u8]) {
    out.extend_from_slice(&declared_len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Appends a frame with an honest length.
pub fn put_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream_id: u32, payload: &[u8]) {
    put_frame_lying(out, payload.len() as u32, kind, flags, stream_id, payload);
}

/// Appends an empty SETTINGS frame (what a client sends right after the preface).
pub fn put_settings(out: &mut Vec<u8>, settings: &[(u16, u32)], flags: u8) {
    let mut payload = Vec::with_capacity(settings.len() * 6);
    for (id, value) in settings {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    put_frame(out, SETTINGS, flags, 0, &payload);
}

/// An HPACK integer with an `prefix_bits`-bit prefix, the prefix's high bits set to `high`.
fn put_hpack_int(out: &mut Vec<u8>, high: u8, prefix_bits: u32, value: usize) {
    let max_prefix = (1usize << prefix_bits) - 1;
    if value < max_prefix {
        out.push(high | value as u8);
        return;
    }
    out.push(high | max_prefix as u8);
    let mut rest = value - max_prefix;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// Appends one header field as a literal without indexing with a new name (no Huffman).
pub fn put_literal_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    put_hpack_int(out, 0x00, 7, name.len());
    out.extend_from_slice(name);
    put_hpack_int(out, 0x00, 7, value.len());
    out.extend_from_slice(value);
}

/// A header block of literal fields.
pub fn header_block(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        put_literal_header(&mut block, name, value);
    }
    block
}

/// The request headers of a well-formed gRPC call to `path`.
pub fn grpc_request_fields(path: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    [
        (&b":method"[..], &b"POST"[..]),
        (b":scheme", b"http"),
        (b":path", path),
        (b":authority", b"127.0.0.1"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]
    .iter()
    .map(|(name, value)| (name.to_vec(), value.to_vec()))
    .collect()
}

/// One frame the server wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerFrame {
    pub kind: u8,
    pub flags: u8,
    pub stream_id: u32,
    pub payload_len: usize,
}

/// Splits the server's bytes into frames; `None` if they are not a sequence of frames
/// (a trailing partial frame is allowed: the connection may have been cut mid-write).
pub fn split_frames(mut bytes: &[u8]) -> Option<Vec<ServerFrame>> {
    let mut frames = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        let frame = ServerFrame {
            kind: bytes[3],
            flags: bytes[4],
            stream_id: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff,
            payload_len: len,
        };
        // The server never sends frames over the 16 KiB default before our SETTINGS allow it.
        if frame.kind > CONTINUATION || len > (1 << 14) {
            return None;
        }
        frames.push(frame);
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    Some(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpack_integers_follow_rfc_7541_examples() {
        let mut out = Vec::new();
        put_hpack_int(&mut out, 0, 5, 10);
        assert_eq!(out, [10]);
        out.clear();
        put_hpack_int(&mut out, 0, 5, 1337);
        assert_eq!(out, [31, 154, 10]);
    }
}
