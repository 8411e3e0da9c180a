//! wsgi.input for bodies that are not already in memory: the app's reads pull
//! from the socket as it asks, so an upload of any size never sits in memory whole.
//!
//! The app reads synchronously, so these reads block the calling thread (with the
//! GIL released) on `poll` + `recv`; the shard's ring has no operation on the
//! socket meanwhile.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyCFunction, PyDict, PyTuple};

use crate::http::body::Decoder;
use crate::http::tls::{SharedSession, lock};

const READ_SIZE: usize = 64 * 1024;

/// The state of a request body being read by the app.
pub struct BodyStream {
    fd: RawFd,
    /// A TLS connection's session: what is read is decrypted through it.
    tls: Option<SharedSession>,
    /// Bytes read from the socket and not yet decoded. What is left here once the
    /// body is done belongs to the next pipelined request.
    pub pending: Vec<u8>,
    pub decoder: Decoder,
    continue_needed: bool,
    timeout: Duration,
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
    ) -> Self {
        BodyStream {
            fd,
            tls,
            pending,
            decoder,
            continue_needed,
            timeout,
        }
    }

    /// The next decoded body bytes; empty at the end of the body.
    fn pull(&mut self) -> Result<Vec<u8>, String> {
        if self.continue_needed {
            self.continue_needed = false;
            let line = b"HTTP/1.1 100 Continue\r\n\r\n";
            match &self.tls {
                Some(tls) => {
                    let mut out = Vec::new();
                    lock(tls).encrypt(line, &mut out);
                    send_all(self.fd, &out, self.timeout)?;
                }
                None => send_all(self.fd, line, self.timeout)?,
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
            let fd = self.fd;
            let timeout = self.timeout;
            let mut chunk = vec![0u8; READ_SIZE];
            let n = crate::python::without_gil(|| recv_blocking(fd, &mut chunk, timeout))?;
            if n == 0 {
                return Err("client disconnected before the end of the body".into());
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
