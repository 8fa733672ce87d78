//! The groups one shard hosts, and the Node API's operations on them, run on the shard
//! that owns the group: the client partitions (every node hosts all of them, from
//! `--peers`), plus groups the Node API bootstrapped or joined here, minus the ones this
//! node left — as the shard's [`Registry`] records durably.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::{Duration, Instant};

use conclave_engine::raft::{self, Membership, RaftNode, Role};
use conclave_engine::shard::{Replica, Request, ShardError, ShardHandle};
use conclave_engine::sm::StateMachine;
use glommio::channels::local_channel;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::config::Config;
use crate::grpc::Status;
use crate::routing::{preferred_leader, LeaderPlacement};
use crate::service::node_control::{GroupSpec, MemberRole};
use crate::service::status::from_shard;

use super::peers::PeerNet;
use super::registry::{GroupRecord, Registry};

/// How long Join and Leave keep retrying their membership change through leader changes.
const MEMBERSHIP_DEADLINE: Duration = Duration::from_secs(20);

/// The Raft settings of this node's replica `incarnation` of `group`.
pub fn raft_config(config: &Config, group: u32, incarnation: u64) -> raft::Config {
    let mut cfg = raft::Config::new(u64::from(config.node_id), group);
    cfg.incarnation = incarnation;
    cfg.election_ticks = config.election_ticks;
    cfg.heartbeat_ticks = config.heartbeat_ticks;
    cfg.quiesce = config.quiesce;
    cfg.lease_reads = config.lease_reads;
    cfg.follower_leases = config.lease_reads && config.follower_reads;
    cfg.follower_lease_micros = u64::try_from(config.follower_read_lease.as_micros()).unwrap_or(u64::MAX);
    cfg.hold_commit_notices = !config.commit_notice_delay.is_zero();
    let tick_micros = u64::try_from(config.tick.as_micros()).unwrap_or(u64::MAX);
    cfg.lease_micros = raft::Config::safe_lease_micros(config.election_ticks, tick_micros);
    cfg
}

/// The initial configuration of client partition `group`: `--replication` voters, the
/// nodes from the partition's round-robin node on in id order (wrapping; the same whatever
/// `--leader-placement` says), and every other
/// node an observer, which keeps a non-voting copy so it can serve reads and watches
/// locally and forward commands. Quorums, and so commit latency and fault tolerance, are
/// those of the voters.
pub fn partition_membership(config: &Config, group: u32) -> Result<Membership, String> {
    let nodes: Vec<u64> = config.peers.keys().map(|id| u64::from(*id)).collect();
    let first = ((group - 1) as usize) % nodes.len();
    let voters = config.replication as usize;
    let members = (0..nodes.len()).map(|k| {
        let node = nodes[(first + k) % nodes.len()];
        (node, if k < voters { Role::Voter } else { Role::Observer })
    });
    Membership::new(members).map_err(|e| e.to_string())
}

/// The preferred leader of client partition `group` (None on a single node): its first
/// voter, so leaderships spread evenly over the nodes, or with `--leader-placement pack`
/// its lowest-id voter, so they gather on the lowest ids.
pub fn partition_preferred_leader(config: &Config, group: u32) -> Option<u64> {
    let nodes: Vec<u32> = config.peers.keys().copied().collect();
    if nodes.len() < 2 {
        return None;
    }
    match config.leader_placement {
        LeaderPlacement::Spread => Some(u64::from(preferred_leader(group, &nodes))),
        LeaderPlacement::Pack => {
            let membership = partition_membership(config, group).ok()?;
            membership.members().filter(|(_, role)| *role == Role::Voter).map(|(node, _)| node).min()
        }
    }
}

pub fn raft_role(role: MemberRole) -> Role {
    match role {
        MemberRole::Member => Role::Voter,
        MemberRole::Observer => Role::Observer,
        MemberRole::Witness => Role::Witness,
    }
}

/// The configuration a Node-API group starts from on this node: all its members for a
/// bootstrapped replica; the others (the group as it stood) for a joining one, which the
/// leader then adds.
pub fn spec_membership(spec: &GroupSpec, joined: bool, me: u64) -> Result<Membership, String> {
    let members = spec.members.iter().filter(|m| !joined || m.node_id != me).map(|m| (m.node_id, raft_role(m.role)));
    Membership::new(members).map_err(|e| format!("group {}: {e}", spec.group_id))
}

/// Runs the Node API's operations for the groups this shard owns.
pub struct GroupControl {
    config: Config,
    me: u64,
    runtime: ShardHandle,
    peers: Rc<PeerNet>,
    registry: RefCell<Registry>,
    /// Groups with an operation in progress (one at a time per group).
    busy: RefCell<BTreeSet<u32>>,
    seed: u64,
}

impl GroupControl {
    pub fn new(config: Config, runtime: ShardHandle, peers: Rc<PeerNet>, registry: Registry, seed: u64) -> GroupControl {
        let me = u64::from(config.node_id);
        GroupControl { config, me, runtime, peers, registry: RefCell::new(registry), busy: RefCell::new(BTreeSet::new()), seed }
    }

    pub fn is_partition(&self, group: u32) -> bool {
        group <= self.config.partitions
    }

    fn hosted(&self, group: u32) -> bool {
        let registry = self.registry.borrow();
        registry.get(group).is_some() || (self.is_partition(group) && !registry.has_left(group))
    }

    /// Starts this node's replica of a new group.
    pub async fn bootstrap(&self, spec: GroupSpec) -> Result<(), Status> {
        let group = spec.group_id;
        let _busy = self.claim(group)?;
        if self.is_partition(group) {
            return Err(Status::invalid_argument(format!(
                "group ids 1..={} are the client partitions, started from --peers; bootstrap a group above {}",
                self.config.partitions, self.config.partitions
            )));
        }
        if self.hosted(group) {
            return Err(Status::already_exists(format!("group {group} already has a replica on this node")));
        }
        if !spec.members.iter().any(|m| m.node_id == self.me) {
            return Err(Status::invalid_argument(format!("node {} is not among group {group}'s members", self.me)));
        }
        let membership = spec_membership(&spec, false, self.me).map_err(Status::invalid_argument)?;
        membership.check_electable().map_err(|e| Status::invalid_argument(format!("group {group}: {e}")))?;
        self.start(&spec, false, membership).await
    }

    /// Starts a replica of an existing group and has its leader add this node.
    ///
    /// Runs to its end even when its caller stops waiting (a deadline): a Join whose
    /// membership change fails removes the replica it started and its `groups.toml` record,
    /// so the same Join can be tried again (meanwhile another try is refused as in
    /// progress). A change whose outcome was unknown and that commits later is no obstacle:
    /// the next Join starts a replica of a new incarnation, and the leader, finding the node
    /// a member with the earlier one, removes that first and then adds the new one.
    pub async fn join(self: &Rc<Self>, spec: GroupSpec) -> Result<(), Status> {
        let control = Rc::clone(self);
        glommio::spawn_local(async move { control.join_to_the_end(spec).await })
            .detach()
            .await
            .unwrap_or_else(|| Err(Status::unavailable("the node is shutting down")))
    }

    async fn join_to_the_end(&self, spec: GroupSpec) -> Result<(), Status> {
        let group = spec.group_id;
        let _busy = self.claim(group)?;
        let Some(me) = spec.members.iter().find(|m| m.node_id == self.me) else {
            return Err(Status::invalid_argument(format!(
                "node {} must be among the members of the Join, with the role it joins as",
                self.me
            )));
        };
        let role = raft_role(me.role);
        if self.hosted(group) {
            return Err(Status::already_exists(format!("group {group} already has a replica on this node")));
        }
        let membership = spec_membership(&spec, true, self.me)
            .map_err(|e| Status::invalid_argument(format!("{e} (a Join lists the group's current members besides this node)")))?;
        self.start(&spec, true, membership).await?;
        let Err(error) = self.change_membership(group, Some(role)).await else {
            return Ok(());
        };
        let message = match self.remove_replica(group).await {
            Ok(()) => format!("{}; the replica this Join started was removed again, so the Join can be retried", error.message()),
            Err(e) => format!("{}; removing the replica this Join started failed too: {}", error.message(), e.message()),
        };
        Err(Status::new(error.code(), message))
    }

    /// Removes this node from the group, then deletes its replica and data.
    pub async fn leave(&self, group: u32) -> Result<(), Status> {
        let _busy = self.claim(group)?;
        if !self.hosted(group) {
            return Err(Status::not_found(format!("group {group} has no replica on this node")));
        }
        self.change_membership(group, None).await?;
        self.remove_replica(group).await
    }

    /// Deletes this node's replica of `group`, its data and its record.
    async fn remove_replica(&self, group: u32) -> Result<(), Status> {
        let (tx, rx) = local_channel::new_bounded(1);
        let reply = Box::new(move |r| {
            let _ = tx.try_send(r);
        });
        self.runtime.send(Request::RemoveReplica { group, reply }).await.map_err(|e| from_shard(&e))?;
        match rx.recv().await {
            Some(Ok(())) | Some(Err(ShardError::UnknownGroup(_))) => {}
            Some(Err(e)) => return Err(from_shard(&e)),
            None => return Err(from_shard(&ShardError::ShuttingDown)),
        }
        let is_partition = self.is_partition(group);
        self.registry.borrow_mut().remove(group, is_partition).map_err(Status::internal)
    }

    /// Records the group durably, dials its members and starts the replica.
    async fn start(&self, spec: &GroupSpec, joined: bool, membership: Membership) -> Result<(), Status> {
        let group = spec.group_id;
        for m in spec.members.iter().filter(|m| m.node_id != self.me) {
            self.peers.set_address(m.node_id, &m.host, m.port).map_err(Status::invalid_argument)?;
        }
        // A joining replica is a new incarnation of this node in the group: a random one, so
        // the group never takes it for a replica this node held before (and left).
        let incarnation = if joined { rand::random::<u64>().max(1) } else { 0 };
        let record = GroupRecord { incarnation, ..GroupRecord::new(spec, joined) };
        self.registry.borrow_mut().add(record).map_err(Status::internal)?;
        // Seeded anew at every start (Raft asks for it: a replica started again for a group
        // this process hosted before must not number its requests as the earlier one did).
        let rng = ChaCha8Rng::seed_from_u64(self.seed ^ u64::from(group) ^ rand::random::<u64>());
        let raft = RaftNode::new(raft_config(&self.config, group, incarnation), membership, rng)
            .map_err(|e| Status::invalid_argument(format!("group {group}: {e}")))?;
        let replica = Box::new(Replica::new(raft, StateMachine::new()));
        let (tx, rx) = local_channel::new_bounded(1);
        let reply = Box::new(move |r| {
            let _ = tx.try_send(r);
        });
        self.runtime.send(Request::AddReplica { group, replica, reply }).await.map_err(|e| from_shard(&e))?;
        let result = rx.recv().await.unwrap_or(Err(ShardError::ShuttingDown));
        if let Err(e) = result {
            let is_partition = self.is_partition(group);
            let _ = self.registry.borrow_mut().remove(group, is_partition);
            return Err(from_shard(&e));
        }
        Ok(())
    }

    /// Sets this node's role in `group` (None: removes it) through the group's leader,
    /// retrying through leader changes until it commits or the deadline passes.
    async fn change_membership(&self, group: u32, role: Option<Role>) -> Result<u64, Status> {
        let deadline = Instant::now() + MEMBERSHIP_DEADLINE;
        let mut via = 0;
        let mut backoff = Duration::from_millis(10);
        loop {
            let (tx, rx) = local_channel::new_bounded(1);
            let reply = Box::new(move |r| {
                let _ = tx.try_send(r);
            });
            let request = Request::ChangeMembership { group, node: self.me, role, via, reply };
            self.runtime.send(request).await.map_err(|e| from_shard(&e))?;
            let error = match rx.recv().await.unwrap_or(Err(ShardError::ShuttingDown)) {
                Ok(index) => return Ok(index),
                Err(e) => e,
            };
            let retry = match &error {
                ShardError::NotLeader { leader, .. } => {
                    via = *leader;
                    true
                }
                ShardError::LeadershipLost | ShardError::Unavailable(_) | ShardError::Overloaded(_) => true,
                _ => false,
            };
            if !retry || Instant::now() + backoff > deadline {
                return Err(match error {
                    ShardError::NotLeader { .. } | ShardError::LeadershipLost => Status::unavailable(format!(
                        "group {group}: the membership change did not commit within {MEMBERSHIP_DEADLINE:?}: {error}"
                    )),
                    other => from_shard(&other),
                });
            }
            glommio::timer::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
    }

    fn claim(&self, group: u32) -> Result<Busy<'_>, Status> {
        if group == 0 {
            return Err(Status::invalid_argument("group id 0 is not a group"));
        }
        if !self.busy.borrow_mut().insert(group) {
            return Err(Status::failed_precondition(format!("another Bootstrap, Join or Leave of group {group} is in progress")));
        }
        Ok(Busy { control: self, group })
    }
}

/// Releases a group claimed by an operation when the operation ends (or is dropped).
struct Busy<'a> {
    control: &'a GroupControl,
    group: u32,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.control.busy.borrow_mut().remove(&self.group);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, CliCommand};
    use clap::Parser;

    fn config(peers: &str, replication: &str) -> Config {
        let argv = ["conclave", "serve", "--node-id", "1", "--peers", peers, "--replication", replication];
        let CliCommand::Serve(args) = Cli::try_parse_from(argv).expect("flags parse").command else { panic!("not serve") };
        Config::resolve(args, 2).expect("valid configuration")
    }

    #[test]
    fn partitions_get_replication_voters_from_their_preferred_leader_and_observers_elsewhere() {
        let c = config("1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003,4=127.0.0.1:7004", "2");
        let roles = |g| partition_membership(&c, g).unwrap().members().collect::<Vec<_>>();
        let (v, o) = (Role::Voter, Role::Observer);
        assert_eq!(roles(1), vec![(1, v), (2, v), (3, o), (4, o)]);
        assert_eq!(roles(4), vec![(1, v), (2, o), (3, o), (4, v)]);
        for g in 1..=8 {
            let preferred = partition_preferred_leader(&c, g).unwrap();
            assert_eq!(partition_membership(&c, g).unwrap().role(preferred), Some(v), "group {g}");
        }
        let all = config("1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003", "3");
        assert!(partition_membership(&all, 2).unwrap().members().all(|(_, r)| r == v));
    }

    #[test]
    fn packed_partitions_prefer_their_lowest_voter_and_keep_the_same_voters() {
        let mut c = config("1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003,4=127.0.0.1:7004,5=127.0.0.1:7005", "3");
        let spread: Vec<_> = (1..=10).map(|g| partition_membership(&c, g).unwrap()).collect();
        c.leader_placement = LeaderPlacement::Pack;
        for g in 1..=10u32 {
            let membership = partition_membership(&c, g).unwrap();
            assert_eq!(membership, spread[g as usize - 1], "group {g}: the placement does not change the voters");
            let lowest = membership.members().filter(|(_, r)| *r == Role::Voter).map(|(n, _)| n).min();
            assert_eq!(partition_preferred_leader(&c, g), lowest, "group {g}");
        }
        // Voters {1,2,3}, {2,3,4}, {3,4,5}, {4,5,1}, {5,1,2}: node 1 leads three of five.
        let packed: Vec<_> = (1..=5).map(|g| partition_preferred_leader(&c, g).unwrap()).collect();
        assert_eq!(packed, vec![1, 2, 3, 1, 1]);
        let all = config("1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003", "3");
        let all = Config { leader_placement: LeaderPlacement::Pack, ..all };
        assert!((1..=8).all(|g| partition_preferred_leader(&all, g) == Some(1)));
    }
}
