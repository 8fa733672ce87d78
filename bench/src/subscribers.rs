//! The subscribers of one election's changes, each on its own connection (Conclave Watch
//! or etcd Observe streams): every state each one received and when, and the moment each
//! first received a state the workload waits for. Stopped on drop.
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::BenchError;

/// A state one subscriber received, and when.
struct Notification<T> {
    subscriber: usize,
    state: T,
    at: Instant,
}

/// Hands one subscriber's states to its [`Subscribers`].
pub struct Feed<T> {
    subscriber: usize,
    sender: mpsc::UnboundedSender<Notification<T>>,
}

impl<T> Feed<T> {
    /// Records `state` as received now; false once the subscribers are gone.
    pub fn received(&self, state: T) -> bool {
        let notification = Notification { subscriber: self.subscriber, state, at: Instant::now() };
        self.sender.send(notification).is_ok()
    }
}

/// The subscribers of one election. `what` names them in errors ("watchers", "observers").
pub struct Subscribers<T> {
    what: &'static str,
    count: usize,
    sender: mpsc::UnboundedSender<Notification<T>>,
    received: mpsc::UnboundedReceiver<Notification<T>>,
    tasks: Vec<JoinHandle<()>>,
}

impl<T> Drop for Subscribers<T> {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl<T: Send + 'static> Subscribers<T> {
    pub fn new(what: &'static str) -> Subscribers<T> {
        let (sender, received) = mpsc::unbounded_channel();
        Subscribers { what, count: 0, sender, received, tasks: Vec::new() }
    }

    /// Adds a subscriber: `run` gets its feed and forwards every state its stream yields.
    pub fn spawn<F>(&mut self, run: impl FnOnce(Feed<T>) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let feed = Feed { subscriber: self.count, sender: self.sender.clone() };
        self.count += 1;
        self.tasks.push(tokio::spawn(run(feed)));
    }

    /// The moment each subscriber first received a state matching `wanted`, waiting at most
    /// `timeout`. States not matching are skipped (earlier changes still in flight).
    pub async fn wait_for(&mut self, wanted: impl Fn(&T) -> bool, timeout: Duration) -> Result<Vec<Instant>, BenchError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen: Vec<Option<Instant>> = vec![None; self.count];
        let mut missing = self.count;
        while missing > 0 {
            match tokio::time::timeout_at(deadline, self.received.recv()).await {
                Err(_) => {
                    return Err(BenchError::Protocol {
                        op: "notify",
                        message: format!("{missing} of {} {} saw no matching state within {timeout:?}", self.count, self.what),
                    })
                }
                Ok(None) => return Err(BenchError::Protocol { op: "notify", message: format!("every stream of the {} ended", self.what) }),
                Ok(Some(n)) => {
                    if seen[n.subscriber].is_none() && wanted(&n.state) {
                        seen[n.subscriber] = Some(n.at);
                        missing -= 1;
                    }
                }
            }
        }
        Ok(seen.into_iter().map(|at| at.expect("every subscriber counted")).collect())
    }
}
