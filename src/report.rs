//! The pipe a worker tells its supervisor things on, one line each:
//! `ready`, `reload` (`--reload` saw a change), `refused REASON` (the app
//! refused to load in a sub-interpreter) and `refused-late REASON` (a
//! request imported a module that refuses them). Lines are short single
//! writes, which a pipe delivers whole, so any thread may send.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// The worker's end of the pipe; -1 in the supervisor.
static PIPE: AtomicI32 = AtomicI32::new(-1);
/// A late refusal is reported once per worker: the supervisor acts on the first.
static REFUSED_LATE: AtomicBool = AtomicBool::new(false);
/// Under `--isolation auto`, a late refusal also drains this worker.
static DRAIN_ON_REFUSAL: AtomicBool = AtomicBool::new(false);
/// Set by such a refusal: no shard of this worker accepts again.
static STOP_ACCEPTING: AtomicBool = AtomicBool::new(false);

/// Makes `fd` the pipe `send` writes to, for the worker's life.
pub fn set_pipe(fd: i32) {
    PIPE.store(fd, Ordering::Relaxed);
}

/// Sends one line; a line longer than a pipe delivers whole is cut.
pub fn send(line: &str) {
    let fd = PIPE.load(Ordering::Relaxed);
    if fd < 0 {
        return;
    }
    let mut text: String = line
        .chars()
        .map(|c| if c == '\n' { ' ' } else { c })
        .collect();
    let mut end = text.len().min(512);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('\n');
    // SAFETY: writes a buffer we own to a descriptor this process holds.
    unsafe { libc::write(fd, text.as_ptr().cast(), text.len()) };
}

/// Under `--isolation auto`: a late refusal drains the worker at once.
pub fn drain_on_refusal() {
    DRAIN_ON_REFUSAL.store(true, Ordering::Relaxed);
}

/// A request imported a module that refuses sub-interpreters. Under auto the
/// worker then stops accepting, as on TERM, so that requests wait in the
/// backlog for the process workers the supervisor starts instead of meeting
/// the refusal here; the report goes first, so the supervisor expects the
/// exit (docs/architecture.md, "Choosing the isolation").
pub fn refused_late(reason: &str) {
    if !REFUSED_LATE.swap(true, Ordering::Relaxed) {
        if DRAIN_ON_REFUSAL.load(Ordering::Relaxed) {
            // Before the refused request is answered: a connection its client
            // opens next is not accepted here, whatever the drain's pace.
            STOP_ACCEPTING.store(true, Ordering::SeqCst);
        }
        send(&format!("refused-late {reason}"));
        if DRAIN_ON_REFUSAL.load(Ordering::Relaxed) {
            // SAFETY: signals this process; the worker's main thread waits
            // for TERM and drains its shards.
            unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
        }
    }
}

/// Whether a late refusal under auto has stopped this worker's accepting.
pub fn stop_accepting() -> bool {
    STOP_ACCEPTING.load(Ordering::SeqCst)
}
