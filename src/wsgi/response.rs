//! Calling the app and turning what it returns into HTTP: start_response's status
//! and headers (validated before anything reaches the wire), the body iterable,
//! and `close()` on every path.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyIterator, PyList, PyString, PyTuple};

use super::Wsgi;
use super::input::SharedBody;
use crate::access_log::Outcome;
use crate::http::encode;
use crate::http::output::{Framer, Lent, Meta};
use crate::http::sendfile::FileSpan;
use crate::python::lent::LentBytes;

/// What the connection needs to know about the request to frame the response.
#[derive(Clone, Copy)]
pub struct RequestMeta {
    pub http: Meta,
    /// Keep the response headers for the access log.
    pub record_headers: bool,
    /// A `wsgi.file_wrapper` over a regular file goes out by sendfile.
    pub sendfile: bool,
}

/// One step of producing the response.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Output was appended; call `advance` again after writing it.
    More,
    /// The response is complete in the output.
    Done,
    /// The response cannot be completed after its head went out: close the
    /// connection so the client sees a truncated response, never a wrong one.
    Abort,
}

/// A response in progress.
pub struct Response {
    result: Py<PyAny>,
    sr: Py<PyAny>,
    /// The body iterator, once the app's result turned out not to be a list.
    iter: Option<Py<PyIterator>>,
    /// A body streaming from the socket; unless the app read all of it, the
    /// connection cannot carry another request.
    body: Option<SharedBody>,
    meta: RequestMeta,
    framer: Framer,
    recorded_headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// The body as a file, to send after the head (see `take_file`).
    file: Option<FileSpan>,
    /// Large body chunks to send from their own memory (see `take_lent`).
    lent: Lent,
}

/// Why a response head was refused.
struct BadResponse(String);

impl From<PyErr> for BadResponse {
    fn from(e: PyErr) -> Self {
        BadResponse(e.to_string())
    }
}

/// Hop-by-hop headers are the server's business, never the app's (PEP 3333).
fn is_hop_by_hop(name: &[u8]) -> bool {
    [
        &b"keep-alive"[..],
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

fn is_token(name: &[u8]) -> bool {
    !name.is_empty()
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The latin-1 bytes of a header string, refusing CR, LF and NUL.
fn header_bytes(value: &Bound<'_, PyAny>, what: &str) -> Result<Vec<u8>, BadResponse> {
    let s = value
        .cast::<PyString>()
        .map_err(|_| BadResponse(format!("{what} must be str, not {}", type_name(value))))?;
    let text = s.to_str()?;
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        let b = u8::try_from(u32::from(c))
            .map_err(|_| BadResponse(format!("{what} {text:?} is not latin-1")))?;
        if b == b'\r' || b == b'\n' || b == 0 {
            return Err(BadResponse(format!(
                "{what} {text:?} contains CR, LF or NUL"
            )));
        }
        out.push(b);
    }
    Ok(out)
}

fn type_name(value: &Bound<'_, PyAny>) -> String {
    value
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

impl Response {
    /// A response for what the app returned from `app(environ, start_response)`.
    pub fn new(
        result: Py<PyAny>,
        start_response: Py<PyAny>,
        body: Option<SharedBody>,
        meta: RequestMeta,
    ) -> Response {
        Response {
            result,
            sr: start_response,
            iter: None,
            body,
            meta,
            framer: Framer::new(meta.http),
            recorded_headers: Vec::new(),
            file: None,
            lent: Lent::default(),
        }
    }
}

/// The plain 500 turbo sends when the app fails before its head went out.
pub fn internal_error(out: &mut Vec<u8>, date: &[u8]) {
    encode::error_response(
        out,
        crate::http::HttpError::new(500, "the application failed"),
        date,
    );
}

impl Response {
    /// Whether the connection may carry another request after this response.
    pub fn keep_alive(&self) -> bool {
        self.framer.keep_alive
    }

    /// Says `Connection: close` if the head has yet to go out, and closes the
    /// connection after the response either way.
    pub fn close_connection(&mut self) {
        self.framer.keep_alive = false;
    }

    /// Produces the next piece of the response into `out`.
    pub fn advance(
        &mut self,
        py: Python<'_>,
        wsgi: &Wsgi,
        out: &mut Vec<u8>,
        date: &[u8],
    ) -> Progress {
        match self.step(py, wsgi, out, date) {
            Ok(progress) => progress,
            Err(err) => {
                match err {
                    Failure::App(e) => wsgi.app_failed(py, &e),
                    Failure::Bad(msg) => {
                        log::error!("Invalid response from the application: {msg}")
                    }
                }
                self.framer.keep_alive = false;
                if self.framer.head_sent() {
                    Progress::Abort
                } else {
                    self.framer.status = 500;
                    internal_error(out, date);
                    Progress::Done
                }
            }
        }
    }

    fn step(
        &mut self,
        py: Python<'_>,
        wsgi: &Wsgi,
        out: &mut Vec<u8>,
        date: &[u8],
    ) -> Result<Progress, Failure> {
        let result = self.result.bind(py).clone();
        let iter = match self.iter.take() {
            Some(iter) => iter,
            None => {
                let writes = self
                    .sr
                    .bind(py)
                    .getattr(wsgi.names.writes.bind(py))
                    .map_err(Failure::App)?;
                let writes: Vec<Bound<'_, PyAny>> = if writes.is_none() {
                    Vec::new()
                } else {
                    writes
                        .cast_into::<PyList>()
                        .map_err(|e| Failure::Bad(e.to_string()))?
                        .iter()
                        .collect()
                };
                if writes.is_empty()
                    && let Some(span) = self.file_span(py, wsgi, &result)
                {
                    return self.file(py, wsgi, span, out, date);
                }
                if let Ok(list) = result.cast::<PyList>() {
                    return self.sequence(
                        py,
                        wsgi,
                        writes.into_iter().chain(list.iter()),
                        out,
                        date,
                    );
                }
                if let Ok(tuple) = result.cast::<PyTuple>() {
                    return self.sequence(
                        py,
                        wsgi,
                        writes.into_iter().chain(tuple.iter()),
                        out,
                        date,
                    );
                }
                let iter = result.try_iter().map_err(Failure::App)?;
                if !writes.is_empty() {
                    for chunk in &writes {
                        self.chunk(py, wsgi, chunk, out, date)?;
                    }
                    self.iter = Some(iter.unbind());
                    return Ok(Progress::More);
                }
                iter.unbind()
            }
        };
        loop {
            match iter.bind(py).clone().next() {
                Some(Ok(chunk)) => {
                    if self.chunk(py, wsgi, &chunk, out, date)? {
                        if !self.framer.wants_body() {
                            return Ok(Progress::Done);
                        }
                        self.iter = Some(iter);
                        return Ok(Progress::More);
                    }
                }
                None => break,
                Some(Err(e)) => return Err(Failure::App(e)),
            }
        }
        if !self.framer.head_sent() {
            self.head(py, wsgi, Some(0), out, date)?;
        }
        self.framer.end(out);
        Ok(Progress::Done)
    }

    /// A body made of known chunks: one write with an exact Content-Length.
    fn sequence<'py>(
        &mut self,
        py: Python<'py>,
        wsgi: &Wsgi,
        chunks: impl Iterator<Item = Bound<'py, PyAny>>,
        out: &mut Vec<u8>,
        date: &[u8],
    ) -> Result<Progress, Failure> {
        let chunks: Vec<Bound<'py, PyBytes>> = chunks
            .map(|c| {
                c.cast_into::<PyBytes>()
                    .map_err(|e| Failure::Bad(format!("body chunks must be bytes: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let total: usize = chunks.iter().map(|c| c.as_bytes().len()).sum();
        self.head(py, wsgi, Some(total as u64), out, date)?;
        for c in &chunks {
            self.body_bytes(c, out);
        }
        self.framer.end(out);
        Ok(Progress::Done)
    }

    /// The regular file behind a `wsgi.file_wrapper` result, from its current
    /// position, as Gunicorn finds it for sendfile. None (iterate the wrapper)
    /// when sendfile is off or the file object has no usable descriptor.
    fn file_span(
        &self,
        py: Python<'_>,
        wsgi: &Wsgi,
        result: &Bound<'_, PyAny>,
    ) -> Option<FileSpan> {
        if !self.meta.sendfile || !result.is_instance(wsgi.file_wrapper.bind(py)).ok()? {
            return None;
        }
        let fd = result
            .getattr(wsgi.names.filelike.bind(py))
            .and_then(|f| f.call_method0(wsgi.names.fileno.bind(py)))
            .and_then(|fd| fd.extract::<i32>())
            .ok()?;
        FileSpan::from_descriptor(fd)
    }

    /// A body that is a file: the head now, the file by `take_file` after it.
    /// Its size gives the Content-Length unless the app gave one.
    fn file(
        &mut self,
        py: Python<'_>,
        wsgi: &Wsgi,
        span: FileSpan,
        out: &mut Vec<u8>,
        date: &[u8],
    ) -> Result<Progress, Failure> {
        self.head(py, wsgi, Some(span.len()), out, date)?;
        self.file = self.framer.file(span);
        self.framer.end(out);
        Ok(Progress::Done)
    }

    /// The file to send once `out` is written, after a `Done`.
    pub fn take_file(&mut self) -> Option<FileSpan> {
        self.file.take()
    }

    /// Appends one chunk from the iterable; returns whether it had bytes.
    fn chunk(
        &mut self,
        py: Python<'_>,
        wsgi: &Wsgi,
        chunk: &Bound<'_, PyAny>,
        out: &mut Vec<u8>,
        date: &[u8],
    ) -> Result<bool, Failure> {
        let bytes = chunk.cast::<PyBytes>().map_err(|_| {
            Failure::Bad(format!(
                "body chunks must be bytes, not {}",
                type_name(chunk)
            ))
        })?;
        if bytes.as_bytes().is_empty() {
            return Ok(false);
        }
        if !self.framer.head_sent() {
            self.head(py, wsgi, None, out, date)?;
            // The app's iterator runs on, and may call start_response again
            // with exc_info: from now on that must re-raise (PEP 3333).
            let _ = self
                .sr
                .bind(py)
                .setattr(wsgi.names.sent.bind(py), pyo3::types::PyBool::new(py, true));
        }
        self.body_bytes(bytes, out);
        Ok(true)
    }

    /// Appends a body chunk in the response's framing.
    fn body_bytes(&mut self, chunk: &Bound<'_, PyBytes>, out: &mut Vec<u8>) {
        let lend = |len| LentBytes::new(chunk, len);
        self.framer
            .body(out, &mut self.lent, chunk.as_bytes(), Some(lend));
    }

    /// Body chunks lent since the last call, placed in the `out` given to
    /// `advance`.
    pub fn take_lent(&mut self) -> Lent {
        std::mem::take(&mut self.lent)
    }

    /// Validates start_response's status and headers and encodes the head.
    fn head(
        &mut self,
        py: Python<'_>,
        wsgi: &Wsgi,
        known_length: Option<u64>,
        out: &mut Vec<u8>,
        date: &[u8],
    ) -> Result<(), Failure> {
        let sr = self.sr.bind(py);
        let status = sr
            .getattr(wsgi.names.status.bind(py))
            .map_err(Failure::App)?;
        if status.is_none() {
            return Err(Failure::Bad(
                "the application did not call start_response()".into(),
            ));
        }
        let status_bytes = header_bytes(&status, "status").map_err(Failure::from)?;
        let code = status_bytes
            .get(..3)
            .filter(|d| d.iter().all(u8::is_ascii_digit))
            .filter(|_| status_bytes.len() == 3 || status_bytes[3] == b' ')
            .map(|d| d.iter().fold(0u16, |n, &b| n * 10 + u16::from(b - b'0')))
            // A 1xx is interim: it cannot be the response (RFC 9110 15.2).
            .filter(|c| (200..=999).contains(c))
            .ok_or_else(|| {
                Failure::Bad(format!(
                    "invalid status {:?}",
                    String::from_utf8_lossy(&status_bytes)
                ))
            })?;
        let headers = sr
            .getattr(wsgi.names.headers.bind(py))
            .map_err(Failure::App)?;
        let headers = headers
            .cast_into::<PyList>()
            .map_err(|_| Failure::Bad("headers must be a list".into()))?;

        let start = out.len();
        encode::status_line(out, self.meta.http.minor, &status_bytes);
        let mut app_length: Option<u64> = None;
        let mut has_server = false;
        let mut has_date = false;
        let encoded = (|| -> Result<(), BadResponse> {
            for item in headers.iter() {
                let pair = item
                    .cast::<PyTuple>()
                    .ok()
                    .filter(|t| t.len() == 2)
                    .ok_or_else(|| {
                        BadResponse(format!(
                            "header must be a (name, value) tuple, not {}",
                            type_name(&item)
                        ))
                    })?;
                let name = header_bytes(&pair.get_item(0)?, "header name")?;
                let value = header_bytes(&pair.get_item(1)?, "header value")?;
                if !is_token(&name) {
                    return Err(BadResponse(format!(
                        "invalid header name {:?}",
                        String::from_utf8_lossy(&name)
                    )));
                }
                if self.meta.record_headers && !name.eq_ignore_ascii_case(b"connection") {
                    self.recorded_headers
                        .push((name.to_ascii_lowercase(), value.clone()));
                }
                if name.eq_ignore_ascii_case(b"connection") {
                    // The server owns the connection; honour the app's wish to close it.
                    if value
                        .split(|&b| b == b',')
                        .any(|t| crate::http::parse::trim(t).eq_ignore_ascii_case(b"close"))
                    {
                        self.framer.keep_alive = false;
                    }
                    continue;
                }
                if is_hop_by_hop(&name) {
                    return Err(BadResponse(format!(
                        "hop-by-hop header {:?}",
                        String::from_utf8_lossy(&name)
                    )));
                }
                if name.eq_ignore_ascii_case(b"content-length") {
                    let v = crate::http::parse::trim(&value);
                    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
                        return Err(BadResponse(format!(
                            "invalid Content-Length {:?}",
                            String::from_utf8_lossy(&value)
                        )));
                    }
                    app_length = Some(v.iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0')));
                    continue;
                }
                has_server |= name.eq_ignore_ascii_case(b"server");
                has_date |= name.eq_ignore_ascii_case(b"date");
                encode::header(out, &name, &value);
            }
            Ok(())
        })();
        if let Err(e) = encoded {
            out.truncate(start);
            return Err(Failure::Bad(e.0));
        }
        if self.body.as_ref().is_some_and(|b| !body_finished(b)) {
            self.framer.keep_alive = false;
        }
        let length = app_length.or(known_length);
        let date = (!has_date).then_some(date);
        self.framer
            .finish_head(out, code, length, date, !has_server);
        Ok(())
    }

    /// For the access log: the status, body bytes and headers that went out.
    pub fn outcome(&mut self) -> Outcome {
        Outcome {
            status: self.framer.status,
            sent: self.framer.head_sent().then_some(self.framer.sent),
            headers: std::mem::take(&mut self.recorded_headers),
        }
    }

    /// Calls the iterable's `close()`, as PEP 3333 requires on every path.
    pub fn close(self, py: Python<'_>, wsgi: &Wsgi) {
        let result = self.result.bind(py);
        // Lists and tuples, the common results, have no close().
        if result.is_exact_instance_of::<PyList>() || result.is_exact_instance_of::<PyTuple>() {
            return;
        }
        if let Ok(close) = result.getattr(wsgi.names.close.bind(py)) {
            if let Err(e) = close.call0() {
                wsgi.log_exception(py, "Error closing the response iterable", &e);
            }
        } else {
            // An AttributeError from the lookup is expected for lists.
            let _ = PyErr::take(py);
        }
    }
}

fn body_finished(body: &SharedBody) -> bool {
    body.lock()
        .ok()
        .and_then(|b| b.as_ref().map(|s| s.decoder.is_done()))
        .unwrap_or(false)
}

enum Failure {
    App(PyErr),
    Bad(String),
}

impl From<BadResponse> for Failure {
    fn from(b: BadResponse) -> Self {
        Failure::Bad(b.0)
    }
}
