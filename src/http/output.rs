//! Responses on their way out: turbo's own buffer (heads, chunk framing, small
//! bodies) with large body chunks lent by Python spliced in at their offsets.
//! They reach the kernel in one vectored write, the lent ones straight from the
//! bytes objects' memory.

use compio::BufResult;
use std::rc::Rc;

use compio::buf::{IoBuf, IoVectoredBuf};
use compio::io::AsyncWriteZerocopy;
use compio::net::TcpStream;

use super::encode::{self, Framing};
use super::sendfile::FileSpan;
use super::stream::{Endpoints, Stream, progress, stalled, write_stall};

/// Body chunks shorter than this are copied: for them a reference and an
/// iovec cost more than the copy saves.
pub const LEND_MIN: usize = 16 * 1024;

/// Memory a bridge lends for one write: the buffer stays valid and unchanged
/// for as long as the loan lives, and dropping the loan gives it back.
pub trait Loan: Send {
    fn bytes(&self) -> &[u8];
}

/// Lent buffers, each going out after the first `at` bytes of the buffer
/// they belong to.
#[derive(Default)]
pub struct Lent(Vec<(usize, Box<dyn Loan>)>);

impl Lent {
    pub fn push(&mut self, at: usize, buf: Box<dyn Loan>) {
        self.0.push((at, buf));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The bytes lent.
    pub fn len(&self) -> usize {
        self.0.iter().map(|(_, b)| b.bytes().len()).sum()
    }

    /// Takes `other`'s buffers, whose own bytes were appended to ours at `by`.
    pub fn append(&mut self, other: &mut Lent, by: usize) {
        self.0
            .extend(other.0.drain(..).map(|(at, buf)| (at + by, buf)));
    }
}

/// What the request says about how its response may be framed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Meta {
    pub minor: u8,
    pub is_head: bool,
    /// The connection may carry another request: the client allows it and
    /// the server is not stopping.
    pub keep_alive: bool,
}

/// One response's framing, the same for every bridge. It picks the framing
/// when the head is finished, frames each body part, cuts what goes past a
/// Content-Length, and notes a body that ends short of it: the client would
/// wait for the missing bytes, so the connection then closes.
#[derive(Debug, Default)]
pub struct Framer {
    meta: Meta,
    framing: Framing,
    /// With a Content-Length: body bytes still owed.
    remaining: Option<u64>,
    /// The connection may carry another request after this response.
    pub keep_alive: bool,
    /// The status, once the head is written; 0 before.
    pub status: u16,
    /// Body bytes framed so far.
    pub sent: u64,
}

impl Framer {
    pub fn new(meta: Meta) -> Framer {
        Framer {
            meta,
            framing: Framing::None,
            remaining: None,
            keep_alive: meta.keep_alive,
            status: 0,
            sent: 0,
        }
    }

    pub fn meta(&self) -> Meta {
        self.meta
    }

    pub fn head_sent(&self) -> bool {
        self.status != 0
    }

    /// Ends a head whose status line and app headers are already in `out`:
    /// picks the framing from the app's Content-Length (or a length known
    /// from the body) and writes turbo's own headers. `date` and `server`
    /// are None/false when the app sent its own.
    pub fn finish_head(
        &mut self,
        out: &mut Vec<u8>,
        status: u16,
        length: Option<u64>,
        date: Option<&[u8]>,
        server: bool,
    ) {
        let minor = self.meta.minor;
        self.framing = Framing::choose(minor, length, encode::status_has_no_body(status));
        if self.framing == Framing::Close {
            self.keep_alive = false;
        }
        self.remaining = match self.framing {
            Framing::Length(n) => Some(n),
            _ => None,
        };
        encode::finish_head(out, self.framing, self.keep_alive, minor, date, server);
        self.status = status;
    }

    /// Whether body bytes go on the wire: not for HEAD, nor for a status
    /// that has no body.
    pub fn wants_body(&self) -> bool {
        !self.meta.is_head && self.framing != Framing::None
    }

    /// Appends a body part to `out` in the response's framing. A Content-Length
    /// cuts what goes past it. A large part that `lend` can lend goes out from
    /// its own memory instead of a copy: `lend` gets the length to lend.
    pub fn body<L: Loan + 'static>(
        &mut self,
        out: &mut Vec<u8>,
        lent: &mut Lent,
        body: &[u8],
        lend: Option<impl FnOnce(usize) -> L>,
    ) {
        if !self.wants_body() {
            return;
        }
        let take = match self.remaining {
            Some(left) => {
                let take = (body.len() as u64).min(left) as usize;
                if take < body.len() {
                    log::error!(
                        "The application sent more bytes than its Content-Length; the rest is dropped"
                    );
                }
                self.remaining = Some(left - take as u64);
                take
            }
            None => body.len(),
        };
        if take == 0 {
            return;
        }
        let chunked = self.framing == Framing::Chunked;
        if chunked {
            encode::chunk_size(out, take);
        }
        match lend.filter(|_| take >= LEND_MIN) {
            Some(lend) => lent.push(out.len(), Box::new(lend(take))),
            None => out.extend_from_slice(&body[..take]),
        }
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
        self.sent += take as u64;
    }

    /// A body that is a file, after a head whose length came from its size:
    /// the span cut to the Content-Length, or None when nothing of it goes out.
    pub fn file(&mut self, mut span: FileSpan) -> Option<FileSpan> {
        if !self.wants_body() {
            return None;
        }
        if let Some(left) = self.remaining {
            span.truncate(left);
            self.remaining = Some(left - span.len());
        }
        self.sent += span.len();
        (span.len() > 0).then_some(span)
    }

    /// Ends the body: the last chunk, or, when a Content-Length was not met,
    /// a connection that must close.
    pub fn end(&mut self, out: &mut Vec<u8>) {
        if !self.wants_body() {
            return;
        }
        match (self.framing, self.remaining) {
            (Framing::Chunked, _) => out.extend_from_slice(encode::LAST_CHUNK),
            (_, Some(left)) if left > 0 => {
                log::error!("The application sent {left} bytes fewer than its Content-Length");
                self.keep_alive = false;
            }
            _ => {}
        }
        self.remaining = Some(0);
    }
}

enum Part {
    Own(Vec<u8>),
    Lent(Box<dyn Loan>),
}

impl IoBuf for Part {
    fn as_init(&self) -> &[u8] {
        match self {
            Part::Own(v) => v,
            Part::Lent(b) => b.bytes(),
        }
    }
}

impl Stream {
    /// Writes `out` with `lent` spliced in and empties both, keeping `out`'s
    /// allocation; false when the client is gone or stalled.
    /// `zerocopy`: this connection's large lent bodies go out by send_zc.
    pub async fn write_spliced(&self, out: &mut Vec<u8>, lent: &mut Lent, zerocopy: bool) -> bool {
        if lent.is_empty() {
            return self.write_out(out).await;
        }
        let mut tail = Vec::with_capacity(2 * lent.0.len());
        for (at, buf) in lent.0.drain(..).rev() {
            tail.push(Part::Own(out.split_off(at.min(out.len()))));
            tail.push(Part::Lent(buf));
        }
        let mut parts = Vec::with_capacity(tail.len() + 1);
        parts.push(Part::Own(std::mem::take(out)));
        parts.extend(tail.into_iter().rev().filter(|p| !p.as_init().is_empty()));
        let written = match self {
            Stream::Tcp(tcp) if zerocopy && lent_len(&parts) >= ZEROCOPY_MIN => {
                write_all_zerocopy(tcp, parts).await
            }
            _ => self.write_all_vectored(parts).await,
        };
        match written {
            Some(mut parts) => {
                if let Some(Part::Own(mut first)) = parts.drain(..).next() {
                    first.clear();
                    *out = first;
                }
                true
            }
            None => false,
        }
    }
}

/// Lent bytes from which a write goes out with MSG_ZEROCOPY (io_uring's
/// send_zc): below this, pinning pages and waiting for the kernel's
/// notification cost more than the copy saves (the kernel's advice is
/// writes of about 10 KB and up).
const ZEROCOPY_MIN: usize = 64 * 1024;

fn lent_len(parts: &[Part]) -> usize {
    parts
        .iter()
        .filter(|p| matches!(p, Part::Lent(_)))
        .map(|p| p.buf_len())
        .sum()
}

/// When large lent bodies go out by send_zc (`--send-zerocopy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Zerocopy {
    /// To clients that are not on loopback.
    Auto,
    Always,
    Never,
}

/// Whether a connection's large bodies go out by send_zc: with `auto`, to a
/// client over a real network. On loopback the kernel copies anyway, at the
/// receiver, so send_zc there only adds its notification (measured: 11% more
/// CPU for a 1 MiB body).
pub fn zerocopy_for(when: Zerocopy, ends: &Endpoints) -> bool {
    match when {
        Zerocopy::Never => false,
        Zerocopy::Always => true,
        Zerocopy::Auto => {
            matches!(ends, Endpoints::Tcp { peer, .. } if !peer.ip().is_loopback())
        }
    }
}

/// Writes all the parts through send_zc. Each send starts where the last
/// stopped without waiting for the kernel to be done with the pages of the
/// last (that would stall the pipe for a round trip per send); the parts are
/// shared by every send in flight and come back once all have been released.
async fn write_all_zerocopy(tcp: &TcpStream, parts: Vec<Part>) -> Option<Vec<Part>> {
    let total = parts.total_len();
    let parts = Rc::new(parts);
    let mut released = Vec::new();
    let mut sent = 0;
    while sent < total {
        let from = Shared {
            parts: parts.clone(),
            from: sent,
        };
        let mut writer = tcp;
        let send = writer.write_zerocopy_vectored(from);
        let Ok(BufResult(res, release)) = super::deadline::timeout(write_stall(), send).await
        else {
            stalled();
            return None;
        };
        released.push(release);
        if !progress(res, &mut sent) {
            return None;
        }
    }
    for release in released {
        if super::deadline::timeout(write_stall(), release)
            .await
            .is_err()
        {
            stalled();
            return None;
        }
    }
    Rc::try_unwrap(parts).ok()
}

/// The parts from byte `from` on, for one send_zc.
struct Shared {
    parts: Rc<Vec<Part>>,
    from: usize,
}

impl IoVectoredBuf for Shared {
    fn iter_slice(&self) -> impl Iterator<Item = &[u8]> {
        let mut skip = self.from;
        self.parts.iter().filter_map(move |p| {
            let b = p.as_init();
            let cut = skip.min(b.len());
            skip -= cut;
            (cut < b.len()).then(|| &b[cut..])
        })
    }
}
