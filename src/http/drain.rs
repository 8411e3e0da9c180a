//! Graceful shutdown of one shard's connections. When the worker is told to
//! stop, the shard stops accepting, idle keep-alive connections close at once,
//! busy ones finish their request and say `Connection: close`, and the shard
//! ends once the last connection is gone.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub struct Drain {
    draining: Cell<bool>,
    live: Cell<usize>,
    /// Idle connections and accept loops waiting for the drain, by ticket.
    waiters: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
    /// The shard waiting for its last connection.
    last: RefCell<Option<Waker>>,
    /// Accept loops waiting for a connection to end (`worker_connections`).
    room: RefCell<Vec<Waker>>,
}

impl Drain {
    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    pub fn start(&self) {
        self.draining.set(true);
        for waker in self.room.borrow_mut().drain(..) {
            waker.wake();
        }
        for waker in self
            .waiters
            .borrow_mut()
            .iter_mut()
            .filter_map(Option::take)
        {
            waker.wake();
        }
        self.wake_last();
    }

    /// Resolves when the drain starts.
    pub fn started(&self) -> Started<'_> {
        Started {
            drain: self,
            ticket: None,
        }
    }

    /// Counts a connection from the moment it is accepted, so the shard
    /// cannot end between the accept and the connection's first poll.
    pub fn admit(&self) {
        self.live.set(self.live.get() + 1);
    }

    /// The end of a connection `admit` counted.
    pub fn leave(&self) {
        self.live.set(self.live.get() - 1);
        if self.live.get() == 0 {
            self.wake_last();
        }
        for waker in self.room.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    /// Connections live now.
    pub fn live(&self) -> usize {
        self.live.get()
    }

    /// Resolves once fewer than `cap` connections are live, or the drain
    /// starts.
    pub async fn room_below(&self, cap: usize) {
        std::future::poll_fn(|cx| {
            if self.live.get() < cap || self.draining.get() {
                Poll::Ready(())
            } else {
                self.room.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Resolves once the drain has started and no connection is left.
    pub async fn finished(&self) {
        std::future::poll_fn(|cx| {
            if self.draining.get() && self.live.get() == 0 {
                Poll::Ready(())
            } else {
                *self.last.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    fn wake_last(&self) {
        if let Some(waker) = self.last.borrow_mut().take() {
            waker.wake();
        }
    }
}

/// The future of `Drain::started`; it gives its waker slot back when dropped,
/// so waiting once per idle period costs nothing that accumulates.
pub struct Started<'a> {
    drain: &'a Drain,
    ticket: Option<usize>,
}

impl Future for Started<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.drain.draining.get() {
            return Poll::Ready(());
        }
        let mut waiters = self.drain.waiters.borrow_mut();
        match self.ticket {
            Some(t) => waiters[t] = Some(cx.waker().clone()),
            None => {
                let t = match self.drain.free.borrow_mut().pop() {
                    Some(free) => free,
                    None => {
                        waiters.push(None);
                        waiters.len() - 1
                    }
                };
                waiters[t] = Some(cx.waker().clone());
                drop(waiters);
                self.ticket = Some(t);
            }
        }
        Poll::Pending
    }
}

impl Drop for Started<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.ticket
            && let Some(slot) = self.drain.waiters.borrow_mut().get_mut(t)
        {
            *slot = None;
            self.drain.free.borrow_mut().push(t);
        }
    }
}
