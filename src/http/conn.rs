//! One client connection: read and parse heads, gather or stream the body, run the
//! app, write the response, and decide whether the connection lives on. Pipelined
//! requests are answered in order, and their responses leave in one write.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use compio::buf::BufResult;
use compio::io::AsyncReadExt;
use futures_util::future::Either;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::HttpError;
use super::body::Decoder;
use super::encode;
use super::output::{Lent, zerocopy_for};
use super::parse::{BodyKind, HeadScan, RequestHead};
use super::proxy;
use super::proxy_protocol;
use super::sendfile::FileSpan;
use super::spool::{self, Spool};
use super::stream::{Endpoints, HandshakeError, Stream};
use super::tls;
use crate::access_log::{self, Outcome};
use crate::asgi::http::{self as asgi_http, Peers};
use crate::asgi::websocket as asgi_ws;
use crate::shard::accept::Admitted;
use crate::shard::{App, Shard};
use crate::wsgi::Wsgi;
use crate::wsgi::environ::ConnInfo;
use crate::wsgi::input::{self, BodyStream, SharedBody};
use crate::wsgi::pool::Pool;
use crate::wsgi::pool::{Job, Pieces};
use crate::wsgi::response::{Progress, RequestMeta, Response, internal_error};

/// With `--threads` above 1, bodies up to this size are read before the app
/// runs; larger ones stream to the app's thread.
const STREAM_AT: usize = 64 * 1024;
/// A connection's read buffer, and the most it keeps between requests.
const RBUF_SIZE: usize = 8192;
const RBUF_KEEP: usize = 64 * 1024;
/// Room made in the read buffer for each read of a body.
const BODY_READ: usize = 64 * 1024;
/// Pipelined responses are gathered up to this size before a write.
const FLUSH_AT: usize = 64 * 1024;
/// How long a closing connection keeps reading, so unread input does not turn the
/// close into a reset that destroys the response (RFC 9112 9.6).
const LINGER: Duration = Duration::from_secs(2);

enum Body {
    InMemory(Vec<u8>),
    /// A body over `spool::MEMORY_MAX`, whole, in an unlinked temporary file.
    Spooled(std::fs::File),
    /// A body the app reads from the socket itself (`--threads` above 1),
    /// with the bytes decoded so far.
    Stream(SharedBody, Vec<u8>),
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

/// A body that could not be spooled is the server's failure, not the
/// client's.
fn spool_failed(e: std::io::Error) -> HttpError {
    log::error!("Cannot keep a request body: {e}");
    HttpError::new(500, "the request body could not be kept")
}

/// What became of a request, for the access log and post_request.
#[derive(Default)]
struct Done {
    outcome: Outcome,
    /// The environ, kept for post_request.
    environ: Option<Py<PyAny>>,
}

/// Per-connection values for the bridge in use.
enum PeerInfo {
    Wsgi(ConnInfo),
    Asgi(Peers),
}

enum ReadError {
    Closed,
    TimedOut,
    Failed,
}

struct Conn {
    shard: Rc<Shard>,
    /// The client's address, for the access log.
    peer: String,
    /// The peer is a trusted proxy (`forwarded_allow_ips`).
    trusted: bool,
    /// The current request came through https: over TLS, or as its trusted
    /// proxy says.
    https: bool,
    /// The connection is TLS.
    tls: bool,
    /// The client's address as the request hooks' `req.peer_addr`, made only
    /// when there are hooks.
    hook_peer: Option<Py<PyAny>>,
    stream: Stream,
    rbuf: Vec<u8>,
    out: Vec<u8>,
    /// Body chunks lent by the app, to go out within `out`.
    lent: Lent,
    /// Large bodies go out by send_zc (decided by the socket's own peer,
    /// before any PROXY header).
    zerocopy: bool,
}

pub async fn serve(admitted: Admitted, stream: Stream, peer: Option<SocketAddr>) {
    let shard = admitted.shard().clone();
    let Ok(mut ends) = stream.endpoints(peer) else {
        return;
    };
    let mut conn = Conn {
        peer: String::new(),
        // Only a process on this host can reach a unix socket: Gunicorn trusts
        // it as a proxy.
        trusted: match &ends {
            Endpoints::Tcp { peer, .. } => shard.config.forwarded_allow_ips.allows(peer.ip()),
            Endpoints::Unix { .. } => true,
        },
        https: false,
        tls: false,
        hook_peer: None,
        shard: shard.clone(),
        stream,
        rbuf: Vec::with_capacity(RBUF_SIZE),
        // Grown by the first response to the size responses need: an idle
        // connection should not hold a write buffer it has never used.
        out: Vec::new(),
        lent: Lent::default(),
        zerocopy: zerocopy_for(shard.config.send_zerocopy.into(), &ends),
    };
    let mut proxied = None;
    if shard.config.proxy_protocol != proxy_protocol::Mode::Off {
        let Ok(header) = conn.proxy_header(&ends).await else {
            return;
        };
        if let Some(client) = header.as_ref().and_then(|h| h.client) {
            // As Gunicorn: the header's client, on a unix socket too.
            let local = match (&ends, header.as_ref().and_then(|h| h.proxy)) {
                (Endpoints::Tcp { local, .. }, _) => *local,
                (Endpoints::Unix { .. }, Some(proxy)) => proxy,
                (Endpoints::Unix { .. }, None) => client,
            };
            ends = Endpoints::Tcp {
                peer: client,
                local,
            };
        }
        proxied = header;
    }
    let tls = match &conn.stream {
        Stream::Tls(tls) => Some(tls.clone()),
        _ => None,
    };
    if let Some(tls) = &tls {
        let until = Instant::now() + shard.config.header_timeout;
        let early = std::mem::take(&mut conn.rbuf);
        match tls.handshake(&early, until).await {
            Ok(()) => conn.tls = true,
            Err(HandshakeError::PlainHttp) => {
                // As nginx answers it, in plain text, so the mistake is plain.
                let err = HttpError::bad_request("The plain HTTP request was sent to HTTPS port");
                conn.refuse_raw(&tls.transport(), err).await;
                return;
            }
            Err(HandshakeError::Failed) => return,
        }
    }
    conn.peer = ends.peer_host();
    let info = match &shard.app {
        App::Wsgi { .. } => PeerInfo::Wsgi(Python::attach(|py| {
            ConnInfo::new(py, &ends, proxied.as_ref())
        })),
        App::Asgi(asgi) => match Python::attach(|py| {
            let facts = match (&tls, &shard.config.tls) {
                (Some(t), Some(config)) => Some((tls::lock(&t.session).facts(), config.as_ref())),
                _ => None,
            };
            Peers::new(py, asgi, &ends, facts)
        }) {
            Ok(peers) => PeerInfo::Asgi(peers),
            Err(_) => return,
        },
    };
    if shard.request_hooks.is_some() {
        conn.hook_peer = Python::attach(|py| match &ends {
            Endpoints::Tcp { peer, .. } => (peer.ip().to_string(), peer.port())
                .into_pyobject(py)
                .ok()
                .map(|t| t.into_any().unbind()),
            Endpoints::Unix { .. } => Some(pyo3::types::PyString::new(py, "").into_any().unbind()),
        });
    }
    conn.run(&info).await;
}

impl Conn {
    /// Reads the PROXY header that may open the connection. Err when the
    /// connection ended or was refused (a bad header, or one from a peer not
    /// in `proxy_allow_ips`).
    async fn proxy_header(
        &mut self,
        ends: &Endpoints,
    ) -> Result<Option<proxy_protocol::Header>, ()> {
        let cfg = self.shard.config.clone();
        let until = Instant::now() + cfg.header_timeout;
        // The header comes before any TLS, so it is read from the socket itself.
        let mut raw = match &self.stream {
            Stream::Tls(tls) => tls.transport(),
            other => other.clone(),
        };
        loop {
            match proxy_protocol::parse(&self.rbuf, cfg.proxy_protocol) {
                Ok(None) => {
                    let mut buf = std::mem::take(&mut self.rbuf);
                    buf.reserve(8192);
                    match compio::time::timeout_at(until, raw.append(buf)).await {
                        Ok(BufResult(Ok(n), buf)) if n > 0 => self.rbuf = buf,
                        _ => return Err(()),
                    }
                }
                Ok(Some((header, used))) => {
                    let allowed = match ends {
                        Endpoints::Tcp { peer, .. } => cfg.proxy_allow_ips.allows(peer.ip()),
                        Endpoints::Unix { .. } => true,
                    };
                    if header.is_some() && !allowed {
                        self.refuse_raw(&raw, HttpError::new(403, "Request forbidden"))
                            .await;
                        return Err(());
                    }
                    self.rbuf.drain(..used);
                    return Ok(header);
                }
                Err(err) => {
                    self.refuse_raw(&raw, err).await;
                    return Err(());
                }
            }
        }
    }

    /// Refuses a connection before any TLS: the answer goes out as it is.
    async fn refuse_raw(&mut self, raw: &Stream, err: HttpError) {
        let date = self.shard.date.borrow_mut().get().to_vec();
        let mut out = Vec::new();
        encode::error_response(&mut out, err, &date);
        let _ = raw.write_out(&mut out).await;
    }

    async fn run(&mut self, info: &PeerInfo) {
        let mut head = RequestHead::default();
        let cfg = self.shard.config.clone();
        let mut first = true;
        loop {
            // A head: an idle connection waits at most keep-alive for its first
            // byte, and the whole head must arrive within the header timeout.
            let mut deadline: Option<Instant> = None;
            let mut scan = HeadScan::default();
            loop {
                match scan.parse(&self.rbuf, &cfg.limits, &mut head) {
                    Ok(Some(())) => break,
                    Ok(None) => {}
                    Err(err) => return self.refuse(err).await,
                }
                if self.pending() > 0 && !self.flush().await {
                    return;
                }
                let until = if self.rbuf.is_empty() && !first {
                    Instant::now() + cfg.keep_alive
                } else {
                    *deadline.get_or_insert_with(|| Instant::now() + cfg.header_timeout)
                };
                let partial = !self.rbuf.is_empty();
                // Between requests a draining shard closes the connection; a
                // new connection still gets its first request answered.
                let idle = !partial && !first;
                if idle && self.shard.drain.is_draining() {
                    return;
                }
                match self.read(until, idle).await {
                    Ok(()) => {}
                    Err(ReadError::TimedOut) if partial => {
                        return self
                            .refuse(HttpError::new(408, "request head not received in time"))
                            .await;
                    }
                    Err(_) => return,
                }
            }

            first = false;
            self.https = match self.trusted {
                true => match proxy::is_https(&self.rbuf, &head, &cfg.secure_scheme_headers) {
                    Ok(https) => https || self.tls,
                    Err(err) => return self.refuse(err).await,
                },
                false => self.tls,
            };
            // A declared length over limit_request_body is refused before
            // the app runs; a chunked body is cut where it passes the limit.
            if let (Some(limit), BodyKind::Length(length)) = (cfg.limits.body, head.body)
                && length > limit
            {
                return self
                    .refuse(HttpError::new(413, "request body too large"))
                    .await;
            }
            let shard = self.shard.clone();
            let keep_alive = match (&shard.app, info) {
                (App::Wsgi { wsgi, pool }, PeerInfo::Wsgi(info)) => {
                    let body = match self.gather_body(&head, pool.is_some()).await {
                        Ok(body) => body,
                        Err(Some(err)) => return self.refuse(err).await,
                        Err(None) => return,
                    };
                    self.respond(&head, info, body, wsgi, pool.as_ref()).await
                }
                (App::Asgi(asgi), PeerInfo::Asgi(peers)) => {
                    let board = &shard.board;
                    board.count_request(board.slot_index(shard.local, 0));
                    let upgrade = head.minor == 1 && asgi_ws::is_upgrade(&self.rbuf, &head);
                    let req = asgi_http::Request {
                        head: &head,
                        meta: super::output::Meta {
                            minor: head.minor,
                            is_head: head.is_head(&self.rbuf),
                            keep_alive: head.keep_alive && !board.stopping(),
                        },
                        date: shard.date.borrow_mut().get().to_vec(),
                        access_log: shard.access_log.as_deref().filter(|_| !upgrade),
                        remote: &self.peer,
                        https: self.https,
                        sendfile: shard.config.sendfile,
                        zerocopy: self.zerocopy,
                        hooks: shard
                            .request_hooks
                            .as_ref()
                            .filter(|_| !upgrade)
                            .map(|h| (h, self.hook_peer.as_ref())),
                        body_limit: cfg.limits.body,
                    };
                    if upgrade {
                        let (stream, rbuf, out) = (&self.stream, &mut self.rbuf, &mut self.out);
                        asgi_ws::serve(asgi, stream, rbuf, out, peers, req).await
                    } else {
                        asgi_http::respond(
                            asgi,
                            &self.stream,
                            &mut self.rbuf,
                            &mut self.out,
                            peers,
                            req,
                            cfg.header_timeout,
                        )
                        .await
                    }
                }
                _ => return,
            };
            if keep_alive.is_none() {
                return;
            }
            if keep_alive == Some(false) || cfg.keep_alive.is_zero() || self.shard.board.stopping()
            {
                let _ = self.flush().await;
                return self.linger().await;
            }
            if self.pending() >= FLUSH_AT && !self.flush().await {
                return;
            }
            // A large head or body grew the buffer: between requests an idle
            // connection keeps only a small one.
            if self.rbuf.capacity() > RBUF_KEEP && self.rbuf.len() <= RBUF_SIZE {
                self.rbuf.shrink_to(RBUF_SIZE);
            }
        }
    }

    /// Reads more input into `rbuf`, appending. An `idle` read also ends, as
    /// Closed, when the shard starts draining.
    async fn read(&mut self, until: Instant, idle: bool) -> Result<(), ReadError> {
        // A read into zero spare bytes would look like EOF.
        self.rbuf.reserve(8192);
        let buf = std::mem::take(&mut self.rbuf);
        let read = compio::time::timeout_at(until, self.stream.append(buf));
        let read = if idle {
            let drain = self.shard.drain.started();
            match futures_util::future::select(std::pin::pin!(read), std::pin::pin!(drain)).await {
                Either::Left((read, _)) => read,
                Either::Right(_) => return Err(ReadError::Closed),
            }
        } else {
            read.await
        };
        match read {
            Ok(BufResult(res, buf)) => {
                self.rbuf = buf;
                match res {
                    Ok(0) => Err(ReadError::Closed),
                    Ok(_) => Ok(()),
                    Err(_) => Err(ReadError::Failed),
                }
            }
            Err(_) => Err(ReadError::TimedOut),
        }
    }

    /// Bytes waiting to be written.
    fn pending(&self) -> usize {
        self.out.len() + self.lent.len()
    }

    /// Writes `out`; false when the client is gone or stalled.
    async fn flush(&mut self) -> bool {
        self.stream
            .write_spliced(&mut self.out, &mut self.lent, self.zerocopy)
            .await
    }

    /// Answers a bad request with its status and closes the connection.
    async fn refuse(&mut self, err: HttpError) {
        log::debug!("Refusing request: {} {}", err.status, err.detail);
        let date = self.shard.date.borrow_mut().get().to_vec();
        encode::error_response(&mut self.out, err, &date);
        if self.flush().await {
            self.linger().await;
        }
    }

    /// Half-closes and drains input until the client closes, for at most LINGER.
    async fn linger(&mut self) {
        if let Stream::Tls(tls) = &self.stream {
            tls.close_notify().await;
        }
        // SAFETY: shutdown on our own socket descriptor.
        unsafe { libc::shutdown(self.stream.as_raw_fd(), libc::SHUT_WR) };
        let until = Instant::now() + LINGER;
        let mut drained = 0usize;
        while drained < 1 << 20 {
            self.rbuf.clear();
            match self.read(until, false).await {
                Ok(()) => drained += self.rbuf.len(),
                Err(_) => break,
            }
        }
    }

    /// Reads the request body before the app runs, through the ring, so a
    /// slow upload never holds the shard's thread: in memory up to
    /// `spool::MEMORY_MAX`, in a temporary file past it. With `--threads` above
    /// 1 (`stream`), a large body, or one the client holds back until `100
    /// Continue`, streams to the app instead, whose reads then wait on its
    /// own Python thread. A body over `limit_request_body` is refused (413).
    async fn gather_body(
        &mut self,
        head: &RequestHead,
        stream: bool,
    ) -> Result<Body, Option<HttpError>> {
        let cfg = self.shard.config.clone();
        let mut decoder = Decoder::new(head.body).limited(cfg.limits.body);
        let mut body = Vec::new();
        let mut spool: Option<Spool> = None;
        let mut continued = false;
        loop {
            // The head stays for the environ; decoded body bytes leave rbuf.
            let used = decoder
                .decode_into(&self.rbuf[head.len..], &mut body)
                .map_err(Some)?;
            self.rbuf.drain(head.len..head.len + used);
            if decoder.is_done() {
                return match spool {
                    None => Ok(Body::InMemory(body)),
                    Some(mut spool) => spool
                        .write(&body)
                        .and_then(|()| spool.finish())
                        .map(Body::Spooled)
                        .map_err(|e| Some(spool_failed(e))),
                };
            }
            let nothing_yet = body.is_empty() && spool.is_none() && self.rbuf.len() == head.len;
            let waiting_for_continue = head.expect_continue && nothing_yet && !continued;
            if stream {
                let large = decoder
                    .remaining_length()
                    .is_some_and(|n| n as usize + body.len() > STREAM_AT)
                    || body.len() + (self.rbuf.len() - head.len) > STREAM_AT;
                if waiting_for_continue || large {
                    // The app's thread sends 100 Continue on its first read,
                    // straight to the socket: what is owed before it goes first.
                    if waiting_for_continue && self.pending() > 0 && !self.flush().await {
                        return Err(None);
                    }
                    let pending = self.rbuf.split_off(head.len);
                    let stream = BodyStream::new(
                        self.stream.as_raw_fd(),
                        match &self.stream {
                            Stream::Tls(tls) => Some(tls.session.clone()),
                            _ => None,
                        },
                        pending,
                        decoder,
                        waiting_for_continue,
                        cfg.header_timeout,
                    )
                    .map_err(|e| Some(spool_failed(e)))?;
                    return Ok(Body::Stream(Arc::new(Mutex::new(Some(stream))), body));
                }
            } else if waiting_for_continue {
                // As Gunicorn: the client may send at once. Earlier pipelined
                // responses go out first, so it never overtakes them.
                self.out.extend_from_slice(encode::CONTINUE);
                if !self.flush().await {
                    return Err(None);
                }
                continued = true;
            }
            if body.len() > spool::MEMORY_MAX {
                let spooled = match spool.as_mut() {
                    Some(spool) => spool.write(&body),
                    None => Spool::new(cfg.tmp_upload_dir.as_deref()).and_then(|mut s| {
                        let written = s.write(&body);
                        spool = Some(s);
                        written
                    }),
                };
                spooled.map_err(|e| Some(spool_failed(e)))?;
                body.clear();
            }
            let until = Instant::now() + cfg.header_timeout;
            self.rbuf.reserve(BODY_READ);
            match self.read(until, false).await {
                Ok(()) => {}
                Err(ReadError::TimedOut) => {
                    return Err(Some(HttpError::new(
                        408,
                        "request body not received in time",
                    )));
                }
                Err(_) => return Err(None),
            }
        }
    }

    /// Runs the app and writes its response, with the access log and the
    /// request hooks around it. Returns whether the connection may serve
    /// another request, or None when it is already unusable.
    async fn respond(
        &mut self,
        head: &RequestHead,
        info: &ConnInfo,
        body: Body,
        wsgi: &Wsgi,
        pool: Option<&Pool>,
    ) -> Option<bool> {
        let shard = self.shard.clone();
        let (log, hooks) = (shard.access_log.as_deref(), shard.request_hooks.as_ref());
        if log.is_none() && hooks.is_none() {
            return self
                .respond_inner(head, info, body, wsgi, pool, &mut Done::default())
                .await;
        }
        let request = log.map(|_| access_log::Request::capture(&self.rbuf, head, false));
        let mut done = Done::default();
        let req = match hooks {
            Some(hooks) => match Python::attach(|py| {
                hooks.begin(py, &self.rbuf, head, self.https, self.hook_peer.as_ref())
            }) {
                Ok(req) => Some(req),
                Err(()) => {
                    done.outcome.status = 500;
                    let date = shard.date.borrow_mut().get().to_vec();
                    internal_error(&mut self.out, &date);
                    None
                }
            },
            None => None,
        };
        let keep_alive = match (hooks, req) {
            (Some(_), None) => Some(false),
            (_, req) => {
                let keep_alive = self
                    .respond_inner(head, info, body, wsgi, pool, &mut done)
                    .await;
                if let (Some(hooks), Some(req)) = (hooks, req) {
                    let environ = done.environ.take();
                    Python::attach(|py| hooks.finish(py, req, environ, &done.outcome));
                }
                keep_alive
            }
        };
        if let (Some(log), Some(request)) = (log, request) {
            log.log(&self.peer, &request, &done.outcome);
        }
        keep_alive
    }

    async fn respond_inner(
        &mut self,
        head: &RequestHead,
        info: &ConnInfo,
        body: Body,
        wsgi: &Wsgi,
        pool: Option<&Pool>,
        done: &mut Done,
    ) -> Option<bool> {
        let shard = self.shard.clone();
        let outcome = &mut done.outcome;
        let meta = RequestMeta {
            http: super::output::Meta {
                minor: head.minor,
                is_head: head.is_head(&self.rbuf),
                // A draining shard says Connection: close on its last responses.
                keep_alive: head.keep_alive && !shard.board.stopping(),
            },
            record_headers: shard
                .access_log
                .as_ref()
                .is_some_and(|l| l.format.wants_response_headers)
                || shard.request_hooks.as_ref().is_some_and(|h| h.post),
            sendfile: shard.config.sendfile,
        };
        let slot = shard.board.slot_index(shard.local, 0);
        shard.board.count_request(slot);
        let date = shard.date.borrow_mut().get().to_vec();
        let shared = match &body {
            Body::Stream(shared, _) => Some(shared.clone()),
            Body::InMemory(_) | Body::Spooled(_) => None,
        };
        let _revoke = shared.clone().map(Revoke);
        let prepared = Python::attach(|py| {
            let input = match body {
                Body::InMemory(data) if data.is_empty() => Ok(wsgi.empty_input.bind(py).clone()),
                Body::InMemory(data) => wsgi.bytes_io.bind(py).call1((PyBytes::new(py, &data),)),
                // Python's file object takes the descriptor over.
                Body::Spooled(file) => wsgi.open.bind(py).call1((file.into_raw_fd(), "rb")),
                Body::Stream(shared, initial) => {
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
            let environ = wsgi.environ(py, &self.rbuf, head, info, &shard.header_keys, input)?;
            if self.https {
                let k = &wsgi.keys;
                environ
                    .set_item(k.url_scheme.bind(py), k.https.bind(py))
                    .map_err(|_| HttpError::new(500, "environ could not be built"))?;
            }
            if shard.request_hooks.as_ref().is_some_and(|h| h.post) {
                done.environ = Some(environ.clone().into_any().unbind());
            }
            Ok((environ.unbind(), start_response.unbind()))
        });
        self.rbuf.drain(..head.len);
        let (environ, start_response) = match prepared {
            Ok(prepared) => prepared,
            Err(err) => {
                self.restore_body(shared);
                outcome.status = err.status;
                encode::error_response(&mut self.out, err, &date);
                return Some(false);
            }
        };
        let mut keep_alive = match pool {
            Some(pool) => {
                let job = Job {
                    environ,
                    start_response,
                    body: shared.clone(),
                    meta,
                    date: date.clone(),
                };
                match pool.respond(job) {
                    Some(pieces) => self.write_pieces(pieces, outcome).await?,
                    None => {
                        log::error!("The shard's Python threads have stopped");
                        outcome.status = 500;
                        internal_error(&mut self.out, &date);
                        false
                    }
                }
            }
            None => {
                let result = Python::attach(|py| {
                    let _busy = shard.board.busy(slot);
                    wsgi.app
                        .call1(py, (environ.bind(py), start_response.bind(py)))
                });
                match result {
                    Err(e) => {
                        Python::attach(|py| wsgi.app_failed(py, &e));
                        outcome.status = 500;
                        internal_error(&mut self.out, &date);
                        false
                    }
                    Ok(result) => {
                        let response = Response::new(result, start_response, shared.clone(), meta);
                        self.write_response(response, wsgi, &date, slot, outcome)
                            .await?
                    }
                }
            }
        };
        if !self.restore_body(shared) {
            keep_alive = false;
        }
        Some(keep_alive)
    }

    /// Produces the response on this thread, writing each piece as it comes.
    /// Returns whether the connection may carry another request, or `None` if
    /// it must close at once.
    async fn write_response(
        &mut self,
        mut response: Response,
        wsgi: &Wsgi,
        date: &[u8],
        slot: usize,
        outcome: &mut Outcome,
    ) -> Option<bool> {
        let shard = self.shard.clone();
        let mut alive = true;
        loop {
            if shard.board.stopping() {
                response.close_connection();
            }
            let progress = Python::attach(|py| {
                let _busy = shard.board.busy(slot);
                response.advance(py, wsgi, &mut self.out, date)
            });
            self.lent.append(&mut response.take_lent(), 0);
            match progress {
                Progress::More => {
                    if !self.flush().await {
                        alive = false;
                        break;
                    }
                }
                Progress::Done => {
                    if let Some(file) = response.take_file() {
                        alive = self.send_file(file).await;
                    }
                    break;
                }
                Progress::Abort => {
                    let _ = self.flush().await;
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

    /// Writes a response made on a pool thread, piece by piece.
    async fn write_pieces(&mut self, mut pieces: Pieces, outcome: &mut Outcome) -> Option<bool> {
        loop {
            let Some(mut piece) = pieces.recv().await else {
                log::error!("A Python thread ended without finishing its response");
                return None;
            };
            let at = self.out.len();
            if self.out.is_empty() {
                std::mem::swap(&mut self.out, &mut piece.bytes);
            } else {
                self.out.extend_from_slice(&piece.bytes);
            }
            self.lent.append(&mut piece.lent, at);
            match piece.progress {
                Progress::More => {
                    if !self.flush().await {
                        return None;
                    }
                    pieces.next(piece.bytes);
                }
                Progress::Done => {
                    *outcome = piece.outcome;
                    if let Some(file) = piece.file
                        && !self.send_file(file).await
                    {
                        return None;
                    }
                    return Some(piece.keep_alive);
                }
                Progress::Abort => {
                    *outcome = piece.outcome;
                    let _ = self.flush().await;
                    return None;
                }
            }
        }
    }

    /// Writes what `out` holds (the head), then the file; false when the
    /// connection must close.
    async fn send_file(&mut self, file: FileSpan) -> bool {
        self.flush().await && file.send(&self.stream, &mut Vec::new(), true).await
    }

    /// Takes a streamed body back from the app. Bytes read past its end belong to
    /// the next request. Returns false if the body was not read to its end, in
    /// which case the connection cannot be reused.
    fn restore_body(&mut self, shared: Option<SharedBody>) -> bool {
        let Some(shared) = shared else {
            return true;
        };
        let stream = shared.lock().ok().and_then(|mut s| s.take());
        match stream {
            Some(stream) if stream.decoder.is_done() => {
                self.rbuf.extend_from_slice(&stream.pending);
                true
            }
            _ => false,
        }
    }
}
