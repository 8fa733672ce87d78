//! The servers a command may talk to (`--endpoints a,b,c`), tried in order: an endpoint that
//! cannot be reached is skipped for the next one. Each connection is one HTTP/2 connection,
//! so on the client API it is one session per partition: a candidacy entered through it is
//! held as long as it stays open.
use std::future::Future;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

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
        for endpoint in listed {
            let address = endpoint.strip_prefix("http://").unwrap_or(endpoint).trim_end_matches('/');
            if endpoint.contains("://") && !endpoint.starts_with("http://") {
                return Err(CliError::usage(format!("endpoint {endpoint:?}: only plaintext http:// endpoints are supported")));
            }
            let (host, port) =
                address.rsplit_once(':').ok_or_else(|| CliError::usage(format!("endpoint {endpoint:?} is not HOST:PORT")))?;
            if host.is_empty() || port.parse::<u16>().map_or(true, |port| port == 0) {
                return Err(CliError::usage(format!("endpoint {endpoint:?} is not HOST:PORT with a port in 1..=65535")));
            }
            Endpoint::from_shared(format!("http://{address}"))
                .map_err(|error| CliError::usage(format!("endpoint {endpoint:?} is not a valid address: {error}")))?;
            addresses.push(address.to_owned());
        }
        Ok(Endpoints { addresses, call_timeout })
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
        let endpoint =
            Endpoint::from_shared(format!("http://{address}")).expect("endpoints are checked when parsed").connect_timeout(CONNECT_TIMEOUT);
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
        for bad in ["nohost", ":80", "host:0", "host:99999", "https://host:1", "host:port"] {
            let error = Endpoints::parse(&[bad.to_owned()], "x:1", timeout).expect_err(bad);
            assert_eq!(error.code, None, "{bad}: a usage error");
        }
    }
}
