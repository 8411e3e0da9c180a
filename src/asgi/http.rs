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
use std::rc::Rc;
use std::task::Poll;

use futures_util::future::LocalBoxFuture;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use super::Asgi;
use super::task::{self, Link};
use crate::access_log::Outcome;
use crate::http::conn::{self, BodyRead};
use crate::http::encode;
use crate::http::output::{Framer, Lent};
use crate::http::parse::RequestHead;
use crate::http::sendfile::FileSpan;
use crate::http::stream::{Endpoints, Peek};
use crate::http::target::{percent_decode, split_target};
use crate::http::tls::{Facts, Tls};
use crate::http::{HttpError, reason};
use crate::observe::{Done, Observers};
use crate::python::Held;
use crate::python::lent::LentBytes;

/// send() makes the app wait once this much output is queued.
const HIGH_WATER: usize = 64 * 1024;
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
/// Runs one request through the app, with the access log and the request
/// hooks around it. Returns whether the connection may carry another
/// request, or None if it must close now.
pub async fn respond(
    asgi: &Asgi,
    observers: &Observers,
    mut ex: conn::Exchange<'_>,
    peers: &Peers,
    hook_peer: Option<&Held<PyAny>>,
) -> Option<bool> {
    let Ok(observed) = observers.begin(&mut ex, hook_peer, true) else {
        return Some(false);
    };
    let link = Rc::new(Link::default());
    let shared: Shared = Rc::new(RefCell::new(Exchange {
        framer: Framer::new(ex.meta()),
        record_headers: observers.wants_headers(),
        keep_scope: observers.keeps_environ(),
        link: link.clone(),
        ..Exchange::default()
    }));
    let keep_alive = exchange(asgi, &mut ex, peers, &shared, &link).await;
    if observed.is_none() {
        return keep_alive;
    }
    let done = {
        let mut state = shared.borrow_mut();
        let outcome = Outcome {
            status: state.framer.status,
            sent: state.framer.head_sent().then_some(state.framer.sent),
            headers: std::mem::take(&mut state.recorded_headers),
        };
        Done {
            outcome,
            environ: state.scope.take().map(Held::new),
        }
    };
    observers.finish(observed, ex.remote(), done);
    keep_alive
}

/// The request's life inside `respond`.
async fn exchange(
    asgi: &Asgi,
    ex: &mut conn::Exchange<'_>,
    peers: &Peers,
    shared: &Shared,
    link: &Rc<Link>,
) -> Option<bool> {
    let date = ex.date();
    // The app may run eagerly from here, perhaps computing for long.
    crate::runtime::enter_app();
    let scope = Python::attach(|py| {
        scope(py, asgi, ex.buf(), ex.head(), peers, false, ex.https()).map(Bound::unbind)
    });
    ex.end_head();
    let scope = match scope {
        Ok(scope) => scope,
        Err(err) => {
            ex.refuse(err);
            return Some(false);
        }
    };
    {
        let mut state = shared.borrow_mut();
        if state.keep_scope {
            state.scope = Some(Python::attach(|py| scope.clone_ref(py).into_any()));
        }
    }
    // The body already here goes in first: the app may run (eagerly) as soon
    // as its task exists.
    let mut body = ex.body_reader();
    {
        let mut state = shared.borrow_mut();
        if let Err(err) = body.decode(ex, &mut state.pending) {
            drop(state);
            ex.refuse(err);
            return Some(false);
        }
        state.request_complete = body.is_done();
        state.expects_continue =
            ex.head().expect_continue && !state.request_complete && ex.buf().is_empty();
    }
    let started = Python::attach(|py| {
        let (for_receive, for_send) = (shared.clone(), shared.clone());
        let date = date.clone();
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
        ex.error(HttpError::new(500, "the application could not be started"));
        return Some(false);
    }

    let mut watching: Option<LocalBoxFuture<'static, ()>> = None;
    // The next request's bytes have arrived; the socket need not be watched.
    let mut input_waiting = false;
    loop {
        // Write what the app sent.
        let (mut pending_out, mut pending_lent, flushed_waiter) = {
            let mut state = shared.borrow_mut();
            let lent = std::mem::take(&mut state.lent);
            (
                std::mem::take(&mut state.out),
                lent,
                state.flush_waiter.take(),
            )
        };
        if !pending_out.is_empty() || !pending_lent.is_empty() {
            let last = {
                let state = shared.borrow();
                state.complete.then_some(
                    state.framer.keep_alive && state.request_complete && !state.disconnected,
                )
            };
            if let Some(keep_alive) = last {
                ex.last_bytes(keep_alive);
            }
            let (out, lent) = ex.output();
            lent.append(&mut pending_lent, out.len());
            task::gather(out, &mut pending_out);
            shared.borrow_mut().out = pending_out;
            crate::runtime::response_queued();
            if !ex.flush().await {
                shared.borrow_mut().disconnected = true;
                Python::attach(|py| answer_receive(py, asgi, shared));
                task::release(asgi, flushed_waiter);
                return client_gone(asgi);
            }
        }
        task::release(asgi, flushed_waiter);
        let file = shared.borrow_mut().file.take();
        if let Some(file) = file
            && !ex.send_file(file).await
        {
            shared.borrow_mut().disconnected = true;
            return client_gone(asgi);
        }
        let ended = link.ended();
        let (complete, head_sent, keep_alive, want_body, request_complete, disconnected) = {
            let state = shared.borrow();
            (
                state.complete,
                state.framer.head_sent(),
                state.framer.keep_alive,
                state.receive_waiter.is_some(),
                state.request_complete,
                state.disconnected,
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
                ex.error(HttpError::new(500, "the application failed"));
                return Some(false);
            }
            // The head went out: close, so the client sees a truncated response.
            return None;
        }
        // Answer Expect: 100-continue when the app first asks for the body.
        if want_body && shared.borrow().expects_continue {
            shared.borrow_mut().expects_continue = false;
            if !ex.send_continue().await {
                shared.borrow_mut().disconnected = true;
                continue;
            }
        }
        // Read when the app waits for body bytes. Otherwise watch the socket
        // for the client leaving: a readiness poll, which (unlike a read) can
        // be dropped without losing a pipelined request's bytes.
        if !disconnected && !request_complete && want_body {
            body.start();
        }
        if !disconnected && request_complete && !input_waiting && watching.is_none() {
            watching = Some(ex.readable());
        }
        let mut changed = std::pin::pin!(link.changed());
        let event = std::future::poll_fn(|cx| {
            if changed.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Changed);
            }
            if body.is_reading() {
                let mut state = shared.borrow_mut();
                let mut pending = std::mem::take(&mut state.pending);
                let read = body.poll_read(cx, ex, &mut pending);
                state.pending = pending;
                if let Poll::Ready(read) = read {
                    return Poll::Ready(Event::Read(read));
                }
            }
            if let Some(watch) = watching.as_mut()
                && watch.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Event::Readable);
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Changed => continue,
            Event::Readable => {
                watching = None;
                match ex.peek() {
                    Peek::Data => input_waiting = true,
                    Peek::Nothing => {}
                    Peek::Closed => {
                        shared.borrow_mut().disconnected = true;
                        Python::attach(|py| answer_receive(py, asgi, shared));
                    }
                }
            }
            Event::Read(BodyRead::Data) => {
                shared.borrow_mut().request_complete = body.is_done();
                Python::attach(|py| answer_receive(py, asgi, shared));
            }
            Event::Read(BodyRead::Closed) => {
                shared.borrow_mut().disconnected = true;
                Python::attach(|py| answer_receive(py, asgi, shared));
            }
            Event::Read(gone) => {
                // The client stalled in the middle of its body, or framed it
                // badly or past the limit: the app hears the disconnect, and
                // the client hears why if no response has begun.
                shared.borrow_mut().disconnected = true;
                Python::attach(|py| answer_receive(py, asgi, shared));
                if let BodyRead::Refused(err) = gone {
                    log::debug!("Refusing a request body: {} {}", err.status, err.detail);
                    if !shared.borrow().framer.head_sent() {
                        ex.refuse(err);
                        client_gone(asgi);
                        return Some(false);
                    }
                }
                return client_gone(asgi);
            }
        }
    }
}

enum Event {
    /// The app called receive or send, or its task ended.
    Changed,
    /// A body read finished.
    Read(BodyRead),
    /// The socket became readable while the app ran.
    Readable,
}

/// The client is gone: the connection closes now, while the app runs on to
/// its end (its sends raise ClientDisconnected).
pub(super) fn client_gone(asgi: &Asgi) -> Option<bool> {
    asgi.reactor.wake_python();
    None
}
