//! Turning TLS handshake failures into log lines that say which problem it was.
//!
//! futures-rustls reports a failed handshake as an `io::Error` carrying the `rustls::Error`;
//! [`explain`] sorts it into a [`TlsFailure`] (wrong CA, expired, wrong name, plaintext
//! client, ...) and a sentence. [`first_byte_is_tls`] tells a plaintext client from a TLS
//! one before the handshake, by peeking at the first byte without consuming it.

use std::fmt;
use std::io;

use rustls::{AlertDescription, CertificateError, Error, InvalidMessage};

/// The first byte of a TLS handshake record (content type 22).
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What kind of problem stopped a handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsFailure {
    /// The other side does not speak TLS (a plaintext client or peer).
    Plaintext,
    /// The certificate does not chain to the trusted CA.
    UnknownCa,
    /// The certificate has expired (or is not valid yet).
    Expired,
    /// The certificate does not name the expected address or host.
    WrongIdentity,
    /// No certificate was presented where one is required.
    NoCertificate,
    /// The other side refused our certificate or handshake (a TLS alert).
    RefusedByPeer,
    /// The connection closed during the handshake.
    Closed,
    /// Anything else.
    Other,
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsFailure::Plaintext => "plaintext connection on a TLS port",
            TlsFailure::UnknownCa => "certificate from an unknown CA",
            TlsFailure::Expired => "certificate expired or not yet valid",
            TlsFailure::WrongIdentity => "wrong identity",
            TlsFailure::NoCertificate => "no certificate presented",
            TlsFailure::RefusedByPeer => "refused by the other side",
            TlsFailure::Closed => "connection closed during the TLS handshake",
            TlsFailure::Other => "TLS handshake failed",
        })
    }
}

/// The `rustls::Error` inside an I/O error from futures-rustls, if it carries one.
pub fn rustls_error(e: &io::Error) -> Option<&Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<Error>())
}

/// Classifies a rustls error.
pub fn classify(e: &Error) -> TlsFailure {
    match e {
        Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => TlsFailure::UnknownCa,
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => TlsFailure::Expired,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => TlsFailure::WrongIdentity,
            _ => TlsFailure::Other,
        },
        Error::NoCertificatesPresented => TlsFailure::NoCertificate,
        Error::InvalidMessage(InvalidMessage::InvalidContentType | InvalidMessage::UnknownProtocolVersion) => TlsFailure::Plaintext,
        Error::AlertReceived(AlertDescription::UnknownCA) => TlsFailure::UnknownCa,
        Error::AlertReceived(AlertDescription::CertificateExpired) => TlsFailure::Expired,
        Error::AlertReceived(AlertDescription::CertificateRequired) => TlsFailure::NoCertificate,
        Error::AlertReceived(_) => TlsFailure::RefusedByPeer,
        _ => TlsFailure::Other,
    }
}

/// Classifies a failed handshake and says what happened, e.g. "certificate from an unknown
/// CA: invalid peer certificate: UnknownIssuer".
pub fn explain(e: &io::Error) -> (TlsFailure, String) {
    if let Some(tls) = rustls_error(e) {
        let kind = classify(tls);
        let detail = match tls {
            Error::AlertReceived(alert) => format!("the other side sent TLS alert {alert:?}"),
            other => other.to_string(),
        };
        return (kind, format!("{kind}: {detail}"));
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
            // A dialer that refuses our certificate may hang up without sending its alert.
            (
                TlsFailure::Closed,
                format!("{}: {e} (if the other side refused this side's certificate, its own log says why)", TlsFailure::Closed),
            )
        }
        _ => (TlsFailure::Other, format!("{}: {e}", TlsFailure::Other)),
    }
}

/// Whether the first byte the client sent starts a TLS handshake; `Ok(false)` for anything
/// else (a plaintext client). Waits for the byte; consumes nothing. An error when the
/// connection closes first.
pub async fn first_byte_is_tls(stream: &glommio::net::TcpStream) -> io::Result<bool> {
    let mut byte = [0u8; 1];
    match stream.peek(&mut byte).await? {
        0 => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before the TLS handshake")),
        _ => Ok(byte[0] == TLS_HANDSHAKE_RECORD),
    }
}
