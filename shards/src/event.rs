//! A single-threaded broadcast event: tasks listen, `notify_all` wakes every listener.
//!
//! Listening snapshots a generation counter, so a notification that happens between creating
//! the listener and awaiting it is never lost. A dropped listener removes its waker, so an
//! idle event with many timed-out listeners holds no garbage.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub struct Event {
    generation: Cell<u64>,
    next_id: Cell<u64>,
    waiters: RefCell<HashMap<u64, Waker>>,
}

impl Event {
    pub fn new() -> Self {
        Self::default()
    }

    /// A future that completes at the next `notify_all` after this call.
    pub fn listen(&self) -> Listener<'_> {
        let id = self.next_id.get();
        self.next_id.set(id.wrapping_add(1));
        Listener {
            event: self,
            generation: self.generation.get(),
            id,
        }
    }

    pub fn notify_all(&self) {
        self.generation.set(self.generation.get().wrapping_add(1));
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for (_, w) in waiters {
            w.wake();
        }
    }

    pub fn listeners(&self) -> usize {
        self.waiters.borrow().len()
    }
}

pub struct Listener<'a> {
    event: &'a Event,
    generation: u64,
    id: u64,
}

impl Future for Listener<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.event.generation.get() != self.generation {
            return Poll::Ready(());
        }
        self.event
            .waiters
            .borrow_mut()
            .insert(self.id, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Listener<'_> {
    fn drop(&mut self) {
        self.event.waiters.borrow_mut().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_listeners_leave_nothing_behind() {
        let ev = Event::new();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        for _ in 0..10 {
            let mut l = ev.listen();
            assert!(Pin::new(&mut l).poll(&mut cx).is_pending());
        }
        assert_eq!(ev.listeners(), 0);
        let mut l = ev.listen();
        assert!(Pin::new(&mut l).poll(&mut cx).is_pending());
        ev.notify_all();
        assert!(Pin::new(&mut l).poll(&mut cx).is_ready());
    }
}
