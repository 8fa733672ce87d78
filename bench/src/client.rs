//! The election client a caller uses, whichever the target: the operations every
//! request/response workload needs (create, enter, withdraw, get-term) over Conclave's
//! client API or etcd's election API.
use crate::conclave::ConclaveClient;
use crate::config::{BenchConfig, Target};
use crate::error::BenchError;
use crate::etcd::pb::v3electionpb as etcd_election;
use crate::etcd::EtcdClient;

/// One caller's connection to the system under test.
pub enum ElectionClient {
    Conclave(ConclaveClient),
    Etcd(EtcdClient),
}

impl ElectionClient {
    /// A new connection of caller number `caller` (endpoints are used round-robin).
    pub async fn connect(config: &BenchConfig, caller: usize) -> Result<ElectionClient, BenchError> {
        ElectionClient::connect_to(config, config.endpoint_of(caller)).await
    }

    /// A new connection to `endpoint` (one of `config.endpoints`).
    pub async fn connect_to(config: &BenchConfig, endpoint: &str) -> Result<ElectionClient, BenchError> {
        match config.target {
            Target::Conclave => Ok(ElectionClient::Conclave(ConclaveClient::connect(endpoint, config).await?)),
            Target::Etcd => Ok(ElectionClient::Etcd(EtcdClient::connect(endpoint, config.request_timeout, config.lease_ttl_secs).await?)),
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

    /// A handle that sends independent one-shot writes over this connection.
    pub fn one_shot(&self) -> OneShotWriter {
        match self {
            ElectionClient::Conclave(client) => OneShotWriter::Conclave(client.clone()),
            ElectionClient::Etcd(client) => {
                let (election, lease) = client.shared();
                OneShotWriter::Etcd { election, lease }
            }
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

/// Sends writes that each stand alone (a new candidate per attempt), so several can be in
/// flight on one connection and none waits for another: what a probe needs to see when a
/// system serves writes again, whatever happened to requests sent before.
#[derive(Clone)]
pub enum OneShotWriter {
    Conclave(ConclaveClient),
    Etcd { election: etcd_election::election_client::ElectionClient<tonic::transport::Channel>, lease: i64 },
}

impl OneShotWriter {
    /// Write number `attempt` on election `name`. Conclave: Enter of candidate
    /// `attempt-N` (the election keeps its partition). etcd: Campaign on election
    /// `NAME-aN` (a fresh election, so the caller leads at once; one Raft group anyway).
    pub async fn write(self, name: &str, attempt: u64) -> Result<(), BenchError> {
        match self {
            OneShotWriter::Conclave(mut client) => client.enter(name, &format!("attempt-{attempt}")).await.map(drop),
            OneShotWriter::Etcd { mut election, lease } => election
                .campaign(etcd_election::CampaignRequest {
                    name: format!("{name}-a{attempt}").into_bytes(),
                    lease,
                    value: b"probe".to_vec(),
                })
                .await
                .map(drop)
                .map_err(|status| BenchError::Rpc {
                    op: "enter",
                    code: format!("{:?}", status.code()),
                    message: status.message().to_string(),
                }),
        }
    }
}
