//! One timer per shard for the edge's many short waits: call deadlines (`grpc-timeout`)
//! and the pauses between retries through leader changes. Each wait is an entry in a
//! shard-local ordered map (deadline → waker); one driver task per shard keeps a single
//! glommio [`Timer`] armed at the earliest entry and wakes the entries that are due.
//!
//! Arming is lazy: a new entry later than the armed instant arms nothing (the timer fires
//! early, finds nothing due, and is moved to the next entry), and an entry dropped before
//! it is due (the call finished first, the usual case) leaves the timer where it is. So a
//! stream of calls with the same `grpc-timeout` arms the timer about once per timeout,
//! not once per call; a call without `grpc-timeout` puts nothing here.
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use glommio::timer::Timer;

use crate::metrics::edge;

/// An entry: its deadline and a number unique on the shard (two waits may share an instant).
type Key = (Instant, u64);

#[derive(Default)]
struct Queue {
    entries: BTreeMap<Key, Waker>,
    next_id: u64,
    /// The instant the driver's timer is armed at, if it is.
    armed_at: Option<Instant>,
    /// The driver task, when it waits for an entry earlier than `armed_at`.
    driver: Option<Waker>,
    driver_started: bool,
}

thread_local! {
    static QUEUE: Rc<RefCell<Queue>> = Rc::default();
}

/// Completes at `at` (at once if that has passed). Registers on the shard's timer queue
/// at its first poll; dropping it first removes it.
pub fn sleep_until(at: Instant) -> Sleep {
    Sleep { at, key: None, queue: QUEUE.with(Rc::clone) }
}

/// Completes after `pause` (see [`sleep_until`]).
pub fn sleep(pause: Duration) -> Sleep {
    sleep_until(Instant::now() + pause)
}

/// A wait on the shard's timer queue.
pub struct Sleep {
    at: Instant,
    key: Option<Key>,
    queue: Rc<RefCell<Queue>>,
}

impl Sleep {
    /// The instant this wait completes at.
    pub fn deadline(&self) -> Instant {
        self.at
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let mut queue = this.queue.borrow_mut();
        if Instant::now() >= this.at {
            if let Some(key) = this.key.take() {
                queue.entries.remove(&key);
            }
            return Poll::Ready(());
        }
        match this.key {
            Some(key) => match queue.entries.get_mut(&key) {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                Some(waker) => *waker = cx.waker().clone(),
                // The driver found it due (clocks agree within a poll); wait for the
                // instant itself, which `Instant::now()` above reaches next time.
                None => {
                    queue.entries.insert(key, cx.waker().clone());
                }
            },
            None => {
                let key = (this.at, queue.next_id);
                queue.next_id += 1;
                queue.entries.insert(key, cx.waker().clone());
                this.key = Some(key);
                edge::count(|e| e.deadlines_queued += 1);
                let driver = queue.armed_at.is_none_or(|armed| this.at < armed).then(|| queue.driver.take()).flatten();
                let start_driver = !std::mem::replace(&mut queue.driver_started, true);
                // Wakers and a new task may run the driver at once: not while borrowed.
                drop(queue);
                if let Some(driver) = driver {
                    driver.wake();
                }
                if start_driver {
                    glommio::spawn_local(drive(Rc::clone(&this.queue))).detach();
                }
            }
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.queue.borrow_mut().entries.remove(&key);
        }
    }
}

/// The shard's driver: wakes due entries and keeps the one timer at the earliest entry.
async fn drive(queue: Rc<RefCell<Queue>>) {
    let _stopped = DriverStopped(Rc::clone(&queue));
    let mut timer: Option<Timer> = None;
    poll_fn(|cx| loop {
        let mut q = queue.borrow_mut();
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some(entry) = q.entries.first_entry() {
            if entry.key().0 > now {
                break;
            }
            due.push(entry.remove());
        }
        if !due.is_empty() {
            // Woken outside the borrow (a waker may poll its task at once).
            drop(q);
            due.into_iter().for_each(Waker::wake);
            continue;
        }
        let Some(&(earliest, _)) = q.entries.keys().next() else {
            // Nothing waits: a timer still armed fires once more and is then left alone.
            q.driver = Some(cx.waker().clone());
            if let Some(armed) = timer.as_mut().filter(|_| q.armed_at.is_some()) {
                drop(q);
                if Pin::new(armed).poll(cx).is_ready() {
                    queue.borrow_mut().armed_at = None;
                }
            }
            return Poll::Pending;
        };
        if q.armed_at.is_none_or(|armed| earliest < armed) {
            let wait = earliest.saturating_duration_since(now);
            match timer.as_mut() {
                Some(timer) => timer.reset(wait),
                None => timer = Some(Timer::new(wait)),
            }
            q.armed_at = Some(earliest);
            edge::count(|e| e.timer_arms += 1);
        }
        q.driver = Some(cx.waker().clone());
        drop(q);
        let armed = timer.as_mut().unwrap_or_else(|| unreachable!("armed above"));
        if Pin::new(armed).poll(cx).is_pending() {
            return Poll::Pending;
        }
        queue.borrow_mut().armed_at = None;
    })
    .await
}

/// Lets the next wait start a new driver when this one is dropped with its executor (a
/// thread may run one executor after another, as tests do).
struct DriverStopped(Rc<RefCell<Queue>>);

impl Drop for DriverStopped {
    fn drop(&mut self) {
        if let Ok(mut queue) = self.0.try_borrow_mut() {
            queue.driver_started = false;
            queue.driver = None;
            queue.armed_at = None;
        }
    }
}
