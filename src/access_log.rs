//! The access log, in Gunicorn's format language (`access_log_format`), so the
//! same format string gives the same line, byte for byte. Parsed once; each
//! request fills an `Entry` and gets one line, written with one write(2).

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use std::fmt::Write;

use base64::Engine;

use crate::http::parse::RequestHead;
use crate::http::target::{percent_decode, split_target};
use crate::logging::sink::Target;

/// Gunicorn's default `access_log_format`.
pub const DEFAULT_FORMAT: &str = r#"%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s""#;

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    /// `%(name)s`; the name as written, `{header}i` and friends included.
    Atom(String),
}

/// A parsed `access_log_format`.
#[derive(Debug, Clone)]
pub struct Format {
    /// The format as given, which Python's logging gets as the message.
    source: String,
    parts: Vec<Part>,
    /// Whether any atom reads a response header (`{name}o`), which costs a copy.
    pub wants_response_headers: bool,
}

/// The atom that holds the whole request as one JSON object
/// (`access_log_json`).
const JSON_ATOM: &str = "json";

impl Format {
    /// `access_log_json`: each line is one JSON object; Python's logging
    /// gets it as the message, `%(json)s`.
    pub fn json() -> Format {
        Format {
            source: format!("%({JSON_ATOM})s"),
            parts: vec![Part::Atom(JSON_ATOM.to_string())],
            wants_response_headers: false,
        }
    }

    pub fn parse(format: &str) -> Result<Format, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = format;
        while let Some(i) = rest.find('%') {
            text.push_str(&rest[..i]);
            rest = &rest[i + 1..];
            if let Some(after) = rest.strip_prefix('%') {
                text.push('%');
                rest = after;
                continue;
            }
            let Some(inner) = rest.strip_prefix('(') else {
                return Err(format!("invalid access_log_format near '%{rest}'"));
            };
            let end = inner
                .find(')')
                .ok_or_else(|| "invalid access_log_format: unclosed '%('".to_string())?;
            let name = &inner[..end];
            // The conversion letter: s (d works on numbers too, as Python does).
            let after = &inner[end + 1..];
            let conv = after.chars().next().unwrap_or(' ');
            if !matches!(conv, 's' | 'd') {
                return Err(format!(
                    "invalid access_log_format conversion '%({name}){conv}'"
                ));
            }
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(Part::Atom(name.to_string()));
            rest = &after[1..];
        }
        text.push_str(rest);
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        let wants_response_headers = parts
            .iter()
            .any(|p| matches!(p, Part::Atom(a) if a.starts_with('{') && a.ends_with("}o")));
        Ok(Format {
            source: format.to_string(),
            parts,
            wants_response_headers,
        })
    }
}

/// What the access log needs of a finished response.
#[derive(Default, Debug, Clone)]
pub struct Outcome {
    pub status: u16,
    /// Body bytes written; None when no head went out.
    pub sent: Option<u64>,
    /// Lower-case names, when the format asks for them.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
}

/// What the access log needs of a request, copied before its head is
/// dropped from the read buffer.
pub struct Request {
    method: Vec<u8>,
    target: Vec<u8>,
    path: String,
    query: Vec<u8>,
    minor: u8,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Request {
    /// `utf8`: the path as ASGI decodes it; otherwise as WSGI's PATH_INFO.
    pub fn capture(buf: &[u8], head: &RequestHead, utf8: bool) -> Request {
        let target = buf[head.target.clone()].to_vec();
        let (path, query) = split_target(&target).unwrap_or((&target[..], b""));
        let decoded = percent_decode(path);
        let path = if utf8 {
            String::from_utf8_lossy(&decoded).into_owned()
        } else {
            latin1(&decoded)
        };
        Request {
            method: buf[head.method.clone()].to_vec(),
            query: query.to_vec(),
            path,
            minor: head.minor,
            headers: head
                .headers
                .iter()
                .map(|(n, v)| (buf[n.clone()].to_vec(), buf[v.clone()].to_vec()))
                .collect(),
            target,
        }
    }
}

/// What one request and its response left for the log.
pub struct Entry<'a> {
    pub remote: &'a str,
    pub method: &'a [u8],
    /// The request target as sent, query included.
    pub target: &'a [u8],
    /// The decoded path (PATH_INFO) and the query string.
    pub path: &'a str,
    pub query: &'a [u8],
    pub minor: u8,
    pub request_headers: &'a [(Vec<u8>, Vec<u8>)],
    pub status: u16,
    /// Body bytes sent; None when no response went out.
    pub sent: Option<u64>,
    /// Lower-case names.
    pub response_headers: &'a [(Vec<u8>, Vec<u8>)],
    pub duration: Duration,
}

/// Gunicorn escapes double quotes in every atom.
fn escaped(text: &str) -> String {
    text.replace('"', "\\\"")
}

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

/// A header's value; the last one wins, as in Gunicorn's atoms.
fn header<'a>(headers: &'a [(Vec<u8>, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .rev()
        .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| v.as_slice())
}

/// `[21/Nov/2026:15:39:00 +0000]`, local time, as Gunicorn's `%(t)s`.
fn timestamp(now: SystemTime) -> String {
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as libc::time_t;
    // SAFETY: localtime_r writes only the struct it is given.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&secs, &mut tm);
        tm
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let offset = tm.tm_gmtoff / 60;
    format!(
        "[{:02}/{}/{:04}:{:02}:{:02}:{:02} {}{:02}{:02}]",
        tm.tm_mday,
        MONTHS[tm.tm_mon.clamp(0, 11) as usize],
        tm.tm_year + 1900,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        if offset < 0 { '-' } else { '+' },
        offset.abs() / 60,
        offset.abs() % 60
    )
}

/// The user of HTTP Basic authentication, as Gunicorn finds it.
fn basic_user(headers: &[(Vec<u8>, Vec<u8>)]) -> Option<String> {
    let value = header(headers, "authorization")?;
    let (scheme, credentials) = value.split_at(value.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(credentials.trim_ascii())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    Some(text.split(':').next().unwrap_or("").to_string())
}

impl Format {
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The atoms Gunicorn passes to its access logger as the record's
    /// arguments: every letter atom, every request and response header
    /// (`{name}i`, `{name}o`), and whatever else the format names.
    pub fn atoms(&self, entry: &Entry<'_>) -> Vec<(String, String)> {
        const LETTERS: [&str; 19] = [
            "h", "l", "u", "t", "r", "s", "m", "U", "q", "H", "b", "B", "f", "a", "T", "D", "M",
            "L", "p",
        ];
        let mut atoms: Vec<(String, String)> = LETTERS
            .iter()
            .map(|name| (name.to_string(), escaped(&self.atom(name, entry))))
            .collect();
        let headers = |list: &[(Vec<u8>, Vec<u8>)], kind: char| {
            list.iter()
                .map(|(n, v)| {
                    let name = format!("{{{}}}{kind}", latin1(n).to_ascii_lowercase());
                    (name, escaped(&latin1(v)))
                })
                .collect::<Vec<_>>()
        };
        atoms.extend(headers(entry.request_headers, 'i'));
        atoms.extend(headers(entry.response_headers, 'o'));
        for part in &self.parts {
            if let Part::Atom(name) = part
                && !atoms.iter().any(|(n, _)| n == name)
            {
                atoms.push((name.clone(), self.value(name, entry)));
            }
        }
        atoms
    }

    /// The log line for `entry`, without the newline.
    pub fn line(&self, entry: &Entry<'_>) -> String {
        let mut out = String::with_capacity(128);
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Atom(name) => out.push_str(&self.value(name, entry)),
            }
        }
        out
    }

    /// An atom as it goes into a line: quotes escaped, as Gunicorn does,
    /// except in the JSON object, which escapes its own strings.
    fn value(&self, name: &str, entry: &Entry<'_>) -> String {
        if name == JSON_ATOM {
            json_line(entry)
        } else {
            escaped(&self.atom(name, entry))
        }
    }

    fn atom(&self, name: &str, e: &Entry<'_>) -> String {
        let protocol = if e.minor == 0 { "HTTP/1.0" } else { "HTTP/1.1" };
        let micros = e.duration.as_micros();
        let dash = || "-".to_string();
        match name {
            "h" => e.remote.to_string(),
            "l" => dash(),
            "u" => basic_user(e.request_headers).unwrap_or_else(dash),
            "t" => timestamp(SystemTime::now()),
            "r" => format!("{} {} {protocol}", latin1(e.method), latin1(e.target)),
            "s" => e.status.to_string(),
            "m" => latin1(e.method),
            "U" => e.path.to_string(),
            "q" => latin1(e.query),
            "H" => protocol.to_string(),
            "b" => e.sent.map_or_else(dash, |n| n.to_string()),
            "B" => e.sent.map_or_else(|| "None".to_string(), |n| n.to_string()),
            "f" => header(e.request_headers, "referer").map_or_else(dash, latin1),
            "a" => header(e.request_headers, "user-agent").map_or_else(dash, latin1),
            "T" => e.duration.as_secs().to_string(),
            "D" => micros.to_string(),
            "M" => (micros / 1000).to_string(),
            "L" => format!("{}.{:06}", e.duration.as_secs(), e.duration.subsec_micros()),
            "p" => format!("<{}>", std::process::id()),
            _ => {
                let lower = name.to_ascii_lowercase();
                if let Some(h) = lower.strip_prefix('{').and_then(|n| n.strip_suffix("}i")) {
                    header(e.request_headers, h).map_or_else(dash, latin1)
                } else if let Some(h) = lower.strip_prefix('{').and_then(|n| n.strip_suffix("}o")) {
                    header(e.response_headers, h).map_or_else(dash, latin1)
                } else if let Some(var) = lower.strip_prefix('{').and_then(|n| n.strip_suffix("}e"))
                {
                    environ(var, e).unwrap_or_else(dash)
                } else {
                    dash()
                }
            }
        }
    }
}

/// Bytes from the request as text: UTF-8 when they are, otherwise one
/// character per byte (latin-1, as WSGI reads headers), so nothing is lost.
fn text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.into(),
        Err(_) => latin1(bytes).into(),
    }
}

/// Appends `s` as a JSON string: quotes, backslashes and every control
/// character escaped, and U+2028/U+2029, which some JSON readers take for
/// line ends.
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{0}'..='\u{1f}' | '\u{7f}' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_optional(out: &mut String, value: Option<&[u8]>) {
    match value {
        Some(v) => json_string(out, &text(v)),
        None => out.push_str("null"),
    }
}

/// `2026-12-05T13:45:07.123Z`: UTC, ISO 8601, to the millisecond.
fn iso8601(now: SystemTime) -> String {
    let since = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = crate::http::encode::civil_date(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}

/// The request as one JSON object, without the newline (`access_log_json`).
fn json_line(e: &Entry<'_>) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("{\"time\":\"");
    out.push_str(&iso8601(SystemTime::now()));
    out.push_str("\",\"remote\":");
    json_string(&mut out, e.remote);
    out.push_str(",\"method\":");
    json_string(&mut out, &text(e.method));
    out.push_str(",\"path\":");
    json_string(&mut out, e.path);
    out.push_str(",\"query\":");
    json_string(&mut out, &text(e.query));
    out.push_str(",\"protocol\":");
    json_string(&mut out, if e.minor == 0 { "HTTP/1.0" } else { "HTTP/1.1" });
    let _ = write!(
        out,
        ",\"status\":{},\"bytes\":{},\"duration_ms\":{:.3},\"referer\":",
        e.status,
        e.sent.unwrap_or(0),
        e.duration.as_secs_f64() * 1000.0
    );
    json_optional(&mut out, header(e.request_headers, "referer"));
    out.push_str(",\"user_agent\":");
    json_optional(&mut out, header(e.request_headers, "user-agent"));
    out.push_str(",\"request_id\":");
    json_optional(&mut out, header(e.request_headers, "x-request-id"));
    out.push('}');
    out
}

/// `{var}e`: a key of the request's WSGI environ, by lower-case name, as
/// Gunicorn looks it up. The CGI keys turbo can rebuild are known.
fn environ(var: &str, e: &Entry<'_>) -> Option<String> {
    let protocol = if e.minor == 0 { "HTTP/1.0" } else { "HTTP/1.1" };
    Some(match var {
        "request_method" => latin1(e.method),
        "path_info" => e.path.to_string(),
        "query_string" => latin1(e.query),
        "raw_uri" | "request_uri" => latin1(e.target),
        "server_protocol" => protocol.to_string(),
        "remote_addr" => e.remote.to_string(),
        "script_name" => std::env::var("SCRIPT_NAME").unwrap_or_default(),
        "wsgi.url_scheme" => "http".to_string(),
        "content_type" => latin1(header(e.request_headers, "content-type")?),
        "content_length" => latin1(header(e.request_headers, "content-length")?),
        _ => {
            let name = var.strip_prefix("http_")?.replace('_', "-");
            latin1(header(e.request_headers, &name)?)
        }
    })
}

/// Where finished requests are reported, as Gunicorn's logger reports them:
/// access log lines (standard output, or a file that USR1 reopens) and the
/// StatsD request metrics.
pub struct AccessLog {
    pub format: Format,
    /// Whether lines are written at all (`accesslog` is set).
    lines: bool,
    /// Records go to Python's logging.
    python: bool,
    path: Option<std::path::PathBuf>,
    /// The open log file as the sink writes to it; None: standard output.
    file: Mutex<Option<Target>>,
    statsd: Option<&'static crate::statsd::Statsd>,
}

impl AccessLog {
    /// `target` is `-` for standard output, a file path, or None for metrics
    /// only. None when there is nothing to report to. With Python's logging
    /// configured, records go to its `gunicorn.access` logger instead, which
    /// has `target` among its handlers.
    pub fn open(target: Option<&str>, mut format: Format) -> std::io::Result<Option<AccessLog>> {
        let statsd = crate::statsd::get();
        let python = crate::logging::python::active();
        if target.is_none() && statsd.is_none() && !python {
            return Ok(None);
        }
        let path = target
            .filter(|t| *t != "-" && !python)
            .map(std::path::PathBuf::from);
        // Python's access records carry every response header, as Gunicorn's do.
        format.wants_response_headers =
            (format.wants_response_headers && target.is_some()) || python;
        let log = AccessLog {
            format,
            lines: target.is_some() || python,
            python,
            path,
            file: Mutex::new(None),
            statsd,
        };
        log.reopen()?;
        Ok(Some(log))
    }

    /// Opens the file again (after log rotation); false for standard output.
    pub fn reopen(&self) -> std::io::Result<bool> {
        if let Some(path) = &self.path {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            if let Ok(mut slot) = self.file.lock() {
                *slot = Some(Target::for_file(file));
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// Logs a finished request from `remote`, `duration` after it began.
    pub fn log(&self, remote: &str, request: &Request, outcome: &Outcome, duration: Duration) {
        if let Some(statsd) = self.statsd {
            statsd.request(outcome.status, duration);
        }
        if !self.lines {
            return;
        }
        self.write(&Entry {
            remote,
            method: &request.method,
            target: &request.target,
            path: &request.path,
            query: &request.query,
            minor: request.minor,
            request_headers: &request.headers,
            status: outcome.status,
            sent: outcome.sent,
            response_headers: &outcome.headers,
            duration,
        });
    }

    fn write(&self, entry: &Entry<'_>) {
        if self.python {
            let record = crate::logging::python::Entry::Access(self.format.atoms(entry));
            if crate::logging::python::send(record).is_ok() {
                return;
            }
        }
        let mut line = self.format.line(entry);
        line.push('\n');
        let target = self
            .file
            .lock()
            .ok()
            .and_then(|f| f.clone())
            .unwrap_or(Target::Stdout);
        crate::logging::sink::write(target, line.into_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(headers: &'a [(Vec<u8>, Vec<u8>)], out: &'a [(Vec<u8>, Vec<u8>)]) -> Entry<'a> {
        Entry {
            remote: "127.0.0.1",
            method: b"GET",
            target: b"/a%20b?x=1",
            path: "/a b",
            query: b"x=1",
            minor: 1,
            request_headers: headers,
            status: 200,
            sent: Some(13),
            response_headers: out,
            duration: Duration::from_micros(1_234_567),
        }
    }

    #[test]
    fn gunicorns_default_format() {
        let headers = vec![
            (b"User-Agent".to_vec(), b"curl/8 \"x\"".to_vec()),
            (b"Authorization".to_vec(), b"Basic dXNlcjpwYXNz".to_vec()),
        ];
        let f = Format::parse(DEFAULT_FORMAT).unwrap();
        let line = f.line(&entry(&headers, &[]));
        let (start, end) = line.split_once(" [").unwrap();
        assert_eq!(start, "127.0.0.1 - user");
        let rest = end.split_once("] ").unwrap().1;
        assert_eq!(
            rest,
            r#""GET /a%20b?x=1 HTTP/1.1" 200 13 "-" "curl/8 \"x\"""#
        );
    }

    #[test]
    fn every_atom() {
        let out = vec![(b"content-type".to_vec(), b"text/plain".to_vec())];
        let f = Format::parse("%(m)s %(U)s %(q)s %(H)s %(s)s %(B)s %(b)s %(T)s %(M)s %(D)s %(L)s %({content-type}o)s %({x-missing}i)s %({Content-Type}O)s 100%%")
            .unwrap();
        assert!(f.wants_response_headers);
        assert_eq!(
            f.line(&entry(&[], &out)),
            "GET /a b x=1 HTTP/1.1 200 13 13 1 1234 1234567 1.234567 text/plain - text/plain 100%"
        );
        assert!(Format::parse("%(h)x").is_err());
        assert!(Format::parse("%h").is_err());
    }

    #[test]
    fn json_lines_escape_whatever_the_request_carries() {
        let headers = vec![
            (b"User-Agent".to_vec(), b"a \"q\" \\ b\tc\x01".to_vec()),
            (b"X-Request-ID".to_vec(), b"abc-1".to_vec()),
            (b"Referer".to_vec(), b"caf\xe9".to_vec()),
        ];
        let line = Format::json().line(&entry(&headers, &[]));
        let (time, rest) = line
            .strip_prefix("{\"time\":\"")
            .unwrap()
            .split_once('"')
            .unwrap();
        assert_eq!((time.len(), &time[10..11], &time[19..20]), (24, "T", "."));
        assert_eq!(
            rest,
            r#","remote":"127.0.0.1","method":"GET","path":"/a b","query":"x=1","protocol":"HTTP/1.1","status":200,"bytes":13,"duration_ms":1234.567,"referer":"café","user_agent":"a \"q\" \\ b\tc\u0001","request_id":"abc-1"}"#
        );
    }

    #[test]
    fn iso8601_dates() {
        let at = |secs| SystemTime::UNIX_EPOCH + Duration::from_millis(secs);
        assert_eq!(iso8601(at(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(at(951_782_400_123)), "2000-02-29T00:00:00.123Z");
        assert_eq!(iso8601(at(1_796_477_107_000)), "2026-12-05T13:25:07.000Z");
    }
}
