//! turbo: serve Python WSGI and ASGI apps from thread-per-core io_uring
//! shards. This is the extension module `turbo._turbo`: the virtualenv's own
//! `python` hosts it, through the `turbo` command (`python/turbo/__main__.py`),
//! so turbo runs on any CPython 3.11+, shared libpython or not, with the
//! virtualenv's packages (docs/architecture.md, "Processes").
//!
//! `config` reads the Gunicorn-compatible settings. The `supervisor` owns the
//! sockets and signals and forks `worker` processes; a worker starts Python and
//! its shards. A `shard` runs one core's event loop, `http` speaks HTTP/1.1,
//! `python` manages interpreters and `wsgi` bridges requests to the app. The
//! `scoreboard` is the memory a worker shares with the supervisor.

mod access_log;
mod asgi;
mod check_system;
mod config;
mod hooks;
mod http;
mod logging;
mod metrics;
mod observe;
mod placement;
mod python;
mod reloader;
mod report;
mod roster;
mod runtime;
mod scoreboard;
mod shard;
mod signals;
mod statsd;
mod supervisor;
mod worker;
mod wsgi;

use std::ffi::OsString;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The `turbo` command, called by the Python package with its arguments
/// (`sys.argv`): returns the exit status of a command that ends (`--help`,
/// `--print-config`, `--check-config`, `--check-system`); serving ends the
/// process itself, as the supervisor stops. The host's main interpreter
/// goes on as the supervisor's, with its GIL released while turbo runs.
///
/// It runs once per process: an app that calls it again (from a worker,
/// which is a fork of the supervisor) gets a RuntimeError.
#[pyfunction]
fn main(py: Python<'_>, argv: Vec<OsString>) -> PyResult<i32> {
    static STARTED: AtomicBool = AtomicBool::new(false);
    if STARTED.swap(true, Ordering::Relaxed) {
        return Err(PyRuntimeError::new_err(
            "turbo already runs in this process",
        ));
    }
    let argv = argv
        .into_iter()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    python::hosted(py);
    Ok(py.detach(move || run(argv)))
}

fn run(argv: Vec<String>) -> i32 {
    disable_huge_pages();
    config::set_command_line(argv);
    let status = match config::load() {
        config::Action::Serve(config) => supervisor::run(*config),
        config::Action::Print(text) => {
            print!("{text}");
            0
        }
        config::Action::CheckPassed(config) => {
            print!("{}", supervisor::isolation_report(&config));
            0
        }
        config::Action::CheckSystem(backlog) => {
            let (report, all_ok) = check_system::report(backlog);
            print!("{report}");
            if all_ok { 0 } else { 1 }
        }
    };
    // Python, not Rust, ends this process: what Rust buffered goes out now.
    let _ = std::io::stdout().flush();
    status
}

#[pymodule]
fn _turbo(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(main, module)?)
}

/// Turns transparent huge pages off for turbo's processes, as Redis does by
/// default. With them, memory faults in 2 MiB at a time: the Flask app on
/// two shards measured 59.4 MiB of PSS with them and 52.4 without, at the
/// same speed. mimalloc is built with `no_thp` so that it never asks for
/// them; this covers hosts whose THP setting is `always`. Forked workers
/// inherit it.
fn disable_huge_pages() {
    // SAFETY: prctl with PR_SET_THP_DISABLE only sets a flag on this process.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}
