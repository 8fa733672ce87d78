//! An etcd client of the same workloads: etcd's v3 election API (`v3electionpb.Election`)
//! with one lease per caller, kept alive by a background stream, over one connection of
//! its own. Enter = Campaign (which blocks until the caller leads), Withdraw = Resign with
//! the key Campaign returned, GetTerm = Leader.
use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

use crate::error::BenchError;

pub mod pb {
    #![allow(clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/_etcd_client.rs"));
}

use pb::etcdserverpb as server;
use pb::v3electionpb as election;

/// Lifetime of each caller's lease (seconds) unless configured: how long etcd keeps a
/// silent caller's leadership.
pub const DEFAULT_LEASE_TTL_SECS: i64 = 10;

/// The message of etcd's answer to Leader on an election without a leader.
const NO_LEADER: &str = "election: no leader";

fn rpc_error(op: &'static str, status: tonic::Status) -> BenchError {
    BenchError::Rpc { op, code: format!("{:?}", status.code()), message: status.message().to_string() }
}

/// One caller's connection to etcd, with its lease.
pub struct EtcdClient {
    election: election::election_client::ElectionClient<Channel>,
    lease: i64,
    keep_alive: JoinHandle<()>,
    /// Dropped with the client: ends the keep-alive request stream.
    _silence: oneshot::Sender<()>,
    /// The leader key of each election this caller leads, for Resign.
    leading: BTreeMap<String, election::LeaderKey>,
}

impl Drop for EtcdClient {
    fn drop(&mut self) {
        self.keep_alive.abort();
    }
}

impl EtcdClient {
    /// Connects to `endpoint`, grants a lease and starts keeping it alive.
    pub async fn connect(endpoint: &str, request_timeout: Duration, lease_ttl_secs: i64) -> Result<EtcdClient, BenchError> {
        let connect_error = |message: String| BenchError::Connect { endpoint: endpoint.to_string(), message };
        let channel = Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| connect_error(e.to_string()))?
            .timeout(request_timeout)
            .connect_timeout(request_timeout)
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| connect_error(format!("{e:?}")))?;
        let mut leases = server::lease_client::LeaseClient::new(channel.clone());
        let granted = leases
            .lease_grant(server::LeaseGrantRequest { ttl: lease_ttl_secs, id: 0 })
            .await
            .map_err(|s| rpc_error("lease_grant", s))?
            .into_inner();
        if !granted.error.is_empty() {
            return Err(BenchError::Protocol { op: "lease_grant", message: granted.error });
        }
        let lease = granted.id;
        let period = Duration::from_secs((lease_ttl_secs / 3).max(1) as u64);
        // The request stream ends (so keep-alives stop) when the client drops `silence`:
        // the stream belongs to the connection's task, not to the task awaiting answers.
        let (silence, silenced) = oneshot::channel::<()>();
        let requests =
            futures_lite::stream::unfold((tokio::time::interval(period), silenced), move |(mut interval, mut silenced)| async move {
                tokio::select! {
                    _ = interval.tick() => Some((server::LeaseKeepAliveRequest { id: lease }, (interval, silenced))),
                    _ = &mut silenced => None,
                }
            });
        let keep_alive = tokio::spawn(async move {
            if let Ok(response) = leases.lease_keep_alive(requests).await {
                let mut answers = response.into_inner();
                while let Ok(Some(_)) = answers.message().await {}
            }
        });
        Ok(EtcdClient {
            election: election::election_client::ElectionClient::new(channel),
            lease,
            keep_alive,
            _silence: silence,
            leading: BTreeMap::new(),
        })
    }

    /// The connection's election client and the caller's lease, for requests sent
    /// concurrently with (and independently of) this client's own.
    pub fn shared(&self) -> (election::election_client::ElectionClient<Channel>, i64) {
        (self.election.clone(), self.lease)
    }

    /// Campaigns for `name` with `candidate` as the value; returns once this caller leads.
    pub async fn enter(&mut self, name: &str, candidate: &str) -> Result<(), BenchError> {
        let request = election::CampaignRequest { name: name.as_bytes().to_vec(), lease: self.lease, value: candidate.as_bytes().to_vec() };
        let response = self.election.campaign(request).await.map_err(|s| rpc_error("enter", s))?.into_inner();
        let key = response.leader.ok_or(BenchError::Protocol { op: "enter", message: "Campaign answered no leader key".into() })?;
        self.leading.insert(name.to_string(), key);
        Ok(())
    }

    /// Resigns the leadership of `name` this caller won (nothing to do if it leads not).
    pub async fn withdraw(&mut self, name: &str) -> Result<(), BenchError> {
        let Some(key) = self.leading.get(name).cloned() else {
            return Ok(());
        };
        self.election.resign(election::ResignRequest { leader: Some(key) }).await.map_err(|s| rpc_error("withdraw", s))?;
        self.leading.remove(name);
        Ok(())
    }

    /// Starts observing `name`: the stream yields the current leader, then every new one.
    pub async fn observe(&mut self, name: &str) -> Result<LeaderStream, BenchError> {
        let request = election::LeaderRequest { name: name.as_bytes().to_vec() };
        let response = self.election.observe(request).await.map_err(|s| rpc_error("observe", s))?;
        Ok(LeaderStream(response.into_inner()))
    }

    /// The current leader's value of `name`; empty when it has no leader (etcd answers that
    /// with an error status, Conclave with an empty term: both are a valid answer here).
    pub async fn leader(&mut self, name: &str) -> Result<Vec<u8>, BenchError> {
        match self.election.leader(election::LeaderRequest { name: name.as_bytes().to_vec() }).await {
            Ok(response) => Ok(response.into_inner().kv.map(|kv| kv.value).unwrap_or_default()),
            Err(status) if status.message() == NO_LEADER => Ok(Vec::new()),
            Err(status) => Err(rpc_error("get_term", status)),
        }
    }
}

/// The leaders an Observe delivers.
pub struct LeaderStream(tonic::Streaming<election::LeaderResponse>);

impl LeaderStream {
    /// The next leader's value; `Ok(None)` when etcd ended the stream.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, BenchError> {
        match self.0.message().await.map_err(|s| rpc_error("observe", s))? {
            Some(response) => Ok(Some(response.kv.map(|kv| kv.value).unwrap_or_default())),
            None => Ok(None),
        }
    }
}
