//! WSGI as a handler of the HTTP driver: each request's body as the driver
//! delivers it becomes `wsgi.input`, the head becomes the environ, and what
//! the app returns is written piece by piece, on the shard's thread or from
//! one of its Python threads (`--threads`).

use std::sync::Arc;

use pyo3::prelude::*;

use super::Wsgi;
use super::environ::{Client, ConnInfo, HeaderKeys};
use super::input::{Input, SharedBody};
use super::pool::{Job, Pieces, Pool};
use super::response::{Progress, RequestMeta, Response};
use crate::access_log::Outcome;
use crate::http::HttpError;
use crate::http::conn::{Body, Exchange, Handler, Opened};
use crate::observe::{Done, Observers};
use crate::python::Held;
use crate::runtime;
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
    client: Arc<Client>,
    /// The client as the environ gives it, when this thread runs the app.
    info: Option<ConnInfo>,
    /// The client as the request hooks' `req.peer_addr`.
    hook: Option<Held<PyAny>>,
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
        let client = Arc::new(Client {
            ends: opened.ends.clone(),
            proxied: opened.proxied.cloned(),
        });
        // With Python threads, each request's thread makes its own.
        let info = self
            .pool
            .is_none()
            .then(|| runtime::python(|py| ConnInfo::new(py, &client)));
        Some(Peer {
            client,
            info,
            hook: self.observers.peer(opened.ends),
        })
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
        let keep_alive = self.run(&mut ex, peer, body, &mut done).await;
        self.observers.finish(observed, ex.remote(), done);
        keep_alive
    }
}

impl Bridge {
    async fn run(
        &self,
        ex: &mut Exchange<'_>,
        peer: &Peer,
        body: Body,
        done: &mut Done,
    ) -> Option<bool> {
        let meta = RequestMeta {
            http: ex.meta(),
            record_headers: self.observers.wants_headers(),
            sendfile: ex.host().settings.sendfile,
        };
        self.board.count_request(self.slot);
        let date = ex.date();
        let (input, shared) = Input::of(body);
        let _revoke = shared.clone().map(Revoke);
        let mut keep_alive = match &self.pool {
            Some(pool) => {
                let head = ex.head();
                let job = ex.buf().get(..head.len).map(|buf| Job {
                    buf: buf.to_vec(),
                    head: head.clone(),
                    client: peer.client.clone(),
                    https: ex.https(),
                    input,
                    body: shared.clone(),
                    meta,
                    date,
                    keep_environ: self.observers.keeps_environ(),
                });
                ex.end_head();
                match job.and_then(|job| pool.respond(job)) {
                    Some(pieces) => write_pieces(ex, pieces, done).await?,
                    None => {
                        log::error!("A request could not go to the shard's Python threads");
                        done.outcome.status = 500;
                        ex.error(app_failed());
                        false
                    }
                }
            }
            None => {
                self.run_here(ex, peer, input, shared.clone(), meta, &date, done)
                    .await?
            }
        };
        if !restore_body(ex, shared) {
            keep_alive = false;
        }
        Some(keep_alive)
    }

    /// Runs the app on this thread. Returns whether the connection may carry
    /// another request, or `None` if it must close at once.
    #[allow(clippy::too_many_arguments)]
    async fn run_here(
        &self,
        ex: &mut Exchange<'_>,
        peer: &Peer,
        input: Input,
        shared: Option<SharedBody>,
        meta: RequestMeta,
        date: &[u8],
        done: &mut Done,
    ) -> Option<bool> {
        let wsgi = &self.wsgi;
        runtime::enter_app();
        let prepared: Result<_, HttpError> = runtime::python(|py| {
            let made;
            let info = match &peer.info {
                Some(info) => info,
                None => {
                    made = ConnInfo::new(py, &peer.client);
                    &made
                }
            };
            let (environ, start_response) = wsgi.prepare(
                py,
                ex.buf(),
                ex.head(),
                info,
                &self.header_keys,
                input,
                ex.https(),
            )?;
            if self.observers.keeps_environ() {
                done.environ = Some(Held::new(environ.clone().into_any().unbind()));
            }
            Ok((environ.unbind(), start_response.unbind()))
        });
        ex.end_head();
        let (environ, start_response) = match prepared {
            Ok(prepared) => prepared,
            Err(err) => {
                done.outcome.status = err.status;
                ex.error(err);
                return Some(false);
            }
        };
        let result = runtime::python(|py| {
            let _busy = self.board.busy(self.slot);
            let result = wsgi
                .app
                .call1(py, (environ.bind(py), start_response.bind(py)));
            drop(environ);
            result
        });
        match result {
            Err(e) => {
                runtime::python(|py| wsgi.app_failed(py, &e));
                done.outcome.status = 500;
                ex.error(app_failed());
                Some(false)
            }
            Ok(result) => {
                let response = Response::new(result, start_response, shared, meta);
                self.write_response(ex, response, date, &mut done.outcome)
                    .await
            }
        }
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
            let progress = runtime::python(|py| {
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
        runtime::python(|py| response.close(py, wsgi));
        alive.then_some(keep_alive)
    }
}

/// Writes a response made on a pool thread, piece by piece.
async fn write_pieces(ex: &mut Exchange<'_>, mut pieces: Pieces, done: &mut Done) -> Option<bool> {
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
                done.outcome = piece.outcome;
                done.environ = piece.environ;
                if let Some(file) = piece.file
                    && !ex.send_file(file).await
                {
                    return None;
                }
                return Some(piece.keep_alive);
            }
            Progress::Abort => {
                done.outcome = piece.outcome;
                done.environ = piece.environ;
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
