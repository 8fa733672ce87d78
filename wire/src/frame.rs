//! The frame header: its byte layout, its flags, the size limits and the errors a frame can have.
//!
//! A frame is a fixed 20-byte header followed by a body of length-delimited protobuf messages:
//!
//! | offset | size | field                                              |
//! |-------:|-----:|----------------------------------------------------|
//! |      0 |    4 | magic `b"CNCW"`                                    |
//! |      4 |    1 | version ([`FRAME_VERSION`])                        |
//! |      5 |    1 | flags ([`FrameFlags`])                             |
//! |      6 |    2 | reserved, zero                                     |
//! |      8 |    4 | message count, little endian                       |
//! |     12 |    4 | body length in bytes, little endian                |
//! |     16 |    4 | crc32 (IEEE, `crc32fast`) of the body, little endian |
//!
//! The body is `count` messages, each a varint length then that many protobuf bytes.

use std::fmt;

/// The first four bytes of every frame.
pub const FRAME_MAGIC: [u8; 4] = *b"CNCW";
/// The framing version this crate writes and accepts.
pub const FRAME_VERSION: u8 = 1;
/// Size of the fixed frame header in bytes.
pub const HEADER_LEN: usize = 20;
/// Default largest frame body accepted or produced: 16 MiB.
pub const DEFAULT_MAX_BODY_LEN: u32 = 16 << 20;
/// Default most messages in one frame. Bounds the memory of a decoded batch: one body byte
/// can decode into a whole (empty) message struct.
pub const DEFAULT_MAX_MESSAGES: u32 = 1 << 16;

/// Flag bits of a frame header. Unknown bits are rejected by the decoder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FrameFlags(u8);

impl FrameFlags {
    /// No flag set: an ordinary frame of application messages.
    pub const NONE: FrameFlags = FrameFlags(0);
    /// The frame carries the connection handshake (or its reply).
    pub const HANDSHAKE: FrameFlags = FrameFlags(1);
    /// The frame carries bulk-lane messages (snapshot chunks), sent at lower priority.
    pub const BULK: FrameFlags = FrameFlags(2);
    const KNOWN: u8 = 1 | 2;

    /// The raw bits.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// Flags from raw bits, or `None` when a bit unknown to this version is set.
    pub fn from_bits(bits: u8) -> Option<FrameFlags> {
        (bits & !Self::KNOWN == 0).then_some(FrameFlags(bits))
    }

    /// True when every bit of `other` is set in `self`.
    pub fn contains(self, other: FrameFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

/// Size limits shared by the encoder and the decoder of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest frame body in bytes; a larger frame is refused by both sides.
    pub max_body_len: u32,
    /// Most messages in one frame; a frame claiming more is refused by both sides.
    pub max_messages: u32,
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits { max_body_len: DEFAULT_MAX_BODY_LEN, max_messages: DEFAULT_MAX_MESSAGES }
    }
}

/// A decoded, validated frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// The frame's flags.
    pub flags: FrameFlags,
    /// Number of messages in the body.
    pub count: u32,
    /// Length of the body in bytes.
    pub body_len: u32,
    /// crc32 of the body.
    pub body_crc: u32,
}

impl FrameHeader {
    /// Writes the header into `dst`, which must be exactly [`HEADER_LEN`] bytes.
    pub fn write_to(&self, dst: &mut [u8]) {
        assert_eq!(dst.len(), HEADER_LEN, "frame header slot has the wrong size");
        dst[0..4].copy_from_slice(&FRAME_MAGIC);
        dst[4] = FRAME_VERSION;
        dst[5] = self.flags.bits();
        dst[6..8].copy_from_slice(&[0, 0]);
        dst[8..12].copy_from_slice(&self.count.to_le_bytes());
        dst[12..16].copy_from_slice(&self.body_len.to_le_bytes());
        dst[16..20].copy_from_slice(&self.body_crc.to_le_bytes());
    }

    /// Parses and checks a header against `limits`. `src` must hold at least [`HEADER_LEN`]
    /// bytes; only the first [`HEADER_LEN`] are read.
    pub fn parse(src: &[u8], limits: FrameLimits) -> Result<FrameHeader, FrameError> {
        assert!(src.len() >= HEADER_LEN, "frame header parsed from a short slice");
        let magic: [u8; 4] = [src[0], src[1], src[2], src[3]];
        if magic != FRAME_MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        if src[4] != FRAME_VERSION {
            return Err(FrameError::UnsupportedVersion(src[4]));
        }
        let flags = FrameFlags::from_bits(src[5]).ok_or(FrameError::UnknownFlags(src[5]))?;
        if src[6] != 0 || src[7] != 0 {
            return Err(FrameError::ReservedBitsSet);
        }
        let word = |at: usize| u32::from_le_bytes([src[at], src[at + 1], src[at + 2], src[at + 3]]);
        let (count, body_len, body_crc) = (word(8), word(12), word(16));
        if body_len > limits.max_body_len {
            return Err(FrameError::TooLarge { body_len, max_body_len: limits.max_body_len });
        }
        if count > limits.max_messages {
            return Err(FrameError::TooManyMessages { count, max_messages: limits.max_messages });
        }
        // Every message takes at least one byte (its length varint), so a count larger than
        // the body is a lie that is caught before anything is read or allocated for it.
        if count > body_len {
            return Err(FrameError::CountExceedsBody { count, body_len });
        }
        Ok(FrameHeader { flags, count, body_len, body_crc })
    }
}

/// Why a frame was refused. Every variant closes the connection that produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The frame does not start with [`FRAME_MAGIC`].
    BadMagic([u8; 4]),
    /// The frame's version is not [`FRAME_VERSION`].
    UnsupportedVersion(u8),
    /// A flag bit unknown to this version is set.
    UnknownFlags(u8),
    /// The reserved header bytes are not zero.
    ReservedBitsSet,
    /// The body is longer than the configured limit.
    TooLarge { body_len: u32, max_body_len: u32 },
    /// The header claims more messages than the limit allows.
    TooManyMessages { count: u32, max_messages: u32 },
    /// The header claims more messages than the body has bytes.
    CountExceedsBody { count: u32, body_len: u32 },
    /// The body's crc32 does not match the header.
    ChecksumMismatch { expected: u32, actual: u32 },
    /// A message's length delimiter is not a valid varint.
    BadLengthDelimiter { message_index: u32 },
    /// A message's length runs past the end of the body.
    MessageOverrunsBody { message_index: u32, len: u64, remaining: usize },
    /// The body holds fewer messages than the header's count.
    MissingMessages { count: u32, found: u32 },
    /// Bytes remain after the header's count of messages.
    TrailingBytes { count: u32, trailing: usize },
    /// A message is not a valid encoding of the expected protobuf type.
    BadMessage { message_index: u32, reason: String },
    /// The stream ended inside a frame (`buffered` bytes of it had arrived).
    TruncatedFrame { buffered: usize },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::BadMagic(m) => write!(f, "bad frame magic {m:02x?}, expected {FRAME_MAGIC:02x?}"),
            FrameError::UnsupportedVersion(v) => {
                write!(f, "unsupported frame version {v}, this node speaks {FRAME_VERSION}")
            }
            FrameError::UnknownFlags(b) => write!(f, "unknown frame flag bits {b:#04x}"),
            FrameError::ReservedBitsSet => write!(f, "reserved frame header bytes are not zero"),
            FrameError::TooLarge { body_len, max_body_len } => {
                write!(f, "frame body of {body_len} bytes exceeds the limit of {max_body_len}")
            }
            FrameError::TooManyMessages { count, max_messages } => {
                write!(f, "frame claims {count} messages, more than the limit of {max_messages}")
            }
            FrameError::CountExceedsBody { count, body_len } => {
                write!(f, "frame claims {count} messages in a body of only {body_len} bytes")
            }
            FrameError::ChecksumMismatch { expected, actual } => {
                write!(f, "frame body crc32 is {actual:#010x}, header says {expected:#010x}")
            }
            FrameError::BadLengthDelimiter { message_index } => {
                write!(f, "message {message_index} has a malformed length delimiter")
            }
            FrameError::MessageOverrunsBody { message_index, len, remaining } => {
                write!(f, "message {message_index} claims {len} bytes but only {remaining} remain in the frame")
            }
            FrameError::MissingMessages { count, found } => {
                write!(f, "frame claims {count} messages but its body holds {found}")
            }
            FrameError::TrailingBytes { count, trailing } => {
                write!(f, "{trailing} bytes follow the {count} messages of the frame")
            }
            FrameError::BadMessage { message_index, reason } => {
                write!(f, "message {message_index} does not decode: {reason}")
            }
            FrameError::TruncatedFrame { buffered } => {
                write!(f, "connection ended inside a frame ({buffered} bytes of it received)")
            }
        }
    }
}

impl std::error::Error for FrameError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_bytes(header: FrameHeader) -> [u8; HEADER_LEN] {
        let mut raw = [0u8; HEADER_LEN];
        header.write_to(&mut raw);
        raw
    }

    #[test]
    fn header_round_trips() {
        let header = FrameHeader { flags: FrameFlags::BULK, count: 3, body_len: 70, body_crc: 0xdead_beef };
        let raw = header_bytes(header);
        assert_eq!(&raw[0..4], b"CNCW");
        assert_eq!(FrameHeader::parse(&raw, FrameLimits::default()), Ok(header));
    }

    #[test]
    fn header_refuses_each_malformation() {
        let good = FrameHeader { flags: FrameFlags::NONE, count: 1, body_len: 10, body_crc: 1 };
        let limits = FrameLimits { max_body_len: 100, max_messages: 8 };
        let mut raw = header_bytes(good);
        raw[0] = b'X';
        assert!(matches!(FrameHeader::parse(&raw, limits), Err(FrameError::BadMagic(_))));
        let mut raw = header_bytes(good);
        raw[4] = 9;
        assert_eq!(FrameHeader::parse(&raw, limits), Err(FrameError::UnsupportedVersion(9)));
        let mut raw = header_bytes(good);
        raw[5] = 0x80;
        assert_eq!(FrameHeader::parse(&raw, limits), Err(FrameError::UnknownFlags(0x80)));
        let mut raw = header_bytes(good);
        raw[7] = 1;
        assert_eq!(FrameHeader::parse(&raw, limits), Err(FrameError::ReservedBitsSet));
        let raw = header_bytes(FrameHeader { body_len: 101, ..good });
        assert_eq!(FrameHeader::parse(&raw, limits), Err(FrameError::TooLarge { body_len: 101, max_body_len: 100 }));
        let raw = header_bytes(FrameHeader { count: 9, body_len: 100, ..good });
        assert_eq!(FrameHeader::parse(&raw, limits), Err(FrameError::TooManyMessages { count: 9, max_messages: 8 }));
        let raw = header_bytes(FrameHeader { count: 8, body_len: 7, ..good });
        assert_eq!(FrameHeader::parse(&raw, limits), Err(FrameError::CountExceedsBody { count: 8, body_len: 7 }));
    }
}
