//! Where a group's requests come from, as its leader sees them: the commands and reads its
//! own clients sent, and those each other node forwarded (a proposal, or a follower's
//! ReadIndex). When, over a rebalancing period, most of a group's requests came through one
//! node, that node is the group's *workload home*: leadership goes there (or stays), so
//! the requests stop crossing nodes. A client talking to one node then finds the leaders
//! of the partitions it uses on that node, and each of its commands saves the forwarding
//! hop (a peer frame each way and a wake-up of two nodes). Requests spread over nodes
//! leave the group on its preferred node.

/// Requests a period needs before they say anything about where the workload is: fewer
/// leave the group's home as it was (so a trickle does not move leadership back and forth).
pub(super) const MIN_REQUESTS_PER_PERIOD: u32 = 16;

/// The share of a period's requests (numerator, denominator) one node must have sent to
/// be the group's home.
pub(super) const HOME_SHARE: (u32, u32) = (3, 4);

/// One group's request counts over the current period, and the home the last full period
/// found.
#[derive(Debug, Default)]
pub(super) struct Workload {
    /// The tick the current period started.
    since: u64,
    /// The period's requests by the node they came through (few: the group's members).
    by_node: Vec<(u64, u32)>,
    /// Where the last period with enough requests found most of them came from
    /// (`None`: nowhere in particular, or not known yet).
    home: Option<u64>,
}

impl Workload {
    /// Starts counting afresh at `ticks` with no home (this replica just became leader).
    pub(super) fn restart(&mut self, ticks: u64) {
        *self = Workload { since: ticks, ..Workload::default() };
    }

    /// Counts one request that came through node `node` (this node, for its own clients).
    pub(super) fn note(&mut self, node: u64) {
        match self.by_node.iter_mut().find(|(n, _)| *n == node) {
            Some((_, count)) => *count = count.saturating_add(1),
            None => self.by_node.push((node, 1)),
        }
    }

    /// The home the last full period found.
    pub(super) fn home(&self) -> Option<u64> {
        self.home
    }

    /// At tick `ticks`, once `period` ticks have passed since the period started: settles
    /// the home from the period's counts and starts the next period. Returns whether a
    /// period ended.
    pub(super) fn settle(&mut self, ticks: u64, period: u64) -> bool {
        if ticks < self.since.saturating_add(period) {
            return false;
        }
        let total: u64 = self.by_node.iter().map(|(_, n)| u64::from(*n)).sum();
        if total >= u64::from(MIN_REQUESTS_PER_PERIOD) {
            let (num, den) = HOME_SHARE;
            let dominant = |n: u32| u64::from(n) * u64::from(den) >= total * u64::from(num);
            self.home = self.by_node.iter().find(|(_, n)| dominant(*n)).map(|(node, _)| *node);
        }
        self.since = ticks;
        self.by_node.clear();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One period of 10 ticks on node 1: `here` requests from its clients, and those
    /// `forwarded` by other nodes.
    fn period(workload: &mut Workload, here: u32, forwarded: &[(u64, u32)]) -> Option<u64> {
        for (node, n) in std::iter::once(&(1, here)).chain(forwarded) {
            for _ in 0..*n {
                workload.note(*node);
            }
        }
        let next = workload.since + 10;
        assert!(!workload.settle(next - 1, 10), "a period ends only after its ticks");
        assert!(workload.settle(next, 10));
        workload.home()
    }

    #[test]
    fn the_home_is_the_node_most_requests_came_through() {
        let mut w = Workload::default();
        assert_eq!(period(&mut w, 2, &[(2, 30)]), Some(2), "forwarded by node 2");
        assert_eq!(period(&mut w, 40, &[(2, 10), (3, 3)]), Some(1), "40 of 53 is over three quarters: here");
        assert_eq!(period(&mut w, 20, &[(2, 20)]), None, "half and half: nowhere in particular");
        assert_eq!(period(&mut w, 0, &[(3, 12), (2, 4)]), Some(3), "exactly three quarters is enough");
    }

    #[test]
    fn a_period_with_few_requests_leaves_the_home_as_it_was() {
        let mut w = Workload::default();
        assert_eq!(period(&mut w, 0, &[(2, 15)]), None, "15 requests say nothing yet");
        assert_eq!(period(&mut w, 0, &[(2, 16)]), Some(2));
        assert_eq!(period(&mut w, 0, &[]), Some(2), "a quiet period keeps the home");
        assert_eq!(period(&mut w, 5, &[(3, 1)]), Some(2), "so does a trickle from elsewhere");
        w.restart(100);
        assert_eq!(w.home(), None, "a new leader starts with no home");
        assert_eq!(period(&mut w, 0, &[]), None);
    }
}
