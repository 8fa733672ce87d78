//! A Conclave client connection: one tonic channel over one TCP connection of its own (so
//! one client-API session per partition on the server), built by a connector that keeps a
//! duplicate of the socket so the connection can be cut at a known instant (failover).
//! `https://` endpoints are spoken to over TLS with the run's [`crate::config::BenchTls`].
use std::sync::{Arc, Mutex};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::config::BenchConfig;
use crate::error::BenchError;

pub mod pb {
    #![allow(clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/_bench_client.rs"));
}

use pb::atomix::runtime::election::v1 as rt;
use pb::atomix::runtime::v1::PrimitiveId;
pub use rt::Term;

/// A duplicate of a connection's socket: shutting it down ends the TCP connection at once.
#[derive(Clone, Default)]
pub struct SocketHandle(Arc<Mutex<Option<std::net::TcpStream>>>);

impl SocketHandle {
    /// Shuts the connection down in both directions (the peer sees FIN now). Returns false
    /// if no connection was made yet.
    pub fn shut_down(&self) -> bool {
        match self.0.lock().expect("socket handle lock").take() {
            Some(socket) => {
                let _ = socket.shutdown(std::net::Shutdown::Both);
                true
            }
            None => false,
        }
    }
}

/// One client of Conclave's election API over one connection.
#[derive(Clone)]
pub struct ConclaveClient {
    elections: rt::leader_elections_client::LeaderElectionsClient<Channel>,
    election: rt::leader_election_client::LeaderElectionClient<Channel>,
    socket: SocketHandle,
}

fn id(name: &str) -> Option<PrimitiveId> {
    Some(PrimitiveId { name: name.to_string() })
}

fn rpc_error(op: &'static str, status: tonic::Status) -> BenchError {
    BenchError::Rpc { op, code: format!("{:?}", status.code()), message: status.message().to_string() }
}

fn term_of(op: &'static str, term: Option<Term>) -> Result<Term, BenchError> {
    term.ok_or(BenchError::Protocol { op, message: "the response carries no term".into() })
}

impl ConclaveClient {
    /// Opens a new connection to `endpoint` (`http://host:port`, or `https://host:port`
    /// with the TLS of `config`), each request bounded by `config.request_timeout`.
    pub async fn connect(endpoint: &str, config: &BenchConfig) -> Result<ConclaveClient, BenchError> {
        let request_timeout = config.request_timeout;
        let connect_error = |message: String| BenchError::Connect { endpoint: endpoint.to_string(), message };
        let mut channel_endpoint = Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| connect_error(e.to_string()))?
            .timeout(request_timeout)
            .connect_timeout(request_timeout);
        if endpoint.starts_with("https://") {
            let tls = config.tls.as_ref().ok_or_else(|| connect_error("https:// endpoints need --cacert".into()))?;
            channel_endpoint = channel_endpoint.tls_config(tls.client_config.clone()).map_err(|e| connect_error(format!("{e:?}")))?;
        }
        let socket = SocketHandle::default();
        let slot = socket.clone();
        let connector = tower::service_fn(move |uri: Uri| {
            let slot = slot.clone();
            async move {
                let host = uri.host().unwrap_or("127.0.0.1").trim_matches(['[', ']']).to_string();
                let port = uri.port_u16().unwrap_or(80);
                let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                stream.set_nodelay(true)?;
                let std_stream = stream.into_std()?;
                *slot.0.lock().expect("socket handle lock") = Some(std_stream.try_clone()?);
                let stream = tokio::net::TcpStream::from_std(std_stream)?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        });
        let channel = channel_endpoint.connect_with_connector(connector).await.map_err(|e| connect_error(format!("{e:?}")))?;
        Ok(ConclaveClient {
            elections: rt::leader_elections_client::LeaderElectionsClient::new(channel.clone()),
            election: rt::leader_election_client::LeaderElectionClient::new(channel),
            socket,
        })
    }

    /// The handle that cuts this client's connection.
    pub fn socket(&self) -> SocketHandle {
        self.socket.clone()
    }

    /// Creates election `name` (idempotent on the server).
    pub async fn create(&mut self, name: &str) -> Result<(), BenchError> {
        self.elections.create(rt::CreateRequest { id: id(name), tags: vec![] }).await.map_err(|s| rpc_error("create", s))?;
        Ok(())
    }

    pub async fn enter(&mut self, name: &str, candidate: &str) -> Result<Term, BenchError> {
        let request = rt::EnterRequest { id: id(name), candidate: candidate.to_string() };
        let response = self.election.enter(request).await.map_err(|s| rpc_error("enter", s))?;
        term_of("enter", response.into_inner().term)
    }

    pub async fn withdraw(&mut self, name: &str, candidate: &str) -> Result<Term, BenchError> {
        let request = rt::WithdrawRequest { id: id(name), candidate: candidate.to_string() };
        let response = self.election.withdraw(request).await.map_err(|s| rpc_error("withdraw", s))?;
        term_of("withdraw", response.into_inner().term)
    }

    pub async fn get_term(&mut self, name: &str) -> Result<Term, BenchError> {
        let response = self.election.get_term(rt::GetTermRequest { id: id(name) }).await.map_err(|s| rpc_error("get_term", s))?;
        term_of("get_term", response.into_inner().term)
    }

    /// Starts watching `name`: the stream yields the current state, then every change.
    pub async fn watch(&mut self, name: &str) -> Result<TermStream, BenchError> {
        let response = self.election.watch(rt::WatchRequest { id: id(name) }).await.map_err(|s| rpc_error("watch", s))?;
        Ok(TermStream(response.into_inner()))
    }
}

/// The states a Watch delivers.
pub struct TermStream(tonic::Streaming<rt::WatchResponse>);

impl TermStream {
    /// The next state; `Ok(None)` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<Term>, BenchError> {
        match self.0.message().await.map_err(|s| rpc_error("watch", s))? {
            Some(response) => term_of("watch", response.term).map(Some),
            None => Ok(None),
        }
    }
}
