//! A Wing–Gong linearizability checker with Porcupine-style memoisation, for histories of a
//! single register whose writes carry unique values. Writes whose outcome is unknown (the
//! client lost its node) have no return time: they may take effect at any point after their
//! invocation, or never.

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

/// Searches for a linearization of `history` starting from register value `initial`.
/// Returns Err with a description if none exists, or if the search exceeds `budget` states.
pub fn check_register(history: &[Operation], initial: u64, budget: usize) -> Result<(), String> {
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
        Some(false) => Err(format!(
            "history of {} operations is not linearizable: {:?}",
            history.len(),
            history
        )),
        None => Err(format!("linearizability search exceeded {budget} states")),
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
        let horizon = self
            .history
            .iter()
            .zip(&self.linearized)
            .filter(|(_, done)| !**done)
            .filter_map(|(o, _)| o.returned)
            .min()
            .unwrap_or(u64::MAX);
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
        let history = [
            op(RegisterOp::Write(1), 0, Some(10)),
            op(RegisterOp::Write(2), 11, Some(20)),
            op(RegisterOp::Read(1), 21, Some(22)),
        ];
        assert!(check_register(&history, 0, 10_000).is_err());
    }
}
