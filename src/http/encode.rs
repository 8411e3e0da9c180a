//! Response framing: the status line, the headers turbo adds (Date, Server,
//! Content-Length or Transfer-Encoding, Connection), chunk framing, and the canned
//! error responses.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{HttpError, reason};

/// The interim response that lets a client send the body it held back.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

pub const SERVER: &[u8] = b"turbo";

/// How a response body is delimited on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Framing {
    /// The length is known up front.
    Length(u64),
    /// HTTP/1.1 with no length: chunked transfer coding.
    Chunked,
    /// HTTP/1.0 with no length: the body ends when the connection closes.
    Close,
    /// HEAD, 1xx, 204 and 304: no body, whatever the headers say.
    #[default]
    None,
}

impl Framing {
    /// Picks the framing for a response whose length may be unknown.
    pub fn choose(minor: u8, length: Option<u64>, bodyless: bool) -> Framing {
        match (bodyless, length) {
            (true, _) => Framing::None,
            (false, Some(n)) => Framing::Length(n),
            (false, None) if minor == 1 => Framing::Chunked,
            (false, None) => Framing::Close,
        }
    }
}

/// Whether a status forbids a body (RFC 9110 6.4.1).
pub fn status_has_no_body(status: u16) -> bool {
    (100..200).contains(&status) || status == 204 || status == 304
}

/// The IMF-fixdate for the current second, formatted once per second per shard.
pub struct DateCache {
    second: u64,
    text: [u8; 29],
}

impl Default for DateCache {
    fn default() -> Self {
        let mut cache = DateCache {
            second: u64::MAX,
            text: [b' '; 29],
        };
        cache.refresh();
        cache
    }
}

impl DateCache {
    pub fn get(&mut self) -> &[u8] {
        self.refresh();
        &self.text
    }

    fn refresh(&mut self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if now != self.second {
            self.second = now;
            self.text = imf_fixdate(now);
        }
    }
}

/// The year, month (1-12) and day of the month `days` after 1970-01-01
/// (Howard Hinnant's algorithm).
pub fn civil_date(days: u64) -> (u64, usize, u64) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as usize;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u64;
    (year, month, day)
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` for a Unix time.
pub fn imf_fixdate(secs: u64) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = secs / 86400;
    let rem = secs % 86400;
    let (year, month, day) = civil_date(days);

    let mut out = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    out[..3].copy_from_slice(DAYS[(days % 7) as usize]);
    let two = |v: u64| [b'0' + (v / 10 % 10) as u8, b'0' + (v % 10) as u8];
    out[5..7].copy_from_slice(&two(day));
    out[8..11].copy_from_slice(MONTHS[month - 1]);
    out[12..14].copy_from_slice(&two(year / 100));
    out[14..16].copy_from_slice(&two(year));
    out[17..19].copy_from_slice(&two(rem / 3600));
    out[20..22].copy_from_slice(&two(rem / 60 % 60));
    out[23..25].copy_from_slice(&two(rem % 60));
    out
}

/// Writes the status line. `status` is the app's `"200 OK"` text.
pub fn status_line(out: &mut Vec<u8>, minor: u8, status: &[u8]) {
    out.extend_from_slice(if minor == 0 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.extend_from_slice(status);
    out.extend_from_slice(b"\r\n");
}

pub fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes turbo's own headers and the blank line that ends the head. `date` and
/// `server` are None/false when the app sent its own.
pub fn finish_head(
    out: &mut Vec<u8>,
    framing: Framing,
    keep_alive: bool,
    minor: u8,
    date: Option<&[u8]>,
    server: bool,
) {
    if server {
        header(out, b"Server", SERVER);
    }
    if let Some(date) = date {
        header(out, b"Date", date);
    }
    match framing {
        Framing::Length(n) => {
            header(
                out,
                b"Content-Length",
                itoa::Buffer::new().format(n).as_bytes(),
            );
        }
        Framing::Chunked => header(out, b"Transfer-Encoding", b"chunked"),
        Framing::Close | Framing::None => {}
    }
    match (keep_alive, minor) {
        (false, _) => header(out, b"Connection", b"close"),
        (true, 0) => header(out, b"Connection", b"keep-alive"),
        (true, _) => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends the size line of a chunk of `len` bytes, which must follow it with
/// a CRLF.
pub fn chunk_size(out: &mut Vec<u8>, len: usize) {
    let mut size = [0u8; 16];
    let mut i = size.len();
    let mut n = len;
    loop {
        i -= 1;
        size[i] = b"0123456789abcdef"[n % 16];
        n /= 16;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&size[i..]);
    out.extend_from_slice(b"\r\n");
}

pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// A complete plain-text response for an error turbo produces itself. It always
/// closes the connection.
pub fn error_response(out: &mut Vec<u8>, err: HttpError, date: &[u8]) {
    let body = format!("{} {}: {}\n", err.status, reason(err.status), err.detail);
    status_line(
        out,
        1,
        format!("{} {}", err.status, reason(err.status)).as_bytes(),
    );
    header(out, b"Content-Type", b"text/plain; charset=utf-8");
    finish_head(
        out,
        Framing::Length(body.len() as u64),
        false,
        1,
        Some(date),
        true,
    );
    out.extend_from_slice(body.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(&imf_fixdate(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(&imf_fixdate(784_111_777), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(
            &imf_fixdate(1_709_210_096),
            b"Thu, 29 Feb 2024 12:34:56 GMT"
        );
        assert_eq!(
            &imf_fixdate(4_102_444_799),
            b"Thu, 31 Dec 2099 23:59:59 GMT"
        );
    }

    #[test]
    fn framing_choice() {
        assert_eq!(Framing::choose(1, Some(3), false), Framing::Length(3));
        assert_eq!(Framing::choose(1, None, false), Framing::Chunked);
        assert_eq!(Framing::choose(0, None, false), Framing::Close);
        assert_eq!(Framing::choose(1, Some(3), true), Framing::None);
    }

    #[test]
    fn heads() {
        let mut out = Vec::new();
        status_line(&mut out, 1, b"200 OK");
        header(&mut out, b"Content-Type", b"text/plain");
        finish_head(&mut out, Framing::Chunked, true, 1, Some(b"D"), true);
        for data in [&b"hello"[..], &[b'x'; 300]] {
            chunk_size(&mut out, data.len());
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(LAST_CHUNK);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nServer: turbo\r\nDate: D\r\n\
             Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n12c\r\n{}\r\n0\r\n\r\n",
                "x".repeat(300)
            )
        );
        let mut out = Vec::new();
        status_line(&mut out, 0, b"200 OK");
        finish_head(&mut out, Framing::Length(2), true, 0, Some(b"D"), true);
        assert!(
            String::from_utf8(out)
                .unwrap()
                .ends_with("Content-Length: 2\r\nConnection: keep-alive\r\n\r\n")
        );
    }

    #[test]
    fn errors_close() {
        let mut out = Vec::new();
        error_response(
            &mut out,
            HttpError::new(431, "too many header fields"),
            b"D",
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("too many header fields\n"));
    }
}
