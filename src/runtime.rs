//! The I/O seam: how a shard's event loop is built and driven. Everything above
//! it uses compio's socket types; only this file knows which kernel interface
//! runs underneath: io_uring, or epoll where io_uring is refused (compio's
//! polling driver, chosen at run time).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use compio::driver::{DriverType, ProactorBuilder};
use compio::runtime::{Runtime, RuntimeBuilder};

use crate::config::IoEngine;
use crate::scoreboard::Scoreboard;

/// A pass (the thread running tasks and Python between two kernel waits) at
/// least this long kept waiting whatever the next wait reaps: requests that
/// then arrive may move to an idle shard (docs/architecture.md, "Moving
/// connections"). Far above a pass of hello-world requests, far below a
/// CPU-bound view.
const LATE_AFTER: Duration = Duration::from_millis(1);

/// A moment as the scoreboard holds it: nanoseconds since the process's
/// first stamp, plus one, so that 0 can mean "none".
pub fn stamp(at: Instant) -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    at.saturating_duration_since(base).as_nanos() as u64 + 1
}

/// The shard thread's passes, as its kernel waits measure them.
#[derive(Default)]
struct Passes {
    began: Cell<Option<Instant>>,
    /// When the thread last entered the kernel: at a wait, or to send what a
    /// long pass had queued (`send_queued`).
    entered: Cell<Option<Instant>>,
    /// When the thread last came out of a long pass or GIL wait, if what it
    /// handles now was reaped right after one.
    late: Cell<Option<Instant>>,
    /// Where the thread says it waits: its shard's counts.
    board: RefCell<Option<(Arc<Scoreboard>, usize)>>,
}

thread_local! {
    static PASSES: Passes = Passes::default();
}

/// From now on this thread's waits show in the scoreboard as shard `local`'s.
pub fn publish_waits(board: Arc<Scoreboard>, local: usize) {
    PASSES.with(|p| *p.board.borrow_mut() = Some((board, local)));
}

/// If what this pass handles was reaped right after the thread was busy
/// for a long time (in a pass, or waiting for the GIL), when that ended.
pub fn late() -> Option<Instant> {
    PASSES.with(|p| p.late.get())
}

/// Whether something the thread began to wait for at `since`, and that is
/// handled now, waited behind the thread's being busy for a long time.
pub fn waited_since(since: Instant) -> bool {
    late().is_some_and(|busy_until| since + LATE_AFTER <= busy_until)
}

/// A shard thread's one way into the kernel: polls the ring for at most
/// `timeout` (None: until something completes), without the GIL, and
/// measures whether what it reaps was kept waiting: by a long pass before
/// it, or by the GIL, which a Python thread of the shard held (`--threads`)
/// while this thread waited to take it back.
pub fn wait(rt: &Runtime, timeout: Option<Duration>) {
    PASSES.with(|p| {
        let now = Instant::now();
        let long = p.began.get().is_some_and(|began| now - began >= LATE_AFTER);
        let board = p.board.borrow();
        let waiting = match (&*board, timeout) {
            (Some((board, local)), t) if t != Some(Duration::ZERO) => {
                Some(&board.counts(*local).waiting_since)
            }
            _ => None,
        };
        if let Some(since) = waiting {
            since.store(stamp(now), Ordering::Relaxed);
        }
        let reaped = crate::python::without_gil(|| {
            rt.poll_with(timeout);
            Instant::now()
        });
        if let Some(since) = waiting {
            since.store(0, Ordering::Relaxed);
        }
        let began = Instant::now();
        let late = if began - reaped >= LATE_AFTER {
            Some(began)
        } else {
            long.then_some(now)
        };
        p.late.set(late);
        p.began.set(Some(began));
        p.entered.set(Some(began));
    });
}

/// Called before the thread goes into Python, where it may stay for long (a
/// view computing, or a `--threads` Python thread holding the GIL): if it has
/// not entered the kernel for 1 ms, the operations queued since (the
/// responses this pass wrote) go to it now, without waiting. With io_uring
/// they would otherwise sit in the ring until the pass ends, so each response
/// of a pass of CPU-bound views waited for all the views after it
/// (docs/architecture.md, "Moving connections"). A short pass, as hello world
/// runs, never gets here; the polling driver writes at once and submits
/// nothing here.
pub fn send_queued() {
    PASSES.with(|p| {
        let now = Instant::now();
        if p.entered.get().is_some_and(|at| now - at >= LATE_AFTER) {
            p.entered.set(Some(now));
            Runtime::with_current(|rt| {
                // Flushing also clears the driver's notified state; a wake
                // from another thread that came before it must still end
                // the next wait.
                if rt.flush() {
                    rt.waker().wake();
                }
            });
        }
    });
}

/// The runtime for one shard's thread. With io_uring, a ring that one thread
/// alone submits to: COOP_TASKRUN, TASKRUN_FLAG, SINGLE_ISSUER and
/// DEFER_TASKRUN together cut the CPU per request by about a third on this
/// kernel (docs/architecture.md, "Facts").
pub fn build(engine: IoEngine) -> std::io::Result<Runtime> {
    let mut proactor = ProactorBuilder::new();
    proactor
        .capacity(1024)
        .coop_taskrun(true)
        .taskrun_flag(true)
        .single_issuer(true)
        .defer_taskrun(true)
        .driver_type(match engine {
            IoEngine::Epoll => DriverType::Poll,
            IoEngine::Uring | IoEngine::Auto => DriverType::IoUring,
        });
    RuntimeBuilder::new().with_proactor(proactor).build()
}

/// Settles `auto` once, in the supervisor: io_uring if a ring can be made
/// here, else epoll, with one warning that says why.
pub fn resolve(engine: IoEngine) -> Result<IoEngine, String> {
    match (engine, build(IoEngine::Uring)) {
        (IoEngine::Epoll, _) => Ok(IoEngine::Epoll),
        (_, Ok(_)) => Ok(IoEngine::Uring),
        (IoEngine::Auto, Err(e)) => {
            log::warn!(
                "io_uring is not available ({e}); serving through epoll. See \
                 tuning/README.md for enabling io_uring."
            );
            Ok(IoEngine::Epoll)
        }
        (_, Err(e)) => Err(format!(
            "--io-engine uring: io_uring is not available ({e})"
        )),
    }
}

/// Drives `future` to completion on `rt`, releasing the GIL whenever the thread
/// waits for the kernel, so an idle shard never holds its interpreter.
pub fn block_on<F: Future>(rt: &Runtime, future: F) -> F::Output {
    rt.enter(|| {
        let waker = rt.waker();
        let mut cx = Context::from_waker(&waker);
        let mut future = pin!(future);
        loop {
            if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                return out;
            }
            // Even a non-blocking poll releases the GIL: the shard's Python
            // threads (--threads) get their turn at every pass of the loop.
            let timeout = if rt.run() {
                Some(Duration::ZERO)
            } else {
                rt.current_timeout()
            };
            wait(rt, timeout);
        }
    })
}
