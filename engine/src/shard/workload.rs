//! Where a group's requests come from, as its leader sees them: the commands and reads its
//! own clients sent, and those each other node forwarded (a proposal, or a follower's
//! ReadIndex). When, over a rebalancing period, most of a group's requests came through one
//! node, that node is the group's *workload home*: leadership goes there (or stays), so
//! the requests stop crossing nodes. A client talking to one node then finds the leaders
//! of the partitions it uses on that node, and each of its commands saves the forwarding
//! hop (a peer frame each way and a wake-up of two nodes). Requests spread over nodes
//! leave the group on its preferred node, and so does a long quiet.

/// Requests a period needs before they say anything about where the workload is: fewer
/// leave the group's home as it was (so a trickle does not move leadership back and forth).
pub(super) const MIN_REQUESTS_PER_PERIOD: u32 = 16;

/// The share of a period's requests (numerator, denominator) one node must have sent to
/// be the group's home.
pub(super) const HOME_SHARE: (u32, u32) = (3, 4);

/// Periods in a row with too few requests after which the home is forgotten (the group
/// goes back to its preferred node, keeping leaderships spread while the workload rests).
pub(super) const HOME_KEPT_QUIET_PERIODS: u64 = 10;

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
    /// Periods in a row since then with too few requests to say anything.
    quiet_periods: u64,
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

    /// The tick at which a home kept through quiet periods is forgotten, if it has one
    /// (with periods of `period` ticks).
    pub(super) fn home_forgotten_at(&self, period: u64) -> Option<u64> {
        let left = HOME_KEPT_QUIET_PERIODS.saturating_sub(self.quiet_periods);
        self.home.map(|_| self.since.saturating_add(left.max(1).saturating_mul(period)))
    }

    /// At tick `ticks`, once `period` ticks have passed since the period started: settles
    /// the home from the counts since then and starts the next period. A span of several
    /// periods (a quiet leader was not ticked) counts as that many periods, all but the
    /// last with no requests. Returns whether a period ended.
    pub(super) fn settle(&mut self, ticks: u64, period: u64) -> bool {
        let period = period.max(1);
        if ticks < self.since.saturating_add(period) {
            return false;
        }
        let total: u64 = self.by_node.iter().map(|(_, n)| u64::from(*n)).sum();
        let periods = (ticks - self.since) / period;
        if total >= u64::from(MIN_REQUESTS_PER_PERIOD) {
            let (num, den) = HOME_SHARE;
            let dominant = |n: u32| u64::from(n) * u64::from(den) >= total * u64::from(num);
            self.home = self.by_node.iter().find(|(_, n)| dominant(*n)).map(|(node, _)| *node);
            self.quiet_periods = periods - 1;
        } else {
            self.quiet_periods = self.quiet_periods.saturating_add(periods);
        }
        if self.quiet_periods >= HOME_KEPT_QUIET_PERIODS {
            self.home = None;
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

    #[test]
    fn a_home_is_forgotten_after_ten_quiet_periods() {
        let mut w = Workload::default();
        assert_eq!(period(&mut w, 0, &[(2, 20)]), Some(2));
        assert_eq!(w.home_forgotten_at(10), Some(w.since + 100));
        for k in 1..HOME_KEPT_QUIET_PERIODS {
            assert_eq!(period(&mut w, 0, &[(2, 3)]), Some(2), "quiet period {k}");
        }
        assert_eq!(w.home_forgotten_at(10), Some(w.since + 10));
        assert_eq!(period(&mut w, 0, &[]), None, "the tenth quiet period forgets it");
        assert_eq!(w.home_forgotten_at(10), None);

        // A leader not ticked for a while (quiet) counts the periods it missed.
        assert_eq!(period(&mut w, 0, &[(3, 16)]), Some(3));
        w.note(3);
        assert!(w.settle(w.since + 95, 10), "nine periods, one request in all");
        assert_eq!((w.home(), w.quiet_periods), (Some(3), 9));
        assert!(w.settle(w.since + 10, 10));
        assert_eq!(w.home(), None);
        // A busy period after a gap keeps counting from it.
        assert_eq!(period(&mut w, 0, &[(3, 16)]), Some(3));
        for _ in 0..16 {
            w.note(3);
        }
        assert!(w.settle(w.since + 95, 10), "nine periods, the last with 16 requests");
        assert_eq!((w.home(), w.quiet_periods), (Some(3), 8));
    }
}
