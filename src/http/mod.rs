//! HTTP/1.1 as RFC 9112 says, and nothing above it: request heads (`parse`),
//! request bodies (`body`), response framing (`encode`, `output`) and
//! WebSocket framing (`websocket`), each testable on bytes alone, under one
//! connection driver (`conn`) that WSGI and ASGI plug into as handlers. No
//! file here knows Python, the configuration or the shard.

pub mod blocking_body;
pub mod body;
pub mod conn;
pub mod deadline;
pub mod drain;
pub mod encode;
#[cfg(test)]
mod fuzz;
pub mod handoff;
pub mod output;
pub mod parse;
pub mod proxy;
pub mod proxy_protocol;
pub mod sendfile;
pub mod spool;
pub mod stream;
pub mod target;
pub mod tls;
pub mod websocket;

/// A request the server refuses, with the status that says why. Each one closes the
/// connection, because after it the framing of what follows cannot be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub detail: &'static str,
}

impl HttpError {
    pub const fn new(status: u16, detail: &'static str) -> Self {
        HttpError { status, detail }
    }

    pub const fn bad_request(detail: &'static str) -> Self {
        HttpError::new(400, detail)
    }
}

/// The reason phrase for a status (ASGI apps send only the number).
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}
