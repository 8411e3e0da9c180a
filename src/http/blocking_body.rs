//! A request body read with blocking calls on a thread other than the shard's
//! (a WSGI app's Python thread, with `--threads` above 1), so an upload of any
//! size streams to the app without sitting in memory whole and without
//! holding the shard's ring. The reader polls and receives on its own
//! duplicate of the socket's descriptor: a read after the connection closed
//! reads that dead socket, never a descriptor the kernel has since given to
//! another client.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use super::body::Decoder;
use super::tls::{SharedSession, lock};

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
    /// Called after each read that brings bytes: the reading thread's busy
    /// clock restarts, so a slow upload never counts as a stuck app.
    pub on_bytes: Option<Box<dyn Fn() + Send>>,
    /// Bytes read from the client, after TLS.
    pub received: usize,
}

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
            on_bytes: None,
            received: 0,
        })
    }

    /// The next decoded body bytes; empty at the end of the body. Each wait
    /// on the socket runs inside `unlocked`, which releases what the calling
    /// thread must not hold while it blocks.
    pub fn pull(
        &mut self,
        unlocked: impl Fn(&mut dyn FnMut() -> Result<usize, String>) -> Result<usize, String>,
    ) -> Result<Vec<u8>, String> {
        if self.continue_needed {
            self.continue_needed = false;
            let line = super::encode::CONTINUE;
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
                    self.received += plain.len();
                    self.pending.extend_from_slice(&plain);
                    continue;
                }
            }
            let fd = self.fd.as_raw_fd();
            let timeout = self.timeout;
            let mut chunk = vec![0u8; READ_SIZE];
            let n = unlocked(&mut || recv_blocking(fd, &mut chunk, timeout))?;
            if n == 0 {
                return Err("client disconnected before the end of the body".into());
            }
            if let Some(on_bytes) = &self.on_bytes {
                on_bytes();
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
                None => {
                    self.received += n;
                    self.pending.extend_from_slice(&chunk[..n]);
                }
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
