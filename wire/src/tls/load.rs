//! Reading TLS material from PEM files and building rustls configurations from it.
//!
//! Every error names the file and what is wrong with it, so a person can fix the right
//! file. Configurations use the `ring` provider explicitly (no process-wide default is
//! needed) and no session resumption: every connection presents and verifies certificates
//! afresh, so a rotated or revoked certificate takes effect on the next connection.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// TLS material that cannot be used: the file it came from (if any) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsError {
    /// The file at fault, when one is.
    pub path: Option<PathBuf>,
    /// What is wrong.
    pub message: String,
}

impl TlsError {
    fn file(path: &Path, message: impl Into<String>) -> TlsError {
        TlsError { path: Some(path.to_path_buf()), message: message.into() }
    }

    fn general(message: impl Into<String>) -> TlsError {
        TlsError { path: None, message: message.into() }
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(path) => write!(f, "{}: {}", path.display(), self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for TlsError {}

fn pem_error(path: &Path, what: &str, e: pem::Error) -> TlsError {
    match e {
        pem::Error::Io(e) => TlsError::file(path, format!("cannot read the {what} file: {e}")),
        pem::Error::NoItemsFound => TlsError::file(path, format!("no {what} found (expected a PEM file)")),
        other => TlsError::file(path, format!("not a valid PEM {what} file: {other:?}")),
    }
}

/// Reads a PEM certificate chain (leaf first, then intermediates).
pub fn load_cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, "certificate", e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, "certificate", e))?;
    if certs.is_empty() {
        return Err(TlsError::file(path, "no certificate found (expected PEM blocks `BEGIN CERTIFICATE`)"));
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC); the first key in the file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::file(path, "no private key found (expected a PEM `BEGIN PRIVATE KEY` block)"),
        other => pem_error(path, "private key", other),
    })
}

/// Reads a PEM bundle of trusted CA certificates.
pub fn load_ca_bundle(path: &Path) -> Result<RootCertStore, TlsError> {
    let certs = load_cert_chain(path)?;
    let mut roots = RootCertStore::empty();
    for (index, cert) in certs.into_iter().enumerate() {
        roots.add(cert).map_err(|e| TlsError::file(path, format!("certificate #{} is not a usable CA certificate: {e}", index + 1)))?;
    }
    Ok(roots)
}

/// The crypto provider of every configuration built here.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Whether a server asks its clients for certificates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificates.
    #[default]
    Off,
    /// A client may present a certificate (verified against the CA if it does).
    Optional,
    /// A client must present a certificate chaining to the CA.
    Required,
}

/// The files and policy of a TLS server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTlsSettings {
    /// PEM certificate chain presented to clients.
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
    /// PEM CA bundle that client certificates must chain to (needed unless `client_auth` is `Off`).
    pub trusted_ca: Option<PathBuf>,
    /// Whether clients present certificates.
    pub client_auth: ClientAuth,
    /// ALPN protocols offered, most preferred first (empty: no ALPN).
    pub alpn: Vec<Vec<u8>>,
}

impl ServerTlsSettings {
    /// The files a reload re-reads.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.cert.clone(), self.key.clone()];
        files.extend(self.trusted_ca.clone());
        files
    }

    /// Reads the files and builds the configuration.
    pub fn build(&self) -> Result<ServerConfig, TlsError> {
        let chain = load_cert_chain(&self.cert)?;
        let key = load_private_key(&self.key)?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::general(format!("no TLS protocol version available: {e}")))?;
        let builder = match (self.client_auth, &self.trusted_ca) {
            (ClientAuth::Off, _) => builder.with_no_client_auth(),
            (_, None) => return Err(TlsError::general("client certificate authentication needs a trusted CA file")),
            (auth, Some(ca)) => {
                let roots = Arc::new(load_ca_bundle(ca)?);
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider());
                let verifier = if auth == ClientAuth::Optional { verifier.allow_unauthenticated() } else { verifier };
                let verifier =
                    verifier.build().map_err(|e| TlsError::file(ca, format!("cannot verify client certificates with it: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| key_error(&self.cert, &self.key, e))?;
        config.alpn_protocols = self.alpn.clone();
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(config)
    }
}

/// The files and policy of a TLS client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTlsSettings {
    /// PEM CA bundle that servers' certificates must chain to.
    pub trusted_ca: PathBuf,
    /// Certificate chain and key presented to servers that ask (mutual TLS), if any.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// ALPN protocols offered, most preferred first (empty: no ALPN).
    pub alpn: Vec<Vec<u8>>,
}

impl ClientTlsSettings {
    /// The files a reload re-reads.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.trusted_ca.clone()];
        if let Some((cert, key)) = &self.identity {
            files.extend([cert.clone(), key.clone()]);
        }
        files
    }

    /// Reads the files and builds the configuration.
    pub fn build(&self) -> Result<ClientConfig, TlsError> {
        let roots = load_ca_bundle(&self.trusted_ca)?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::general(format!("no TLS protocol version available: {e}")))?
            .with_root_certificates(roots);
        let mut config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = load_cert_chain(cert)?;
                let private_key = load_private_key(key)?;
                builder.with_client_auth_cert(chain, private_key).map_err(|e| key_error(cert, key, e))?
            }
        };
        config.alpn_protocols = self.alpn.clone();
        config.resumption = rustls::client::Resumption::disabled();
        Ok(config)
    }
}

fn key_error(cert: &Path, key: &Path, e: rustls::Error) -> TlsError {
    match e {
        rustls::Error::InconsistentKeys(_) => {
            TlsError::file(key, format!("this private key does not belong to the certificate in {}", cert.display()))
        }
        other => TlsError::file(key, format!("unusable private key for the certificate in {}: {other}", cert.display())),
    }
}
