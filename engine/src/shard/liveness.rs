//! Node-level liveness between shards, coalesced per node pair: each shard sends the same
//! shard of every peer node one empty Raft batch per heartbeat interval, whatever number
//! of groups they share, and notes when it last heard anything from each. A peer silent
//! for an election timeout is reported once, so the runtime can wake the quiet groups that
//! peer leads (their followers run no election timer while quiet, see `schedule.rs`).

use std::collections::BTreeMap;

/// What the shard knows of one peer node.
#[derive(Debug, Clone, Copy)]
struct PeerClock {
    /// Tick at which anything last arrived from the peer.
    heard: u64,
    /// Tick of the last ping sent to it.
    pinged: u64,
    /// Reported silent and not heard from since.
    silent: bool,
}

/// The liveness of this shard's peers, in ticks of the shard loop.
#[derive(Debug, Default)]
pub(super) struct Liveness {
    /// Ticks between two pings to each peer (0: no pings, nothing is ever reported).
    ping_ticks: u64,
    /// Ticks of silence after which a peer is reported.
    silence_ticks: u64,
    peers: BTreeMap<u64, PeerClock>,
}

impl Liveness {
    /// Liveness of `peers`, counted from tick `now` as if each had just been heard.
    pub(super) fn new(peers: &[u64], ping_ticks: u64, silence_ticks: u64, now: u64) -> Liveness {
        let clock = PeerClock { heard: now, pinged: 0, silent: false };
        Liveness { ping_ticks, silence_ticks, peers: peers.iter().map(|p| (*p, clock)).collect() }
    }

    /// Something arrived from `node` at tick `now`. Returns true if it had been reported
    /// silent.
    pub(super) fn heard(&mut self, node: u64, now: u64) -> bool {
        match self.peers.get_mut(&node) {
            Some(peer) => {
                peer.heard = now;
                std::mem::take(&mut peer.silent)
            }
            None => false,
        }
    }

    /// The connection to `node` failed: it counts as silent from now on (until heard).
    /// Returns true if it was not reported silent yet.
    pub(super) fn down(&mut self, node: u64) -> bool {
        match self.peers.get_mut(&node) {
            Some(peer) => !std::mem::replace(&mut peer.silent, true),
            None => false,
        }
    }

    /// Whether `node` was reported silent (or its connection failed) and not heard from
    /// since. A node this shard does not watch is never silent.
    pub(super) fn is_silent(&self, node: u64) -> bool {
        self.peers.get(&node).is_some_and(|peer| peer.silent)
    }

    /// The peers that are silent now (see [`Liveness::is_silent`]).
    pub(super) fn silent_nodes(&self) -> Vec<u64> {
        self.peers.iter().filter(|(_, peer)| peer.silent).map(|(node, _)| *node).collect()
    }

    /// At tick `now`: the peers to ping now, and (when `report_silence`) the peers that
    /// just became silent.
    pub(super) fn tick(&mut self, now: u64, report_silence: bool) -> (Vec<u64>, Vec<u64>) {
        let mut ping = Vec::new();
        let mut silent = Vec::new();
        if self.ping_ticks == 0 {
            return (ping, silent);
        }
        for (&node, peer) in self.peers.iter_mut() {
            // At each multiple of the interval, the tick the shard's leaders heartbeat at.
            if now / self.ping_ticks > peer.pinged / self.ping_ticks {
                peer.pinged = now;
                ping.push(node);
            }
            if report_silence && !peer.silent && now > peer.heard + self.silence_ticks {
                peer.silent = true;
                silent.push(node);
            }
        }
        (ping, silent)
    }

    /// The first tick after `now` at which [`Liveness::tick`] pings a peer or reports one
    /// silent (unless it is heard from before); `None` without pings.
    pub(super) fn next_due(&self, now: u64) -> Option<u64> {
        if self.ping_ticks == 0 {
            return None;
        }
        let due = self.peers.values().flat_map(|p| {
            [Some((p.pinged / self.ping_ticks + 1) * self.ping_ticks), (!p.silent).then_some(p.heard + self.silence_ticks + 1)]
        });
        due.flatten().min().map(|tick| tick.max(now + 1))
    }

    /// Peers currently reported silent.
    pub(super) fn silent_count(&self) -> usize {
        self.peers.values().filter(|p| p.silent).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_ping_per_peer_per_interval_and_silence_reported_once() {
        let mut l = Liveness::new(&[2, 3], 3, 10, 0);
        assert_eq!(l.tick(3, true), (vec![2, 3], vec![]));
        assert_eq!(l.tick(4, true), (vec![], vec![]));
        assert_eq!(l.tick(6, true), (vec![2, 3], vec![]));
        l.heard(2, 8);
        assert_eq!(l.tick(11, true).1, vec![3]);
        assert_eq!(l.tick(12, true).1, Vec::<u64>::new());
        assert_eq!(l.silent_count(), 1);
        assert!(l.heard(3, 13));
        assert!(!l.heard(3, 14));
        assert_eq!(l.tick(19, true).1, vec![2]);
    }

    #[test]
    fn the_next_due_tick_is_the_next_ping_or_silence() {
        let mut l = Liveness::new(&[2, 3], 3, 10, 0);
        assert_eq!(l.next_due(0), Some(3));
        assert_eq!(l.tick(3, true), (vec![2, 3], vec![]));
        assert_eq!(l.next_due(3), Some(6));
        // Pings due long ago are due at the next tick.
        assert_eq!(l.next_due(40), Some(41));
        let mut quiet = Liveness::new(&[2], 100, 10, 0);
        quiet.tick(100, true);
        assert_eq!(quiet.next_due(100), Some(200));
        quiet.heard(2, 150);
        assert_eq!(quiet.next_due(150), Some(161));
        assert_eq!(Liveness::new(&[2], 0, 10, 0).next_due(5), None);
    }

    #[test]
    fn a_peer_is_silent_from_its_report_or_failure_until_heard() {
        let mut l = Liveness::new(&[2, 3], 3, 10, 0);
        assert!(!l.is_silent(2) && l.silent_nodes().is_empty());
        l.tick(11, true);
        assert!(l.is_silent(2) && l.is_silent(3));
        l.heard(2, 12);
        assert_eq!(l.silent_nodes(), vec![3]);
        l.heard(3, 13);
        assert!(l.down(3));
        assert_eq!(l.silent_nodes(), vec![3]);
        assert!(!l.is_silent(9), "a node not watched is never silent");
    }

    #[test]
    fn silence_is_not_reported_while_requests_wait() {
        let mut l = Liveness::new(&[2], 3, 10, 0);
        assert_eq!(l.tick(11, false).1, Vec::<u64>::new());
        assert_eq!(l.tick(12, true).1, vec![2]);
    }

    #[test]
    fn a_failed_connection_counts_as_silence_once() {
        let mut l = Liveness::new(&[2], 3, 10, 0);
        assert!(l.down(2));
        assert!(!l.down(2));
        assert_eq!(l.tick(20, true).1, Vec::<u64>::new());
        assert!(l.heard(2, 21));
        assert!(!l.down(7));
    }

    #[test]
    fn without_pings_nothing_is_reported() {
        let mut l = Liveness::new(&[2], 0, 10, 0);
        assert_eq!(l.tick(100, true), (vec![], vec![]));
    }
}
