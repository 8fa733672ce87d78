//! The leader's view of one follower: how far its log matches, what to send next, and the
//! flow-control window (bounded messages and bytes in flight) for pipelined replication.

use std::collections::VecDeque;

/// How the leader currently replicates to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicationState {
    /// The match point is unknown: send one append at a time and wait for its answer.
    Probe,
    /// The follower is in sync: pipeline appends up to the flow-control window.
    Replicate,
    /// The entries the follower needs are compacted: stream it the snapshot, one chunk at a time.
    Snapshot,
}

/// Replication progress of one peer, kept by the leader.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known to match the leader's log (and be durable on the peer).
    pub match_index: u64,
    /// Next index to send.
    pub next_index: u64,
    pub state: ReplicationState,
    /// In `Probe`: an append is outstanding, wait for its answer or the next heartbeat.
    pub probe_sent: bool,
    /// In `Replicate`: (last index, payload bytes) of each append in flight, oldest first.
    inflight: VecDeque<(u64, usize)>,
    inflight_bytes: usize,
    /// The peer answered since the last check-quorum round.
    pub recent_active: bool,
    /// Highest ReadIndex round the peer confirmed in this term.
    pub read_ack_seq: u64,
    /// `match_index` when the peer last answered a heartbeat: a lagging peer whose match
    /// did not move over a whole heartbeat interval may have lost an append.
    pub match_at_heartbeat: u64,
    /// In `Snapshot`: index of the snapshot being sent and bytes the peer confirmed.
    pub snapshot_index: u64,
    pub snapshot_offset: u64,
    /// The incarnation of the peer's replica this progress tracks.
    pub incarnation: u64,
    /// The highest commit index sent to the peer in this term (on an append or heartbeat).
    pub commit_sent: u64,
}

impl Progress {
    pub fn new(next_index: u64) -> Self {
        Progress {
            match_index: 0,
            next_index,
            state: ReplicationState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            recent_active: false,
            read_ack_seq: 0,
            match_at_heartbeat: 0,
            snapshot_index: 0,
            snapshot_offset: 0,
            incarnation: 0,
            commit_sent: 0,
        }
    }

    /// Progress of the peer replica `incarnation`, sending from `next_index`.
    pub fn for_incarnation(next_index: u64, incarnation: u64) -> Self {
        Progress { incarnation, ..Progress::new(next_index) }
    }

    /// True if no more appends may be sent now.
    pub fn is_paused(&self, max_messages: usize, max_bytes: usize) -> bool {
        match self.state {
            ReplicationState::Probe | ReplicationState::Snapshot => self.probe_sent,
            ReplicationState::Replicate => self.inflight.len() >= max_messages || self.inflight_bytes >= max_bytes,
        }
    }

    pub fn become_probe(&mut self) {
        self.state = ReplicationState::Probe;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.clear_inflight();
    }

    /// Starts streaming the snapshot at `index` from its first byte.
    pub fn start_snapshot(&mut self, index: u64) {
        self.state = ReplicationState::Snapshot;
        self.snapshot_index = index;
        self.snapshot_offset = 0;
        self.probe_sent = false;
        self.clear_inflight();
    }

    fn become_replicate(&mut self) {
        self.state = ReplicationState::Replicate;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.clear_inflight();
    }

    fn clear_inflight(&mut self) {
        self.inflight.clear();
        self.inflight_bytes = 0;
    }

    /// Records an append ending at `last_index` carrying `bytes` of payload.
    pub fn sent(&mut self, last_index: u64, bytes: usize) {
        match self.state {
            ReplicationState::Probe | ReplicationState::Snapshot => self.probe_sent = true,
            ReplicationState::Replicate => {
                if last_index >= self.next_index {
                    self.next_index = last_index + 1;
                    self.inflight.push_back((last_index, bytes));
                    self.inflight_bytes += bytes;
                }
            }
        }
    }

    /// The peer accepted entries up to `index`. Returns true if the match point advanced.
    pub fn on_accept(&mut self, index: u64) -> bool {
        if self.state == ReplicationState::Snapshot {
            // Stale answers to appends sent before the snapshot started.
            return false;
        }
        let advanced = index > self.match_index;
        if advanced {
            self.match_index = index;
        }
        if self.next_index <= index {
            self.next_index = index + 1;
        }
        while let Some((last, bytes)) = self.inflight.front().copied() {
            if last > index {
                break;
            }
            self.inflight.pop_front();
            self.inflight_bytes -= bytes;
        }
        if self.state == ReplicationState::Probe && (advanced || index == self.match_index) {
            self.become_replicate();
        }
        advanced
    }

    /// A heartbeat answer arrived while the peer lags: let one more append through, so a
    /// lost append cannot stall replication (a gap makes the peer reject, which re-probes).
    pub fn unpause_on_heartbeat(&mut self, max_messages: usize, max_bytes: usize) {
        match self.state {
            ReplicationState::Probe | ReplicationState::Snapshot => self.probe_sent = false,
            ReplicationState::Replicate => {
                if self.is_paused(max_messages, max_bytes) {
                    if let Some((_, bytes)) = self.inflight.pop_front() {
                        self.inflight_bytes -= bytes;
                    }
                }
            }
        }
    }

    /// The peer rejected an append whose previous index was `rejected`; `hint` is the
    /// largest index the leader believes may match. Returns false for stale rejections.
    pub fn on_reject(&mut self, rejected: u64, hint: u64) -> bool {
        match self.state {
            ReplicationState::Snapshot => false,
            ReplicationState::Replicate => {
                if rejected <= self.match_index {
                    return false;
                }
                self.become_probe();
                true
            }
            ReplicationState::Probe => {
                if self.next_index == 0 || rejected != self.next_index - 1 {
                    return false;
                }
                self.next_index = hint.saturating_add(1).min(rejected).max(self.match_index + 1);
                self.probe_sent = false;
                true
            }
        }
    }
}
