//! Logging through Python's `logging`, when a config names a logging
//! configuration (`logconfig`, `logconfig_dict`, `logconfig_json`), as
//! Gunicorn does: error log lines go to the `gunicorn.error` logger and
//! access records to `gunicorn.access`, with the format and atoms as the
//! record's message and arguments. The loggers live in the main interpreter,
//! configured once in the supervisor and inherited by workers across fork.
//! Any thread hands records to one logging thread per process, so no shard
//! ever waits for the main interpreter's GIL.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyModule};

use super::sink::Queue;
use crate::config::{Config, LogConfig};
use crate::python::Held;
use crate::python::embedded::Embedded;

static MODULE: Embedded = crate::embedded!("python.py", c"turbo_logging.py", c"turbo_logging");

/// What the logging thread emits.
pub enum Entry {
    Error(log::Level, String),
    /// An access record's atoms, by name, as the format names them.
    Access(Vec<(String, String)>),
    /// USR1: reopen log files.
    Reopen,
    /// Everything before this has been emitted.
    Flushed(SyncSender<()>),
}

struct Loggers {
    module: Held<PyModule>,
    error: Held<PyAny>,
    access: Held<PyAny>,
    /// `access_log_format`, the access record's message.
    access_format: String,
}

static LOGGERS: OnceLock<Loggers> = OnceLock::new();
/// Held by the logging thread while it emits, and by a fork: a child must not
/// inherit a log file's buffer in the middle of a write.
static EMITTING: Mutex<()> = Mutex::new(());
/// This process's way to the logging thread.
static SINK: Mutex<Option<Queue<Entry>>> = Mutex::new(None);
/// Entries sent to the logging thread and not yet emitted.
static PENDING: AtomicUsize = AtomicUsize::new(0);

/// Configures Python's logging in the supervisor, before any worker forks.
pub fn configure(config: &Config) -> Result<(), String> {
    let Some(logconfig) = &config.logconfig else {
        return Ok(());
    };
    let loggers = Python::attach(|py| {
        setup(py, config, logconfig).map_err(|e| {
            let text = crate::python::error_text(py, &e);
            format!("the logging configuration failed:\n{text}")
        })
    })?;
    let _ = LOGGERS.set(loggers);
    start();
    Ok(())
}

fn setup(py: Python<'_>, config: &Config, logconfig: &LogConfig) -> PyResult<Loggers> {
    {
        let module = MODULE.load(py)?;
        let (kind, source): (&str, Bound<'_, PyAny>) = match logconfig {
            LogConfig::File(path) => ("file", path.clone().into_pyobject(py)?.into_any()),
            LogConfig::Json(path) => ("json", path.clone().into_pyobject(py)?.into_any()),
            LogConfig::Dict(dict) => ("dict", dict.get().bind(py).clone().into_any()),
        };
        let level = match config.log_level {
            log::LevelFilter::Debug | log::LevelFilter::Trace => 10,
            log::LevelFilter::Info => 20,
            log::LevelFilter::Warn => 30,
            _ => 40,
        };
        let (error, access): (Bound<'_, PyAny>, Bound<'_, PyAny>) = module
            .getattr("setup")?
            .call1((kind, source, config.access_log.as_deref(), level))?
            .extract()?;
        Ok(Loggers {
            module: Held::new(module.unbind()),
            error: Held::new(error.unbind()),
            access: Held::new(access.unbind()),
            access_format: config.access_log_format.source().to_string(),
        })
    }
}

/// Starts this process's logging thread (again, in a forked worker).
pub fn start() {
    if LOGGERS.get().is_none() {
        return;
    }
    // Bounded, as the plain log's queue is: a handler that blocks (a
    // socket handler whose peer stopped reading) costs dropped records, not
    // memory.
    let (tx, rx) = Queue::new(&PENDING);
    let spawned = std::thread::Builder::new()
        .name("turbo-logging".into())
        .spawn(move || run(rx));
    if spawned.is_ok()
        && let Ok(mut sink) = SINK.lock()
    {
        *sink = Some(tx);
    }
}

/// Whether records go to Python, so the caller need not write them itself.
pub fn active() -> bool {
    SINK.lock().is_ok_and(|s| s.is_some())
}

/// Hands `entry` to the logging thread; gives it back when there is none.
/// An entry the thread has no room for is dropped and counted.
pub fn send(entry: Entry) -> Result<(), Entry> {
    let tx = SINK.lock().ok().and_then(|s| s.clone());
    let Some(tx) = tx else {
        return Err(entry);
    };
    match tx.try_send(entry) {
        Ok(()) => Ok(()),
        Err(TrySendError::Full(_)) => {
            super::sink::count_dropped();
            Ok(())
        }
        Err(TrySendError::Disconnected(entry)) => Err(entry),
    }
}

/// Waits, for a second at most, until everything sent has been emitted: the
/// process is about to end.
pub fn flush() {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    if send(Entry::Flushed(tx)).is_ok() {
        let _ = rx.recv_timeout(Duration::from_secs(1));
    }
}

/// Keeps the logging thread between records while the guard lives: taken
/// around a fork.
pub fn quiet() -> Option<std::sync::MutexGuard<'static, ()>> {
    LOGGERS.get()?;
    EMITTING.lock().ok()
}

fn run(rx: Receiver<Entry>) {
    // Signals belong to the thread that waits for them; this one may start
    // before they are blocked process-wide.
    // SAFETY: sigfillset and pthread_sigmask on a local set, for this thread.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    }
    let Some(loggers) = LOGGERS.get() else {
        return;
    };
    while let Ok(first) = rx.recv() {
        // Taken before the GIL, so a fork holding this waits for no GIL.
        let _emitting = EMITTING.lock();
        Python::attach(|py| {
            let mut next = Some(first);
            while let Some(entry) = next {
                emit(py, loggers, entry);
                PENDING.fetch_sub(1, Ordering::AcqRel);
                next = rx.try_recv().ok();
            }
        });
    }
}

fn emit(py: Python<'_>, loggers: &Loggers, entry: Entry) {
    let done = match entry {
        Entry::Error(level, message) => {
            let level = match level {
                log::Level::Error => 40,
                log::Level::Warn => 30,
                log::Level::Info => 20,
                log::Level::Debug | log::Level::Trace => 10,
            };
            loggers
                .error
                .get()
                .call_method1(py, "log", (level, message))
                .map(drop)
        }
        Entry::Access(atoms) => {
            let dict = PyDict::new(py);
            let filled = atoms
                .into_iter()
                .try_for_each(|(name, value)| dict.set_item(name, value));
            filled.and_then(|()| {
                loggers
                    .module
                    .get()
                    .call_method1(
                        py,
                        "access",
                        (loggers.access.get(), &loggers.access_format, dict),
                    )
                    .map(drop)
            })
        }
        Entry::Reopen => loggers.module.get().call_method0(py, "reopen").map(drop),
        Entry::Flushed(done) => {
            let _ = done.send(());
            Ok(())
        }
    };
    if let Err(e) = done {
        super::print_error(&format!("turbo: logging through Python failed: {e}"));
    }
}
