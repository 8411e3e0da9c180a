//! `--threads T`: a small pool of Python threads inside one shard's interpreter
//! that produce whole responses, so the shard keeps accepting, parsing and
//! answering other requests while up to T requests block on I/O. The threads
//! share the shard's GIL and release it whenever the app waits (sleep, sockets,
//! database drivers).
//!
//! A pool thread calls the app, iterates the body and calls `close()`; the shard
//! thread only writes. Pieces of the response travel to the shard one at a time,
//! and the thread waits for each to be written before it makes the next, so a
//! slow client holds back the app instead of filling memory.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

use futures_channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::Wsgi;
use super::input::SharedBody;
use super::response::{Progress, RequestMeta, Response, internal_error};
use crate::access_log::Outcome;
use crate::http::output::Lent;
use crate::http::sendfile::FileSpan;
use crate::python;
use crate::scoreboard::Scoreboard;

/// One request for a pool thread.
pub struct Job {
    pub environ: Py<PyDict>,
    pub start_response: Py<PyAny>,
    pub body: Option<SharedBody>,
    pub meta: RequestMeta,
    pub date: Vec<u8>,
}

/// A piece of a response, made on a pool thread.
pub struct Piece {
    pub bytes: Vec<u8>,
    /// `More`: send a buffer back with `Pieces::next` once these bytes are out.
    pub progress: Progress,
    /// After `Done`: whether the connection may carry another request.
    pub keep_alive: bool,
    /// With the last piece: what the access log needs.
    pub outcome: Outcome,
    /// With the last piece: a file to send after `bytes`.
    pub file: Option<FileSpan>,
    /// Body chunks lent by the app, placed within `bytes`.
    pub lent: Lent,
}

/// The shard's end of one response in the making.
pub struct Pieces {
    pieces: UnboundedReceiver<Piece>,
    buffers: Sender<Vec<u8>>,
}

impl Pieces {
    /// The next piece; `None` if the pool thread went away without finishing.
    pub async fn recv(&mut self) -> Option<Piece> {
        std::future::poll_fn(|cx| {
            futures_core::Stream::poll_next(std::pin::Pin::new(&mut self.pieces), cx)
        })
        .await
    }

    /// Asks for the piece after a `More`, handing back an emptied buffer.
    pub fn next(&self, mut buffer: Vec<u8>) {
        buffer.clear();
        let _ = self.buffers.send(buffer);
    }
}

struct Task {
    job: Job,
    pieces: UnboundedSender<Piece>,
    buffers: Receiver<Vec<u8>>,
}

/// The pool of one shard. Dropping it lets the threads finish their job and exit.
pub struct Pool {
    tasks: Sender<Task>,
}

impl Pool {
    /// Starts `threads` Python threads in the calling thread's interpreter.
    /// Thread `n` reports its app calls in slot `n` of the shard's scoreboard slots.
    pub fn start(
        shard: usize,
        threads: usize,
        wsgi: Arc<Wsgi>,
        board: Arc<Scoreboard>,
        local: usize,
    ) -> std::io::Result<Pool> {
        let (tasks, rx) = channel::<Task>();
        let rx = Arc::new(Mutex::new(rx));
        let interp = python::current_interpreter();
        for n in 0..threads {
            let rx = rx.clone();
            let wsgi = wsgi.clone();
            let board = board.clone();
            let slot = board.slot_index(local, n);
            std::thread::Builder::new()
                .name(format!("turbo-shard-{shard}-py{n}"))
                .spawn(move || {
                    python::attach_thread(interp);
                    python::watchdog::register(slot);
                    Python::attach(|py| worker(py, &wsgi, &board, slot, &rx));
                })?;
        }
        Ok(Pool { tasks })
    }

    /// Hands a request to the next free thread; `None` if the threads are gone.
    pub fn respond(&self, job: Job) -> Option<Pieces> {
        let (piece_tx, pieces) = unbounded();
        let (buffers, buffer_rx) = channel();
        let task = Task {
            job,
            pieces: piece_tx,
            buffers: buffer_rx,
        };
        self.tasks.send(task).ok()?;
        Some(Pieces { pieces, buffers })
    }
}

fn worker(
    py: Python<'_>,
    wsgi: &Wsgi,
    board: &Arc<Scoreboard>,
    slot: usize,
    tasks: &Mutex<Receiver<Task>>,
) {
    loop {
        // Wait without the GIL, so the shard and the other threads can run.
        let task = python::without_gil(|| tasks.lock().ok().and_then(|rx| rx.recv().ok()));
        match task {
            Some(task) => run(py, wsgi, board, slot, task),
            None => return,
        }
    }
}

fn run(py: Python<'_>, wsgi: &Wsgi, board: &Arc<Scoreboard>, slot: usize, task: Task) {
    let Task {
        job,
        pieces,
        buffers,
    } = task;
    if let Some(body) = &job.body
        && let Ok(mut stream) = body.lock()
        && let Some(stream) = stream.as_mut()
    {
        let board = board.clone();
        stream.on_bytes = Some(Box::new(move || board.mark_busy(slot)));
    }
    let mut out = Vec::with_capacity(8192);
    let result = {
        let _busy = board.busy(slot);
        wsgi.app
            .call1(py, (job.environ.bind(py), job.start_response.bind(py)))
    };
    let result = match result {
        Ok(result) => result,
        Err(e) => {
            wsgi.app_failed(py, &e);
            internal_error(&mut out, &job.date);
            let _ = pieces.unbounded_send(Piece {
                bytes: out,
                progress: Progress::Done,
                keep_alive: false,
                outcome: Outcome {
                    status: 500,
                    ..Outcome::default()
                },
                file: None,
                lent: Lent::default(),
            });
            return;
        }
    };
    let mut response = Response::new(result, job.start_response, job.body, job.meta);
    loop {
        if board.stopping() {
            response.close_connection();
        }
        let progress = {
            let _busy = board.busy(slot);
            response.advance(py, wsgi, &mut out, &job.date)
        };
        if progress != Progress::More {
            // close() runs before the shard hears the end, as it would inline.
            let keep_alive = response.keep_alive();
            let outcome = response.outcome();
            let file = response.take_file();
            let lent = response.take_lent();
            response.close(py, wsgi);
            let _ = pieces.unbounded_send(Piece {
                bytes: out,
                progress,
                keep_alive,
                outcome,
                file,
                lent,
            });
            return;
        }
        let piece = Piece {
            bytes: std::mem::take(&mut out),
            progress,
            keep_alive: response.keep_alive(),
            outcome: Outcome::default(),
            file: None,
            lent: response.take_lent(),
        };
        if pieces.unbounded_send(piece).is_err() {
            break;
        }
        match python::without_gil(|| buffers.recv()) {
            Ok(buffer) => out = buffer,
            // The connection is gone.
            Err(_) => break,
        }
    }
    response.close(py, wsgi);
}
