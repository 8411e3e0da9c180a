//! Request body framing: Content-Length and chunked (RFC 9112 sections 6 and 7).
//!
//! The decoder works on whatever bytes have arrived and never needs the whole body,
//! so bodies stream to the app however large they are. Chunk extensions and
//! trailers are read and dropped.

use std::ops::Range;

use super::HttpError;
use super::parse::BodyKind;

/// The longest chunk-size line (size, extensions, CRLF) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// The most trailer bytes accepted after the last chunk.
const MAX_TRAILERS: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers(usize),
    Done,
}

/// Tracks where in a request body the connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoder {
    state: State,
    /// Body bytes still allowed by `limit_request_body`; None: no limit.
    allowed: Option<u64>,
}

/// One step of decoding: `consumed` bytes of input were used, and `data` (a range of
/// the input, possibly empty) is body content.
#[derive(Debug, PartialEq, Eq)]
pub struct Step {
    pub consumed: usize,
    pub data: Range<usize>,
}

impl Decoder {
    pub fn new(kind: BodyKind) -> Self {
        let state = match kind {
            BodyKind::None => State::Done,
            BodyKind::Length(n) => State::Length(n),
            BodyKind::Chunked => State::ChunkSize,
        };
        Decoder {
            state,
            allowed: None,
        }
    }

    /// The same decoder, refusing (413) a body that grows past `limit` bytes.
    pub fn limited(self, limit: Option<u64>) -> Self {
        Decoder {
            allowed: limit,
            ..self
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The body bytes still expected, when the framing says.
    pub fn remaining_length(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Decodes from the start of `buf` until it finds body data, runs out of input
    /// or reaches the end of the body. A step with nothing consumed means more input
    /// is needed (or the body is done).
    pub fn step(&mut self, buf: &[u8]) -> Result<Step, HttpError> {
        let mut pos = 0;
        loop {
            let rest = &buf[pos..];
            match self.state {
                State::Done => {
                    return Ok(Step {
                        consumed: pos,
                        data: pos..pos,
                    });
                }
                State::Length(n) | State::ChunkData(n) => {
                    let take = rest.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                    let left = n - take as u64;
                    self.state = match (self.state, left) {
                        (State::Length(_), 0) => State::Done,
                        (State::Length(_), _) => State::Length(left),
                        (_, 0) => State::ChunkEnd,
                        _ => State::ChunkData(left),
                    };
                    return Ok(Step {
                        consumed: pos + take,
                        data: pos..pos + take,
                    });
                }
                State::ChunkSize => {
                    let Some(line) = line(rest, MAX_CHUNK_LINE)? else {
                        return Ok(Step {
                            consumed: pos,
                            data: pos..pos,
                        });
                    };
                    let size = chunk_size(&rest[..line - 2])?;
                    pos += line;
                    self.state = if size == 0 {
                        State::Trailers(0)
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkEnd => {
                    if rest.len() < 2 {
                        return Ok(Step {
                            consumed: pos,
                            data: pos..pos,
                        });
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(HttpError::bad_request("missing CRLF after chunk data"));
                    }
                    pos += 2;
                    self.state = State::ChunkSize;
                }
                State::Trailers(seen) => {
                    let Some(line) = line(rest, MAX_TRAILERS - seen)? else {
                        return Ok(Step {
                            consumed: pos,
                            data: pos..pos,
                        });
                    };
                    if rest[..line].contains(&0) {
                        return Err(HttpError::bad_request("invalid character in trailer"));
                    }
                    if line > 2 && !trailer_allowed(&rest[..line]) {
                        return Err(HttpError::bad_request("a field that must not be a trailer"));
                    }
                    pos += line;
                    self.state = if line == 2 {
                        State::Done
                    } else {
                        State::Trailers(seen + line)
                    };
                }
            }
        }
    }

    /// Decodes everything available in `buf`, appending body data to `out`. Returns
    /// the bytes of `buf` consumed.
    pub fn decode_into(&mut self, buf: &[u8], out: &mut Vec<u8>) -> Result<usize, HttpError> {
        let mut pos = 0;
        loop {
            let step = self.step(&buf[pos..])?;
            if let Some(allowed) = self.allowed.as_mut() {
                let n = step.data.len() as u64;
                if n > *allowed {
                    return Err(HttpError::new(413, "request body too large"));
                }
                *allowed -= n;
            }
            out.extend_from_slice(&buf[pos..][step.data]);
            pos += step.consumed;
            if step.consumed == 0 || self.is_done() || pos == buf.len() {
                return Ok(pos);
            }
        }
    }
}

/// The length of the CRLF-terminated line at the start of `buf`, if complete. A
/// bare LF is refused: lenient line endings are a classic smuggling vector.
fn line(buf: &[u8], max: usize) -> Result<Option<usize>, HttpError> {
    match buf.iter().take(max).position(|&b| b == b'\n') {
        Some(i) if i > 0 && buf[i - 1] == b'\r' => Ok(Some(i + 1)),
        Some(_) => Err(HttpError::bad_request("bare LF in chunked body")),
        None if buf.len() >= max => Err(HttpError::bad_request("chunk line too long")),
        None => Ok(None),
    }
}

/// Fields a trailer section must not carry (RFC 9110 6.5.1): framing,
/// routing, request modifiers, authentication and content metadata. A
/// recipient that merged them into the head would be fooled.
const NOT_TRAILERS: &[&[u8]] = &[
    b"content-length",
    b"transfer-encoding",
    b"host",
    b"trailer",
    b"te",
    b"expect",
    b"range",
    b"max-forwards",
    b"cache-control",
    b"pragma",
    b"authorization",
    b"proxy-authorization",
    b"cookie",
    b"content-encoding",
    b"content-type",
    b"content-range",
    b"connection",
    b"upgrade",
    b"if-match",
    b"if-none-match",
    b"if-modified-since",
    b"if-unmodified-since",
    b"if-range",
];

/// Whether a trailer line (with its CRLF) names a field allowed there. A
/// line without a colon is malformed and refused too.
fn trailer_allowed(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let name = &line[..colon];
    !name.is_empty() && !NOT_TRAILERS.iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// `1*HEXDIG [ BWS ";" chunk-ext ]`, without the CRLF.
fn chunk_size(line: &[u8]) -> Result<u64, HttpError> {
    const BAD: HttpError = HttpError::bad_request("invalid chunk size");
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(BAD);
    }
    let ext = &line[digits..];
    let ext_start = ext
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(ext.len());
    if ext_start < ext.len() && ext[ext_start] != b';' {
        return Err(BAD);
    }
    if ext.iter().any(|&b| b < 0x20 && b != b'\t' || b == 0x7f) {
        return Err(BAD);
    }
    let mut size = 0u64;
    for &d in &line[..digits] {
        size = size * 16 + u64::from((d as char).to_digit(16).unwrap_or(0));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(kind: BodyKind, input: &[u8]) -> Result<(Vec<u8>, usize, bool), HttpError> {
        let mut d = Decoder::new(kind);
        let mut out = Vec::new();
        let used = d.decode_into(input, &mut out)?;
        Ok((out, used, d.is_done()))
    }

    #[test]
    fn content_length() {
        let (out, used, done) = decode_all(BodyKind::Length(5), b"helloGET").unwrap();
        assert_eq!((out.as_slice(), used, done), (&b"hello"[..], 5, true));
        let (out, used, done) = decode_all(BodyKind::Length(5), b"hel").unwrap();
        assert_eq!((out.as_slice(), used, done), (&b"hel"[..], 3, false));
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let body = b"5;name=v\r\nhello\r\n6 ; x\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let (out, used, done) = decode_all(BodyKind::Chunked, body).unwrap();
        assert_eq!(out, b"hello world");
        assert_eq!(&body[used..], b"NEXT");
        assert!(done);
    }

    #[test]
    fn trailers_that_must_not_be_trailers_are_refused() {
        for field in [
            "Content-Length: 5",
            "transfer-encoding: chunked",
            "Host: evil",
            "no colon",
        ] {
            let body = format!("1\r\nx\r\n0\r\n{field}\r\n\r\n");
            let err = decode_all(BodyKind::Chunked, body.as_bytes()).unwrap_err();
            assert_eq!(err.status, 400, "{field}");
        }
        let body = b"1\r\nx\r\n0\r\nX-Checksum: 1\r\nServer-Timing: a\r\n\r\n";
        assert!(decode_all(BodyKind::Chunked, body).unwrap().2);
    }

    #[test]
    fn chunked_byte_by_byte() {
        let body = b"a\r\n0123456789\r\nA\r\n0123456789\r\n0\r\n\r\n";
        let mut d = Decoder::new(BodyKind::Chunked);
        let mut out = Vec::new();
        let mut pending = Vec::new();
        for &b in body.iter() {
            pending.push(b);
            let used = d.decode_into(&pending, &mut out).unwrap();
            pending.drain(..used);
        }
        assert!(d.is_done());
        assert!(pending.is_empty());
        assert_eq!(out, b"01234567890123456789");
    }

    #[test]
    fn bad_chunks_are_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"-5\r\n",
            b"ffffffffffffffffff\r\n",
            b"5 x\r\n",
            b"0\r\nX: a\n\r\n",
        ] {
            assert!(decode_all(BodyKind::Chunked, bad).is_err(), "{bad:?}");
        }
        let long = vec![b'1'; MAX_CHUNK_LINE + 1];
        assert!(decode_all(BodyKind::Chunked, &long).is_err());
    }

    #[test]
    fn a_limited_decoder_refuses_the_byte_past_the_limit() {
        let mut out = Vec::new();
        let mut d = Decoder::new(BodyKind::Chunked).limited(Some(4));
        assert_eq!(d.decode_into(b"4\r\nabcd\r\n", &mut out), Ok(9));
        assert_eq!(
            d.decode_into(b"1\r\ne\r\n", &mut out).map_err(|e| e.status),
            Err(413)
        );
        let mut d = Decoder::new(BodyKind::Length(4)).limited(Some(4));
        out.clear();
        assert_eq!(d.decode_into(b"abcd", &mut out), Ok(4));
        assert!(d.is_done());
    }
}
