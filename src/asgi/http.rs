//! One HTTP request through an ASGI app: the scope, the `receive` and `send`
//! callables the app gets, and the connection's side, which feeds the request
//! body to `receive` as the app asks for it, writes what `send` produced as it
//! comes, and watches for the client going away.
//!
//! The app's task and the connection's task run on the same thread and meet
//! in an `Exchange`: the callables change it and wake the connection; the
//! connection changes it and resolves the futures the app awaits.

use std::cell::RefCell;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use compio::buf::BufResult;
use compio::driver::op::{Interest, PollOnce};
use compio::io::AsyncRead;
use futures_util::future::LocalBoxFuture;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use super::Asgi;
use super::event_loop::Watched;
use super::task::{self, Link};
use crate::access_log::{self, AccessLog, Outcome};
use crate::hooks::RequestHooks;
use crate::http::body::Decoder;
use crate::http::encode;
use crate::http::output::{Framer, Lent, Meta};
use crate::http::parse::RequestHead;
use crate::http::sendfile::FileSpan;
use crate::http::stream::{Endpoints, Peek, Stream};
use crate::http::tls::{Facts, Tls};
use crate::http::{HttpError, reason};
use crate::python::lent::LentBytes;
use crate::wsgi::environ::{percent_decode, split_target};

/// send() makes the app wait once this much output is queued.
const HIGH_WATER: usize = 64 * 1024;
/// Bounds on one read of a request body.
const BODY_READ_MIN: usize = 16 * 1024;
const BODY_READ_MAX: usize = 256 * 1024;
/// Per-connection values for the scope.
pub struct Peers {
    client: Py<PyAny>,
    server: Py<PyAny>,
    /// On a TLS connection, the HTTP and WebSocket `extensions` with `tls`
    /// added; each request gets a copy.
    tls_extensions: Option<(Py<PyDict>, Py<PyDict>)>,
}

impl Peers {
    pub fn new(
        py: Python<'_>,
        asgi: &Asgi,
        ends: &Endpoints,
        tls: Option<(Facts, &Tls)>,
    ) -> PyResult<Peers> {
        let tls_extensions = match tls {
            Some((facts, config)) => {
                // The ASGI TLS extension (spec version 0.2).
                let info = PyDict::new(py);
                info.set_item("server_cert", &config.server_cert_pem)?;
                info.set_item("client_cert_chain", PyList::new(py, &facts.client_chain)?)?;
                info.set_item("client_cert_name", facts.client_name)?;
                info.set_item("client_cert_error", py.None())?;
                info.set_item("tls_version", facts.version)?;
                info.set_item("cipher_suite", facts.cipher_suite)?;
                let with_tls = |template: &Py<PyDict>| -> PyResult<Py<PyDict>> {
                    let extensions = template
                        .bind(py)
                        .get_item("extensions")?
                        .map(|e| e.cast_into::<PyDict>().map_err(PyErr::from))
                        .transpose()?
                        .map_or_else(|| Ok(PyDict::new(py)), |e| e.copy())?;
                    extensions.set_item("tls", &info)?;
                    Ok(extensions.unbind())
                };
                Some((with_tls(&asgi.http_template)?, with_tls(&asgi.ws_template)?))
            }
            None => None,
        };
        let pair = |host: String, port: Option<u16>| -> PyResult<Py<PyAny>> {
            Ok(PyTuple::new(
                py,
                [
                    host.into_pyobject(py)?.into_any(),
                    port.into_pyobject(py)?.into_any(),
                ],
            )?
            .into_any()
            .unbind())
        };
        Ok(match ends {
            Endpoints::Tcp { peer, local } => Peers {
                client: pair(peer.ip().to_string(), Some(peer.port()))?,
                server: pair(local.ip().to_string(), Some(local.port()))?,
                tls_extensions,
            },
            // The ASGI spec: no client, and the server as [path, None].
            Endpoints::Unix { path } => Peers {
                client: py.None(),
                server: pair(path.to_string_lossy().into_owned(), None)?,
                tls_extensions,
            },
        })
    }
}

#[derive(Default)]
struct Exchange {
    /// Decoded request body not yet handed to the app.
    pending: Vec<u8>,
    /// The whole request body has been decoded.
    request_complete: bool,
    /// The app has received `more_body: False`.
    body_delivered: bool,
    /// The future a `receive()` awaits, when nothing was ready.
    receive_waiter: Option<Py<PyAny>>,
    /// An `Expect: 100-continue` the app has not yet asked to be answered.
    expects_continue: bool,
    disconnected: bool,

    /// Status and encoded header lines from `http.response.start`.
    start: Option<(u16, Vec<u8>, Option<u64>)>,
    /// The response's framing, from the head on.
    framer: Framer,
    complete: bool,
    out: Vec<u8>,
    /// The future a `send()` awaits while output drains.
    flush_waiter: Option<Py<PyAny>>,
    /// A file being sent (`http.response.pathsend`) and the bytes left of it.
    file: Option<FileSpan>,
    /// Body chunks lent by the app, placed within `out`.
    lent: Lent,
    link: Rc<Link>,

    /// The scope, kept for post_request when `keep_scope` is set.
    keep_scope: bool,
    scope: Option<Py<PyAny>>,

    /// For the access log: the headers that went out, if its format
    /// wants them.
    record_headers: bool,
    recorded_headers: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Exchange {
    fn wake(&self) {
        self.link.wake();
    }
}

type Shared = Rc<RefCell<Exchange>>;

/// Builds the HTTP scope for `head`, whose ranges point into `buf`.
/// With `websocket`, the WebSocket scope instead: no method, scheme `ws`,
/// and the subprotocols the client offers.
pub(super) fn scope<'py>(
    py: Python<'py>,
    asgi: &Asgi,
    buf: &[u8],
    head: &RequestHead,
    peers: &Peers,
    websocket: bool,
    https: bool,
) -> Result<Bound<'py, PyDict>, HttpError> {
    let target = &buf[head.target.clone()];
    let (raw_path, query) = split_target(target)?;
    let decoded = percent_decode(raw_path);
    let path = String::from_utf8_lossy(&decoded);
    let k = &asgi.keys;
    let internal = |_| HttpError::new(500, "the request could not be prepared");
    let template = if websocket {
        &asgi.ws_template
    } else {
        &asgi.http_template
    };
    let scope = template.bind(py).copy().map_err(internal)?;
    let headers = PyList::empty(py);
    for (name, value) in &head.headers {
        let name = buf[name.clone()].to_ascii_lowercase();
        let pair = PyTuple::new(
            py,
            [
                PyBytes::new(py, &name),
                PyBytes::new(py, &buf[value.clone()]),
            ],
        );
        pair.and_then(|p| headers.append(p)).map_err(internal)?;
    }
    let filled = (|| -> PyResult<()> {
        let scheme = match (websocket, https) {
            (true, true) => &k.wss,
            (true, false) => &k.ws,
            (false, true) => &k.https,
            (false, false) => &k.http,
        };
        scope.set_item(k.scheme.bind(py), scheme.bind(py))?;
        if websocket {
            let offered = PyList::empty(py);
            for (name, value) in &head.headers {
                if buf[name.clone()].eq_ignore_ascii_case(b"sec-websocket-protocol") {
                    for p in buf[value.clone()].split(|&b| b == b',') {
                        let p = crate::http::parse::trim(p);
                        if !p.is_empty() {
                            offered.append(String::from_utf8_lossy(p).as_ref())?;
                        }
                    }
                }
            }
            scope.set_item(k.subprotocols.bind(py), offered)?;
        } else {
            let method = &buf[head.method.clone()];
            match k.methods.iter().find(|(m, _)| *m == method) {
                Some((_, m)) => scope.set_item(k.method.bind(py), m.bind(py))?,
                None => scope.set_item(k.method.bind(py), String::from_utf8_lossy(method))?,
            }
        }
        let version = if head.minor == 0 { &k.v10 } else { &k.v11 };
        scope.set_item(k.http_version.bind(py), version.bind(py))?;
        scope.set_item(k.path.bind(py), path.as_ref())?;
        scope.set_item(k.raw_path.bind(py), PyBytes::new(py, raw_path))?;
        scope.set_item(k.query_string.bind(py), PyBytes::new(py, query))?;
        scope.set_item(k.headers.bind(py), headers)?;
        scope.set_item(k.client.bind(py), peers.client.bind(py))?;
        scope.set_item(k.server.bind(py), peers.server.bind(py))?;
        scope.set_item(k.state.bind(py), asgi.state.bind(py).copy()?)?;
        if let Some((http, ws)) = &peers.tls_extensions {
            let extensions = if websocket { ws } else { http };
            scope.set_item("extensions", extensions.bind(py).copy()?)?;
        }
        Ok(())
    })();
    filled.map_err(internal)?;
    Ok(scope)
}

pub(super) fn runtime_error(msg: String) -> PyErr {
    pyo3::exceptions::PyRuntimeError::new_err(msg)
}

/// What `receive()` has for the app now: the body that arrived, or the
/// disconnect; None while there is neither.
fn next_message<'py>(
    py: Python<'py>,
    asgi: &Asgi,
    ex: &mut Exchange,
) -> PyResult<Option<Bound<'py, PyDict>>> {
    let k = &asgi.keys;
    let message = if !ex.body_delivered && (!ex.pending.is_empty() || ex.request_complete) {
        let message = PyDict::new(py);
        message.set_item(k.type_.bind(py), k.http_request.bind(py))?;
        message.set_item(k.body.bind(py), PyBytes::new(py, &ex.pending))?;
        message.set_item(k.more_body.bind(py), !ex.request_complete)?;
        ex.pending.clear();
        ex.body_delivered = ex.request_complete;
        message
    } else if ex.disconnected || (ex.body_delivered && ex.complete) {
        let message = PyDict::new(py);
        message.set_item(k.type_.bind(py), k.http_disconnect.bind(py))?;
        message
    } else {
        return Ok(None);
    };
    Ok(Some(message))
}

/// The `receive` callable.
fn receive(py: Python<'_>, asgi: &Asgi, shared: &Shared) -> PyResult<Py<PyAny>> {
    let mut ex = task::exclusive(shared)?;
    let fut = asgi.create_future.call0(py)?;
    match next_message(py, asgi, &mut ex)? {
        Some(message) => {
            fut.call_method1(py, asgi.keys.set_result.bind(py), (message,))?;
        }
        None => {
            task::check_receive(py, asgi, &ex.receive_waiter)?;
            ex.receive_waiter = Some(fut.clone_ref(py));
            ex.wake();
        }
    }
    Ok(fut)
}

/// Resolves an awaited `receive()` once there is something to say.
fn answer_receive(py: Python<'_>, asgi: &Asgi, shared: &Shared) {
    let Some(waiter) = shared.borrow_mut().receive_waiter.take() else {
        return;
    };
    // A receive() the app gave up on gets nothing: what arrived waits for
    // the next one.
    if task::is_done(py, asgi, &waiter) {
        return;
    }
    let message = next_message(py, asgi, &mut shared.borrow_mut());
    let _ = match message {
        Ok(None) => {
            shared.borrow_mut().receive_waiter = Some(waiter);
            return;
        }
        Ok(Some(message)) => waiter.call_method1(py, asgi.keys.set_result.bind(py), (message,)),
        Err(e) => waiter.call_method1(py, "set_exception", (e.value(py),)),
    };
    asgi.reactor.wake_python();
}

/// The `send` callable.
fn send(
    py: Python<'_>,
    asgi: &Asgi,
    shared: &Shared,
    date: &[u8],
    message: &Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    let (message, kind) = task::message_type(py, asgi, message)?;
    let mut ex = task::exclusive(shared)?;
    if ex.disconnected {
        return Err(task::disconnected(py, asgi));
    }
    match &*kind {
        "http.response.start" => {
            if ex.start.is_some() {
                return Err(runtime_error(
                    "Unexpected ASGI message 'http.response.start' sent, after response already started".into(),
                ));
            }
            let status: u16 = message
                .get_item(asgi.keys.status.bind(py))?
                .ok_or_else(|| pyo3::exceptions::PyKeyError::new_err("status"))?
                .extract()?;
            // A 1xx is interim: it cannot be the response (RFC 9110 15.2).
            if !(200..=999).contains(&status) {
                return Err(runtime_error(format!("invalid status {status}")));
            }
            let mut lines = Vec::new();
            let mut length = None;
            if let Some(headers) = message.get_item(asgi.keys.headers.bind(py))? {
                for item in headers.try_iter()? {
                    let (name, value) = task::header_pair(&item?)?;
                    let (mut name_copy, mut value_copy) = (Vec::new(), Vec::new());
                    let name = task::bytes_like(&name, &mut name_copy, "a header name")?;
                    let value = task::bytes_like(&value, &mut value_copy, "a header value")?;
                    check_header(name, value)?;
                    if ex.record_headers {
                        ex.recorded_headers
                            .push((name.to_ascii_lowercase(), value.to_vec()));
                    }
                    if name.eq_ignore_ascii_case(b"content-length") {
                        let v = crate::http::parse::trim(value);
                        length = Some(parse_length(v).ok_or_else(|| {
                            runtime_error(format!(
                                "invalid Content-Length {:?}",
                                String::from_utf8_lossy(value)
                            ))
                        })?);
                        continue;
                    }
                    if name.eq_ignore_ascii_case(b"connection") {
                        if value
                            .split(|&b| b == b',')
                            .any(|t| crate::http::parse::trim(t).eq_ignore_ascii_case(b"close"))
                        {
                            ex.framer.keep_alive = false;
                        }
                        continue;
                    }
                    if name.eq_ignore_ascii_case(b"transfer-encoding") {
                        // turbo frames the body itself.
                        continue;
                    }
                    encode::header(&mut lines, name, value);
                }
            }
            ex.start = Some((status, lines, length));
            Ok(asgi.done.clone_ref(py))
        }
        "http.response.body" => {
            if ex.start.is_none() {
                return Err(runtime_error(
                    "Unexpected ASGI message 'http.response.body' sent, before 'http.response.start'".into(),
                ));
            }
            if ex.complete {
                return Err(runtime_error(
                    "Unexpected ASGI message 'http.response.body' sent, after response already completed".into(),
                ));
            }
            let body_obj = message.get_item(asgi.keys.body.bind(py))?;
            let more: bool = match message.get_item(asgi.keys.more_body.bind(py))? {
                Some(m) => m.is_truthy()?,
                None => false,
            };
            let mut copy = Vec::new();
            let body: &[u8] = match &body_obj {
                None => b"",
                Some(b) => task::bytes_like(b, &mut copy, "body")?,
            };
            if !ex.framer.head_sent() {
                write_head(&mut ex, date, (!more).then_some(body.len() as u64));
            }
            let lend = body_obj
                .as_ref()
                .and_then(|b| b.cast::<PyBytes>().ok())
                .map(|b| move |len| LentBytes::new(b, len));
            let ex = &mut *ex;
            ex.framer.body(&mut ex.out, &mut ex.lent, body, lend);
            if !more {
                ex.complete = true;
                ex.framer.end(&mut ex.out);
            }
            ex.wake();
            if ex.out.len() + ex.lent.len() > HIGH_WATER {
                let waiter = asgi.create_future.call0(py)?;
                ex.flush_waiter = Some(waiter.clone_ref(py));
                return Ok(waiter);
            }
            Ok(asgi.done.clone_ref(py))
        }
        "http.response.pathsend" => {
            if ex.start.is_none() || ex.framer.head_sent() {
                return Err(runtime_error(
                    "Unexpected ASGI message 'http.response.pathsend' sent, outside a response's start".into(),
                ));
            }
            let path: std::path::PathBuf = message
                .get_item("path")?
                .ok_or_else(|| pyo3::exceptions::PyKeyError::new_err("path"))?
                .extract()?;
            let file = std::fs::File::open(&path)?;
            let size = file.metadata()?;
            if !size.is_file() {
                return Err(runtime_error(format!(
                    "http.response.pathsend: {} is not a regular file",
                    path.display()
                )));
            }
            write_head(&mut ex, date, Some(size.len()));
            let ex = &mut *ex;
            ex.file = ex.framer.file(FileSpan::new(file, 0, size.len()));
            ex.framer.end(&mut ex.out);
            ex.complete = true;
            ex.wake();
            Ok(asgi.done.clone_ref(py))
        }
        other => Err(runtime_error(format!(
            "Unexpected ASGI message '{other}' sent for an HTTP request"
        ))),
    }
}

/// Encodes the head from `http.response.start`. `known` is the body's length
/// when the app's first body message is also its last (or a file's size).
fn write_head(ex: &mut Exchange, date: &[u8], known: Option<u64>) {
    let (status, lines, length) = ex.start.take().unwrap_or_default();
    let mut code = itoa::Buffer::new();
    let mut status_text = code.format(status).as_bytes().to_vec();
    status_text.push(b' ');
    status_text.extend_from_slice(reason(status).as_bytes());
    encode::status_line(&mut ex.out, ex.framer.meta().minor, &status_text);
    ex.out.extend_from_slice(&lines);
    ex.framer
        .finish_head(&mut ex.out, status, length.or(known), Some(date), true);
    ex.start = Some((status, Vec::new(), length));
}

fn parse_length(v: &[u8]) -> Option<u64> {
    (!v.is_empty() && v.len() <= 18 && v.iter().all(u8::is_ascii_digit))
        .then(|| v.iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0')))
}

pub(super) fn check_header(name: &[u8], value: &[u8]) -> PyResult<()> {
    let token = !name.is_empty()
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        return Err(runtime_error(format!(
            "invalid header name {:?}",
            String::from_utf8_lossy(name)
        )));
    }
    if value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(runtime_error(format!(
            "header value {:?} contains CR, LF or NUL",
            String::from_utf8_lossy(value)
        )));
    }
    Ok(())
}

/// The request as the connection hands it over.
pub struct Request<'a> {
    pub head: &'a RequestHead,
    pub meta: Meta,
    pub date: Vec<u8>,
    pub access_log: Option<&'a AccessLog>,
    /// The client's address, for the access log.
    pub remote: &'a str,
    /// A trusted proxy says the client used https.
    pub https: bool,
    /// pathsend files go out by sendfile(2).
    pub sendfile: bool,
    /// Large bodies go out by send_zc on this connection.
    pub zerocopy: bool,
    /// pre_request and post_request, with the client as `req.peer_addr`.
    pub hooks: Option<(&'a RequestHooks, Option<&'a Py<PyAny>>)>,
    /// `limit_request_body`: a chunked body cut off where it passes it.
    pub body_limit: Option<u64>,
}

/// Runs one request through the app. `rbuf` holds the head and whatever
/// followed it; on return it holds what follows the request. Returns whether
/// the connection may carry another request, or None if it must close now.
pub async fn respond(
    asgi: &Asgi,
    stream: &Stream,
    rbuf: &mut Vec<u8>,
    out: &mut Vec<u8>,
    peers: &Peers,
    req: Request<'_>,
    header_timeout: Duration,
) -> Option<bool> {
    let hooked = match req.hooks {
        Some((hooks, peer)) => {
            match Python::attach(|py| hooks.begin(py, rbuf, req.head, req.https, peer)) {
                Ok(obj) => Some((hooks, obj)),
                Err(()) => {
                    if let Some(log) = req.access_log {
                        let request = access_log::Request::capture(rbuf, req.head, true);
                        let outcome = Outcome {
                            status: 500,
                            ..Outcome::default()
                        };
                        log.log(req.remote, &request, &outcome);
                    }
                    encode::error_response(
                        out,
                        HttpError::new(500, "pre_request failed"),
                        &req.date,
                    );
                    return Some(false);
                }
            }
        }
        None => None,
    };
    let link = Rc::new(Link::default());
    let post = hooked.as_ref().is_some_and(|(h, _)| h.post);
    let shared: Shared = Rc::new(RefCell::new(Exchange {
        framer: Framer::new(req.meta),
        record_headers: req
            .access_log
            .is_some_and(|l| l.format.wants_response_headers)
            || post,
        keep_scope: post,
        link: link.clone(),
        ..Exchange::default()
    }));
    // The access log's copy of the request is taken before its head is dropped.
    let logged = req.access_log.map(|log| {
        (
            log,
            access_log::Request::capture(rbuf, req.head, true),
            req.remote,
        )
    });
    let keep_alive = exchange(
        asgi,
        stream,
        rbuf,
        out,
        peers,
        req,
        header_timeout,
        &shared,
        &link,
    )
    .await;
    if logged.is_none() && hooked.is_none() {
        return keep_alive;
    }
    let (outcome, scope) = {
        let mut ex = shared.borrow_mut();
        let outcome = Outcome {
            status: ex.framer.status,
            sent: ex.framer.head_sent().then_some(ex.framer.sent),
            headers: std::mem::take(&mut ex.recorded_headers),
        };
        (outcome, ex.scope.take())
    };
    if let Some((hooks, obj)) = hooked {
        Python::attach(|py| hooks.finish(py, obj, scope, &outcome));
    }
    if let Some((log, request, remote)) = logged {
        log.log(remote, &request, &outcome);
    }
    keep_alive
}

/// The request's life after the access log's part: see `respond`.
#[allow(clippy::too_many_arguments)]
async fn exchange(
    asgi: &Asgi,
    stream: &Stream,
    rbuf: &mut Vec<u8>,
    out: &mut Vec<u8>,
    peers: &Peers,
    req: Request<'_>,
    header_timeout: Duration,
    shared: &Shared,
    link: &Rc<Link>,
) -> Option<bool> {
    let head = req.head;
    let mut decoder = Decoder::new(head.body).limited(req.body_limit);
    let scope = Python::attach(|py| {
        scope(py, asgi, rbuf, head, peers, false, req.https).map(Bound::unbind)
    });
    rbuf.drain(..head.len);
    let scope = match scope {
        Ok(scope) => scope,
        Err(err) => {
            encode::error_response(out, err, &req.date);
            return Some(false);
        }
    };
    {
        let mut ex = shared.borrow_mut();
        if ex.keep_scope {
            ex.scope = Some(Python::attach(|py| scope.clone_ref(py).into_any()));
        }
    }
    // The body already here goes in first: the app may run (eagerly) as soon
    // as its task exists.
    {
        let mut ex = shared.borrow_mut();
        let used = match decoder.decode_into(rbuf, &mut ex.pending) {
            Ok(used) => used,
            Err(err) => {
                drop(ex);
                encode::error_response(out, err, &req.date);
                return Some(false);
            }
        };
        rbuf.drain(..used);
        ex.request_complete = decoder.is_done();
        ex.expects_continue = head.expect_continue && !ex.request_complete && rbuf.is_empty();
    }
    let started = Python::attach(|py| {
        let (for_receive, for_send) = (shared.clone(), shared.clone());
        let date = req.date.clone();
        task::start(
            py,
            asgi,
            scope.into_bound(py),
            link,
            move |py, asgi| receive(py, asgi, &for_receive),
            move |py, asgi, message| send(py, asgi, &for_send, &date, message),
        )
    });
    if started.is_err() {
        encode::error_response(
            out,
            HttpError::new(500, "the application could not be started"),
            &req.date,
        );
        return Some(false);
    }

    // The body read buffer, made on the first read (most requests have none).
    let mut scratch = Vec::new();
    let mut reading: Option<LocalBoxFuture<'static, BufResult<usize, Vec<u8>>>> = None;
    let mut watching: Option<LocalBoxFuture<'static, ()>> = None;
    // The next request's bytes have arrived; the socket need not be watched.
    let mut input_waiting = false;
    let mut read_deadline: Option<Instant> = None;
    loop {
        // Write what the app sent.
        let (mut pending_out, mut pending_lent, flushed_waiter) = {
            let mut ex = shared.borrow_mut();
            let lent = std::mem::take(&mut ex.lent);
            (std::mem::take(&mut ex.out), lent, ex.flush_waiter.take())
        };
        if !pending_out.is_empty() || !pending_lent.is_empty() {
            let mut lent = Lent::default();
            lent.append(&mut pending_lent, out.len());
            task::gather(out, &mut pending_out);
            shared.borrow_mut().out = pending_out;
            if !stream.write_spliced(out, &mut lent, req.zerocopy).await {
                shared.borrow_mut().disconnected = true;
                Python::attach(|py| answer_receive(py, asgi, shared));
                task::release(asgi, flushed_waiter);
                return client_gone(asgi);
            }
        }
        task::release(asgi, flushed_waiter);
        let file = shared.borrow_mut().file.take();
        if let Some(file) = file
            && !file.send(stream, out, req.sendfile).await
        {
            shared.borrow_mut().disconnected = true;
            return client_gone(asgi);
        }
        let ended = link.ended();
        let (complete, head_sent, keep_alive, want_body, request_complete, disconnected) = {
            let ex = shared.borrow();
            (
                ex.complete,
                ex.framer.head_sent(),
                ex.framer.keep_alive,
                ex.receive_waiter.is_some(),
                ex.request_complete,
                ex.disconnected,
            )
        };
        if let Some(failed) = ended.filter(|_| shared.borrow().out.is_empty()) {
            if complete {
                // The rest of the body must be read (or the connection closed)
                // before another request can follow.
                return Some(keep_alive && request_complete && !disconnected);
            }
            if disconnected {
                return None;
            }
            if !head_sent {
                if !failed {
                    log::error!("The application returned without sending a response");
                }
                encode::error_response(
                    out,
                    HttpError::new(500, "the application failed"),
                    &req.date,
                );
                return Some(false);
            }
            // The head went out: close, so the client sees a truncated response.
            return None;
        }
        // Answer Expect: 100-continue when the app first asks for the body.
        if want_body && shared.borrow().expects_continue {
            shared.borrow_mut().expects_continue = false;
            out.extend_from_slice(encode::CONTINUE);
            if !stream.write_out(out).await {
                shared.borrow_mut().disconnected = true;
                continue;
            }
        }
        // Read when the app waits for body bytes. Otherwise watch the socket
        // for the client leaving: a readiness poll, which (unlike a read) can
        // be dropped without losing a pipelined request's bytes.
        if !disconnected && !request_complete && want_body && reading.is_none() {
            let mut buf = std::mem::take(&mut scratch);
            buf.clear();
            // Room for what is left of the body, within bounds: each read is
            // a trip through the app's receive(), so fewer, larger ones pay.
            let left = decoder.remaining_length().unwrap_or(BODY_READ_MAX as u64);
            buf.reserve((left as usize).clamp(BODY_READ_MIN, BODY_READ_MAX));
            // The read owns a handle to the socket, so it stays in flight
            // across writes.
            let mut reader = stream.clone();
            reading = Some(Box::pin(async move { reader.read(buf).await }));
            read_deadline = Some(Instant::now() + header_timeout);
        }
        if !disconnected && request_complete && !input_waiting && watching.is_none() {
            let fd = Watched(stream.as_raw_fd());
            watching = Some(Box::pin(async move {
                let _ = compio::runtime::submit(PollOnce::new(fd, Interest::Readable)).await;
            }));
        }
        let mut changed = std::pin::pin!(link.changed());
        let body_read = reading.is_some();
        let event = std::future::poll_fn(|cx| {
            if changed.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Changed);
            }
            if let Some(read) = reading.as_mut()
                && let Poll::Ready(done) = read.as_mut().poll(cx)
            {
                return Poll::Ready(Event::Read(Some(done)));
            }
            if let Some(watch) = watching.as_mut()
                && watch.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Event::Readable);
            }
            Poll::Pending
        });
        let event = match (body_read, read_deadline) {
            (true, Some(deadline)) => match compio::time::timeout_at(deadline, event).await {
                Ok(event) => event,
                Err(_) => Event::Read(None),
            },
            _ => event.await,
        };
        let outcome = match event {
            Event::Changed => continue,
            Event::Readable => {
                watching = None;
                match stream.peek() {
                    Peek::Data => input_waiting = true,
                    Peek::Nothing => {}
                    Peek::Closed => {
                        shared.borrow_mut().disconnected = true;
                        Python::attach(|py| answer_receive(py, asgi, shared));
                    }
                }
                continue;
            }
            Event::Read(outcome) => outcome,
        };
        reading = None;
        let BufResult(res, buf) = match outcome {
            Some(done) => done,
            None => {
                // The client stalled in the middle of its body.
                shared.borrow_mut().disconnected = true;
                Python::attach(|py| answer_receive(py, asgi, shared));
                return client_gone(asgi);
            }
        };
        match res {
            Ok(n) if n > 0 => {
                rbuf.extend_from_slice(&buf[..n]);
                if !request_complete {
                    let mut ex = shared.borrow_mut();
                    let mut pending = std::mem::take(&mut ex.pending);
                    let decoded = decoder.decode_into(rbuf, &mut pending);
                    ex.pending = pending;
                    match decoded {
                        Ok(used) => {
                            rbuf.drain(..used);
                            ex.request_complete = decoder.is_done();
                        }
                        Err(err) => {
                            drop(ex);
                            log::debug!("Bad request body: {}", err.detail);
                            shared.borrow_mut().disconnected = true;
                            Python::attach(|py| answer_receive(py, asgi, shared));
                            return client_gone(asgi);
                        }
                    }
                }
                scratch = buf;
            }
            _ => {
                // EOF or an error: the client is gone.
                shared.borrow_mut().disconnected = true;
            }
        }
        Python::attach(|py| answer_receive(py, asgi, shared));
    }
}

enum Event {
    /// The app called receive or send, or its task ended.
    Changed,
    /// A body read finished; None when the client stalled past the timeout.
    Read(Option<BufResult<usize, Vec<u8>>>),
    /// The socket became readable while the app ran.
    Readable,
}

/// The client is gone: the connection closes now, while the app runs on to
/// its end (its sends raise ClientDisconnected).
pub(super) fn client_gone(asgi: &Asgi) -> Option<bool> {
    asgi.reactor.wake_python();
    None
}
