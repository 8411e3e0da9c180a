//! Responses on their way out: turbo's own buffer (heads, chunk framing, small
//! bodies) with large body chunks lent by Python spliced in at their offsets.
//! They reach the kernel in one vectored write, the lent ones straight from the
//! bytes objects' memory.

use compio::BufResult;
use compio::buf::IoBuf;
use compio::io::AsyncWriteExt;

use super::stream::{Stream, WRITE_STALL};
use crate::python::lent::LentBytes;

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
    pub async fn write_spliced(&self, out: &mut Vec<u8>, lent: &mut Lent) -> bool {
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
        let mut writer = self;
        match compio::time::timeout(WRITE_STALL, writer.write_vectored_all(parts)).await {
            Ok(BufResult(Ok(()), mut parts)) => {
                if let Some(Part::Own(mut first)) = parts.drain(..).next() {
                    first.clear();
                    *out = first;
                }
                true
            }
            _ => false,
        }
    }
}
