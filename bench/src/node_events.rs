//! Which node leads each Raft group, as Conclave's Node API (`atomix.multiraft.v1.Node`,
//! served on each node's admin listener) reports it: a reader per surviving node forwards
//! its `LeaderUpdated` events, and [`LeaderTracker`] turns them into "the groups the killed
//! node led" and "when each of them was led again by another node".
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::Endpoint;

use crate::conclave::pb::atomix::multiraft::v1 as node;
use crate::error::BenchError;

/// One `LeaderUpdated` event and when the bench received it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaderUpdate {
    pub group: u32,
    pub term: u64,
    /// 0: the reporting node knows no leader.
    pub leader: u64,
    pub at: Instant,
}

/// Readers of the Node API's Watch stream of some nodes; stopped on drop.
pub struct NodeEventReaders {
    pub updates: mpsc::UnboundedReceiver<LeaderUpdate>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for NodeEventReaders {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Connects to the Node API of every endpoint (`http://host:port` of an admin listener)
/// and forwards each one's leader updates, the current state first (the Node API starts
/// every Watch with a `LeaderUpdated` event per hosted group).
pub async fn watch_leaders(endpoints: &[String], timeout: Duration) -> Result<NodeEventReaders, BenchError> {
    let (sender, updates) = mpsc::unbounded_channel();
    let mut tasks = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        let connect_error = |message: String| BenchError::Connect { endpoint: endpoint.clone(), message };
        let channel = Endpoint::from_shared(endpoint.clone())
            .map_err(|e| connect_error(e.to_string()))?
            .connect_timeout(timeout)
            .connect()
            .await
            .map_err(|e| connect_error(format!("{e:?}")))?;
        let mut client = node::node_client::NodeClient::new(channel);
        let mut stream = tokio::time::timeout(timeout, client.watch(node::WatchRequest {}))
            .await
            .map_err(|_| connect_error(format!("Node.Watch did not answer within {timeout:?}")))?
            .map_err(|s| BenchError::Rpc { op: "node_watch", code: format!("{:?}", s.code()), message: s.message().to_string() })?
            .into_inner();
        let sender = sender.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(event)) = stream.message().await {
                let Some(node::event::Event::LeaderUpdated(update)) = event.event else {
                    continue;
                };
                let update = LeaderUpdate { group: update.group_id, term: update.term, leader: update.leader, at: Instant::now() };
                if sender.send(update).is_err() {
                    return;
                }
            }
        }));
    }
    Ok(NodeEventReaders { updates, tasks })
}

/// How one group the killed node led came back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupFailover {
    pub group: u32,
    /// The first other node reported leading it, and how long after the kill; `None`:
    /// no report (yet).
    pub new_leader: Option<(u64, Duration)>,
    /// The group's term at the kill and in the first report of its new leader: more than
    /// one apart means elections failed in between.
    pub term_at_kill: u64,
    pub new_term: Option<u64>,
    /// Reports about the group after the kill, "no leader" ones included.
    pub reports: u32,
}

/// The leader of every group as last reported by any node (the report with the highest
/// term wins), and, once armed with the kill, the failover of each group the killed node
/// led at that instant.
#[derive(Debug, Default)]
pub struct LeaderTracker {
    leaders: BTreeMap<u32, (u64, u64)>,
    armed: Option<Armed>,
}

#[derive(Debug)]
struct Armed {
    at: Instant,
    killed: u64,
    groups: BTreeMap<u32, GroupFailover>,
}

impl LeaderTracker {
    pub fn new() -> LeaderTracker {
        LeaderTracker::default()
    }

    /// Takes one report into account.
    pub fn observe(&mut self, update: LeaderUpdate) {
        if update.leader != 0 {
            let known = self.leaders.entry(update.group).or_insert((0, 0));
            if update.term >= known.0 {
                *known = (update.term, update.leader);
            }
        }
        let Some(armed) = &mut self.armed else { return };
        if update.at < armed.at {
            return;
        }
        let Some(failover) = armed.groups.get_mut(&update.group) else {
            return;
        };
        failover.reports += 1;
        if update.leader == 0 || update.leader == armed.killed {
            return;
        }
        let after = update.at - armed.at;
        // Reports from several nodes race through one channel: keep the earliest.
        if failover.new_leader.is_none_or(|(_, earlier)| after < earlier) {
            failover.new_leader = Some((update.leader, after));
            failover.new_term = Some(update.term);
        }
    }

    /// The groups with a known leader.
    pub fn known(&self) -> usize {
        self.leaders.len()
    }

    /// The groups whose known leader is `node`.
    pub fn led_by(&self, node: u64) -> usize {
        self.leaders.values().filter(|&&(_, l)| l == node).count()
    }

    /// Whether each of groups 1..=`groups` is led by its preferred node (Conclave's
    /// documented placement for nodes numbered 1..=`nodes`: group g on node
    /// `(g - 1) % nodes + 1`). A leader hands a group to its preferred node only once that
    /// node holds the whole log, so a balanced cluster has every node caught up.
    pub fn balanced(&self, groups: u32, nodes: u64) -> bool {
        nodes > 0 && (1..=groups).all(|g| self.leader_of(g) == Some(u64::from(g - 1) % nodes + 1))
    }

    /// The current leader of `group`, if known.
    pub fn leader_of(&self, group: u32) -> Option<u64> {
        self.leaders.get(&group).map(|&(_, leader)| leader)
    }

    /// Node `killed` was killed at `at`: from now on, track the groups it leads.
    /// Returns them.
    pub fn arm(&mut self, at: Instant, killed: u64) -> Vec<u32> {
        let groups: BTreeMap<u32, GroupFailover> = self
            .leaders
            .iter()
            .filter(|(_, &(_, leader))| leader == killed)
            .map(|(&group, &(term, _))| {
                let failover = GroupFailover { group, new_leader: None, term_at_kill: term, new_term: None, reports: 0 };
                (group, failover)
            })
            .collect();
        let led = groups.keys().copied().collect();
        self.armed = Some(Armed { at, killed, groups });
        led
    }

    /// Whether every group the killed node led has a new leader (false before `arm`).
    pub fn all_failed_over(&self) -> bool {
        self.armed.as_ref().is_some_and(|armed| armed.groups.values().all(|f| f.new_leader.is_some()))
    }

    /// The failover of each group the killed node led (empty before `arm`).
    pub fn failovers(&self) -> Vec<GroupFailover> {
        self.armed.iter().flat_map(|armed| armed.groups.iter()).map(|(_, &failover)| failover).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(group: u32, term: u64, leader: u64, at: Instant) -> LeaderUpdate {
        LeaderUpdate { group, term, leader, at }
    }

    #[test]
    fn the_highest_term_names_the_leader() {
        let t = Instant::now();
        let mut tracker = LeaderTracker::new();
        tracker.observe(update(1, 2, 1, t));
        tracker.observe(update(1, 1, 3, t)); // older term, from a slower node
        tracker.observe(update(2, 1, 2, t));
        tracker.observe(update(3, 4, 0, t)); // no leader known: ignored
        assert_eq!(tracker.leader_of(1), Some(1));
        assert_eq!(tracker.leader_of(2), Some(2));
        assert_eq!(tracker.leader_of(3), None);
        assert_eq!(tracker.known(), 2);
        assert_eq!(tracker.led_by(1), 1);
        assert_eq!(tracker.led_by(3), 0);
        assert!(!tracker.all_failed_over(), "not armed");
        assert!(tracker.failovers().is_empty());
    }

    #[test]
    fn a_killed_leaders_groups_are_timed_from_the_kill_to_the_earliest_new_leader() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let mut tracker = LeaderTracker::new();
        for (group, leader) in [(1, 1), (2, 2), (3, 3), (4, 1)] {
            tracker.observe(update(group, 1, leader, t));
        }
        let kill = t + ms(10);
        assert_eq!(tracker.arm(kill, 1), vec![1, 4]);
        assert!(!tracker.all_failed_over());
        // Ignored: no leader, the killed node itself, a report stamped before the kill, a
        // group the killed node did not lead.
        tracker.observe(update(1, 2, 0, kill + ms(5)));
        tracker.observe(update(1, 1, 1, kill + ms(6)));
        tracker.observe(update(1, 2, 2, t + ms(9)));
        tracker.observe(update(2, 2, 3, kill + ms(7)));
        assert_eq!(tracker.failovers()[0].new_leader, None);
        // Two nodes report group 1's new leader; the later-stamped report arrives first.
        tracker.observe(update(1, 2, 2, kill + ms(300)));
        tracker.observe(update(1, 2, 2, kill + ms(250)));
        assert!(!tracker.all_failed_over());
        tracker.observe(update(4, 3, 3, kill + ms(400)));
        assert!(tracker.all_failed_over());
        assert_eq!(
            tracker.failovers(),
            vec![
                GroupFailover {
                    group: 1,
                    new_leader: Some((2, ms(250))),
                    term_at_kill: 1,
                    new_term: Some(2),
                    // The report stamped before the kill does not count.
                    reports: 4,
                },
                GroupFailover { group: 4, new_leader: Some((3, ms(400))), term_at_kill: 1, new_term: Some(3), reports: 1 },
            ]
        );
        assert_eq!(tracker.leader_of(2), Some(3));
    }

    #[test]
    fn balanced_means_every_group_on_its_preferred_node() {
        let t = Instant::now();
        let mut tracker = LeaderTracker::new();
        for (group, leader) in [(1, 1), (2, 2), (3, 3), (4, 1)] {
            tracker.observe(update(group, 1, leader, t));
        }
        assert!(tracker.balanced(4, 3));
        assert!(!tracker.balanced(5, 3), "group 5 has no known leader");
        tracker.observe(update(2, 2, 3, t));
        assert!(!tracker.balanced(4, 3));
        tracker.observe(update(2, 3, 2, t));
        assert!(tracker.balanced(4, 3));
        assert!(!tracker.balanced(4, 0));
    }

    #[test]
    fn a_node_that_led_nothing_fails_over_at_once() {
        let t = Instant::now();
        let mut tracker = LeaderTracker::new();
        tracker.observe(update(1, 1, 2, t));
        assert!(tracker.arm(t, 1).is_empty());
        assert!(tracker.all_failed_over());
    }
}
