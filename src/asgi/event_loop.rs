//! asyncio on the shard's ring. Each ASGI shard runs a standard
//! `asyncio.SelectorEventLoop` whose selector is backed by io_uring: asking the
//! selector to wait runs the shard's compio runtime instead of epoll. So the
//! connections (Rust tasks) and the app (Python tasks) share one thread and one
//! kernel wait, with no busy polling: an idle shard sleeps in io_uring_enter.
//!
//! File descriptors the loop watches (its self-pipe, the app's own sockets)
//! become one-shot io_uring polls, re-armed on each wait while still watched,
//! which gives the level-triggered behaviour selectors promise.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use compio::driver::op::{Interest, PollOnce};
use compio::runtime::{JoinHandle, Runtime};

use crate::http::stream::Watched;
use crate::scoreboard::Scoreboard;

/// selectors.EVENT_READ and EVENT_WRITE.
pub const EVENT_READ: i32 = 1;
pub const EVENT_WRITE: i32 = 2;

#[derive(Default)]
struct Watch {
    events: i32,
    read: Option<JoinHandle<()>>,
    write: Option<JoinHandle<()>>,
}

/// The selector's state on the Rust side, one per ASGI shard.
#[derive(Default)]
pub struct Reactor {
    watched: RefCell<HashMap<RawFd, Watch>>,
    ready: RefCell<Vec<(RawFd, i32)>>,
    /// Rust code queued work for the Python loop; the wait must end.
    python_work: Cell<bool>,
    /// Where the loop reports running Python (for --timeout): busy from the
    /// end of one kernel wait to the start of the next.
    board: RefCell<Option<(Arc<Scoreboard>, usize)>>,
}

impl Reactor {
    /// Registers, changes or (with no events) unregisters a descriptor.
    pub fn watch(&self, fd: RawFd, events: i32) {
        let mut watched = self.watched.borrow_mut();
        if events == 0 {
            // Dropping the tasks cancels their polls.
            watched.remove(&fd);
            return;
        }
        let watch = watched.entry(fd).or_default();
        watch.events = events;
        if events & EVENT_READ == 0 {
            watch.read = None;
        }
        if events & EVENT_WRITE == 0 {
            watch.write = None;
        }
    }

    pub fn set_board(&self, board: Arc<Scoreboard>, slot: usize) {
        *self.board.borrow_mut() = Some((board, slot));
    }

    /// Tells the wait in progress (if any) that Python has work queued.
    pub fn wake_python(&self) {
        self.python_work.set(true);
    }

    fn arm(self: &Rc<Self>) {
        let mut watched = self.watched.borrow_mut();
        for (&fd, watch) in watched.iter_mut() {
            for (event, slot) in [
                (EVENT_READ, &mut watch.read),
                (EVENT_WRITE, &mut watch.write),
            ] {
                let armed = slot.as_ref().is_some_and(|t| !t.is_finished());
                if watch.events & event != 0 && !armed {
                    let reactor = self.clone();
                    let interest = if event == EVENT_READ {
                        Interest::Readable
                    } else {
                        Interest::Writable
                    };
                    *slot = Some(compio::runtime::spawn(async move {
                        let _ = compio::runtime::submit(PollOnce::new(Watched(fd), interest)).await;
                        reactor.ready.borrow_mut().push((fd, event));
                    }));
                }
            }
        }
    }

    /// The selector's `select(timeout)`: runs the shard's runtime until a
    /// watched descriptor is ready, Rust code queued Python work, or the
    /// timeout (None: no limit) passes. Returns the ready (fd, events).
    pub fn select(self: &Rc<Self>, timeout: Option<f64>) -> Vec<(RawFd, i32)> {
        self.arm();
        let deadline =
            timeout.map(|t| Instant::now() + Duration::from_secs_f64(t.clamp(0.0, 86_400.0)));
        Runtime::with_current(|rt| {
            let mut polled = false;
            loop {
                let more = rt.run();
                if !self.ready.borrow().is_empty() || self.python_work.replace(false) {
                    // The polling driver tries each read and write at once, so a
                    // busy shard could go on serving the connections whose
                    // syscalls succeed without ever asking epoll about the
                    // others (measured: p99 near a second at 64 connections).
                    // Ask it once per select; io_uring hands everything over
                    // through the ring and needs no such turn.
                    if !polled && rt.driver_type().is_polling() {
                        crate::runtime::wait(rt, Some(Duration::ZERO));
                    }
                    break;
                }
                let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                if left == Some(Duration::ZERO) && !more {
                    break;
                }
                let wait = if more {
                    Some(Duration::ZERO)
                } else {
                    match (left, rt.current_timeout()) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    }
                };
                // Only the kernel wait counts as idle for --timeout: app code
                // also runs inside this call (eagerly started requests).
                let board = self.board.borrow();
                if let Some((board, slot)) = &*board {
                    board.mark_idle(*slot);
                }
                crate::runtime::wait(rt, wait);
                polled = true;
                if let Some((board, slot)) = &*board {
                    board.mark_busy(*slot);
                }
            }
            // Python runs next, perhaps a handler computing for long.
            crate::runtime::enter_app();
        });
        let mut ready = std::mem::take(&mut *self.ready.borrow_mut());
        // Merge read and write readiness of the same descriptor.
        ready.sort_unstable_by_key(|&(fd, _)| fd);
        ready.dedup_by(|b, a| {
            if a.0 == b.0 {
                a.1 |= b.1;
                true
            } else {
                false
            }
        });
        ready
    }
}
