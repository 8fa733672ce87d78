//! The servers a command may talk to (`--endpoints a,b,c`), tried in order: an endpoint that
//! cannot be reached is skipped for the next one. Each connection is one HTTP/2 connection,
//! so on the client API it is one session per partition: a candidacy entered through it is
//! held as long as it stays open. With `--cacert` (and `--cert`/`--key` for servers that
//! require client certificates) or `https://` endpoints, every connection is TLS.
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::error::CliError;
use crate::grpc::Code;

/// How long a connection attempt to one endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The endpoints of one command and the deadline of each of its calls.
#[derive(Clone, Debug)]
pub struct Endpoints {
    addresses: Vec<String>,
    /// Deadline of each unary call (streams run until stopped).
    pub call_timeout: Duration,
    /// Some endpoint was given as `https://`.
    https_given: bool,
    /// Some endpoint was given as `http://` explicitly.
    http_given: bool,
    /// TLS of every connection (`None`: plaintext).
    tls: Option<ClientTlsConfig>,
}

/// The TLS files of the command line (`--cacert`, `--cert`, `--key`, etcdctl's names).
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

fn read_pem(flag: &str, path: &PathBuf) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|error| CliError::usage(format!("{flag} {}: {error}", path.display())))
}

/// A connection to one of the endpoints.
pub struct Connected {
    /// Position of the endpoint in the list.
    pub index: usize,
    pub channel: Channel,
}

impl Endpoints {
    /// `given` endpoints (`HOST:PORT` or `http://HOST:PORT`), or `default` when none is given.
    pub fn parse(given: &[String], default: &str, call_timeout: Duration) -> Result<Endpoints, CliError> {
        let given: Vec<&str> = given.iter().map(|e| e.trim()).filter(|e| !e.is_empty()).collect();
        let listed = if given.is_empty() { vec![default] } else { given };
        let mut addresses = Vec::with_capacity(listed.len());
        let (mut https_given, mut http_given) = (false, false);
        for endpoint in listed {
            let address = endpoint.strip_prefix("http://").or_else(|| endpoint.strip_prefix("https://")).unwrap_or(endpoint);
            let address = address.trim_end_matches('/');
            if endpoint.contains("://") && !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
                return Err(CliError::usage(format!("endpoint {endpoint:?}: only http:// and https:// endpoints are supported")));
            }
            https_given |= endpoint.starts_with("https://");
            http_given |= endpoint.starts_with("http://");
            let (host, port) =
                address.rsplit_once(':').ok_or_else(|| CliError::usage(format!("endpoint {endpoint:?} is not HOST:PORT")))?;
            if host.is_empty() || port.parse::<u16>().map_or(true, |port| port == 0) {
                return Err(CliError::usage(format!("endpoint {endpoint:?} is not HOST:PORT with a port in 1..=65535")));
            }
            Endpoint::from_shared(format!("http://{address}"))
                .map_err(|error| CliError::usage(format!("endpoint {endpoint:?} is not a valid address: {error}")))?;
            addresses.push(address.to_owned());
        }
        Ok(Endpoints { addresses, call_timeout, https_given, http_given, tls: None })
    }

    /// Speaks TLS to every endpoint when `files` name a CA or an endpoint is `https://`:
    /// the server's certificate must chain to `--cacert` and name the endpoint's host;
    /// `--cert`/`--key` are presented when the server asks for a client certificate.
    pub fn with_tls(mut self, files: &TlsFiles) -> Result<Endpoints, CliError> {
        let wanted = self.https_given || files.cacert.is_some() || files.cert.is_some();
        if !wanted {
            return Ok(self);
        }
        if self.http_given {
            return Err(CliError::usage("plaintext http:// endpoints cannot be mixed with TLS (https:// or --cacert/--cert)"));
        }
        let Some(cacert) = &files.cacert else {
            return Err(CliError::usage("TLS endpoints need --cacert, the CA certificate that the servers' certificates chain to"));
        };
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem("--cacert", cacert)?));
        match (&files.cert, &files.key) {
            (Some(cert), Some(key)) => tls = tls.identity(Identity::from_pem(read_pem("--cert", cert)?, read_pem("--key", key)?)),
            (None, None) => {}
            _ => return Err(CliError::usage("--cert and --key go together")),
        }
        self.tls = Some(tls);
        Ok(self)
    }

    pub fn len(&self) -> usize {
        self.addresses.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty()
    }

    /// The address of endpoint `index`.
    pub fn name(&self, index: usize) -> &str {
        &self.addresses[index % self.addresses.len()]
    }

    /// Connects to endpoint `index`; the failure, described, when it cannot be reached.
    async fn connect_one(&self, index: usize) -> Result<Channel, String> {
        let address = &self.addresses[index];
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .expect("endpoints are checked when parsed")
            .connect_timeout(CONNECT_TIMEOUT);
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(|error| format!("{address} ({})", error_chain(&error)))?;
        }
        endpoint.connect().await.map_err(|error| format!("{address} ({})", error_chain(&error)))
    }

    /// Connects to the first endpoint that accepts a connection, trying them in order from
    /// `start` (wrapping around once). UNAVAILABLE, naming each failure, when none does.
    pub async fn connect_from(&self, start: usize) -> Result<Connected, CliError> {
        let mut failures = Vec::new();
        for offset in 0..self.addresses.len() {
            let index = (start + offset) % self.addresses.len();
            match self.connect_one(index).await {
                Ok(channel) => return Ok(Connected { index, channel }),
                Err(failure) => failures.push(failure),
            }
        }
        Err(CliError::status(Code::Unavailable, format!("no endpoint answered: {}", failures.join("; "))))
    }

    /// Runs `call` on the first endpoint that accepts a connection. With `retry_unavailable`
    /// (for reads, which are safe to repeat) an endpoint that answers UNAVAILABLE (no
    /// leader known, shutting down) is skipped as well; commands are sent once, since an
    /// UNAVAILABLE command may still have been applied.
    pub async fn call<T, F, Fut>(&self, retry_unavailable: bool, mut call: F) -> Result<T, CliError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, CliError>>,
    {
        let mut failures = Vec::new();
        for index in 0..self.addresses.len() {
            let channel = match self.connect_one(index).await {
                Ok(channel) => channel,
                Err(failure) => {
                    failures.push(failure);
                    continue;
                }
            };
            match call(channel).await {
                Err(error) if retry_unavailable && error.is_unavailable() && index + 1 < self.addresses.len() => {
                    failures.push(format!("{} ({})", self.addresses[index], error.message));
                }
                outcome => return outcome,
            }
        }
        Err(CliError::status(Code::Unavailable, format!("no endpoint answered: {}", failures.join("; "))))
    }
}

/// An error with its sources, e.g. "transport error: tcp connect error: Connection refused".
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_or_without_scheme_and_refuse_garbage() {
        let timeout = Duration::from_secs(1);
        let given = vec!["127.0.0.1:1".to_owned(), " http://localhost:2/ ".to_owned(), "[::1]:3".to_owned()];
        let endpoints = Endpoints::parse(&given, "unused:9", timeout).expect("valid");
        assert_eq!((endpoints.name(0), endpoints.name(1), endpoints.name(2)), ("127.0.0.1:1", "localhost:2", "[::1]:3"));
        assert_eq!(Endpoints::parse(&[], "127.0.0.1:5678", timeout).expect("default").name(0), "127.0.0.1:5678");
        for bad in ["nohost", ":80", "host:0", "host:99999", "ftp://host:1", "host:port"] {
            let error = Endpoints::parse(&[bad.to_owned()], "x:1", timeout).expect_err(bad);
            assert_eq!(error.code, None, "{bad}: a usage error");
        }
    }

    #[test]
    fn tls_needs_a_ca_and_does_not_mix_with_plaintext() {
        let timeout = Duration::from_secs(1);
        let https = Endpoints::parse(&["https://127.0.0.1:1".to_owned()], "x:1", timeout).expect("valid");
        assert_eq!(https.name(0), "127.0.0.1:1");
        let error = https.with_tls(&TlsFiles::default()).expect_err("https without --cacert");
        assert!(error.message.contains("--cacert"), "{}", error.message);
        let mixed = Endpoints::parse(&["http://127.0.0.1:1".to_owned()], "x:1", timeout).expect("valid");
        let files = TlsFiles { cacert: Some(PathBuf::from("/nonexistent/ca.pem")), ..TlsFiles::default() };
        assert!(mixed.with_tls(&files).expect_err("http with --cacert").message.contains("http://"));
        let bare = Endpoints::parse(&["127.0.0.1:1".to_owned()], "x:1", timeout).expect("valid");
        let error = bare.with_tls(&files).expect_err("unreadable --cacert");
        assert!(error.message.contains("/nonexistent/ca.pem"), "{}", error.message);
        let plain = Endpoints::parse(&["127.0.0.1:1".to_owned()], "x:1", timeout).expect("valid");
        assert!(plain.with_tls(&TlsFiles::default()).expect("no TLS asked").tls.is_none());
    }
}
