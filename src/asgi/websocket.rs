//! One WebSocket connection through an ASGI app (the ASGI WebSocket spec):
//! the handshake answered by `websocket.accept`, messages both ways, pings
//! answered by the server, close codes both ways, `--ws-max-size`, and the
//! `websocket.http.response` extension for denying with a plain response.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use compio::buf::BufResult;
use compio::io::AsyncRead;
use futures_util::future::LocalBoxFuture;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use super::Asgi;
use super::http::{Peers, check_header, client_gone, runtime_error, scope};
use super::task::{self, Link};
use crate::http::conn::Exchange;
use crate::http::encode;
use crate::http::parse::RequestHead;
use crate::http::reason;
use crate::http::stream::Stream;
use crate::http::websocket::{self as ws, Incoming};
use crate::metrics::{Meters, WebSocketOpen};
use crate::observe::Meter;

/// Messages the client sent that the app has not received yet, and their
/// bytes, beyond which reading stops until it catches up: a connection holds
/// at most QUEUE_BYTES plus one message (`ws_max_size`) of them.
const QUEUE_LIMIT: usize = 64;
const QUEUE_BYTES: usize = 1 << 20;
/// send() makes the app wait once this much output is queued.
const HIGH_WATER: usize = 64 * 1024;
/// How long a closing connection waits for the client's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Whether a request asks to open a WebSocket.
/// A GET whose Upgrade names websocket and whose Connection says upgrade
/// (RFC 6455 4.1); anything else is an ordinary HTTP request.
pub fn is_upgrade(buf: &[u8], head: &RequestHead) -> bool {
    let field = |name: &[u8], token: &[u8]| {
        head.headers.iter().any(|(n, v)| {
            buf[n.clone()].eq_ignore_ascii_case(name)
                && buf[v.clone()]
                    .split(|&b| b == b',')
                    .any(|t| crate::http::parse::trim(t).eq_ignore_ascii_case(token))
        })
    };
    &buf[head.method.clone()] == b"GET"
        && field(b"upgrade", b"websocket")
        && field(b"connection", b"upgrade")
}

fn header<'a>(buf: &'a [u8], head: &RequestHead, name: &[u8]) -> Option<&'a [u8]> {
    head.headers
        .iter()
        .find(|(n, _)| buf[n.clone()].eq_ignore_ascii_case(name))
        .map(|(_, v)| crate::http::parse::trim(&buf[v.clone()]))
}

enum In {
    Connect,
    Text(String),
    Bytes(Vec<u8>),
    Disconnect(u16, String),
}

impl In {
    fn size(&self) -> usize {
        match self {
            In::Text(t) => t.len(),
            In::Bytes(b) => b.len(),
            In::Connect | In::Disconnect(..) => 0,
        }
    }
}

impl Session {
    fn push(&mut self, msg: In) {
        self.incoming_bytes += msg.size();
        self.incoming.push_back(msg);
    }

    fn pop(&mut self) -> Option<In> {
        let msg = self.incoming.pop_front()?;
        self.incoming_bytes -= msg.size();
        Some(msg)
    }

    /// Whether the app is far enough behind that reading waits.
    fn backlogged(&self) -> bool {
        self.incoming.len() >= QUEUE_LIMIT || self.incoming_bytes >= QUEUE_BYTES
    }
}

#[derive(PartialEq, Eq, Clone, Copy, Default)]
enum Phase {
    /// Waiting for the app to accept, close or deny.
    #[default]
    Handshake,
    Open,
    /// The app is sending an HTTP response instead (the extension).
    Denying,
    /// Nothing more may be sent.
    Done,
}

#[derive(Default)]
struct Session {
    phase: Phase,
    incoming: VecDeque<In>,
    /// The bytes of the messages in `incoming`.
    incoming_bytes: usize,
    receive_waiter: Option<Py<PyAny>>,
    out: Vec<u8>,
    close_sent: bool,
    /// The client is gone or the closing handshake is over.
    disconnected: bool,
    /// The app has been handed `websocket.disconnect`: the client is gone,
    /// or the server is going away.
    told_disconnect: bool,
    /// The future a `send()` awaits while output drains.
    flush_waiter: Option<Py<PyAny>>,
    /// A denial response: status, header lines, body so far.
    denial: Option<(u16, Vec<u8>, Vec<u8>)>,
    link: Rc<Link>,
}

impl Session {
    fn wake(&self) {
        self.link.wake();
    }
}

type Shared = Rc<RefCell<Session>>;

fn message<'py>(py: Python<'py>, asgi: &Asgi, msg: In) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let k = &asgi.keys;
    let type_ = k.type_.bind(py);
    match msg {
        In::Connect => d.set_item(type_, "websocket.connect")?,
        In::Text(text) => {
            d.set_item(type_, k.websocket_receive.bind(py))?;
            d.set_item(k.text.bind(py), text)?;
            d.set_item(k.bytes.bind(py), py.None())?;
        }
        In::Bytes(data) => {
            d.set_item(type_, k.websocket_receive.bind(py))?;
            d.set_item(k.bytes.bind(py), PyBytes::new(py, &data))?;
            d.set_item(k.text.bind(py), py.None())?;
        }
        In::Disconnect(code, reason) => {
            d.set_item(type_, "websocket.disconnect")?;
            d.set_item("code", code)?;
            d.set_item("reason", reason)?;
        }
    }
    Ok(d)
}

fn receive(py: Python<'_>, asgi: &Asgi, shared: &Shared) -> PyResult<Py<PyAny>> {
    let mut s = task::exclusive(shared)?;
    let fut = asgi.create_future.call0(py)?;
    if let Some(msg) = s.pop() {
        s.wake();
        fut.call_method1(
            py,
            asgi.keys.set_result.bind(py),
            (message(py, asgi, msg)?,),
        )?;
        return Ok(fut);
    }
    task::check_receive(py, asgi, &s.receive_waiter)?;
    s.receive_waiter = Some(fut.clone_ref(py));
    Ok(fut)
}

fn answer_receive(py: Python<'_>, asgi: &Asgi, shared: &Shared) {
    let waiter = {
        let mut s = shared.borrow_mut();
        if s.incoming.is_empty() {
            return;
        }
        s.receive_waiter.take()
    };
    // A receive() the app gave up on gets nothing: the message waits for the
    // next one.
    let Some(waiter) = waiter.filter(|w| !task::is_done(py, asgi, w)) else {
        return;
    };
    let Some(msg) = shared.borrow_mut().pop() else {
        return;
    };
    if let Ok(msg) = message(py, asgi, msg) {
        let _ = waiter.call_method1(py, asgi.keys.set_result.bind(py), (msg,));
    }
    asgi.reactor.wake_python();
}

fn headers_from(message: &Bound<'_, PyDict>, out: &mut Vec<u8>) -> PyResult<()> {
    if let Some(headers) = message.get_item("headers")? {
        for item in headers.try_iter()? {
            let (name, value) = task::header_pair(&item?)?;
            let (mut name_copy, mut value_copy) = (Vec::new(), Vec::new());
            let name = task::bytes_like(&name, &mut name_copy, "a header name")?;
            let value = task::bytes_like(&value, &mut value_copy, "a header value")?;
            check_header(name, value)?;
            encode::header(out, name, value);
        }
    }
    Ok(())
}

struct Handshake {
    accept_key: String,
    offered: Vec<String>,
    date: Vec<u8>,
}

fn send(
    py: Python<'_>,
    asgi: &Asgi,
    shared: &Shared,
    hs: &Handshake,
    message: &Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    let (message, kind) = task::message_type(py, asgi, message)?;
    let mut s = task::exclusive(shared)?;
    if s.disconnected || s.told_disconnect {
        return Err(task::disconnected(py, asgi));
    }
    let unexpected = || runtime_error(format!("Unexpected ASGI message '{kind}' sent"));
    match (&*kind, s.phase) {
        ("websocket.accept", Phase::Handshake) => {
            let mut out = std::mem::take(&mut s.out);
            out.extend_from_slice(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
            );
            encode::header(&mut out, b"Sec-WebSocket-Accept", hs.accept_key.as_bytes());
            if let Some(proto) = message.get_item("subprotocol")?.filter(|p| !p.is_none()) {
                let proto: String = proto.extract()?;
                if !hs.offered.contains(&proto) {
                    return Err(runtime_error(format!(
                        "subprotocol {proto:?} was not offered by the client"
                    )));
                }
                encode::header(&mut out, b"Sec-WebSocket-Protocol", proto.as_bytes());
            }
            headers_from(&message, &mut out)?;
            out.extend_from_slice(b"\r\n");
            s.out = out;
            s.phase = Phase::Open;
        }
        ("websocket.send", Phase::Open) if !s.close_sent => {
            let text = message
                .get_item(asgi.keys.text.bind(py))?
                .filter(|t| !t.is_none());
            let bytes = message
                .get_item(asgi.keys.bytes.bind(py))?
                .filter(|b| !b.is_none());
            match (text, bytes) {
                (Some(text), None) => {
                    let text = text
                        .cast::<pyo3::types::PyString>()
                        .map_err(|_| pyo3::exceptions::PyTypeError::new_err("text must be str"))?;
                    ws::frame(&mut s.out, ws::OP_TEXT, text.to_str()?.as_bytes());
                }
                (None, Some(bytes)) => {
                    let mut copy = Vec::new();
                    ws::frame(
                        &mut s.out,
                        ws::OP_BINARY,
                        task::bytes_like(&bytes, &mut copy, "bytes")?,
                    );
                }
                _ => {
                    return Err(runtime_error(
                        "websocket.send needs exactly one of 'text' and 'bytes'".into(),
                    ));
                }
            }
        }
        ("websocket.close", Phase::Handshake) => {
            // A close before accept refuses the handshake with 403.
            let mut out = std::mem::take(&mut s.out);
            encode::error_response(
                &mut out,
                crate::http::HttpError::new(403, "the application refused the WebSocket"),
                &hs.date,
            );
            s.out = out;
            s.phase = Phase::Done;
        }
        ("websocket.close", Phase::Open) if !s.close_sent => {
            let code: u16 = match message.get_item("code")? {
                Some(c) if !c.is_none() => c.extract()?,
                _ => ws::CLOSE_NORMAL,
            };
            let reason: String = match message.get_item("reason")? {
                Some(r) if !r.is_none() => r.extract()?,
                _ => String::new(),
            };
            ws::close_frame(&mut s.out, code, &reason);
            s.close_sent = true;
        }
        ("websocket.http.response.start", Phase::Handshake) => {
            let status: u16 = message
                .get_item("status")?
                .ok_or_else(|| pyo3::exceptions::PyKeyError::new_err("status"))?
                .extract()?;
            let mut lines = Vec::new();
            headers_from(&message, &mut lines)?;
            s.denial = Some((status, lines, Vec::new()));
            s.phase = Phase::Denying;
        }
        ("websocket.http.response.body", Phase::Denying) => {
            let mut copy = Vec::new();
            let body = match message.get_item("body")? {
                Some(b) => task::bytes_like(&b, &mut copy, "body")?.to_vec(),
                None => Vec::new(),
            };
            let more = match message.get_item("more_body")? {
                Some(m) => m.is_truthy()?,
                None => false,
            };
            let Some((status, lines, mut so_far)) = s.denial.take() else {
                return Err(unexpected());
            };
            so_far.extend_from_slice(&body);
            if more {
                s.denial = Some((status, lines, so_far));
            } else {
                let mut out = std::mem::take(&mut s.out);
                let text = format!("{status} {}", reason(status));
                encode::status_line(&mut out, 1, text.as_bytes());
                out.extend_from_slice(&lines);
                let framing = encode::Framing::Length(so_far.len() as u64);
                encode::finish_head(&mut out, framing, false, 1, Some(&hs.date), true);
                out.extend_from_slice(&so_far);
                s.out = out;
                s.phase = Phase::Done;
            }
        }
        _ => return Err(unexpected()),
    }
    s.wake();
    if s.out.len() > HIGH_WATER {
        // A slow client holds the app back instead of filling memory.
        let waiter = asgi.create_future.call0(py)?;
        s.flush_waiter = Some(waiter.clone_ref(py));
        return Ok(waiter);
    }
    Ok(asgi.done.clone_ref(py))
}

/// Runs a WebSocket connection to its end; the connection then closes.
pub async fn serve(
    asgi: &Asgi,
    mut ex: Exchange<'_>,
    peers: &Peers,
    meter: Option<&Meter>,
) -> Option<bool> {
    let date = ex.date();
    let (rbuf, head) = (ex.buf(), ex.head());
    let key = header(rbuf, head, b"sec-websocket-key").map(<[u8]>::to_vec);
    let version_ok = header(rbuf, head, b"sec-websocket-version") == Some(b"13");
    let Some(key) = key.filter(|k| !k.is_empty() && version_ok) else {
        ex.refuse(crate::http::HttpError::bad_request(
            "bad WebSocket handshake",
        ));
        return Some(false);
    };
    let scope = Python::attach(|py| {
        scope(py, asgi, rbuf, head, peers, true, ex.https()).map(Bound::unbind)
    });
    let offered: Vec<String> = header(rbuf, head, b"sec-websocket-protocol")
        .map(|v| {
            v.split(|&b| b == b',')
                .map(|p| String::from_utf8_lossy(crate::http::parse::trim(p)).into_owned())
                .filter(|p| !p.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let Ok(scope) = scope else {
        ex.error(crate::http::HttpError::new(500, "scope"));
        return Some(false);
    };
    let link = Rc::new(Link::default());
    let shared: Shared = Rc::new(RefCell::new(Session {
        link: link.clone(),
        ..Session::default()
    }));
    shared.borrow_mut().push(In::Connect);
    let hs = Handshake {
        accept_key: ws::accept_key(&key),
        offered,
        date: date.clone(),
    };
    let started = Python::attach(|py| {
        let (for_receive, for_send) = (shared.clone(), shared.clone());
        task::start(
            py,
            asgi,
            scope.into_bound(py),
            &link,
            move |py, asgi| receive(py, asgi, &for_receive),
            move |py, asgi, message| send(py, asgi, &for_send, &hs, message),
        )
    });
    if started.is_err() {
        ex.error(crate::http::HttpError::new(500, "start"));
        return Some(false);
    }
    let (stream, rbuf, out, host) = ex.upgrade();
    let stream = &Metered {
        stream,
        meter: meter.map(Meter::get),
    };
    // Some from the app's accept on, holding the meters' count of open
    // WebSockets when there are meters.
    let mut open: Option<Option<WebSocketOpen<'_>>> = None;

    let mut decoder = ws::Decoder::new(asgi.ws_max_size);
    let mut reading: Option<LocalBoxFuture<'static, BufResult<usize, Vec<u8>>>> = None;
    let mut scratch = Vec::with_capacity(16 * 1024);
    let mut closing_since: Option<std::time::Instant> = None;
    loop {
        let (mut pending, flushed) = {
            let mut s = shared.borrow_mut();
            (std::mem::take(&mut s.out), s.flush_waiter.take())
        };
        if !pending.is_empty() {
            task::gather(out, &mut pending);
            shared.borrow_mut().out = pending;
            if !stream.write_out(out).await {
                disconnect(asgi, &shared, ws::CLOSE_ABNORMAL, "");
                return client_gone(asgi);
            }
        }
        task::release(asgi, flushed);
        let (phase, close_sent, disconnected, backlogged) = {
            let s = shared.borrow();
            (s.phase, s.close_sent, s.disconnected, s.backlogged())
        };
        if phase == Phase::Done || disconnected {
            return client_gone(asgi);
        }
        if let Some(failed) = link.ended() {
            match phase {
                Phase::Handshake | Phase::Denying => {
                    let status = if failed { 500 } else { 403 };
                    let err = crate::http::HttpError::new(status, "the WebSocket was not accepted");
                    encode::error_response(out, err, &date);
                    let _ = stream.write_out(out).await;
                }
                Phase::Open if !close_sent => {
                    let code = if failed {
                        ws::CLOSE_INTERNAL_ERROR
                    } else {
                        ws::CLOSE_NORMAL
                    };
                    ws::close_frame(out, code, "");
                    let _ = stream.write_out(out).await;
                }
                _ => {}
            }
            return client_gone(asgi);
        }
        if phase == Phase::Open && open.is_none() {
            open = Some(stream.meter.map(Meters::websocket));
        }
        // Only an open socket goes away at once; a handshake in progress
        // waits for the app's answer.
        let goes_away = phase == Phase::Open && !close_sent;
        if goes_away && host.drain.is_draining() {
            go_away(asgi, &shared);
            continue;
        }
        if close_sent && closing_since.is_none() {
            closing_since = Some(std::time::Instant::now());
        }
        // Once open, read frames, unless the app is far behind.
        if phase == Phase::Open && reading.is_none() && !backlogged {
            let mut buf = std::mem::take(&mut scratch);
            buf.clear();
            let mut reader = stream.stream.clone();
            reading = Some(Box::pin(async move { reader.read(buf).await }));
        }
        let mut changed = std::pin::pin!(link.changed());
        let mut draining = std::pin::pin!(host.drain.started());
        let event = std::future::poll_fn(|cx| {
            if changed.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            if goes_away && draining.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            if let Some(read) = reading.as_mut()
                && let Poll::Ready(done) = read.as_mut().poll(cx)
            {
                return Poll::Ready(Some(done));
            }
            Poll::Pending
        });
        let event = match closing_since {
            Some(since) => match crate::http::deadline::timeout_at(since + CLOSE_WAIT, event).await
            {
                Ok(event) => event,
                Err(_) => {
                    disconnect(asgi, &shared, ws::CLOSE_ABNORMAL, "");
                    return client_gone(asgi);
                }
            },
            None => event.await,
        };
        let Some(BufResult(res, buf)) = event else {
            continue;
        };
        reading = None;
        let n = match res {
            Ok(n) if n > 0 => n,
            _ => {
                disconnect(asgi, &shared, ws::CLOSE_ABNORMAL, "");
                return client_gone(asgi);
            }
        };
        if let Some(meters) = stream.meter {
            meters.received(n);
        }
        rbuf.extend_from_slice(&buf[..n]);
        scratch = buf;
        loop {
            let closed = match decoder.decode(rbuf) {
                Ok((Some(msg), used)) => {
                    rbuf.drain(..used);
                    take_in(&shared, msg)
                }
                Ok((None, used)) => {
                    rbuf.drain(..used);
                    break;
                }
                Err(failure) => {
                    ws::close_frame(&mut shared.borrow_mut().out, failure.code, failure.reason);
                    Some((failure.code, failure.reason.to_string()))
                }
            };
            if let Some((code, reason)) = closed {
                // The closing handshake ends the connection.
                let pending = std::mem::take(&mut shared.borrow_mut().out);
                out.extend_from_slice(&pending);
                let _ = stream.write_out(out).await;
                disconnect(asgi, &shared, code, &reason);
                return client_gone(asgi);
            }
        }
        Python::attach(|py| answer_receive(py, asgi, &shared));
    }
}

/// The upgraded socket, whose writes count for /metrics.
struct Metered<'a> {
    stream: Stream,
    meter: Option<&'a Meters>,
}

impl Metered<'_> {
    async fn write_out(&self, out: &mut Vec<u8>) -> bool {
        if let Some(meters) = self.meter {
            meters.sent(out.len());
        }
        self.stream.write_out(out).await
    }
}

/// Takes in one message from the client. Returns the close code and reason
/// once the client closed (after queueing the echo of its close frame).
fn take_in(shared: &Shared, msg: Incoming) -> Option<(u16, String)> {
    let mut s = shared.borrow_mut();
    match msg {
        // After the app's disconnect (the server went away), messages are
        // dropped: nothing may follow it.
        Incoming::Text(_) | Incoming::Binary(_) if s.told_disconnect => {}
        Incoming::Text(t) => s.push(In::Text(t)),
        Incoming::Binary(b) => s.push(In::Bytes(b)),
        Incoming::Ping(p) => ws::frame(&mut s.out, ws::OP_PONG, &p),
        Incoming::Pong => {}
        Incoming::Close(code, reason) => {
            if !s.close_sent {
                let echo = if code == ws::CLOSE_NO_STATUS {
                    ws::CLOSE_NORMAL
                } else {
                    code
                };
                ws::close_frame(&mut s.out, echo, "");
                s.close_sent = true;
            }
            return Some((code, reason));
        }
    }
    None
}

/// The connection is over: the app receives `websocket.disconnect`, unless
/// it already has, and its sends raise from now on.
fn disconnect(asgi: &Asgi, shared: &Shared, code: u16, reason: &str) {
    {
        let mut s = shared.borrow_mut();
        s.disconnected = true;
        if !std::mem::replace(&mut s.told_disconnect, true) {
            s.push(In::Disconnect(code, reason.to_string()));
        }
    }
    Python::attach(|py| answer_receive(py, asgi, shared));
}

/// The shard drains: the client gets a close frame with 1001 (going away)
/// and the app `websocket.disconnect` at once, so a long-lived socket never
/// holds the drain for the whole graceful timeout. The client's own close
/// frame is still awaited, for `CLOSE_WAIT` at most.
fn go_away(asgi: &Asgi, shared: &Shared) {
    {
        let mut s = shared.borrow_mut();
        ws::close_frame(&mut s.out, ws::CLOSE_GOING_AWAY, "");
        s.close_sent = true;
        s.told_disconnect = true;
        s.push(In::Disconnect(ws::CLOSE_GOING_AWAY, String::new()));
    }
    Python::attach(|py| answer_receive(py, asgi, shared));
}
