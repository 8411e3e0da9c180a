//! `--timeout` that costs one request, not the worker. In sub-interpreter
//! mode every shard lives in one worker process, so killing it for one stuck
//! request would drop every core's connections. The watchdog thread watches
//! the scoreboard; when an app call has run past the timeout it raises
//! `TimeoutError` in the thread that runs it, at that thread's next Python
//! bytecode. A request stuck in Python (`while True: pass`) then unwinds into
//! a 500, and the worker and its other connections live on. Code blocked in C
//! (a `time.sleep`, a C extension's loop) never reaches a bytecode, and the
//! supervisor still kills the worker a few seconds later (docs/architecture.md,
//! "Timeouts").
//!
//! Raising it needs the target interpreter's GIL: the watchdog attaches a
//! thread state of its own to that interpreter, which the stuck thread hands
//! over at its next switch interval. That attach may never return (the GIL
//! held inside C), so each raise runs on a short-lived thread of its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::ffi;

use super::InterpreterRef;
use crate::scoreboard::{Scoreboard, now_ms};

/// A thread that runs app calls, as the watchdog reaches it.
#[derive(Clone)]
struct Target {
    interp: InterpreterRef,
    /// CPython's id of the thread, as `PyThreadState_SetAsyncExc` takes it.
    thread: std::ffi::c_ulong,
    /// Set once an exception was raised in it and may still be pending.
    raised: Arc<AtomicBool>,
}

/// The app threads of this worker, by scoreboard slot.
static TARGETS: Mutex<Vec<(usize, Target)>> = Mutex::new(Vec::new());

thread_local! {
    /// This thread's `Target::raised`, if it registered.
    static RAISED: std::cell::RefCell<Option<Arc<AtomicBool>>> = const { std::cell::RefCell::new(None) };
}

/// Makes the calling thread, which holds its interpreter's GIL and runs the
/// app calls of scoreboard `slot`, one the watchdog can interrupt.
pub fn register(slot: usize) {
    let raised = Arc::new(AtomicBool::new(false));
    let target = Target {
        interp: super::current_interpreter(),
        // SAFETY: reads the calling thread's id.
        thread: unsafe { ffi::PyThread_get_thread_ident() },
        raised: raised.clone(),
    };
    RAISED.with_borrow_mut(|r| *r = Some(raised));
    if let Ok(mut targets) = TARGETS.lock() {
        targets.retain(|(s, _)| *s != slot);
        targets.push((slot, target));
    }
}

/// Called by a thread that is about to wait with its GIL released, so it is
/// in no app call: an exception raised too late to land in the call it was
/// meant for must not land in the next request's.
pub(super) fn discard_pending() {
    RAISED.with_borrow(|r| {
        if let Some(raised) = r
            && raised.load(Ordering::Relaxed)
            && raised.swap(false, Ordering::Relaxed)
        {
            // SAFETY: the thread holds its GIL; a NULL exception clears what
            // is pending for the thread itself.
            unsafe {
                ffi::PyThreadState_SetAsyncExc(
                    as_id(ffi::PyThread_get_thread_ident()),
                    std::ptr::null_mut(),
                )
            };
        }
    });
}

/// CPython takes the thread id as an `unsigned long`; pyo3 declares it
/// `long`. The bits are the same.
fn as_id(thread: std::ffi::c_ulong) -> std::ffi::c_long {
    thread as std::ffi::c_long
}

/// Starts the watchdog for a worker whose app calls may run at most `timeout`.
pub fn start(board: Arc<Scoreboard>, timeout: Duration) {
    let limit = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    let every = (timeout / 4).clamp(Duration::from_millis(50), Duration::from_millis(250));
    let _ = std::thread::Builder::new()
        .name("turbo-watchdog".into())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                let now = now_ms();
                for slot in 0..board.slots() {
                    let since = board.busy_since(slot);
                    if since != 0
                        && now.saturating_sub(since) > limit
                        && board.interrupt(slot, since)
                    {
                        raise_in(board.clone(), slot, since, timeout);
                    }
                }
            }
        });
}

/// Raises TimeoutError in the thread of `slot`, if it is still in the app
/// call that began at `since`.
fn raise_in(board: Arc<Scoreboard>, slot: usize, since: u64, timeout: Duration) {
    let target = TARGETS.lock().ok().and_then(|targets| {
        targets
            .iter()
            .find(|(s, _)| *s == slot)
            .map(|(_, t)| t.clone())
    });
    let Some(target) = target else { return };
    let _ = std::thread::Builder::new()
        .name("turbo-timeout".into())
        .spawn(move || {
            // SAFETY: the interpreter lives as long as the worker; the new
            // thread state is this thread's alone, attached, used, then
            // cleared and deleted with the GIL held, which releases it.
            unsafe {
                let tstate = ffi::PyThreadState_New(target.interp.as_ptr());
                ffi::PyEval_RestoreThread(tstate);
                if board.busy_since(slot) == since {
                    target.raised.store(true, Ordering::Relaxed);
                    ffi::PyThreadState_SetAsyncExc(as_id(target.thread), ffi::PyExc_TimeoutError);
                    log::error!(
                        "A request ran past --timeout ({} s); raising TimeoutError in it",
                        timeout.as_secs()
                    );
                }
                ffi::PyThreadState_Clear(tstate);
                ffi::PyThreadState_DeleteCurrent();
            }
        });
}
