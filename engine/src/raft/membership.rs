//! Group configurations: which replicas vote (voters and witnesses), which only learn
//! (observers), which incarnation of each node's replica is the member, quorum arithmetic,
//! and the one-change-at-a-time rule for membership changes.

use std::collections::BTreeMap;

use bytes::Bytes;
use conclave_proto::conclave::raft::v1 as pb;
use prost::Message as _;

use super::error::RaftError;

/// The role of one replica in a configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Votes, replicates, applies, may lead.
    Voter,
    /// Receives the log and applies it; never votes, never counts toward a quorum.
    Observer,
    /// Votes and stores entry metadata only; never leads, never applies.
    Witness,
}

impl Role {
    /// True for the roles that vote and count toward quorums.
    pub fn votes(self) -> bool {
        matches!(self, Role::Voter | Role::Witness)
    }
}

/// A complete configuration: node id to role, ordered by node id, and the incarnation of
/// each member's replica (see [`Membership::incarnation`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    members: BTreeMap<u64, Role>,
    /// Nonzero incarnations only (absent: 0, a replica of the initial configuration).
    incarnations: BTreeMap<u64, u64>,
}

impl Membership {
    /// A configuration from (node id, role) pairs. Node id 0 and duplicates are refused.
    pub fn new(members: impl IntoIterator<Item = (u64, Role)>) -> Result<Self, RaftError> {
        let mut map = BTreeMap::new();
        for (id, role) in members {
            if id == 0 {
                return Err(RaftError::InvalidMembership("node id 0 is reserved".into()));
            }
            if map.insert(id, role).is_some() {
                return Err(RaftError::InvalidMembership(format!("node {id} is listed twice")));
            }
        }
        Ok(Membership { members: map, incarnations: BTreeMap::new() })
    }

    /// This configuration with member `id`'s replica marked as incarnation `incarnation`.
    pub fn with_incarnation(mut self, id: u64, incarnation: u64) -> Result<Self, RaftError> {
        if !self.members.contains_key(&id) {
            return Err(RaftError::InvalidMembership(format!("node {id} is no member, so it has no incarnation")));
        }
        if incarnation == 0 {
            self.incarnations.remove(&id);
        } else {
            self.incarnations.insert(id, incarnation);
        }
        Ok(self)
    }

    /// Which replica of node `id` is the member: the incarnation the node chose when it
    /// started the replica that joined, 0 for a replica of the initial configuration (or
    /// one added before incarnations existed), and 0 for a node that is no member.
    pub fn incarnation(&self, id: u64) -> u64 {
        self.incarnations.get(&id).copied().unwrap_or(0)
    }

    /// `next` with the incarnations of the members it shares with `self` taken from `self`:
    /// a member keeps its replica across role changes; only members `next` adds keep the
    /// incarnation `next` gives them.
    pub fn keeping_incarnations_of(&self, next: Membership) -> Membership {
        let mut next = next;
        for id in self.members.keys() {
            if next.members.contains_key(id) {
                match self.incarnations.get(id) {
                    Some(incarnation) => next.incarnations.insert(*id, *incarnation),
                    None => next.incarnations.remove(id),
                };
            }
        }
        next
    }

    /// A configuration of voters only.
    pub fn voters(ids: impl IntoIterator<Item = u64>) -> Result<Self, RaftError> {
        Self::new(ids.into_iter().map(|id| (id, Role::Voter)))
    }

    pub fn role(&self, id: u64) -> Option<Role> {
        self.members.get(&id).copied()
    }

    /// Every member and its role, ordered by node id.
    pub fn members(&self) -> impl Iterator<Item = (u64, Role)> + '_ {
        self.members.iter().map(|(id, role)| (*id, *role))
    }

    /// Node ids of the members that vote (voters and witnesses).
    pub fn voting(&self) -> impl Iterator<Item = u64> + '_ {
        self.members.iter().filter(|(_, r)| r.votes()).map(|(id, _)| *id)
    }

    pub fn voting_count(&self) -> usize {
        self.voting().count()
    }

    /// True if `ids` (any iterator of voting members) form a majority of the voting members.
    pub fn is_quorum(&self, count_of_voting_in_set: usize) -> bool {
        count_of_voting_in_set > self.voting_count() / 2
    }

    /// The largest index that a majority of voting members has reached, given each
    /// member's index. Returns 0 for a configuration without voters.
    pub fn quorum_index(&self, mut index_of: impl FnMut(u64) -> u64) -> u64 {
        let mut indexes: Vec<u64> = self.voting().map(&mut index_of).collect();
        if indexes.is_empty() {
            return 0;
        }
        indexes.sort_unstable_by(|a, b| b.cmp(a));
        indexes[indexes.len() / 2]
    }

    /// Checks that `next` differs from `self` by at most one voting member (added, removed, or
    /// changed between voting and non-voting), so that any majority of the old configuration
    /// overlaps any majority of the new one. Observers may change freely. The new
    /// configuration must be able to elect a leader ([`Membership::check_electable`]).
    pub fn check_single_change(&self, next: &Membership) -> Result<(), RaftError> {
        let mut ids: Vec<u64> = self.members.keys().chain(next.members.keys()).copied().collect();
        ids.sort_unstable();
        ids.dedup();
        let distinct =
            ids.into_iter().filter(|id| self.role(*id).is_some_and(Role::votes) != next.role(*id).is_some_and(Role::votes)).count();
        if distinct > 1 {
            return Err(RaftError::InvalidMembership(format!("{distinct} voting members change at once; change one at a time")));
        }
        for id in next.members.keys() {
            if self.members.contains_key(id) && self.incarnation(*id) != next.incarnation(*id) {
                return Err(RaftError::InvalidMembership(format!(
                    "node {id} would change its replica (incarnation {} to {}) while staying a member; remove it first",
                    self.incarnation(*id),
                    next.incarnation(*id)
                )));
            }
        }
        next.check_electable()?;
        for (id, role) in &next.members {
            if *role == Role::Witness && self.role(*id).is_some_and(|r| r != Role::Witness) {
                return Err(RaftError::InvalidMembership(format!(
                    "node {id} cannot become a witness: it already holds payloads; remove it first"
                )));
            }
            if *role != Role::Witness && self.role(*id) == Some(Role::Witness) {
                return Err(RaftError::InvalidMembership(format!(
                    "witness {id} keeps no payloads and cannot change role; remove it first"
                )));
            }
        }
        Ok(())
    }

    /// Checks that the configuration can always elect a leader once its members are up: it
    /// has a voter, and the voters outnumber the witnesses, so that they alone form a
    /// quorum. A witness can hold entries that no voter has: a leader's last appends, when
    /// it crashed before persisting them itself. The witness then refuses every voter's
    /// campaign (their logs are shorter), and since it keeps no payloads, no voter can ever
    /// get those entries from it. Voters that are a majority still elect one of themselves;
    /// with as many witnesses as voters, one such crash leaves the group without a leader
    /// for good (sim seed 4294970341). New configurations (changes, bootstraps) must pass;
    /// decoding does not check, so a configuration written before the rule still loads.
    pub fn check_electable(&self) -> Result<(), RaftError> {
        let voters = self.members.values().filter(|r| **r == Role::Voter).count();
        let witnesses = self.members.values().filter(|r| **r == Role::Witness).count();
        if voters == 0 {
            return Err(RaftError::InvalidMembership("the group would have no voter".into()));
        }
        if witnesses >= voters {
            return Err(RaftError::InvalidMembership(format!(
                "{voters} voter(s) and {witnesses} witness(es): the voters must outnumber the witnesses, \
                 or entries that only witnesses hold could block every election"
            )));
        }
        Ok(())
    }

    pub fn to_proto(&self) -> pb::Membership {
        pb::Membership {
            members: self
                .members
                .iter()
                .map(|(id, role)| pb::Member {
                    node_id: *id,
                    role: match role {
                        Role::Voter => pb::MemberRole::Voter,
                        Role::Observer => pb::MemberRole::Observer,
                        Role::Witness => pb::MemberRole::Witness,
                    } as i32,
                    incarnation: self.incarnation(*id),
                })
                .collect(),
        }
    }

    pub fn from_proto(proto: &pb::Membership) -> Result<Self, RaftError> {
        let mut pairs = Vec::with_capacity(proto.members.len());
        for member in &proto.members {
            let role = match pb::MemberRole::try_from(member.role) {
                Ok(pb::MemberRole::Voter) => Role::Voter,
                Ok(pb::MemberRole::Observer) => Role::Observer,
                Ok(pb::MemberRole::Witness) => Role::Witness,
                Err(_) => return Err(RaftError::InvalidMembership(format!("unknown role {} for node {}", member.role, member.node_id))),
            };
            pairs.push((member.node_id, role));
        }
        let mut membership = Self::new(pairs)?;
        for member in proto.members.iter().filter(|m| m.incarnation != 0) {
            membership.incarnations.insert(member.node_id, member.incarnation);
        }
        Ok(membership)
    }

    /// Encodes as the `data` of a membership entry.
    pub fn encode(&self) -> Bytes {
        Bytes::from(self.to_proto().encode_to_vec())
    }

    /// Decodes the `data` of a membership entry.
    pub fn decode(data: &[u8]) -> Result<Self, RaftError> {
        let proto = pb::Membership::decode(data).map_err(|e| RaftError::CorruptState(format!("membership entry does not decode: {e}")))?;
        Self::from_proto(&proto)
    }
}
