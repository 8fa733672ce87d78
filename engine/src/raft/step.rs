//! Message handling of `RaftNode`: term rules, elections (pre-vote, vote, TimeoutNow), and
//! the follower side of replication (appends and heartbeats).

use conclave_proto::conclave::raft::v1::{EntryKind, Message, MessageType};

use super::error::RaftError;
use super::membership::Membership;
use super::node::RaftNode;
use super::ready::RaftRole;

/// `context` of vote requests caused by a leadership transfer: they bypass the leader lease.
pub(super) const TRANSFER_CONTEXT: &[u8] = b"transfer";

/// The largest term, index, commit index or read round a peer may send. An honest group
/// stays far below it (a billion elections or entries a second would take 146 years to
/// get there), and refusing anything larger keeps the arithmetic on terms and indexes
/// (`term + 1`, `last_index + 1`, `index + entry count`) clear of overflow.
pub(super) const MAX_TERM_OR_INDEX: u64 = 1 << 62;

impl RaftNode {
    /// Handles one message from a peer. Malformed or misaddressed messages are refused with
    /// an error and change nothing. A message of another incarnation (one addressed to
    /// another replica of this node, or an answer from a replica of a member other than the
    /// one the configuration holds: late traffic of a replica that left before its node
    /// joined again) is dropped and counted (see [`RaftNode::incarnation_drops`]).
    pub fn step(&mut self, msg: Message) -> Result<(), RaftError> {
        self.answering = Some((msg.from, msg.from_incarnation));
        let result = self.step_answering(msg);
        self.answering = None;
        result
    }

    fn step_answering(&mut self, msg: Message) -> Result<(), RaftError> {
        self.refuse_if_halted()?;
        if msg.group_id != self.cfg.group_id || msg.to != self.cfg.id {
            return Err(RaftError::InvalidMessage(format!(
                "message for group {} node {} delivered to group {} node {}",
                msg.group_id, msg.to, self.cfg.group_id, self.cfg.id
            )));
        }
        if msg.from == 0 || msg.from == self.cfg.id {
            return Err(RaftError::InvalidMessage(format!("bad sender {}", msg.from)));
        }
        let msg_type = match MessageType::try_from(msg.msg_type) {
            Ok(MessageType::Unspecified) | Err(_) => {
                return Err(RaftError::InvalidMessage(format!("unknown message type {}", msg.msg_type)))
            }
            Ok(t) => t,
        };
        self.check_content(&msg, msg_type)?;
        if self.of_another_incarnation(&msg, msg_type) {
            self.incarnation_drops += 1;
            return Ok(());
        }
        // A quiet replica drops a campaign inside its leader's lease (see `accept_term`), but
        // wakes: a quiet leader then heartbeats a restarted member back into the group.
        if matches!(msg_type, MessageType::PreVote | MessageType::Vote) {
            self.wake();
        }
        if !self.accept_term(&msg, msg_type) {
            return Ok(());
        }
        let from_leader = matches!(msg_type, MessageType::Append | MessageType::Heartbeat | MessageType::Snapshot);
        if from_leader && self.role == RaftRole::Leader {
            // The term rules made us a follower of any leader of a later term.
            return Err(RaftError::InvalidMessage(format!("two leaders in term {}: node {} and this node", self.term, msg.from)));
        }
        // Traffic wakes a quiet group, except the answers to the leader's last heartbeats and
        // acknowledgements, which are what quiet groups still exchange.
        let quiet_traffic = (msg_type == MessageType::Heartbeat && msg.quiesce)
            || msg_type == MessageType::HeartbeatResponse
            || (msg_type == MessageType::AppendResponse && !msg.reject);
        if !quiet_traffic {
            self.wake();
        }
        match msg_type {
            MessageType::PreVote | MessageType::Vote => {
                self.on_vote_request(msg, msg_type);
                Ok(())
            }
            MessageType::PreVoteResponse | MessageType::VoteResponse => {
                self.on_vote_response(msg, msg_type);
                Ok(())
            }
            MessageType::Append | MessageType::Heartbeat | MessageType::Snapshot => {
                if self.role != RaftRole::Follower {
                    let term = self.term;
                    self.become_follower(term, msg.from);
                }
                self.election_elapsed = 0;
                if self.leader != msg.from {
                    self.set_leader(msg.from);
                }
                self.leader_incarnation = (msg.from, msg.from_incarnation);
                match msg_type {
                    MessageType::Snapshot => self.on_snapshot_chunk(msg),
                    // A snapshot waits for installation: the old log must not move meanwhile.
                    _ if self.is_installing() => Ok(()),
                    MessageType::Append => self.on_append(msg),
                    _ => {
                        self.on_heartbeat(msg);
                        Ok(())
                    }
                }
            }
            MessageType::AppendResponse | MessageType::HeartbeatResponse | MessageType::SnapshotResponse => {
                if self.role == RaftRole::Leader {
                    match msg_type {
                        MessageType::AppendResponse => self.on_append_response(msg),
                        MessageType::HeartbeatResponse => self.on_heartbeat_response(msg),
                        _ => self.on_snapshot_response(msg),
                    }
                }
                Ok(())
            }
            MessageType::TimeoutNow => {
                // Only our leader may hand leadership over.
                if self.role == RaftRole::Follower && msg.from == self.leader && self.can_campaign() {
                    // The old leader's follower leases may still run.
                    self.note_foreign_leases(msg.from);
                    self.start_election(true);
                }
                Ok(())
            }
            MessageType::ReadIndex => {
                if self.role == RaftRole::Leader {
                    self.on_read_index_request(msg);
                }
                Ok(())
            }
            MessageType::ReadIndexResponse => {
                if msg.from == self.leader {
                    self.on_read_index_response(msg);
                }
                Ok(())
            }
            MessageType::Unspecified => unreachable!("refused above"),
        }
    }

    /// Applies the term rules. Returns false if the message must be dropped.
    fn accept_term(&mut self, msg: &Message, msg_type: MessageType) -> bool {
        use MessageType::*;
        if msg.term > self.term {
            let is_vote = matches!(msg_type, PreVote | Vote);
            if is_vote {
                // A campaign by our own leader means it lost leadership (it restarted or stepped
                // down); the lease we granted it binds nobody else, and a quiet group must not
                // ignore it.
                let forced = msg.context.as_ref() == TRANSFER_CONTEXT || msg.from == self.leader;
                let in_lease =
                    self.cfg.check_quorum && (self.leader != 0 || self.startup_quiet) && self.election_elapsed < self.cfg.election_ticks;
                if in_lease && !forced && !self.cfg.deliberate_bugs.vote_inside_lease {
                    return false;
                }
            }
            let granted_pre_vote = msg_type == PreVoteResponse && !msg.reject;
            if msg_type == PreVote || granted_pre_vote {
                return true;
            }
            let leader = if matches!(msg_type, Append | Heartbeat | Snapshot) { msg.from } else { 0 };
            self.become_follower(msg.term, leader);
            return true;
        }
        if msg.term < self.term {
            if (self.cfg.check_quorum || self.cfg.pre_vote) && matches!(msg_type, Append | Heartbeat | Snapshot) {
                // Tell a stale leader about the newer term so it steps down.
                let reply = self.new_message(msg.from, AppendResponse);
                self.out_messages.push(reply);
            } else if msg_type == PreVote {
                let mut reply = self.new_message(msg.from, PreVoteResponse);
                reply.reject = true;
                self.out_messages.push(reply);
            }
            return false;
        }
        true
    }

    fn on_vote_request(&mut self, msg: Message, msg_type: MessageType) {
        let pre = msg_type == MessageType::PreVote;
        let can_vote = self.vote == msg.from || (self.vote == 0 && self.leader == 0) || (pre && msg.term > self.term);
        let log_ok = self.log.is_up_to_date(msg.index, msg.log_term) || self.cfg.deliberate_bugs.vote_for_stale_log;
        let response_type = if pre { MessageType::PreVoteResponse } else { MessageType::VoteResponse };
        let mut reply = self.new_message(msg.from, response_type);
        if can_vote && log_ok {
            if pre {
                // Answer in the term asked for, so the pre-candidate counts it.
                reply.term = msg.term;
                self.out_messages.push(reply);
            } else {
                self.vote = msg.from;
                self.election_elapsed = 0;
                // The vote must be durable before the candidate learns of it.
                self.out_persisted_messages.push(reply);
            }
        } else {
            reply.reject = true;
            self.out_messages.push(reply);
        }
    }

    fn on_vote_response(&mut self, msg: Message, msg_type: MessageType) {
        let expected = match self.role {
            RaftRole::PreCandidate => MessageType::PreVoteResponse,
            RaftRole::Candidate => MessageType::VoteResponse,
            _ => return,
        };
        let expected_term = if self.role == RaftRole::PreCandidate { self.term + 1 } else { self.term };
        if msg_type != expected || msg.term != expected_term {
            return;
        }
        if self.membership().role(msg.from).is_some_and(|r| r.votes()) {
            self.votes.entry(msg.from).or_insert(!msg.reject);
        }
        self.tally_votes();
    }

    /// Counts the answers of the latest configuration's voting members only: a candidate
    /// that is not one of them (see `can_campaign`) does not count its own vote.
    pub(super) fn tally_votes(&mut self) {
        let membership = self.membership();
        let votes_of_voters = || self.votes.iter().filter(|(id, _)| membership.role(**id).is_some_and(|r| r.votes()));
        let granted = votes_of_voters().filter(|(_, g)| **g).count();
        let rejected = votes_of_voters().filter(|(_, g)| !**g).count();
        if membership.is_quorum(granted) {
            if self.role == RaftRole::PreCandidate {
                self.campaign(false);
            } else {
                self.become_leader();
            }
        } else if membership.is_quorum(rejected) {
            let term = self.term;
            self.become_follower(term, 0);
        }
    }

    /// Starts an election after a timeout (`forced`: on TimeoutNow, skipping pre-vote).
    pub(super) fn start_election(&mut self, forced: bool) {
        if self.cfg.pre_vote && !forced {
            self.set_role(RaftRole::PreCandidate);
            self.set_leader(0);
            self.votes.clear();
            self.reset_election_timer();
            self.request_votes(MessageType::PreVote, self.term + 1, false);
        } else {
            self.campaign(forced);
        }
    }

    fn campaign(&mut self, forced: bool) {
        self.term += 1;
        self.vote = self.cfg.id;
        self.set_role(RaftRole::Candidate);
        self.set_leader(0);
        self.votes.clear();
        self.reset_election_timer();
        self.request_votes(MessageType::Vote, self.term, forced);
    }

    fn request_votes(&mut self, msg_type: MessageType, term: u64, forced: bool) {
        let id = self.cfg.id;
        let peers: Vec<u64> = self.membership().voting().filter(|p| *p != id).collect();
        for peer in peers {
            let mut msg = self.new_message(peer, msg_type);
            msg.term = term;
            msg.index = self.log.last_index();
            msg.log_term = self.log.last_term();
            if forced {
                msg.context = bytes::Bytes::from_static(TRANSFER_CONTEXT);
            }
            if msg_type == MessageType::Vote {
                // Our own vote must be durable before we ask for others'.
                self.out_persisted_messages.push(msg);
            } else {
                self.out_messages.push(msg);
            }
        }
        self.votes.insert(id, true);
        self.tally_votes();
    }

    /// Refuses, before anything changes, a message whose content no honest peer sends:
    /// numbers beyond [`MAX_TERM_OR_INDEX`], an append whose entries do not follow its
    /// previous entry or each other (in index and term, up to the sender's term), have an
    /// unknown kind or an undecodable configuration, or contradict committed entries, and
    /// a snapshot chunk whose metadata is missing, beyond the sender's term, without a
    /// valid configuration, or contradicts a committed entry. (A leader of an earlier term
    /// may hold entries that lost; its messages go on to the term rules, which answer it.)
    fn check_content(&self, msg: &Message, msg_type: MessageType) -> Result<(), RaftError> {
        check_numbers(msg)?;
        let invalid = |why: String| Err(RaftError::InvalidMessage(why));
        let committed = self.log.committed();
        let check_committed = |what: &str, index: u64, term: u64| {
            if msg.term >= self.term && index <= committed && self.log.term(index).is_some_and(|t| t != term) {
                return invalid(format!("{what} at index {index} term {term} contradicts the committed entry there (commit {committed})"));
            }
            Ok(())
        };
        match msg_type {
            MessageType::Append => {
                // A leader's log holds terms of its own term or earlier, never falling along the log.
                if msg.log_term > msg.term {
                    return invalid(format!("append after an entry of term {} sent in term {}", msg.log_term, msg.term));
                }
                let mut previous = (msg.index, msg.log_term);
                for entry in &msg.entries {
                    if entry.index != previous.0 + 1 {
                        return invalid(format!("append entries are not contiguous after index {}", msg.index));
                    }
                    if entry.term == 0 || entry.term < previous.1 || entry.term > msg.term {
                        return invalid(format!(
                            "append entry {} has term {} after term {}, sent in term {}",
                            entry.index, entry.term, previous.1, msg.term
                        ));
                    }
                    previous = (entry.index, entry.term);
                    match EntryKind::try_from(entry.kind) {
                        Ok(EntryKind::Membership) => {
                            Membership::decode(&entry.data)
                                .map_err(|e| RaftError::InvalidMessage(format!("membership entry {}: {e}", entry.index)))?;
                        }
                        Ok(_) => {}
                        Err(_) => return invalid(format!("entry {} has unknown kind {}", entry.index, entry.kind)),
                    }
                    check_committed("append entry", entry.index, entry.term)?;
                }
            }
            MessageType::Snapshot => {
                let Some(meta) = msg.snapshot.as_ref() else {
                    return invalid("snapshot chunk without metadata".into());
                };
                // A leader's snapshot covers entries of its term or earlier, and only index 0 has term 0.
                if meta.term > msg.term || (meta.term == 0) != (meta.index == 0) {
                    return invalid(format!("snapshot at index {} term {} sent in term {}", meta.index, meta.term, msg.term));
                }
                let Some(membership) = meta.membership.as_ref() else {
                    return invalid("snapshot metadata without membership".into());
                };
                Membership::from_proto(membership).map_err(|e| RaftError::InvalidMessage(format!("snapshot membership: {e}")))?;
                check_committed("snapshot", meta.index, meta.term)?;
            }
            _ => {}
        }
        Ok(())
    }

    fn on_append(&mut self, msg: Message) -> Result<(), RaftError> {
        let mut reply = self.new_message(msg.from, MessageType::AppendResponse);
        // A commit notice to a follower the leader knows in sync: answered only by a refusal.
        let quiet_on_success = msg.commit_only && msg.entries.is_empty();
        if msg.index < self.log.committed() {
            if !quiet_on_success {
                reply.index = self.log.committed();
                self.out_persisted_messages.push(reply);
            }
            return Ok(());
        }
        let new_entries = msg.entries.clone();
        match self.log.try_append(msg.index, msg.log_term, msg.entries)? {
            Some(last_match) => {
                self.sync_configs(&new_entries)?;
                self.log.commit_to(msg.commit.min(last_match));
                reply.index = last_match;
                if quiet_on_success {
                    return Ok(());
                }
                if self.cfg.deliberate_bugs.ack_before_persist {
                    self.out_messages.push(reply);
                } else {
                    self.out_persisted_messages.push(reply);
                }
            }
            None => {
                let (hint_index, hint_term) = self.log.find_conflict_by_term(msg.index.min(self.log.last_index()), msg.log_term);
                reply.index = msg.index;
                reply.reject = true;
                reply.reject_hint = hint_index;
                reply.log_term = hint_term;
                self.out_messages.push(reply);
            }
        }
        Ok(())
    }

    fn on_heartbeat(&mut self, msg: Message) {
        self.log.commit_to(msg.commit);
        // Go quiet only with the whole committed log in hand; otherwise stay awake.
        let caught_up = msg.commit == self.log.last_index();
        if msg.quiesce && caught_up {
            self.quiesced = true;
        } else {
            self.wake();
        }
        let mut reply = self.new_message(msg.from, MessageType::HeartbeatResponse);
        reply.read_seq = msg.read_seq;
        self.out_messages.push(reply);
    }
}

/// Refuses a message carrying a term, index or counter beyond [`MAX_TERM_OR_INDEX`].
fn check_numbers(msg: &Message) -> Result<(), RaftError> {
    let meta = msg.snapshot.as_ref();
    let fields = [
        ("term", msg.term),
        ("log_term", msg.log_term),
        ("index", msg.index),
        ("commit", msg.commit),
        ("reject_hint", msg.reject_hint),
        ("read_seq", msg.read_seq),
        ("snapshot_offset", msg.snapshot_offset),
        ("snapshot index", meta.map_or(0, |m| m.index)),
        ("snapshot term", meta.map_or(0, |m| m.term)),
    ];
    let entries = msg.entries.iter().flat_map(|e| [("entry index", e.index), ("entry term", e.term)]);
    match fields.into_iter().chain(entries).find(|(_, value)| *value > MAX_TERM_OR_INDEX) {
        Some((name, value)) => {
            Err(RaftError::InvalidMessage(format!("{name} {value} is beyond {MAX_TERM_OR_INDEX}, more than any group reaches")))
        }
        None => Ok(()),
    }
}
