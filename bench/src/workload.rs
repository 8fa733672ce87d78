//! The callers of the request/response workloads — churn (Enter then Withdraw), read
//! (GetTerm) and mixed — and what they share: the run context, waiting for a due time,
//! and recording an outcome.
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::client::ElectionClient;
use crate::config::BenchConfig;
use crate::error::BenchError;
use crate::schedule::{Pacer, Slot};
use crate::stats::Recorder;

/// Longest error message kept in a report (gRPC messages can be long).
const ERROR_MESSAGE_CHARS: usize = 160;
/// Below this distance to a due time a caller yields instead of sleeping, because tokio's
/// timer wakes on millisecond ticks and a late send would count as latency.
const SPIN_BELOW: Duration = Duration::from_micros(1_500);

/// What every caller of a run shares.
pub struct RunContext {
    pub config: BenchConfig,
    pub pacer: Pacer,
    pub recorder: Recorder,
    /// The names of the elections, index = election number.
    pub names: Vec<String>,
}

impl RunContext {
    /// Records the outcome of `op`, measured from `due`.
    pub fn outcome<T>(&self, op: &'static str, due: Instant, result: &Result<T, BenchError>) {
        match result {
            Ok(_) => self.recorder.record(op, due.elapsed()),
            Err(e) => self.recorder.error(op, &short_message(e)),
        }
    }
}

/// The error's text, cut to a length a report can hold.
pub fn short_message(error: &BenchError) -> String {
    let text = match error {
        BenchError::Rpc { code, message, .. } => format!("{code}: {message}"),
        other => other.to_string(),
    };
    text.chars().take(ERROR_MESSAGE_CHARS).collect()
}

/// Waits until `due`: sleeps while it is far, then yields to the runtime until it passes.
pub async fn wait_until(due: Instant) {
    loop {
        let now = Instant::now();
        if now >= due {
            return;
        }
        let left = due - now;
        if left > SPIN_BELOW {
            tokio::time::sleep(left - SPIN_BELOW + Duration::from_micros(100)).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
}

/// The election a caller uses for its `round`-th pick: callers start on distinct elections
/// and step by the number of callers, so concurrent callers rarely share one.
pub fn election_of(caller: usize, round: usize, callers: usize, elections: usize) -> usize {
    (caller + round * callers) % elections
}

/// One caller's progress through churn: it enters its next election, then withdraws from
/// it, and moves on to the next election only once the withdrawal succeeded.
struct Churn {
    caller: usize,
    candidate: String,
    round: usize,
    holding: Option<usize>,
}

impl Churn {
    fn new(caller: usize) -> Churn {
        Churn { caller, candidate: format!("caller-{caller}"), round: 0, holding: None }
    }

    /// Sends the next request of the cycle and records it, measured from `due`.
    async fn step(&mut self, ctx: &RunContext, client: &mut ElectionClient, due: Instant) {
        match self.holding {
            None => {
                let election = election_of(self.caller, self.round, ctx.config.concurrency, ctx.names.len());
                let result = client.enter(&ctx.names[election], &self.candidate).await;
                ctx.outcome("enter", due, &result);
                if result.is_ok() {
                    self.holding = Some(election);
                }
            }
            Some(election) => {
                let result = client.withdraw(&ctx.names[election], &self.candidate).await;
                ctx.outcome("withdraw", due, &result);
                if result.is_ok() {
                    self.holding = None;
                    self.round += 1;
                }
            }
        }
    }
}

/// Enter, then Withdraw, over the elections, one step per slot.
pub async fn churn_caller(ctx: Arc<RunContext>, caller: usize, mut client: ElectionClient) {
    let mut churn = Churn::new(caller);
    while let Slot::Go { due, .. } = ctx.pacer.claim() {
        wait_until(due).await;
        churn.step(&ctx, &mut client, due).await;
    }
}

/// GetTerm over the elections, one per slot.
pub async fn read_caller(ctx: Arc<RunContext>, caller: usize, mut client: ElectionClient) {
    let elections = ctx.names.len();
    let mut round = 0usize;
    while let Slot::Go { due, .. } = ctx.pacer.claim() {
        wait_until(due).await;
        let election = election_of(caller, round, ctx.config.concurrency, elections);
        let result = client.get_term(&ctx.names[election]).await;
        ctx.outcome("get_term", due, &result);
        round += 1;
    }
}

/// GetTerm with probability `read_percent`, otherwise the next step of churn; the choices
/// come from a generator seeded with the caller's number, so a run is reproducible.
pub async fn mixed_caller(ctx: Arc<RunContext>, caller: usize, mut client: ElectionClient) {
    let elections = ctx.names.len();
    let mut rng = ChaCha8Rng::seed_from_u64(caller as u64);
    let mut churn = Churn::new(caller);
    while let Slot::Go { due, .. } = ctx.pacer.claim() {
        wait_until(due).await;
        if rng.random_range(0..100u32) < ctx.config.read_percent {
            let election = rng.random_range(0..elections);
            let result = client.get_term(&ctx.names[election]).await;
            ctx.outcome("get_term", due, &result);
        } else {
            churn.step(&ctx, &mut client, due).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_callers_start_on_distinct_elections_and_cover_all() {
        let (callers, elections) = (64, 1_000);
        let first: std::collections::BTreeSet<usize> = (0..callers).map(|c| election_of(c, 0, callers, elections)).collect();
        assert_eq!(first.len(), callers);
        let all: std::collections::BTreeSet<usize> =
            (0..callers).flat_map(|c| (0..16).map(move |r| election_of(c, r, callers, elections))).collect();
        assert_eq!(all.len(), elections);
    }

    #[test]
    fn error_messages_are_cut() {
        let long = BenchError::Rpc { op: "enter", code: "Unavailable".into(), message: "x".repeat(1_000) };
        let text = short_message(&long);
        assert!(text.starts_with("Unavailable: x"));
        assert_eq!(text.chars().count(), ERROR_MESSAGE_CHARS);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn wait_until_returns_at_or_after_the_due_time() {
        let due = Instant::now() + Duration::from_millis(3);
        wait_until(due).await;
        assert!(Instant::now() >= due);
        let past = Instant::now() - Duration::from_millis(1);
        wait_until(past).await;
    }
}
