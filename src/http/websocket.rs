//! WebSocket framing (RFC 6455), on bytes alone: the opening handshake's
//! accept key, decoding client frames into messages (fragments reassembled,
//! control frames surfaced, sizes and UTF-8 checked) and encoding server
//! frames. The connection side lives with the ASGI bridge.

use base64::Engine;
use sha1::{Digest, Sha1};

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Close codes turbo itself sends.
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
pub const CLOSE_INVALID_DATA: u16 = 1007;
pub const CLOSE_TOO_BIG: u16 = 1009;
pub const CLOSE_INTERNAL_ERROR: u16 = 1011;
/// Reported to the app, never sent: no code in the close frame, or no frame.
pub const CLOSE_NO_STATUS: u16 = 1005;
pub const CLOSE_ABNORMAL: u16 = 1006;

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// A complete message or control frame from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close(u16, String),
}

/// Why the connection must be closed, with the code to send.
#[derive(Debug, PartialEq, Eq)]
pub struct Failure {
    pub code: u16,
    pub reason: &'static str,
}

fn fail(code: u16, reason: &'static str) -> Failure {
    Failure { code, reason }
}

/// One client frame, unmasked.
struct RawFrame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
    /// Bytes of input the frame took.
    len: usize,
}

/// Reassembles client frames into messages.
pub struct Decoder {
    max_size: usize,
    /// The opcode and bytes of a fragmented message in progress.
    partial: Option<(u8, Vec<u8>)>,
}

impl Decoder {
    pub fn new(max_size: usize) -> Decoder {
        Decoder {
            max_size,
            partial: None,
        }
    }

    /// Decodes the next message from the front of `buf`. Returns it with the
    /// bytes consumed, or None with the bytes consumed (fragments taken in)
    /// when more input is needed.
    pub fn decode(&mut self, buf: &[u8]) -> Result<(Option<Incoming>, usize), Failure> {
        let mut used = 0;
        loop {
            let Some(RawFrame {
                fin,
                opcode,
                payload,
                len,
            }) = self.frame(&buf[used..])?
            else {
                return Ok((None, used));
            };
            used += len;
            match opcode {
                OP_PING => return Ok((Some(Incoming::Ping(payload)), used)),
                OP_PONG => return Ok((Some(Incoming::Pong), used)),
                OP_CLOSE => return Ok((Some(close_message(&payload)?), used)),
                OP_TEXT | OP_BINARY => {
                    if self.partial.is_some() {
                        return Err(fail(
                            CLOSE_PROTOCOL_ERROR,
                            "a new message inside a fragmented one",
                        ));
                    }
                    if fin {
                        return Ok((Some(message(opcode, payload)?), used));
                    }
                    self.partial = Some((opcode, payload));
                }
                OP_CONTINUATION => {
                    let Some((first, mut data)) = self.partial.take() else {
                        return Err(fail(
                            CLOSE_PROTOCOL_ERROR,
                            "a continuation with nothing to continue",
                        ));
                    };
                    if data.len() + payload.len() > self.max_size {
                        return Err(fail(CLOSE_TOO_BIG, "message too big"));
                    }
                    data.extend_from_slice(&payload);
                    if fin {
                        return Ok((Some(message(first, data)?), used));
                    }
                    self.partial = Some((first, data));
                }
                _ => return Err(fail(CLOSE_PROTOCOL_ERROR, "unknown opcode")),
            }
        }
    }

    /// One frame, or None if `buf` does not yet hold all of it.
    fn frame(&self, buf: &[u8]) -> Result<Option<RawFrame>, Failure> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let fin = buf[0] & 0x80 != 0;
        if buf[0] & 0x70 != 0 {
            return Err(fail(CLOSE_PROTOCOL_ERROR, "reserved bits set"));
        }
        let opcode = buf[0] & 0x0F;
        if buf[1] & 0x80 == 0 {
            return Err(fail(CLOSE_PROTOCOL_ERROR, "client frames must be masked"));
        }
        let (len, mut pos) = match buf[1] & 0x7F {
            126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
            127 if buf.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&buf[2..10]);
                (u64::from_be_bytes(n), 10)
            }
            126 | 127 => return Ok(None),
            n => (u64::from(n), 2),
        };
        let control = opcode & 0x8 != 0;
        if control && (len > 125 || !fin) {
            return Err(fail(CLOSE_PROTOCOL_ERROR, "bad control frame"));
        }
        let partial = self.partial.as_ref().map_or(0, |(_, d)| d.len() as u64);
        if len.saturating_add(if control { 0 } else { partial }) > self.max_size as u64 {
            return Err(fail(CLOSE_TOO_BIG, "message too big"));
        }
        let len = len as usize;
        if buf.len() < pos + 4 + len {
            return Ok(None);
        }
        let mask = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
        pos += 4;
        let payload = buf[pos..pos + len]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        Ok(Some(RawFrame {
            fin,
            opcode,
            payload,
            len: pos + len,
        }))
    }
}

fn message(opcode: u8, data: Vec<u8>) -> Result<Incoming, Failure> {
    if opcode == OP_TEXT {
        String::from_utf8(data)
            .map(Incoming::Text)
            .map_err(|_| fail(CLOSE_INVALID_DATA, "text is not UTF-8"))
    } else {
        Ok(Incoming::Binary(data))
    }
}

fn close_message(payload: &[u8]) -> Result<Incoming, Failure> {
    match payload {
        [] => Ok(Incoming::Close(CLOSE_NO_STATUS, String::new())),
        [_] => Err(fail(CLOSE_PROTOCOL_ERROR, "a one-byte close payload")),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(fail(CLOSE_PROTOCOL_ERROR, "invalid close code"));
            }
            let reason = std::str::from_utf8(reason)
                .map_err(|_| fail(CLOSE_INVALID_DATA, "close reason is not UTF-8"))?;
            Ok(Incoming::Close(code, reason.to_string()))
        }
    }
}

/// Appends one unmasked, final server frame.
pub fn frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    match payload.len() {
        n @ 0..=125 => out.push(n as u8),
        n @ 126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// Appends a close frame with `code` and a reason cut to fit a control frame.
pub fn close_frame(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut payload = code.to_be_bytes().to_vec();
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    frame(out, OP_CLOSE, &payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn accept_key_from_the_rfc() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn messages_fragments_and_control_frames() {
        let mut d = Decoder::new(1 << 20);
        let mut buf = masked(false, OP_TEXT, b"hel");
        buf.extend(masked(true, OP_PING, b"p"));
        buf.extend(masked(true, OP_CONTINUATION, "lo é".as_bytes()));
        let (ping, used) = d.decode(&buf).unwrap();
        assert_eq!(ping, Some(Incoming::Ping(b"p".to_vec())));
        let (text, rest) = d.decode(&buf[used..]).unwrap();
        assert_eq!(text, Some(Incoming::Text("hello é".into())));
        assert_eq!(used + rest, buf.len());
        let big = vec![7u8; 70_000];
        assert_eq!(
            d.decode(&masked(true, OP_BINARY, &big)).unwrap().0,
            Some(Incoming::Binary(big))
        );
        let mut close = 4000u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"bye");
        assert_eq!(
            d.decode(&masked(true, OP_CLOSE, &close)).unwrap().0,
            Some(Incoming::Close(4000, "bye".into()))
        );
        // Half a frame waits for more.
        let half = masked(true, OP_TEXT, b"abcdef");
        assert_eq!(d.decode(&half[..5]).unwrap(), (None, 0));
    }

    #[test]
    fn violations_get_their_close_codes() {
        let code = |buf: &[u8], max: usize| Decoder::new(max).decode(buf).unwrap_err().code;
        let mut unmasked = masked(true, OP_TEXT, b"x");
        unmasked[1] &= 0x7F;
        assert_eq!(code(&unmasked, 100), CLOSE_PROTOCOL_ERROR);
        assert_eq!(
            code(&masked(true, OP_TEXT, &[0xff, 0xfe]), 100),
            CLOSE_INVALID_DATA
        );
        assert_eq!(
            code(&masked(true, OP_BINARY, &[0; 101]), 100),
            CLOSE_TOO_BIG
        );
        let mut two = masked(false, OP_BINARY, &[0; 60]);
        two.extend(masked(true, OP_CONTINUATION, &[0; 60]));
        assert_eq!(code(&two, 100), CLOSE_TOO_BIG);
        assert_eq!(
            code(&masked(true, OP_CONTINUATION, b"x"), 100),
            CLOSE_PROTOCOL_ERROR
        );
        assert_eq!(
            code(&masked(false, OP_PING, b"x"), 100),
            CLOSE_PROTOCOL_ERROR
        );
        assert_eq!(
            code(&masked(true, OP_CLOSE, &999u16.to_be_bytes()), 100),
            CLOSE_PROTOCOL_ERROR
        );
        assert_eq!(code(&masked(true, 0x3, b""), 100), CLOSE_PROTOCOL_ERROR);
    }

    #[test]
    fn server_frames() {
        let mut out = Vec::new();
        frame(&mut out, OP_TEXT, b"hi");
        assert_eq!(out, b"\x81\x02hi");
        out.clear();
        frame(&mut out, OP_BINARY, &[0; 300]);
        assert_eq!(&out[..4], &[0x82, 126, 1, 44]);
        out.clear();
        close_frame(&mut out, 1000, "");
        assert_eq!(out, b"\x88\x02\x03\xe8");
    }
}
