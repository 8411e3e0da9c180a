//! wsgi.input for bodies that stream to the app (`--threads` above 1): the
//! app's reads pull from the socket as it asks, so an upload of any size never
//! sits in memory whole.
//!
//! The app reads synchronously, so these reads block the calling thread, one
//! of the shard's Python threads, with the GIL released, on `poll` + `recv`;
//! the shard's ring has no operation on the socket meanwhile, and the shard's
//! own thread goes on serving. Each read that brings bytes restarts the
//! thread's busy clock, so a slow upload never counts toward `--timeout`.
//!
//! The stream reads through its own duplicate of the socket's descriptor: an
//! app that keeps `wsgi.input` and reads it after its connection closed reads
//! that dead socket, never a descriptor the kernel has given to another client.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyCFunction, PyDict, PyTuple};

use crate::http::body::Decoder;
use crate::http::tls::{SharedSession, lock};
use crate::scoreboard::Scoreboard;

const READ_SIZE: usize = 64 * 1024;

/// The state of a request body being read by the app.
pub struct BodyStream {
    fd: OwnedFd,
    /// A TLS connection's session: what is read is decrypted through it.
    tls: Option<SharedSession>,
    /// Bytes read from the socket and not yet decoded. What is left here once the
    /// body is done belongs to the next pipelined request.
    pub pending: Vec<u8>,
    pub decoder: Decoder,
    continue_needed: bool,
    timeout: Duration,
    /// The scoreboard slot of the thread reading, whose busy clock restarts
    /// with every read that brings bytes.
    pub clock: Option<(Arc<Scoreboard>, usize)>,
}

/// The body shared between the connection and the app's `pull` function. The
/// connection takes it back when the app returns; later pulls see the end.
pub type SharedBody = Arc<Mutex<Option<BodyStream>>>;

impl BodyStream {
    pub fn new(
        fd: RawFd,
        tls: Option<SharedSession>,
        pending: Vec<u8>,
        decoder: Decoder,
        continue_needed: bool,
        timeout: Duration,
    ) -> std::io::Result<Self> {
        // SAFETY: the connection's descriptor is open while it makes this.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
        Ok(BodyStream {
            fd,
            tls,
            pending,
            decoder,
            continue_needed,
            timeout,
            clock: None,
        })
    }

    /// The next decoded body bytes; empty at the end of the body.
    fn pull(&mut self) -> Result<Vec<u8>, String> {
        if self.continue_needed {
            self.continue_needed = false;
            let line = crate::http::encode::CONTINUE;
            let fd = self.fd.as_raw_fd();
            match &self.tls {
                Some(tls) => {
                    let mut out = Vec::new();
                    lock(tls).encrypt(line, &mut out);
                    send_all(fd, &out, self.timeout)?;
                }
                None => send_all(fd, line, self.timeout)?,
            }
        }
        let mut out = Vec::new();
        loop {
            let used = self
                .decoder
                .decode_into(&self.pending, &mut out)
                .map_err(|e| format!("bad request body: {}", e.detail))?;
            self.pending.drain(..used);
            if !out.is_empty() || self.decoder.is_done() {
                return Ok(out);
            }
            if let Some(tls) = &self.tls {
                let plain = lock(tls).take_all();
                if !plain.is_empty() {
                    self.pending.extend_from_slice(&plain);
                    continue;
                }
            }
            let fd = self.fd.as_raw_fd();
            let timeout = self.timeout;
            let mut chunk = vec![0u8; READ_SIZE];
            let n = crate::python::without_gil(|| recv_blocking(fd, &mut chunk, timeout))?;
            if n == 0 {
                return Err("client disconnected before the end of the body".into());
            }
            if let Some((board, slot)) = &self.clock {
                board.mark_busy(*slot);
            }
            match &self.tls {
                Some(tls) => {
                    let mut session = lock(tls);
                    session
                        .feed(&chunk[..n])
                        .map_err(|e| format!("TLS failed: {e}"))?;
                    if session.is_closed() && !session.has_plain() {
                        return Err("client disconnected before the end of the body".into());
                    }
                }
                None => self.pending.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

fn wait_for(fd: RawFd, events: libc::c_short, timeout: Duration) -> Result<(), String> {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    loop {
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        match r {
            0 => return Err("timed out waiting for the client".into()),
            r if r > 0 => return Ok(()),
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => return Err(std::io::Error::last_os_error().to_string()),
        }
    }
}

fn recv_blocking(fd: RawFd, buf: &mut [u8], timeout: Duration) -> Result<usize, String> {
    loop {
        wait_for(fd, libc::POLLIN, timeout)?;
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = std::io::Error::last_os_error();
        if !matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
        ) {
            return Err(err.to_string());
        }
    }
}

fn send_all(fd: RawFd, mut data: &[u8], timeout: Duration) -> Result<(), String> {
    while !data.is_empty() {
        wait_for(fd, libc::POLLOUT, timeout)?;
        // SAFETY: data is valid for reads of its length.
        let n = unsafe {
            libc::send(
                fd,
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            data = &data[n as usize..];
            continue;
        }
        let err = std::io::Error::last_os_error();
        if !matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
        ) {
            return Err(err.to_string());
        }
    }
    Ok(())
}

/// A streaming `wsgi.input` over `body`.
pub fn stream_input<'py>(
    py: Python<'py>,
    input_class: &Py<PyAny>,
    body: SharedBody,
    initial: &[u8],
) -> PyResult<Bound<'py, PyAny>> {
    let pull = PyCFunction::new_closure(
        py,
        Some(c"pull"),
        None,
        move |args: &Bound<'_, PyTuple>, _: Option<&Bound<'_, PyDict>>| -> PyResult<Py<PyBytes>> {
            let py = args.py();
            let mut guard = body
                .lock()
                .map_err(|_| PyOSError::new_err("request body unavailable"))?;
            let data = match guard.as_mut() {
                Some(stream) => stream.pull().map_err(PyOSError::new_err)?,
                None => Vec::new(),
            };
            Ok(PyBytes::new(py, &data).unbind())
        },
    )?;
    input_class
        .bind(py)
        .call1((pull, PyBytes::new(py, initial)))
}
