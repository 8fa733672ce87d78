//! gRPC status codes and the `Status` a handler returns, plus their encoding into the
//! `grpc-status` / `grpc-message` trailers (messages percent-encoded as the gRPC HTTP/2
//! protocol requires).
use std::borrow::Cow;
use std::fmt;

use http::{HeaderMap, HeaderValue};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};

/// The standard gRPC status codes (`google.rpc.Code`), with their wire numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    /// Every code, in wire order.
    pub const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// The code with wire number `value`, or `None` for numbers outside 0..=16.
    pub fn from_wire(value: u32) -> Option<Code> {
        Code::ALL.get(usize::try_from(value).ok()?).copied()
    }

    /// The wire number sent in `grpc-status`.
    pub fn wire(self) -> u32 {
        self as u32
    }

    /// The canonical upper-case name, e.g. `DEADLINE_EXCEEDED`.
    pub fn name(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    fn header_value(self) -> HeaderValue {
        const DIGITS: [&str; 17] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16"];
        HeaderValue::from_static(DIGITS[self as usize])
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The outcome of a call as a client sees it: a code and a message a person can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    code: Code,
    message: String,
}

/// Longest `grpc-message` text sent, in bytes before percent-encoding. Messages may quote
/// client input (an unknown path, a header value), and gRPC clients refuse response
/// metadata over 8 KiB (gRPC C-core's default, used by Python grpcio among others), so a
/// longer message is cut at a character boundary and says how much was cut.
pub const MAX_SENT_MESSAGE_BYTES: usize = 1024;

/// `message`, cut to [`MAX_SENT_MESSAGE_BYTES`] (plus a note of the cut) when longer.
fn bounded_message(message: &str) -> Cow<'_, str> {
    if message.len() <= MAX_SENT_MESSAGE_BYTES {
        return Cow::Borrowed(message);
    }
    let mut end = MAX_SENT_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}... ({} more bytes cut)", &message[..end], message.len() - end))
}

/// Bytes the gRPC protocol requires to be percent-encoded in `grpc-message`: everything
/// outside printable ASCII (0x20..=0x7E), plus `%` itself. Non-ASCII is always encoded.
const GRPC_MESSAGE_ESCAPES: &AsciiSet = &CONTROLS.add(b'%');

macro_rules! status_constructors {
    ($($(#[$doc:meta])* $fn_name:ident => $code:ident),* $(,)?) => {
        $(
            $(#[$doc])*
            pub fn $fn_name(message: impl Into<String>) -> Status {
                Status::new(Code::$code, message)
            }
        )*
    };
}

impl Status {
    /// A status with `code` and `message`.
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status { code, message: message.into() }
    }

    /// The success status (empty message).
    pub fn ok() -> Status {
        Status::new(Code::Ok, String::new())
    }

    status_constructors! {
        /// `CANCELLED`: the caller gave up on the operation.
        cancelled => Cancelled,
        /// `UNKNOWN`: an error that fits no other code.
        unknown => Unknown,
        /// `INVALID_ARGUMENT`: the request is malformed, whatever the server state.
        invalid_argument => InvalidArgument,
        /// `DEADLINE_EXCEEDED`: the deadline passed before the operation completed.
        deadline_exceeded => DeadlineExceeded,
        /// `NOT_FOUND`: a named entity does not exist.
        not_found => NotFound,
        /// `ALREADY_EXISTS`: the entity to create exists already.
        already_exists => AlreadyExists,
        /// `PERMISSION_DENIED`: the caller may not do this.
        permission_denied => PermissionDenied,
        /// `RESOURCE_EXHAUSTED`: a quota or size limit was hit.
        resource_exhausted => ResourceExhausted,
        /// `FAILED_PRECONDITION`: the system is not in a state that allows the operation.
        failed_precondition => FailedPrecondition,
        /// `ABORTED`: a concurrency conflict; retry at a higher level.
        aborted => Aborted,
        /// `OUT_OF_RANGE`: the operation went past a valid range.
        out_of_range => OutOfRange,
        /// `UNIMPLEMENTED`: the method is not supported by this server.
        unimplemented => Unimplemented,
        /// `INTERNAL`: an invariant of the server or protocol was broken.
        internal => Internal,
        /// `UNAVAILABLE`: transient; the caller may retry.
        unavailable => Unavailable,
        /// `DATA_LOSS`: unrecoverable loss or corruption of data.
        data_loss => DataLoss,
        /// `UNAUTHENTICATED`: the caller has no valid credentials.
        unauthenticated => Unauthenticated,
    }

    /// The status code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The human-readable message (not yet percent-encoded).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Writes `grpc-status` and (when the message is not empty) the percent-encoded
    /// `grpc-message` into `headers`, the message cut to [`MAX_SENT_MESSAGE_BYTES`].
    pub fn write_to(&self, headers: &mut HeaderMap) {
        headers.insert("grpc-status", self.code.header_value());
        if !self.message.is_empty() {
            let encoded = utf8_percent_encode(&bounded_message(&self.message), GRPC_MESSAGE_ESCAPES).to_string();
            let value =
                HeaderValue::from_str(&encoded).unwrap_or_else(|_| unreachable!("percent-encoding leaves only visible ASCII: {encoded:?}"));
            headers.insert("grpc-message", value);
        }
    }

    /// Reads a status back from `grpc-status` / `grpc-message` headers, as a client would.
    /// `None` when `grpc-status` is absent or not a known code.
    pub fn read_from(headers: &HeaderMap) -> Option<Status> {
        let code = headers.get("grpc-status")?.to_str().ok()?.parse::<u32>().ok()?;
        let code = Code::from_wire(code)?;
        let message = headers
            .get("grpc-message")
            .and_then(|value| value.to_str().ok())
            .map(|value| percent_decode_str(value).decode_utf8_lossy().into_owned())
            .unwrap_or_default();
        Some(Status { code, message })
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Status {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_numbers_round_trip() {
        for (number, code) in Code::ALL.iter().enumerate() {
            assert_eq!(code.wire() as usize, number);
            assert_eq!(Code::from_wire(number as u32), Some(*code));
        }
        assert_eq!(Code::from_wire(17), None);
    }

    #[test]
    fn message_is_percent_encoded_and_decoded() {
        let status = Status::not_found("election «x» 100% gone\nnext line");
        let mut headers = HeaderMap::new();
        status.write_to(&mut headers);
        assert_eq!(headers["grpc-status"], "5");
        let raw = headers["grpc-message"].to_str().expect("ascii");
        assert_eq!(raw, "election %C2%ABx%C2%BB 100%25 gone%0Anext line");
        assert_eq!(Status::read_from(&headers), Some(status));
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        // Two-byte characters across the limit: the cut may not split one.
        let long = format!("x{}", "é".repeat(MAX_SENT_MESSAGE_BYTES));
        let mut headers = HeaderMap::new();
        Status::unimplemented(long.clone()).write_to(&mut headers);
        let sent = Status::read_from(&headers).expect("status").message().to_owned();
        let kept = sent.split("... (").next().expect("kept part");
        assert!(long.starts_with(kept) && kept.len() <= MAX_SENT_MESSAGE_BYTES && kept.len() >= MAX_SENT_MESSAGE_BYTES - 1, "{sent}");
        assert!(sent.ends_with(&format!("({} more bytes cut)", long.len() - kept.len())), "{sent}");
        assert!(headers["grpc-message"].len() < 4 << 10, "percent-encoded, the message stays well under 8 KiB");
        let short = Status::not_found("exactly as given");
        let mut headers = HeaderMap::new();
        short.write_to(&mut headers);
        assert_eq!(Status::read_from(&headers), Some(short));
    }

    #[test]
    fn empty_message_sends_no_header() {
        let mut headers = HeaderMap::new();
        Status::ok().write_to(&mut headers);
        assert_eq!(headers["grpc-status"], "0");
        assert!(headers.get("grpc-message").is_none());
    }
}
