//! `--threads T`: a small pool of Python threads inside one shard's interpreter
//! that run app calls, so the shard keeps accepting, parsing and answering other
//! requests while up to T calls block on I/O. The threads share the shard's GIL
//! and release it whenever the app waits (sleep, sockets, database drivers).
//!
//! Only the call `app(environ, start_response)` moves to the pool; the shard
//! thread iterates the returned body, as it does with one thread.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

use futures_channel::oneshot;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::python;

struct Job {
    app: Py<PyAny>,
    environ: Py<PyDict>,
    start_response: Py<PyAny>,
    reply: oneshot::Sender<PyResult<Py<PyAny>>>,
}

/// The pool of one shard. Dropping it lets the threads finish their job and exit.
pub struct Pool {
    jobs: Sender<Job>,
}

impl Pool {
    /// Starts `threads` Python threads in the calling thread's interpreter.
    pub fn start(shard: usize, threads: usize) -> std::io::Result<Pool> {
        let (jobs, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let interp = python::current_interpreter();
        for n in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("turbo-shard-{shard}-py{n}"))
                .spawn(move || {
                    python::attach_thread(interp);
                    Python::attach(|py| worker(py, &rx));
                })?;
        }
        Ok(Pool { jobs })
    }

    /// Runs the app on a pool thread; the future resolves when it returns.
    pub async fn call(
        &self,
        app: Py<PyAny>,
        environ: Py<PyDict>,
        start_response: Py<PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let (reply, done) = oneshot::channel();
        let job = Job {
            app,
            environ,
            start_response,
            reply,
        };
        if self.jobs.send(job).is_err() {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "the shard's Python threads have stopped",
            ));
        }
        done.await.unwrap_or_else(|_| {
            Err(pyo3::exceptions::PyRuntimeError::new_err(
                "the app call was abandoned",
            ))
        })
    }
}

fn worker(py: Python<'_>, jobs: &Mutex<Receiver<Job>>) {
    loop {
        // Wait without the GIL, so the shard and the other threads can run.
        let job = python::without_gil(|| jobs.lock().ok().and_then(|rx| rx.recv().ok()));
        let Some(job) = job else {
            return;
        };
        let result = job
            .app
            .call1(py, (job.environ.bind(py), job.start_response.bind(py)));
        // If the connection is gone, the result comes back here and is dropped
        // while this thread holds the GIL.
        let _ = job.reply.send(result);
    }
}
