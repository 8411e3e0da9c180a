//! Request heads: httparse does the tokenising; this module adds the limits and the
//! framing rules that keep request smuggling out (RFC 9112 sections 3, 5 and 6).

use std::mem::MaybeUninit;
use std::ops::Range;

use super::HttpError;

const STACK_FIELDS: usize = 128;

/// Limits on a request, with Gunicorn's meanings of 0 already resolved by
/// the configuration that builds this.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The longest request line.
    pub request_line: usize,
    /// The most header fields.
    pub fields: usize,
    /// The longest field (name and value); None: no limit on one field.
    pub field_size: Option<usize>,
    /// The largest body; None: no limit.
    pub body: Option<u64>,
}

/// The field size a head is budgeted for when one field has no limit: the
/// whole head stays bounded, as if its fields were of Gunicorn's default size.
const UNLIMITED_FIELD_BUDGET: usize = 8190;

impl Limits {
    /// The longest head these limits allow, past which it is refused (431)
    /// even before it ends.
    fn max_head(&self) -> usize {
        let field = self.field_size.unwrap_or(UNLIMITED_FIELD_BUDGET);
        self.fields
            .saturating_mul(field.saturating_add(2))
            .saturating_add(self.request_line)
            .saturating_add(4)
    }
}

/// Finds a head's end across reads, so that a head that arrives in many
/// small pieces costs time linear in its size: each byte is scanned once,
/// and the parser runs only once an end of head may be there.
#[derive(Default)]
pub struct HeadScan {
    /// Bytes already scanned for the end of the head.
    scanned: usize,
    /// The request line's end has been seen (and was within its limit).
    line_seen: bool,
}

impl HeadScan {
    /// Parses the head at the start of `buf` once it is complete; `Ok(None)`
    /// means more bytes are needed. Call again with the same buffer grown;
    /// after a head, start a new scan for the next one.
    pub fn parse(
        &mut self,
        buf: &[u8],
        limits: &Limits,
        head: &mut RequestHead,
    ) -> Result<Option<()>, HttpError> {
        if !self.line_seen {
            match buf[self.scanned.min(buf.len())..]
                .iter()
                .position(|&b| b == b'\n')
            {
                Some(i) if self.scanned + i > limits.request_line + 1 => {
                    return Err(HttpError::new(414, "request line too long"));
                }
                Some(_) => self.line_seen = true,
                None if buf.len() > limits.request_line + 1 => {
                    return Err(HttpError::new(414, "request line too long"));
                }
                None => {}
            }
        }
        // A head ends with an empty line: LF, then CRLF or LF. Look only
        // where new bytes could complete one.
        let from = self.scanned.saturating_sub(2).min(buf.len());
        let ends = buf[from..]
            .windows(2)
            .any(|w| w[0] == b'\n' && (w[1] == b'\n' || w[1] == b'\r'));
        self.scanned = buf.len();
        if !ends {
            if buf.len() > limits.max_head() {
                return Err(HttpError::new(431, "request header fields too large"));
            }
            return Ok(None);
        }
        parse(buf, limits, head)
    }
}

/// How the body of a request is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BodyKind {
    #[default]
    None,
    Length(u64),
    Chunked,
}

/// A parsed request head. Fields are ranges into the connection's read buffer, so
/// the head outlives no buffer and costs no copies.
#[derive(Clone, Debug, Default)]
pub struct RequestHead {
    pub method: Range<usize>,
    pub target: Range<usize>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub headers: Vec<(Range<usize>, Range<usize>)>,
    /// Bytes of the head, including the blank line.
    pub len: usize,
    pub body: BodyKind,
    pub keep_alive: bool,
    pub expect_continue: bool,
}

impl RequestHead {
    pub fn is_head(&self, buf: &[u8]) -> bool {
        &buf[self.method.clone()] == b"HEAD"
    }
}

fn range_of(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

/// A `HTTP/d.d` version other than 1.0 and 1.1 is 505; anything else malformed is 400.
fn version_error(line: &[u8]) -> HttpError {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match line.rsplit(|&b| b == b' ').next() {
        Some([b'H', b'T', b'T', b'P', b'/', major, b'.', minor])
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            HttpError::new(505, "unsupported HTTP version")
        }
        _ => HttpError::bad_request("malformed request line"),
    }
}

/// Parses the head at the start of `buf`. `Ok(None)` means more bytes are needed.
pub fn parse(buf: &[u8], limits: &Limits, head: &mut RequestHead) -> Result<Option<()>, HttpError> {
    // Tolerate the blank lines some clients send between requests (RFC 9112 2.2).
    let line_end = buf.iter().position(|&b| b == b'\n');
    match line_end {
        Some(n) if n > limits.request_line + 1 => {
            return Err(HttpError::new(414, "request line too long"));
        }
        None if buf.len() > limits.request_line + 1 => {
            return Err(HttpError::new(414, "request line too long"));
        }
        _ => {}
    }

    // Uninitialised slots cost nothing per request; only a limit above the stack
    // array's size pays for a heap allocation.
    let mut stack = [const { MaybeUninit::<httparse::Header>::uninit() }; STACK_FIELDS];
    let mut heap = Vec::new();
    let slots: &mut [MaybeUninit<httparse::Header>] = if limits.fields <= STACK_FIELDS {
        &mut stack[..limits.fields]
    } else {
        heap.resize_with(limits.fields, MaybeUninit::uninit);
        &mut heap
    };
    let mut req = httparse::Request::new(&mut []);
    let status = req
        .parse_with_uninit_headers(buf, slots)
        .map_err(|e| map_error(e, buf))?;
    let len = match status {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => {
            if buf.len() > limits.max_head() {
                return Err(HttpError::new(431, "request header fields too large"));
            }
            return Ok(None);
        }
    };

    // A bare LF ends a line for httparse; it is refused here as in chunked
    // bodies (`body`), since lenient line endings are a smuggling vector.
    let mut from = 0;
    while let Some(i) = buf[from..len].iter().position(|&b| b == b'\n') {
        let at = from + i;
        if at == 0 || buf[at - 1] != b'\r' {
            return Err(HttpError::bad_request("bare LF in request head"));
        }
        from = at + 1;
    }
    head.headers.clear();
    head.len = len;
    head.minor = req.version.unwrap_or(1);
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Err(HttpError::bad_request("malformed request line"));
    };
    head.method = range_of(buf, method.as_bytes());
    head.target = range_of(buf, target.as_bytes());
    // The asterisk-form is for OPTIONS alone (RFC 9112 3.2.4).
    if target == "*" && method != "OPTIONS" {
        return Err(HttpError::bad_request("'*' is a target for OPTIONS only"));
    }

    let mut length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut chunked_last = false;
    let mut hosts = 0;
    let mut connection_close = false;
    let mut connection_keep_alive = false;
    head.expect_continue = false;

    for h in req.headers.iter() {
        if limits
            .field_size
            .is_some_and(|max| h.name.len() + h.value.len() > max)
        {
            return Err(HttpError::new(431, "request header field too large"));
        }
        // httparse lets some bytes through that RFC 9110 5.5 forbids in values.
        if h.value.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
            return Err(HttpError::bad_request("invalid character in header value"));
        }
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let value = trim(h.value);
            if value.is_empty() || !value.iter().all(u8::is_ascii_digit) || value.len() > 18 {
                return Err(HttpError::bad_request("invalid Content-Length"));
            }
            let n: u64 = value.iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0'));
            if length.is_some_and(|m| m != n) {
                return Err(HttpError::bad_request("conflicting Content-Length headers"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if h.value
                .split(|&b| b == b',')
                .map(trim)
                .all(<[u8]>::is_empty)
            {
                return Err(HttpError::bad_request("empty Transfer-Encoding"));
            }
            for coding in h.value.split(|&b| b == b',').map(trim) {
                if coding.is_empty() {
                    continue;
                }
                if chunked_last {
                    // chunked must be the final coding; anything after it is not ours.
                    return Err(HttpError::new(501, "transfer-coding after chunked"));
                }
                transfer_encoding = true;
                if coding.eq_ignore_ascii_case(b"chunked") {
                    chunked_last = true;
                } else {
                    return Err(HttpError::new(501, "unsupported transfer-coding"));
                }
            }
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|&b| b == b',').map(trim) {
                connection_close |= token.eq_ignore_ascii_case(b"close");
                connection_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"expect")
            && trim(h.value).eq_ignore_ascii_case(b"100-continue")
        {
            head.expect_continue = head.minor == 1;
        }
        head.headers
            .push((range_of(buf, name), range_of(buf, h.value)));
    }

    if head.minor == 1 && hosts != 1 {
        return Err(HttpError::bad_request(if hosts == 0 {
            "missing Host header"
        } else {
            "more than one Host header"
        }));
    }
    head.body = match (transfer_encoding, length) {
        (true, Some(_)) => {
            return Err(HttpError::bad_request(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        (true, None) if head.minor == 0 => {
            return Err(HttpError::bad_request(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        (true, None) => BodyKind::Chunked,
        (false, Some(0)) | (false, None) => BodyKind::None,
        (false, Some(n)) => BodyKind::Length(n),
    };
    head.keep_alive = if head.minor == 1 {
        !connection_close
    } else {
        connection_keep_alive && !connection_close
    };
    if head.body == BodyKind::None {
        head.expect_continue = false;
    }
    Ok(Some(()))
}

fn map_error(e: httparse::Error, buf: &[u8]) -> HttpError {
    use httparse::Error::*;
    match e {
        TooManyHeaders => HttpError::new(431, "too many header fields"),
        Version => {
            let end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
            version_error(&buf[..end])
        }
        HeaderName => HttpError::bad_request("invalid header name"),
        HeaderValue => HttpError::bad_request("invalid header value"),
        NewLine => HttpError::bad_request("invalid line ending"),
        Token => HttpError::bad_request("invalid method"),
        _ => HttpError::bad_request("malformed request line"),
    }
}

pub fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |i| i + 1);
    &s[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        request_line: 4094,
        fields: 100,
        field_size: Some(8190),
        body: None,
    };

    fn parse_str(s: &str) -> Result<Option<RequestHead>, HttpError> {
        let mut head = RequestHead::default();
        parse(s.as_bytes(), &LIMITS, &mut head).map(|o| o.map(|()| head))
    }

    fn status_of(s: &str) -> u16 {
        parse_str(s).expect_err(s).status
    }

    #[test]
    fn simple_get() {
        let raw = "GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\r\nrest";
        let head = parse_str(raw).unwrap().unwrap();
        assert_eq!(&raw[head.method.clone()], "GET");
        assert_eq!(&raw[head.target.clone()], "/a?b=c");
        assert_eq!(head.minor, 1);
        assert_eq!(head.len, raw.len() - 4);
        assert_eq!(head.headers.len(), 2);
        assert!(head.keep_alive);
        assert_eq!(head.body, BodyKind::None);
    }

    #[test]
    fn partial_heads_wait() {
        assert!(
            parse_str("GET / HTTP/1.1\r\nHost: x\r\n")
                .unwrap()
                .is_none()
        );
        assert!(parse_str("GE").unwrap().is_none());
    }

    #[test]
    fn keep_alive_rules() {
        let h = parse_str("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        let h = parse_str("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        let h = parse_str("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
    }

    #[test]
    fn bodies() {
        let h = parse_str("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.body, BodyKind::Length(5));
        let h = parse_str(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.body, BodyKind::Length(5));
        let h = parse_str("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.body, BodyKind::Chunked);
        let h = parse_str(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(h.expect_continue);
    }

    #[test]
    fn smuggling_and_malformed_heads_are_refused() {
        for (raw, status) in [
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1,1\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
                501,
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                501,
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                501,
            ),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n folded\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: x\r\n(x): v\r\n\r\n", 400),
            ("GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            ("GET / FOO/1.1\r\nHost: x\r\n\r\n", 400),
            ("GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
            ("GET / HTTP/1.2\r\nHost: x\r\n\r\n", 505),
            ("G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ] {
            assert_eq!(status_of(raw), status, "{raw:?}");
        }
    }

    #[test]
    fn limits() {
        let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(5000));
        assert_eq!(status_of(&long), 414);
        let partial_long = format!("GET /{}", "a".repeat(5000));
        assert_eq!(status_of(&partial_long), 414);
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
            "a".repeat(9000)
        );
        assert_eq!(status_of(&big), 431);
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            status_of(&format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n")),
            431
        );
    }

    #[test]
    fn a_head_scan_fed_byte_by_byte_parses_it_once_complete() {
        let raw = b"\r\nGET /x HTTP/1.1\r\nHost: x\r\nA: b\r\n\r\nrest";
        let mut scan = HeadScan::default();
        let mut head = RequestHead::default();
        let end = raw.len() - 4;
        for n in 1..end {
            assert_eq!(scan.parse(&raw[..n], &LIMITS, &mut head), Ok(None), "{n}");
        }
        assert_eq!(scan.parse(&raw[..end], &LIMITS, &mut head), Ok(Some(())));
        assert_eq!(head.len, end);
        // A bare LF ends the scan, and the parser refuses it.
        let mut scan = HeadScan::default();
        let bare = b"GET / HTTP/1.1\nHost: x\n\n";
        assert_eq!(
            scan.parse(&bare[..bare.len() - 1], &LIMITS, &mut head),
            Ok(None)
        );
        assert_eq!(
            scan.parse(bare, &LIMITS, &mut head).map_err(|e| e.status),
            Err(400)
        );
    }

    #[test]
    fn a_head_scan_refuses_early() {
        let mut head = RequestHead::default();
        let line = format!("GET /{}", "a".repeat(5000));
        assert_eq!(
            HeadScan::default()
                .parse(line.as_bytes(), &LIMITS, &mut head)
                .map_err(|e| e.status),
            Err(414)
        );
        let fields = format!("GET / HTTP/1.1\r\n{}", "X: y\r\n".repeat(200_000));
        assert_eq!(
            HeadScan::default()
                .parse(fields.as_bytes(), &LIMITS, &mut head)
                .map_err(|e| e.status),
            Err(431)
        );
        // No limit on one field still bounds the whole head.
        let open = Limits {
            field_size: None,
            ..LIMITS
        };
        let huge = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(2 << 20));
        assert_eq!(
            HeadScan::default()
                .parse(huge.as_bytes(), &open, &mut head)
                .map_err(|e| e.status),
            Err(431)
        );
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
            "a".repeat(20_000)
        );
        assert_eq!(parse(big.as_bytes(), &open, &mut head), Ok(Some(())));
    }

    #[test]
    fn edge_cases_of_rfc_9112() {
        assert_eq!(status_of("GET * HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
        assert!(
            parse_str("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap()
                .is_some()
        );
        assert_eq!(
            status_of("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \r\n\r\n"),
            400
        );
        assert_eq!(
            status_of("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: ,\r\n\r\n"),
            400
        );
        assert_eq!(status_of("GET / HTTP/1.1\nHost: x\r\n\r\n"), 400);
        // Any token is a method; a target starting with // is origin-form.
        let raw = "PURGE //a//b?c HTTP/1.1\r\nHost: x\r\n\r\n";
        let head = parse_str(raw).unwrap().unwrap();
        assert_eq!(&raw[head.method.clone()], "PURGE");
        assert_eq!(&raw[head.target.clone()], "//a//b?c");
    }
}
