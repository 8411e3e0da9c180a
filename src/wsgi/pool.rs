//! `--threads T`: a small pool of Python threads inside one shard's interpreter
//! that produce whole responses, so the shard keeps accepting, parsing and
//! answering other requests while up to T requests block on I/O. The threads
//! share the shard's GIL and release it whenever the app waits (sleep, sockets,
//! database drivers).
//!
//! A pool thread builds the environ, calls the app, iterates the body and calls
//! `close()`; the shard thread only reads and writes, and never waits for the
//! GIL to do so (`runtime::run_python_on`). Pieces of the response travel to
//! the shard one at a time, and the thread waits for each to be written before
//! it makes the next, so a slow client holds back the app instead of filling
//! memory.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

use futures_channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use pyo3::prelude::*;

use super::Wsgi;
use super::environ::{Client, ConnInfo, HeaderKeys};
use super::input::{Input, SharedBody};
use super::limit::{Limit, Sampler};
use super::response::{Progress, RequestMeta, Response, internal_error};
use crate::access_log::Outcome;
use crate::http::encode;
use crate::http::output::Lent;
use crate::http::parse::RequestHead;
use crate::http::sendfile::FileSpan;
use crate::python::{self, Graveyard, Held};
use crate::runtime::PoolLoad;
use crate::scoreboard::Scoreboard;

/// One request for a pool thread, with no Python object in it: the shard
/// thread makes it without the GIL.
pub struct Job {
    /// The request's head: its bytes, and where its parts are in them.
    pub buf: Vec<u8>,
    pub head: RequestHead,
    pub client: Arc<Client>,
    pub https: bool,
    pub input: Input,
    /// The body the app reads as it streams, which the connection takes back.
    pub body: Option<SharedBody>,
    pub meta: RequestMeta,
    pub date: Vec<u8>,
    /// post_request runs: the last piece brings the environ back.
    pub keep_environ: bool,
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
    /// With the last piece: the environ, when the job asked to keep it.
    pub environ: Option<Held<PyAny>>,
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

/// What the pool's threads are asked to do.
enum Work {
    Request(Box<Task>),
    /// Release what the shard thread dropped without the GIL.
    Sweep,
}

/// The pool of one shard. Dropping it lets the threads finish their job and exit.
pub struct Pool {
    tasks: Sender<Work>,
    /// The graveyard's way to the threads, gone with the pool so that the
    /// threads see the channel close.
    sweeps: Arc<Mutex<Option<Sender<Work>>>>,
    /// How many threads have a request, as the shard thread's runtime reads it.
    pub load: Arc<PoolLoad>,
    /// What the shard thread dropped without its GIL, released by the threads.
    pub graveyard: Arc<Graveyard>,
    limit: Arc<Limit>,
}

impl Pool {
    /// Starts `threads` Python threads in the calling thread's interpreter.
    /// Thread `n` reports its app calls in slot `n` of the shard's scoreboard slots.
    pub fn start(
        shard: usize,
        shards: usize,
        threads: usize,
        wsgi: Arc<Wsgi>,
        board: Arc<Scoreboard>,
        local: usize,
    ) -> std::io::Result<Pool> {
        let (tasks, rx) = channel::<Work>();
        let rx = Arc::new(Mutex::new(rx));
        let sweeps = Arc::new(Mutex::new(Some(tasks.clone())));
        let to_sweep = sweeps.clone();
        let graveyard = Arc::new(Graveyard::new(move || {
            if let Ok(sweeps) = to_sweep.lock()
                && let Some(sweeps) = sweeps.as_ref()
            {
                let _ = sweeps.send(Work::Sweep);
            }
        }));
        let load = Arc::new(PoolLoad::new(threads));
        let limit = Arc::new(Limit::new(
            threads,
            load.clone(),
            (shard, shards),
            board.clone(),
            local,
        ));
        let interp = python::current_interpreter();
        for n in 0..threads {
            let thread = Thread {
                wsgi: wsgi.clone(),
                board: board.clone(),
                slot: board.slot_index(local, n),
                index: n,
                load: load.clone(),
                limit: limit.clone(),
                graveyard: graveyard.clone(),
            };
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("turbo-shard-{shard}-py{n}"))
                .spawn(move || {
                    python::attach_thread(interp);
                    python::watchdog::register(thread.slot);
                    Python::attach(|py| {
                        thread.serve(py, &rx);
                        // Its Python objects go while pyo3 counts the
                        // thread attached.
                        drop(thread);
                    });
                    // The GIL goes with the thread: the other threads, and
                    // the worker's last hooks, still need it.
                    python::detach_thread();
                })?;
        }
        Ok(Pool {
            tasks,
            sweeps,
            load,
            graveyard,
            limit,
        })
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
        // What the shard thread let go of before this request goes first.
        self.graveyard.take_deferred();
        self.load.started();
        if self.tasks.send(Work::Request(Box::new(task))).is_err() {
            self.load.finished();
            return None;
        }
        Some(Pieces { pieces, buffers })
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.limit.close();
        if let Ok(mut sweeps) = self.sweeps.lock() {
            sweeps.take();
        }
    }
}

/// One of the pool's threads.
struct Thread {
    wsgi: Arc<Wsgi>,
    board: Arc<Scoreboard>,
    /// Its scoreboard slot.
    slot: usize,
    /// Its number in the pool.
    index: usize,
    load: Arc<PoolLoad>,
    limit: Arc<Limit>,
    graveyard: Arc<Graveyard>,
}

impl Thread {
    fn serve(&self, py: Python<'_>, tasks: &Mutex<Receiver<Work>>) {
        let header_keys = HeaderKeys::default();
        let mut sampler = Sampler::for_this_thread();
        let mut placed = false;
        loop {
            // Wait without the GIL, so the shard and the other threads can
            // run: for a place among those that run requests, then for work.
            let work = python::without_gil(|| {
                if !placed {
                    self.limit.acquire();
                    placed = true;
                }
                tasks.lock().ok().and_then(|rx| rx.recv().ok())
            });
            // What the shard thread dropped goes before the next request
            // runs, so the app never sees a reference turbo no longer needs.
            self.graveyard.sweep(py);
            match work {
                Some(Work::Request(task)) => {
                    self.limit.begin(self.index);
                    let stamp = sampler.start();
                    self.run(py, &header_keys, *task);
                    placed = self.limit.finished(self.index, sampler.end(stamp));
                    self.load.finished();
                }
                Some(Work::Sweep) => {}
                None => return,
            }
        }
    }

    fn run(&self, py: Python<'_>, header_keys: &HeaderKeys, task: Task) {
        let Thread {
            wsgi, board, slot, ..
        } = self;
        let slot = *slot;
        let Task {
            job,
            pieces,
            buffers,
        } = task;
        let mut out = Vec::with_capacity(8192);
        let info = ConnInfo::new(py, &job.client);
        let prepared = wsgi.prepare(
            py,
            &job.buf,
            &job.head,
            &info,
            header_keys,
            job.input,
            job.https,
        );
        let (environ, start_response) = match prepared {
            Ok(prepared) => prepared,
            Err(err) => {
                let status = err.status;
                encode::error_response(&mut out, err, &job.date);
                let _ = pieces.unbounded_send(Piece::failed(out, status, None));
                return;
            }
        };
        let kept = job
            .keep_environ
            .then(|| Held::new(environ.clone().into_any().unbind()));
        if let Some(body) = &job.body
            && let Ok(mut stream) = body.lock()
            && let Some(stream) = stream.as_mut()
        {
            let board = board.clone();
            stream.on_bytes = Some(Box::new(move || board.mark_busy(slot)));
        }
        let result = {
            let _busy = board.busy(slot);
            wsgi.app.call1(py, (&environ, &start_response))
        };
        drop(environ);
        let result = match result {
            Ok(result) => result,
            Err(e) => {
                wsgi.app_failed(py, &e);
                internal_error(&mut out, &job.date);
                let _ = pieces.unbounded_send(Piece::failed(out, 500, kept));
                return;
            }
        };
        let mut response = Response::new(result, start_response.unbind(), job.body, job.meta);
        let mut kept = kept;
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
                    environ: kept.take(),
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
                environ: None,
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
}

impl Piece {
    /// The whole answer to a request that failed before its response began:
    /// `bytes` hold the error, and the connection closes after it.
    fn failed(bytes: Vec<u8>, status: u16, environ: Option<Held<PyAny>>) -> Piece {
        Piece {
            bytes,
            progress: Progress::Done,
            keep_alive: false,
            outcome: Outcome {
                status,
                ..Outcome::default()
            },
            file: None,
            lent: Lent::default(),
            environ,
        }
    }
}
