//! Where log lines are written. A log must never become the outage: a pipe
//! whose reader died (`turbo app:app | head -1`), a full disk, a collector that
//! stopped reading. So a line that cannot be written is dropped and counted,
//! never a panic; and a shard never waits on a pipe. In a worker, a line is
//! written at once only where that cannot block (nothing queued ahead of it,
//! and the target has room for one atomic write); otherwise it goes to one
//! writer thread through a bounded queue. When the writer is stuck, further
//! lines are dropped and counted too.
//!
//! The supervisor, which serves no request, writes synchronously: it has no
//! writer thread, so a fork never inherits one half-way through a write.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Lines a stuck writer may fall behind by before lines are dropped.
pub(super) const QUEUE_LINES: usize = 8192;

/// Where a line goes.
#[derive(Clone)]
pub enum Target {
    Stderr,
    Stdout,
    /// An access log that is a regular file, where a write never waits; the
    /// line keeps it open across a USR1 reopen.
    Regular(Arc<File>),
    /// Any other access log target (a FIFO, a character device).
    File(Arc<File>),
}

impl Target {
    /// The target for an opened access log file, told apart once here so
    /// that a regular file's lines need no poll.
    pub fn for_file(file: File) -> Target {
        if file.metadata().is_ok_and(|m| m.is_file()) {
            Target::Regular(Arc::new(file))
        } else {
            Target::File(Arc::new(file))
        }
    }
}

enum Item {
    Line(Target, Vec<u8>),
    /// Everything queued before this has been written (or dropped).
    Flushed(SyncSender<()>),
}

/// A writer thread's queue. It holds `QUEUE_LINES` items at most, and takes
/// memory only for those it holds: a bounded std channel allocates and writes
/// all of its slots up front, 384 KiB in every worker.
pub(super) struct Queue<T> {
    tx: Sender<T>,
    /// Items sent and not yet done with: the receiver subtracts each one
    /// once it has dealt with it.
    pending: &'static AtomicUsize,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            tx: self.tx.clone(),
            pending: self.pending,
        }
    }
}

impl<T> Queue<T> {
    pub(super) fn new(pending: &'static AtomicUsize) -> (Queue<T>, Receiver<T>) {
        let (tx, rx) = std::sync::mpsc::channel();
        (Queue { tx, pending }, rx)
    }

    pub(super) fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= QUEUE_LINES {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(TrySendError::Full(item));
        }
        self.tx.send(item).map_err(|gone| {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            TrySendError::Disconnected(gone.0)
        })
    }
}

/// This process's writer thread, once a worker has started it.
static QUEUE: Mutex<Option<Queue<Item>>> = Mutex::new(None);
/// Lines queued for the writer thread and not yet written.
static QUEUED: AtomicUsize = AtomicUsize::new(0);
/// Lines dropped that the log has not yet reported.
static DROPPED: AtomicU64 = AtomicU64::new(0);

pub(super) fn count_dropped() {
    DROPPED.fetch_add(1, Ordering::Relaxed);
}

/// Starts this process's writer thread (a worker, right after its fork).
pub fn start() {
    let (tx, rx) = Queue::new(&QUEUED);
    let spawned = std::thread::Builder::new()
        .name("turbo-log".into())
        .spawn(move || writer(rx));
    if spawned.is_ok()
        && let Ok(mut queue) = QUEUE.lock()
    {
        *queue = Some(tx);
    }
}

/// Writes one whole line (it ends with its newline) to `target`, or queues it
/// for the writer thread where there is one. Never blocks on the target and
/// never fails: a line that cannot go is counted in `dropped`.
pub fn write(target: Target, line: Vec<u8>) {
    let queue = QUEUE.lock().ok().and_then(|q| q.clone());
    let Some(queue) = queue else {
        return write_now(&target, &line);
    };
    if QUEUED.load(Ordering::Acquire) == 0 && writable_now(&target, line.len()) {
        return write_now(&target, &line);
    }
    match queue.try_send(Item::Line(target, line)) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => count_dropped(),
        Err(TrySendError::Disconnected(Item::Line(target, line))) => write_now(&target, &line),
        Err(TrySendError::Disconnected(Item::Flushed(_))) => {}
    }
}

/// Waits, at most `limit`, until what was queued has been written: before
/// the process exits.
pub fn flush(limit: Duration) {
    let queue = QUEUE.lock().ok().and_then(|q| q.clone());
    if let Some(queue) = queue {
        let (done_tx, done) = std::sync::mpsc::sync_channel(1);
        if queue.try_send(Item::Flushed(done_tx)).is_ok() {
            let _ = done.recv_timeout(limit);
        }
    }
    report_dropped(&Target::Stderr);
}

fn writer(rx: Receiver<Item>) {
    for item in rx {
        match item {
            Item::Line(target, line) => write_now(&target, &line),
            Item::Flushed(done) => {
                let _ = done.try_send(());
            }
        }
        QUEUED.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One write(2) per line keeps lines from different threads and processes
/// whole. After a run of dropped lines, the first line that goes through is
/// preceded by how many were lost.
fn write_now(target: &Target, line: &[u8]) {
    report_dropped(target);
    if !write_to(target, line) {
        count_dropped();
    }
}

/// Says how many lines were lost, if any were since the last report.
fn report_dropped(target: &Target) {
    let lost = DROPPED.load(Ordering::Relaxed);
    if lost == 0 {
        return;
    }
    let notice = format!(
        "[{}] [{}] [WARNING] {lost} log line(s) could not be written and were dropped\n",
        super::timestamp(),
        std::process::id()
    );
    if write_to(target, notice.as_bytes()) {
        DROPPED.fetch_sub(lost, Ordering::Relaxed);
    }
}

/// Whether one write of `len` bytes to `target` completes without waiting:
/// a regular file, or a pipe with room for it (an atomic write of at most
/// PIPE_BUF), which poll says.
fn writable_now(target: &Target, len: usize) -> bool {
    let fd = match target {
        Target::Regular(_) => return true,
        _ if len > libc::PIPE_BUF => return false,
        Target::Stderr => libc::STDERR_FILENO,
        Target::Stdout => libc::STDOUT_FILENO,
        Target::File(file) => std::os::fd::AsRawFd::as_raw_fd(&**file),
    };
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: polls one valid pollfd without waiting.
    let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
    ready == 1 && pfd.revents & libc::POLLOUT != 0
}

fn write_to(target: &Target, bytes: &[u8]) -> bool {
    match target {
        Target::Stderr => std::io::stderr().lock().write_all(bytes).is_ok(),
        Target::Stdout => std::io::stdout().lock().write_all(bytes).is_ok(),
        Target::Regular(file) | Target::File(file) => (&**file).write_all(bytes).is_ok(),
    }
}
