//! Linearizability checkers for histories of a single register whose writes carry unique
//! values: a Wing–Gong search with Porcupine-style memoisation (general, exponential in the
//! worst case, so bounded by a budget), and the Gibbons–Korach zone test (exact and fast for
//! registers whose reads identify the write they saw). `check_register` runs both and demands
//! they agree whenever the search finishes. Writes whose outcome is unknown (the client lost
//! its node) have no return time: they may take effect at any point after their invocation,
//! or never.

use std::collections::BTreeSet;

/// What a client did to the register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterOp {
    Write(u64),
    /// A read and the value it returned.
    Read(u64),
}

/// One operation of a history: invocation and (if known) return time.
#[derive(Clone, Copy, Debug)]
pub struct Operation {
    pub op: RegisterOp,
    pub invoked: u64,
    pub returned: Option<u64>,
}

/// Checks `history` (register starting at `initial`, all written values unique and distinct
/// from `initial`) with both algorithms. Err describes a violation or a disagreement.
pub fn check_register(history: &[Operation], initial: u64, budget: usize) -> Result<(), String> {
    let zones = check_register_zones(history, initial);
    match search_register(history, initial, budget) {
        Err(SearchError::BudgetExceeded) => zones,
        Err(SearchError::NotLinearizable(why)) if zones.is_err() => Err(why),
        Ok(()) if zones.is_ok() => Ok(()),
        search => Err(format!(
            "the two linearizability checkers disagree: search {search:?}, zones {zones:?}, \
             history {history:?}"
        )),
    }
}

/// Why the search gave no linearization.
#[derive(Debug)]
pub enum SearchError {
    NotLinearizable(String),
    BudgetExceeded,
}

/// Gibbons–Korach: group each write with the reads that returned its value; a cluster's
/// zone runs from its earliest return to its latest invocation. The history is
/// linearizable iff every read returns a written (or the initial) value and does not end
/// before that write begins, no two forward zones overlap, and no backward zone lies inside
/// a forward zone.
pub fn check_register_zones(history: &[Operation], initial: u64) -> Result<(), String> {
    use std::collections::BTreeMap;
    // value -> (min return, max invoke, write invocation); the initial value is written at 0.
    let mut clusters: BTreeMap<u64, (u64, u64, u64)> = BTreeMap::new();
    clusters.insert(initial, (0, 0, 0));
    for operation in history {
        if let RegisterOp::Write(v) = operation.op {
            let returned = operation.returned.unwrap_or(u64::MAX);
            if clusters.insert(v, (returned, operation.invoked, operation.invoked)).is_some() {
                return Err(format!("value {v} written twice"));
            }
        }
    }
    for operation in history {
        if let RegisterOp::Read(v) = operation.op {
            let returned = operation.returned.unwrap_or(u64::MAX);
            let Some(cluster) = clusters.get_mut(&v) else {
                return Err(format!("a read returned {v}, which nobody wrote: {operation:?}"));
            };
            if returned < cluster.2 {
                return Err(format!("a read of {v} ended before its write began: {operation:?}"));
            }
            cluster.0 = cluster.0.min(returned);
            cluster.1 = cluster.1.max(operation.invoked);
        }
    }
    let forward: Vec<(u64, u64, u64)> = clusters.iter().filter(|(_, c)| c.0 < c.1).map(|(v, c)| (c.0, c.1, *v)).collect();
    let backward: Vec<(u64, u64, u64)> = clusters.iter().filter(|(_, c)| c.0 >= c.1).map(|(v, c)| (c.1, c.0, *v)).collect();
    for (i, a) in forward.iter().enumerate() {
        for b in &forward[i + 1..] {
            if a.0 < b.1 && b.0 < a.1 {
                return Err(format!("values {} and {} were each seen around the other", a.2, b.2));
            }
        }
        for b in &backward {
            if a.0 < b.0 && b.1 < a.1 {
                return Err(format!("value {} was overwritten and read again after write {} completed in between", a.2, b.2));
            }
        }
    }
    Ok(())
}

/// Wing–Gong search for a linearization of `history` starting from `initial`.
pub fn search_register(history: &[Operation], initial: u64, budget: usize) -> Result<(), SearchError> {
    // A write of unknown outcome whose value no read returned can only move the register to
    // a value nobody observed; leaving it out never hides a valid linearization.
    let observed: BTreeSet<u64> = history
        .iter()
        .filter_map(|o| match o.op {
            RegisterOp::Read(v) => Some(v),
            RegisterOp::Write(_) => None,
        })
        .collect();
    let history: Vec<Operation> = history
        .iter()
        .filter(|o| match o.op {
            RegisterOp::Write(v) => o.returned.is_some() || observed.contains(&v),
            RegisterOp::Read(_) => true,
        })
        .copied()
        .collect();
    let history = history.as_slice();
    let mut search = Search {
        history,
        linearized: vec![false; history.len()],
        remaining_completed: history.iter().filter(|o| o.returned.is_some()).count(),
        visited: BTreeSet::new(),
        budget,
    };
    match search.explore(initial) {
        Some(true) => Ok(()),
        Some(false) => {
            Err(SearchError::NotLinearizable(format!("history of {} operations is not linearizable: {:?}", history.len(), history)))
        }
        None => Err(SearchError::BudgetExceeded),
    }
}

struct Search<'a> {
    history: &'a [Operation],
    linearized: Vec<bool>,
    remaining_completed: usize,
    /// (linearized set, register value) pairs already explored without success.
    visited: BTreeSet<(Vec<bool>, u64)>,
    budget: usize,
}

impl Search<'_> {
    /// Some(true): found; Some(false): impossible from here; None: budget exhausted.
    fn explore(&mut self, value: u64) -> Option<bool> {
        if self.remaining_completed == 0 {
            return Some(true);
        }
        if !self.visited.insert((self.linearized.clone(), value)) {
            return Some(false);
        }
        if self.visited.len() > self.budget {
            return None;
        }
        // An operation may go next only if no pending operation returned before it began.
        let horizon =
            self.history.iter().zip(&self.linearized).filter(|(_, done)| !**done).filter_map(|(o, _)| o.returned).min().unwrap_or(u64::MAX);
        for index in 0..self.history.len() {
            if self.linearized[index] {
                continue;
            }
            let operation = self.history[index];
            if operation.invoked > horizon {
                continue;
            }
            let next_value = match operation.op {
                RegisterOp::Write(v) => v,
                RegisterOp::Read(v) if v == value => value,
                RegisterOp::Read(_) => continue,
            };
            self.linearized[index] = true;
            let completed = operation.returned.is_some();
            if completed {
                self.remaining_completed -= 1;
            }
            let found = self.explore(next_value);
            self.linearized[index] = false;
            if completed {
                self.remaining_completed += 1;
            }
            match found {
                Some(false) => {}
                other => return other,
            }
        }
        Some(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(op: RegisterOp, invoked: u64, returned: Option<u64>) -> Operation {
        Operation { op, invoked, returned }
    }

    #[test]
    fn accepts_overlapping_and_pending_writes() {
        let history = [
            op(RegisterOp::Write(1), 0, Some(10)),
            op(RegisterOp::Write(2), 5, None),
            op(RegisterOp::Read(2), 12, Some(14)),
            op(RegisterOp::Read(2), 15, Some(16)),
        ];
        assert_eq!(check_register(&history, 0, 10_000), Ok(()));
    }

    #[test]
    fn rejects_a_stale_read() {
        let history =
            [op(RegisterOp::Write(1), 0, Some(10)), op(RegisterOp::Write(2), 11, Some(20)), op(RegisterOp::Read(1), 21, Some(22))];
        assert!(check_register(&history, 0, 10_000).is_err());
        assert!(check_register_zones(&history, 0).is_err());
    }

    #[test]
    fn rejects_reads_that_flip_back() {
        let history = [
            op(RegisterOp::Write(1), 0, Some(2)),
            op(RegisterOp::Write(2), 0, Some(2)),
            op(RegisterOp::Read(1), 3, Some(4)),
            op(RegisterOp::Read(2), 5, Some(6)),
            op(RegisterOp::Read(1), 7, Some(8)),
        ];
        assert!(check_register(&history, 0, 10_000).is_err());
    }
}
