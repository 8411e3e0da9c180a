//! Responses on their way out: turbo's own buffer (heads, chunk framing, small
//! bodies) with large body chunks lent by Python spliced in at their offsets.
//! They reach the kernel in one vectored write, the lent ones straight from the
//! bytes objects' memory.

use compio::BufResult;
use std::rc::Rc;

use compio::buf::{IoBuf, IoVectoredBuf};
use compio::io::AsyncWriteZerocopy;
use compio::net::TcpStream;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::encode::{self, Framing};
use super::stream::{Endpoints, Stream, progress, stalled, write_stall};
use crate::config::SendZerocopy;
use crate::python::lent::{LEND_MIN, LentBytes};

/// Lent buffers, each going out after the first `at` bytes of the buffer
/// they belong to.
#[derive(Default)]
pub struct Lent(Vec<(usize, LentBytes)>);

impl Lent {
    pub fn push(&mut self, at: usize, buf: LentBytes) {
        self.0.push((at, buf));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The bytes lent.
    pub fn len(&self) -> usize {
        self.0.iter().map(|(_, b)| b.buf_len()).sum()
    }

    /// Takes `other`'s buffers, whose own bytes were appended to ours at `by`.
    pub fn append(&mut self, other: &mut Lent, by: usize) {
        self.0
            .extend(other.0.drain(..).map(|(at, buf)| (at + by, buf)));
    }
}

/// Appends a body chunk to `out` in the response's framing, WSGI's and
/// ASGI's alike, and returns the body bytes it took. A Content-Length cuts
/// what goes past it (`remaining` counts down). A large chunk that is a
/// `bytes` object (`lend`) is lent instead of copied.
pub fn append_body(
    out: &mut Vec<u8>,
    lent: &mut Lent,
    framing: Framing,
    remaining: &mut Option<u64>,
    body: &[u8],
    lend: Option<&Bound<'_, PyBytes>>,
) -> u64 {
    let take = match framing {
        Framing::None => return 0,
        Framing::Length(_) => {
            let left = remaining.unwrap_or(0);
            let take = (body.len() as u64).min(left) as usize;
            if take < body.len() {
                log::error!(
                    "The application sent more bytes than its Content-Length; the rest is dropped"
                );
            }
            *remaining = Some(left - take as u64);
            take
        }
        Framing::Chunked | Framing::Close => body.len(),
    };
    if take == 0 {
        return 0;
    }
    let chunked = framing == Framing::Chunked;
    if chunked {
        encode::chunk_size(out, take);
    }
    match lend.filter(|_| take >= LEND_MIN) {
        Some(bytes) => lent.push(out.len(), LentBytes::new(bytes, take)),
        None => out.extend_from_slice(&body[..take]),
    }
    if chunked {
        out.extend_from_slice(b"\r\n");
    }
    take as u64
}

enum Part {
    Own(Vec<u8>),
    Lent(LentBytes),
}

impl IoBuf for Part {
    fn as_init(&self) -> &[u8] {
        match self {
            Part::Own(v) => v,
            Part::Lent(b) => b.as_init(),
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

/// Whether a connection's large bodies go out by send_zc: with `auto`, to a
/// client over a real network. On loopback the kernel copies anyway, at the
/// receiver, so send_zc there only adds its notification (measured: 11% more
/// CPU for a 1 MiB body).
pub fn zerocopy_for(when: SendZerocopy, ends: &Endpoints) -> bool {
    match when {
        SendZerocopy::Never => false,
        SendZerocopy::Always => true,
        SendZerocopy::Auto => {
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
        let Ok(BufResult(res, release)) = compio::time::timeout(write_stall(), send).await else {
            stalled();
            return None;
        };
        released.push(release);
        if !progress(res, &mut sent) {
            return None;
        }
    }
    for release in released {
        if compio::time::timeout(write_stall(), release).await.is_err() {
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
