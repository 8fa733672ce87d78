//! A single-threaded, set-once event that any number of tasks can wait for (connection
//! closed, server shutting down). Shard-local: futures are `!Send`. A waiter that is
//! dropped before the signal fires removes its waker, so long-lived signals (one per
//! connection) do not accumulate wakers from short-lived calls.
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// A set-once flag with waiters. Cloning shares the same flag.
#[derive(Clone, Debug, Default)]
pub struct Signal {
    inner: Rc<SignalState>,
}

#[derive(Debug, Default)]
struct SignalState {
    fired: Cell<bool>,
    next_waiter: Cell<u64>,
    waiters: RefCell<BTreeMap<u64, Waker>>,
}

impl Signal {
    /// A signal that has not fired.
    pub fn new() -> Signal {
        Signal::default()
    }

    /// Fires the signal and wakes every waiter. Firing twice is harmless.
    pub fn fire(&self) {
        if self.inner.fired.replace(true) {
            return;
        }
        let waiters = std::mem::take(&mut *self.inner.waiters.borrow_mut());
        for waker in waiters.into_values() {
            waker.wake();
        }
    }

    /// Whether the signal has fired.
    pub fn is_fired(&self) -> bool {
        self.inner.fired.get()
    }

    /// A future that completes once the signal has fired.
    pub fn fired(&self) -> Fired {
        let key = self.inner.next_waiter.get();
        self.inner.next_waiter.set(key + 1);
        Fired { signal: self.clone(), key }
    }
}

/// Waits for a [`Signal`]; see [`Signal::fired`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Fired {
    signal: Signal,
    key: u64,
}

impl Fired {
    /// Polls without consuming the future (for hand-written poll loops).
    pub fn poll_fired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.is_fired() {
            return Poll::Ready(());
        }
        let mut waiters = self.signal.inner.waiters.borrow_mut();
        match waiters.get_mut(&self.key) {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            Some(waker) => waker.clone_from(cx.waker()),
            None => {
                waiters.insert(self.key, cx.waker().clone());
            }
        }
        Poll::Pending
    }
}

impl Future for Fired {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.get_mut().poll_fired(cx)
    }
}

impl Drop for Fired {
    fn drop(&mut self) {
        if let Ok(mut waiters) = self.signal.inner.waiters.try_borrow_mut() {
            waiters.remove(&self.key);
        }
    }
}
