//! HTTP/1.1 as RFC 9112 says: request heads (`parse`), request bodies (`body`), and
//! response framing (`encode`), kept apart from the connection state machine (`conn`)
//! so each can be tested on bytes alone.

pub mod body;
pub mod conn;
pub mod encode;
pub mod parse;

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

/// The reason phrase for the statuses turbo itself produces.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}
