//! The I/O seam: how a shard's event loop is built and driven. Everything above
//! it uses compio's socket types; only this file knows which kernel interface
//! runs underneath: io_uring, or epoll where io_uring is refused (compio's
//! polling driver, chosen at run time).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use compio::driver::{DriverType, ProactorBuilder};
use compio::runtime::{Runtime, RuntimeBuilder};

use pyo3::Python;

use crate::config::IoEngine;
use crate::python::{Graveyard, Released};
use crate::roster::Line;
use crate::scoreboard::Scoreboard;

/// A pass (the thread running tasks and Python between two kernel waits)
/// that spent at least this long in the app kept waiting whatever the next
/// wait reaps: requests that then arrive may move to an idle shard
/// (docs/architecture.md, "Moving connections"). Far above a pass of
/// hello-world requests, far below a CPU-bound view.
const LATE_AFTER: Duration = Duration::from_millis(1);

/// For this long after a request that kept the thread 1 ms or more, the
/// thread sends each response it wrote before it goes into Python
/// again (`enter_app`): the app has views slow enough that the system call
/// is small against them.
const SLOW_APP_FOR: Duration = Duration::from_millis(100);

/// Now, as the roster holds moments: nanoseconds on CLOCK_MONOTONIC, which
/// every process of the server reads alike (never 0).
pub fn stamp_now() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only to `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
        .max(1)
}

/// The shard thread's passes, as its kernel waits measure them.
#[derive(Default)]
struct Passes {
    /// When this pass first went into the app (`enter_app`), if it has.
    app_from: Cell<Option<Instant>>,
    /// When the thread last went into the app.
    into_app: Cell<Option<Instant>>,
    /// When the thread last entered the kernel: at a wait, or to send what it
    /// had queued (`enter_app`).
    entered: Cell<Option<Instant>>,
    /// A response was written since then, and may wait in the ring.
    queued: Cell<bool>,
    /// When a request last kept the thread LATE_AFTER or more (`time_request`).
    slow_request: Cell<Option<Instant>>,
    /// When the thread last came out of a long pass or GIL wait, if what it
    /// handles now was reaped right after one.
    late: Cell<Option<Instant>>,
    /// Where the thread says it waits idle: its shard's line in the roster
    /// (while this process owns it), and its counts, which say whether it
    /// has a request in flight.
    idle: RefCell<Option<Published>>,
    /// Where the thread counts its waits for the GIL (`--metrics-bind`): the
    /// scoreboard and its shard's number there.
    meters: RefCell<Option<(Arc<Scoreboard>, usize)>>,
    /// Set when the thread takes its GIL only to run Python (`python`).
    lazy: RefCell<Option<Lazy>>,
}

/// A shard thread whose app runs on Python threads (WSGI `--threads`): it
/// gives its GIL up at a kernel wait and takes it back only when one of its
/// tasks calls `python`, so accepting, parsing and writing never wait behind
/// those threads (docs/architecture.md, "Shards").
struct Lazy {
    /// The GIL, while the thread has it given up.
    released: Option<Released>,
    /// Where what the thread drops without its GIL goes.
    graveyard: Arc<Graveyard>,
    /// How busy the Python threads are, for `late`.
    pool: Arc<PoolLoad>,
}

/// How many of a shard's Python threads have a request, and since when as
/// many as may run at once have, as a shard with `--threads` tells its
/// thread (`run_python_on`).
#[derive(Default)]
pub struct PoolLoad {
    /// Requests handed to the threads and not yet finished.
    pub busy: AtomicUsize,
    /// How many requests the threads run at once: `--threads`, or fewer
    /// where the pool found more to cost more (`wsgi::limit`).
    pub limit: AtomicUsize,
    /// `stamp_now()` of the moment the requests handed over reached the
    /// limit; 0 while they are fewer.
    pub full_since: AtomicU64,
}

impl PoolLoad {
    pub fn new(threads: usize) -> PoolLoad {
        PoolLoad {
            limit: AtomicUsize::new(threads),
            ..PoolLoad::default()
        }
    }

    /// A request was handed to the threads.
    pub fn started(&self) {
        let busy = self.busy.fetch_add(1, Ordering::Relaxed) + 1;
        if busy >= self.limit.load(Ordering::Relaxed)
            && self.full_since.load(Ordering::Relaxed) == 0
        {
            self.full_since.store(stamp_now(), Ordering::Relaxed);
        }
    }

    /// A thread finished its request.
    pub fn finished(&self) {
        let busy = self.busy.fetch_sub(1, Ordering::Relaxed) - 1;
        if busy < self.limit.load(Ordering::Relaxed) {
            self.full_since.store(0, Ordering::Relaxed);
        }
    }

    /// When the requests handed over have been at the limit since, if they
    /// are. `busy` is read too: a thread that finished between a `started`
    /// and its stamp leaves the stamp set below the limit.
    fn full_since(&self) -> Option<Instant> {
        if self.busy.load(Ordering::Relaxed) < self.limit.load(Ordering::Relaxed) {
            return None;
        }
        let since = self.full_since.load(Ordering::Relaxed);
        let ago = stamp_now().checked_sub(since).filter(|_| since != 0)?;
        Instant::now().checked_sub(Duration::from_nanos(ago))
    }
}

thread_local! {
    static PASSES: Passes = Passes::default();
}

/// A shard thread's place in the roster (`publish_waits`).
struct Published {
    board: Arc<Scoreboard>,
    local: usize,
    line: &'static Line,
    /// This process, the line's owner while no later worker took it.
    pid: u32,
}

/// From now on this thread's waits with no request in flight show in
/// shard `local`'s roster `line`, which this process takes over: other
/// shards may hand it connections. A worker still draining the same shard
/// (a reload's predecessor) stops stamping it.
pub fn publish_waits(board: Arc<Scoreboard>, local: usize, line: &'static Line) {
    let pid = std::process::id();
    line.take(pid);
    PASSES.with(|p| {
        *p.idle.borrow_mut() = Some(Published {
            board,
            local,
            line,
            pid,
        })
    });
}

/// From now on this thread counts its waits for the GIL in shard `local`'s
/// meters.
pub fn meter_gil_waits(board: Arc<Scoreboard>, local: usize) {
    PASSES.with(|p| *p.meters.borrow_mut() = Some((board, local)));
}

/// This thread's waits no longer show: its shard takes no more connections.
pub fn unpublish_waits() {
    PASSES.with(|p| {
        if let Some(published) = p.idle.borrow_mut().take() {
            published.line.release(published.pid);
        }
    });
}

/// If what this pass handles was reaped right after the thread was busy
/// for a long time (in the app, or waiting for the GIL), when that ended.
fn late() -> Option<Instant> {
    PASSES.with(|p| p.late.get())
}

/// Whether something the thread began to wait for at `since`, and that is
/// handled now, waited behind the thread's being busy for a long time.
pub fn waited_since(since: Instant) -> bool {
    late().is_some_and(|busy_until| since + LATE_AFTER <= busy_until)
}

/// A shard thread's one way into the kernel: polls the ring for at most
/// `timeout` (None: until something completes), without the GIL, and
/// measures whether what it reaps was kept waiting: by the app, which ran
/// for LATE_AFTER or more in the pass before it; by the GIL, which another
/// Python thread held while this thread waited to take it back; or, with
/// `--threads`, by the shard's Python threads, every one of which has had a
/// request that long (`PoolLoad`). Only time in the app counts, from the pass's first
/// `enter_app`: the rest of a pass is microseconds unless the host stalls
/// the thread, and a stall is no reason to move a connection.
pub fn wait(rt: &Runtime, timeout: Option<Duration>) {
    PASSES.with(|p| {
        let now = Instant::now();
        let long = p.app_from.take().is_some_and(|at| now - at >= LATE_AFTER);
        let idle = p.idle.borrow();
        // In flight and connections change only on this thread, so they hold
        // for the whole wait.
        let waiting = match (&*idle, timeout) {
            (Some(published), t) if t != Some(Duration::ZERO) => {
                let counts = published.board.counts(published.local);
                let line = published.line;
                (counts.in_flight.load(Ordering::Relaxed) == 0 && line.owned_by(published.pid))
                    .then(|| {
                        let connections = counts.connections.load(Ordering::Relaxed);
                        line.connections.store(connections, Ordering::Relaxed);
                        &line.waiting_since
                    })
            }
            _ => None,
        };
        if let Some(since) = waiting {
            since.store(stamp_now(), Ordering::Relaxed);
        }
        p.queued.set(false);
        time_request(p, now);
        let mut lazy = p.lazy.borrow_mut();
        let (reaped, began) = match lazy.as_mut() {
            Some(lazy) => {
                if lazy.released.is_none() {
                    lazy.released = Some(crate::python::release_gil());
                }
                lazy.graveyard.take_deferred();
                rt.poll_with(timeout);
                let reaped = Instant::now();
                (reaped, reaped)
            }
            None => {
                let reaped = crate::python::without_gil(|| {
                    rt.poll_with(timeout);
                    Instant::now()
                });
                (reaped, Instant::now())
            }
        };
        if let Some(since) = waiting {
            since.store(0, Ordering::Relaxed);
        }
        if let Some((board, local)) = &*p.meters.borrow()
            && lazy.is_none()
        {
            board.meters(*local).gil_wait(began - reaped);
        }
        // With Python threads, what is reaped now waited behind the app when
        // every thread has had a request for LATE_AFTER or more.
        let pool_full = lazy
            .as_ref()
            .and_then(|l| l.pool.full_since())
            .is_some_and(|since| began - since >= LATE_AFTER);
        let late = if began - reaped >= LATE_AFTER || pool_full {
            Some(began)
        } else {
            long.then_some(now)
        };
        p.late.set(late);
        p.entered.set(Some(began));
    });
}

/// From now on (until `block_on` returns) this thread gives its GIL up at
/// each kernel wait and takes it back only in `python`: its app runs on the
/// Python threads whose load is `pool`, and what it drops without the GIL
/// goes to `graveyard`.
pub fn run_python_on(graveyard: Arc<Graveyard>, pool: Arc<PoolLoad>) {
    PASSES.with(|p| {
        *p.lazy.borrow_mut() = Some(Lazy {
            released: None,
            graveyard,
            pool,
        })
    });
}

/// Runs `f` with the thread's interpreter: a shard thread's one way into
/// Python. A thread that gave its GIL up at its last wait (`run_python_on`)
/// takes it back first, and keeps it until its next wait; that wait is
/// counted as the thread's GIL wait, and as one that makes what it handles
/// next late (`waited_since`) when long.
pub fn python<T>(f: impl FnOnce(Python<'_>) -> T) -> T {
    let taken = PASSES.with(|p| {
        let mut lazy = p.lazy.borrow_mut();
        let lazy = lazy.as_mut()?;
        Some((lazy.released.take()?, lazy.graveyard.clone()))
    });
    if let Some((released, graveyard)) = taken {
        // What this pass wrote goes to the kernel first: the GIL may take
        // a switch interval to come.
        Runtime::with_current(|rt| {
            if rt.flush() {
                rt.waker().wake();
            }
        });
        let asked = Instant::now();
        released.restore();
        let got = Instant::now();
        PASSES.with(|p| {
            if let Some((board, local)) = &*p.meters.borrow() {
                board.meters(*local).gil_wait(got - asked);
            }
            if got - asked >= LATE_AFTER {
                p.late.set(Some(got));
            }
        });
        Python::attach(|py| graveyard.sweep(py));
    }
    Python::attach(f)
}

/// Ends `run_python_on`: the thread holds its GIL again, and nothing it
/// dropped waits for another thread.
fn take_python_back() {
    let lazy = PASSES.with(|p| p.lazy.borrow_mut().take());
    if let Some(lazy) = lazy {
        if let Some(released) = lazy.released {
            released.restore();
        }
        Python::attach(|py| lazy.graveyard.sweep(py));
    }
}

/// The thread wrote a response, which may wait in the ring (`enter_app`).
pub fn response_queued() {
    PASSES.with(|p| p.queued.set(true));
}

/// Notes a slow request: one that kept the thread LATE_AFTER or more from
/// its `enter_app` to `now` (the next one's, or the pass's wait). Timed
/// within one pass only: across a wait it would take idleness for a slow
/// request.
fn time_request(p: &Passes, now: Instant) {
    if let (Some(into_app), Some(entered)) = (p.into_app.get(), p.entered.get())
        && into_app >= entered
        && now - into_app >= LATE_AFTER
    {
        p.slow_request.set(Some(now));
    }
}

/// Called as the thread goes into the app for a request (a WSGI request
/// being prepared, an ASGI request starting, the ASGI loop getting control
/// back), where it may stay for long: a view computing, or a `--threads`
/// Python thread holding the GIL. It marks the pass as running the app
/// (`wait`), and sends the kernel what the thread queued since it last
/// entered it (the responses it wrote), without waiting:
/// - if that was 1 ms ago or more;
/// - or if a response was written since, and within the last 100 ms one
///   request kept the thread for 1 ms or more.
///
/// With io_uring a response would otherwise sit in the ring until the pass
/// ends, behind every view that runs after it in the same pass
/// (docs/architecture.md, "Responses during a long pass"). A hello-world
/// pass is far shorter than 1 ms and has no slow requests, so it enters the
/// kernel once, as before. The polling driver writes at once and has
/// nothing to submit here.
pub fn enter_app() {
    PASSES.with(|p| {
        let now = Instant::now();
        let entered = p.entered.get();
        if p.app_from.get().is_none() {
            p.app_from.set(Some(now));
        }
        time_request(p, now);
        p.into_app.set(Some(now));
        let slow_app = p
            .slow_request
            .get()
            .is_some_and(|at| now - at < SLOW_APP_FOR);
        let queued = p.queued.replace(false);
        let long = entered.is_some_and(|at| now - at >= LATE_AFTER);
        if long || (queued && slow_app) {
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
    let out = rt.enter(|| {
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
    });
    take_python_back();
    out
}
