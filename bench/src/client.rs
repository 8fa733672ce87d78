//! The election client a caller uses, whichever the target: the operations every
//! request/response workload needs (create, enter, withdraw, get-term) over Conclave's
//! client API or etcd's election API.
use crate::conclave::ConclaveClient;
use crate::config::{BenchConfig, Target};
use crate::error::BenchError;
use crate::etcd::EtcdClient;

/// One caller's connection to the system under test.
pub enum ElectionClient {
    Conclave(ConclaveClient),
    Etcd(EtcdClient),
}

impl ElectionClient {
    /// A new connection of caller number `caller` (endpoints are used round-robin).
    pub async fn connect(
        config: &BenchConfig,
        caller: usize,
    ) -> Result<ElectionClient, BenchError> {
        ElectionClient::connect_to(config, config.endpoint_of(caller)).await
    }

    /// A new connection to `endpoint` (one of `config.endpoints`).
    pub async fn connect_to(
        config: &BenchConfig,
        endpoint: &str,
    ) -> Result<ElectionClient, BenchError> {
        match config.target {
            Target::Conclave => Ok(ElectionClient::Conclave(
                ConclaveClient::connect(endpoint, config.request_timeout).await?,
            )),
            Target::Etcd => Ok(ElectionClient::Etcd(
                EtcdClient::connect(endpoint, config.request_timeout, config.lease_ttl_secs)
                    .await?,
            )),
        }
    }

    /// Makes election `name` usable (etcd elections need no creation).
    pub async fn create(&mut self, name: &str) -> Result<(), BenchError> {
        match self {
            ElectionClient::Conclave(client) => client.create(name).await,
            ElectionClient::Etcd(_) => Ok(()),
        }
    }

    /// Conclave: Enter. etcd: Campaign (returns once this caller leads).
    pub async fn enter(&mut self, name: &str, candidate: &str) -> Result<(), BenchError> {
        match self {
            ElectionClient::Conclave(client) => client.enter(name, candidate).await.map(drop),
            ElectionClient::Etcd(client) => client.enter(name, candidate).await,
        }
    }

    /// Conclave: Withdraw. etcd: Resign.
    pub async fn withdraw(&mut self, name: &str, candidate: &str) -> Result<(), BenchError> {
        match self {
            ElectionClient::Conclave(client) => client.withdraw(name, candidate).await.map(drop),
            ElectionClient::Etcd(client) => client.withdraw(name).await,
        }
    }

    /// Conclave: GetTerm. etcd: Leader.
    pub async fn get_term(&mut self, name: &str) -> Result<(), BenchError> {
        match self {
            ElectionClient::Conclave(client) => client.get_term(name).await.map(drop),
            ElectionClient::Etcd(client) => client.leader(name).await.map(drop),
        }
    }
}
