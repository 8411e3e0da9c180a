//! A Python bytes object lent to the kernel as a write buffer, so a large
//! response body goes out from the object's own memory instead of a copy in
//! turbo's. Bytes are immutable, so their memory may be read without the GIL
//! while a reference keeps the object alive. The reference is a `Held`: a
//! write cancelled by a stall timeout gives its buffer back inside the kernel
//! wait, with no thread state attached, and `Held` defers the release until
//! the thread state is back.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::Held;
use crate::http::output::Loan;

pub struct LentBytes {
    _owner: Held<PyBytes>,
    ptr: *const u8,
    len: usize,
}

// SAFETY: the memory is immutable and kept alive by `_owner`. A pool thread
// hands these to its shard thread, which is attached to the same interpreter
// for its life. Where that thread has released the GIL (`release_gil`),
// `Held` defers the decref until it has it back, or until a pool thread
// takes it (`Graveyard`), so the reference is released in the object's own
// interpreter with its GIL held.
unsafe impl Send for LentBytes {}

impl LentBytes {
    /// Lends the first `len` bytes of `bytes` (at most all of them).
    pub fn new(bytes: &Bound<'_, PyBytes>, len: usize) -> LentBytes {
        let all = bytes.as_bytes();
        let data = &all[..len.min(all.len())];
        LentBytes {
            _owner: Held::new(bytes.clone().unbind()),
            ptr: data.as_ptr(),
            len: data.len(),
        }
    }
}

impl Loan for LentBytes {
    fn bytes(&self) -> &[u8] {
        // SAFETY: ptr..ptr+len lies in a bytes object that `_owner` keeps alive
        // and that nothing mutates.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}
