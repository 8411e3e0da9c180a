//! WSGI as a handler of the HTTP driver: each request's body as the driver
//! delivers it becomes `wsgi.input`, the head becomes the environ, and what
//! the app returns is written piece by piece, on the shard's thread or from
//! one of its Python threads (`--threads`).

use std::os::fd::IntoRawFd;
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::Wsgi;
use super::environ::{ConnInfo, HeaderKeys};
use super::input::{self, SharedBody};
use super::pool::{Job, Pieces, Pool};
use super::response::{Progress, RequestMeta, Response};
use crate::access_log::Outcome;
use crate::http::HttpError;
use crate::http::conn::{Body, Exchange, Handler, Opened};
use crate::observe::{Done, Observers};
use crate::scoreboard::Scoreboard;

/// With `--threads` above 1, bodies up to this size are read before the app
/// runs; larger ones stream to the app's thread.
const STREAM_AT: usize = 64 * 1024;

/// One shard's WSGI app and what its requests need.
pub struct Bridge {
    pub wsgi: Arc<Wsgi>,
    /// Python threads for app calls when `--threads` is above 1.
    pub pool: Option<Pool>,
    pub header_keys: HeaderKeys,
    pub board: Arc<Scoreboard>,
    /// The scoreboard slot of the shard's own thread.
    pub slot: usize,
    pub observers: Observers,
}

/// Per-connection values, made once and reused for every request on it.
pub struct Peer {
    info: ConnInfo,
    /// The client as the request hooks' `req.peer_addr`.
    hook: Option<Py<PyAny>>,
}

/// Takes a streamed body away from the app however the request ends, so a
/// `wsgi.input` kept past its request reads nothing and holds no socket. A
/// read in progress on a Python thread holds the lock; its stream goes when
/// the input object does.
struct Revoke(SharedBody);

impl Drop for Revoke {
    fn drop(&mut self) {
        if let Ok(mut stream) = self.0.try_lock() {
            stream.take();
        }
    }
}

/// The plain 500 turbo sends when the app fails before its head went out.
fn app_failed() -> HttpError {
    HttpError::new(500, "the application failed")
}

impl Handler for std::rc::Rc<Bridge> {
    type Peer = Peer;

    fn open(&self, opened: Opened<'_>) -> Option<Peer> {
        Some(Python::attach(|py| Peer {
            info: ConnInfo::new(py, opened.ends, opened.proxied),
            hook: self.observers.peer(py, opened.ends),
        }))
    }

    async fn respond(&self, peer: &Peer, mut ex: Exchange<'_>) -> Option<bool> {
        let stream_at = self.pool.is_some().then_some(STREAM_AT);
        let body = match ex.read_body(stream_at).await {
            Ok(body) => body,
            Err(Some(err)) => {
                ex.refuse(err);
                return Some(false);
            }
            Err(None) => return None,
        };
        let Ok(observed) = self.observers.begin(&mut ex, peer.hook.as_ref(), false) else {
            return Some(false);
        };
        let mut done = Done::default();
        let keep_alive = self.run(&mut ex, &peer.info, body, &mut done).await;
        self.observers.finish(observed, ex.remote(), done);
        keep_alive
    }
}

impl Bridge {
    async fn run(
        &self,
        ex: &mut Exchange<'_>,
        info: &ConnInfo,
        body: Body,
        done: &mut Done,
    ) -> Option<bool> {
        let wsgi = &self.wsgi;
        let outcome = &mut done.outcome;
        let meta = RequestMeta {
            http: ex.meta(),
            record_headers: self.observers.wants_headers(),
            sendfile: ex.host().settings.sendfile,
        };
        self.board.count_request(self.slot);
        let date = ex.date();
        let (body, shared) = match body {
            Body::Stream(stream, initial) => {
                let shared: SharedBody = Arc::new(Mutex::new(Some(stream)));
                (Input::Stream(shared.clone(), initial), Some(shared))
            }
            Body::InMemory(data) => (Input::InMemory(data), None),
            Body::Spooled(file) => (Input::Spooled(file), None),
        };
        let _revoke = shared.clone().map(Revoke);
        crate::runtime::enter_app();
        let prepared = Python::attach(|py| {
            let input = match body {
                Input::InMemory(data) if data.is_empty() => Ok(wsgi.empty_input.bind(py).clone()),
                Input::InMemory(data) => wsgi.bytes_io.bind(py).call1((PyBytes::new(py, &data),)),
                // Python's file object takes the descriptor over.
                Input::Spooled(file) => wsgi.open.bind(py).call1((file.into_raw_fd(), "rb")),
                Input::Stream(shared, initial) => {
                    input::stream_input(py, &wsgi.input_stream, shared, &initial)
                }
            };
            let start_response = wsgi.start_response.bind(py).call0();
            let (input, start_response) = match (input, start_response) {
                (Ok(input), Ok(sr)) => (input, sr),
                (Err(e), _) | (_, Err(e)) => {
                    wsgi.log_exception(py, "Error preparing the request", &e);
                    return Err(HttpError::new(500, "the request could not be prepared"));
                }
            };
            let environ = wsgi.environ(py, ex.buf(), ex.head(), info, &self.header_keys, input)?;
            if ex.https() {
                let k = &wsgi.keys;
                environ
                    .set_item(k.url_scheme.bind(py), k.https.bind(py))
                    .map_err(|_| HttpError::new(500, "environ could not be built"))?;
            }
            if self.observers.keeps_environ() {
                done.environ = Some(environ.clone().into_any().unbind());
            }
            Ok((environ.unbind(), start_response.unbind()))
        });
        ex.end_head();
        let (environ, start_response) = match prepared {
            Ok(prepared) => prepared,
            Err(err) => {
                restore_body(ex, shared);
                outcome.status = err.status;
                ex.error(err);
                return Some(false);
            }
        };
        let mut keep_alive = match &self.pool {
            Some(pool) => {
                let job = Job {
                    environ,
                    start_response,
                    body: shared.clone(),
                    meta,
                    date: date.clone(),
                };
                match pool.respond(job) {
                    Some(pieces) => write_pieces(ex, pieces, outcome).await?,
                    None => {
                        log::error!("The shard's Python threads have stopped");
                        outcome.status = 500;
                        ex.error(app_failed());
                        false
                    }
                }
            }
            None => {
                let result = Python::attach(|py| {
                    let _busy = self.board.busy(self.slot);
                    wsgi.app
                        .call1(py, (environ.bind(py), start_response.bind(py)))
                });
                match result {
                    Err(e) => {
                        Python::attach(|py| wsgi.app_failed(py, &e));
                        outcome.status = 500;
                        ex.error(app_failed());
                        false
                    }
                    Ok(result) => {
                        let response = Response::new(result, start_response, shared.clone(), meta);
                        self.write_response(ex, response, &date, outcome).await?
                    }
                }
            }
        };
        if !restore_body(ex, shared) {
            keep_alive = false;
        }
        Some(keep_alive)
    }

    /// Produces the response on this thread, writing each piece as it comes.
    /// Returns whether the connection may carry another request, or `None` if
    /// it must close at once.
    async fn write_response(
        &self,
        ex: &mut Exchange<'_>,
        mut response: Response,
        date: &[u8],
        outcome: &mut Outcome,
    ) -> Option<bool> {
        let wsgi = &self.wsgi;
        let mut alive = true;
        loop {
            if ex.host().stopping() {
                response.close_connection();
            }
            let progress = Python::attach(|py| {
                let _busy = self.board.busy(self.slot);
                let (out, lent) = ex.output();
                let progress = response.advance(py, wsgi, out, date);
                lent.append(&mut response.take_lent(), 0);
                progress
            });
            match progress {
                Progress::More => {
                    if !ex.flush().await {
                        alive = false;
                        break;
                    }
                }
                Progress::Done => {
                    if let Some(file) = response.take_file() {
                        alive = ex.send_file(file).await;
                    }
                    break;
                }
                Progress::Abort => {
                    let _ = ex.flush().await;
                    alive = false;
                    break;
                }
            }
        }
        let keep_alive = response.keep_alive();
        *outcome = response.outcome();
        Python::attach(|py| response.close(py, wsgi));
        alive.then_some(keep_alive)
    }
}

/// `wsgi.input`'s source.
enum Input {
    InMemory(Vec<u8>),
    Spooled(std::fs::File),
    Stream(SharedBody, Vec<u8>),
}

/// Writes a response made on a pool thread, piece by piece.
async fn write_pieces(
    ex: &mut Exchange<'_>,
    mut pieces: Pieces,
    outcome: &mut Outcome,
) -> Option<bool> {
    loop {
        let Some(mut piece) = pieces.recv().await else {
            log::error!("A Python thread ended without finishing its response");
            return None;
        };
        let (out, lent) = ex.output();
        let at = out.len();
        if out.is_empty() {
            std::mem::swap(out, &mut piece.bytes);
        } else {
            out.extend_from_slice(&piece.bytes);
        }
        lent.append(&mut piece.lent, at);
        match piece.progress {
            Progress::More => {
                if !ex.flush().await {
                    return None;
                }
                pieces.next(piece.bytes);
            }
            Progress::Done => {
                *outcome = piece.outcome;
                if let Some(file) = piece.file
                    && !ex.send_file(file).await
                {
                    return None;
                }
                return Some(piece.keep_alive);
            }
            Progress::Abort => {
                *outcome = piece.outcome;
                let _ = ex.flush().await;
                return None;
            }
        }
    }
}

/// Takes a streamed body back from the app, for the driver to keep what
/// follows it; false when the connection cannot be reused.
fn restore_body(ex: &mut Exchange<'_>, shared: Option<SharedBody>) -> bool {
    match shared {
        Some(shared) => ex.restore_body(shared.lock().ok().and_then(|mut s| s.take())),
        None => true,
    }
}
