//! A shard-local one-shot reply slot: what a caller waits on for the one answer to its
//! request. Lighter than a bounded channel of one (no queue, no waiter list): one shared
//! cell holding the value and the waiting task's waker.
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

struct Slot<T> {
    value: Option<T>,
    sender_gone: bool,
    waker: Option<Waker>,
}

/// A new slot: the sender answers once, the receiver waits for it.
pub fn oneshot<T>() -> (OneshotSender<T>, OneshotReceiver<T>) {
    let slot = Rc::new(RefCell::new(Slot { value: None, sender_gone: false, waker: None }));
    (OneshotSender { slot: Rc::clone(&slot) }, OneshotReceiver { slot })
}

/// The answering side. Dropping it without sending makes the receiver yield `None`.
pub struct OneshotSender<T> {
    slot: Rc<RefCell<Slot<T>>>,
}

impl<T> OneshotSender<T> {
    /// Hands `value` to the receiver (kept until it looks, dropped with it if it is gone).
    pub fn send(self, value: T) {
        self.slot.borrow_mut().value = Some(value);
    }
}

impl<T> Drop for OneshotSender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut slot = self.slot.borrow_mut();
            slot.sender_gone = true;
            slot.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The waiting side: completes with the value, or `None` when the sender was dropped
/// without answering.
pub struct OneshotReceiver<T> {
    slot: Rc<RefCell<Slot<T>>>,
}

impl<T> Future for OneshotReceiver<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut slot = self.slot.borrow_mut();
        if let Some(value) = slot.value.take() {
            return Poll::Ready(Some(value));
        }
        if slot.sender_gone {
            return Poll::Ready(None);
        }
        match &mut slot.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            waker => *waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn poll_now<T>(rx: &mut OneshotReceiver<T>) -> Poll<Option<T>> {
        Pin::new(rx).poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn answers_once_or_reports_the_sender_gone() {
        let (tx, mut rx) = oneshot::<u32>();
        assert_eq!(poll_now(&mut rx), Poll::Pending);
        tx.send(7);
        assert_eq!(poll_now(&mut rx), Poll::Ready(Some(7)));
        let (tx, mut rx) = oneshot::<u32>();
        drop(tx);
        assert_eq!(poll_now(&mut rx), Poll::Ready(None));
    }
}
