//! [`PendingQueries`]: queries held until the state machine has applied the index they must
//! observe (the driver's `max_received_index`, or a Raft read index), released in order.

use std::collections::BTreeMap;

/// Queries of type `Q` waiting for `last_applied` to reach their index. Released in
/// ascending index order, and in arrival order for equal indexes.
#[derive(Clone, Debug)]
pub struct PendingQueries<Q> {
    waiting: BTreeMap<u64, Vec<Q>>,
    len: usize,
}

impl<Q> Default for PendingQueries<Q> {
    fn default() -> Self {
        PendingQueries { waiting: BTreeMap::new(), len: 0 }
    }
}

impl<Q> PendingQueries<Q> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Offers `query`, which must observe every entry up to `min_index`. Returns it back
    /// at once when `last_applied` already covers it; otherwise holds it and returns None.
    pub fn submit(&mut self, last_applied: u64, min_index: u64, query: Q) -> Option<Q> {
        if min_index <= last_applied {
            return Some(query);
        }
        self.waiting.entry(min_index).or_default().push(query);
        self.len += 1;
        None
    }

    /// Removes and returns every held query whose index `last_applied` now covers, in order.
    pub fn release(&mut self, last_applied: u64) -> Vec<Q> {
        let still_waiting = match last_applied.checked_add(1) {
            Some(first_waiting) => self.waiting.split_off(&first_waiting),
            None => BTreeMap::new(),
        };
        let ready = std::mem::replace(&mut self.waiting, still_waiting);
        let released: Vec<Q> = ready.into_values().flatten().collect();
        self.len -= released.len();
        released
    }

    /// The number of held queries.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Removes and returns every held query (e.g. the group lost leadership and the server
    /// answers them UNAVAILABLE), in order.
    pub fn drain(&mut self) -> Vec<Q> {
        self.len = 0;
        std::mem::take(&mut self.waiting).into_values().flatten().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::PendingQueries;

    #[test]
    fn holds_queries_until_their_index_is_applied_and_releases_them_in_order() {
        let mut pending = PendingQueries::new();
        assert_eq!(pending.submit(5, 5, "now"), Some("now"));
        assert_eq!(pending.submit(5, 9, "nine"), None);
        assert_eq!(pending.submit(5, 7, "seven-a"), None);
        assert_eq!(pending.submit(5, 7, "seven-b"), None);
        assert_eq!(pending.len(), 3);
        assert!(pending.release(6).is_empty());
        assert_eq!(pending.release(8), ["seven-a", "seven-b"]);
        assert_eq!(pending.len(), 1);
        assert_eq!(pending.release(u64::MAX), ["nine"]);
        assert!(pending.is_empty());
        assert_eq!(pending.submit(0, 3, "drained"), None);
        assert_eq!(pending.drain(), ["drained"]);
        assert!(pending.is_empty());
    }
}
