//! A span of a regular file sent with sendfile(2): the bytes go from the page
//! cache to the socket without passing through turbo's memory. This serves
//! `wsgi.file_wrapper` and ASGI's `http.response.pathsend`, as Gunicorn's
//! sendfile does. A TLS connection must encrypt every byte here, so it reads
//! the file in blocks instead.
//!
//! io_uring has no sendfile, and a socket accepted through io_uring blocks; so
//! each call runs with the socket made non-blocking for its duration, and a full
//! socket buffer is waited out with a readiness poll on the shard's ring.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use compio::driver::op::{Interest, PollOnce};

use super::stream::{Stream, Watched, stalled, write_stall};

/// The most one sendfile call is asked to send, so a huge file still lets the
/// shard's other connections run between calls.
const CALL_MAX: usize = 1 << 20;
/// The block a file is read in where sendfile cannot serve.
const BLOCK: usize = 256 * 1024;

/// `len` bytes of a file from `offset`. The file is the span's own descriptor,
/// so it outlives whatever object it came from.
#[derive(Debug)]
pub struct FileSpan {
    file: File,
    offset: u64,
    len: u64,
}

impl FileSpan {
    pub fn new(file: File, offset: u64, len: u64) -> FileSpan {
        FileSpan { file, offset, len }
    }

    /// The rest of the file behind a Python file object's descriptor, from its
    /// current position. None when the descriptor is not a regular file (a
    /// pipe or a socket has no size): such an object is iterated instead.
    pub fn from_descriptor(fd: RawFd) -> Option<FileSpan> {
        // SAFETY: the caller's file object keeps fd open during this call; the
        // span keeps its own duplicate.
        let owned = unsafe { BorrowedFd::borrow_raw(fd) }
            .try_clone_to_owned()
            .ok()?;
        let file = File::from(owned);
        let meta = file.metadata().ok()?;
        if !meta.is_file() {
            return None;
        }
        // SAFETY: lseek on a descriptor we own; it reads the shared position.
        let offset = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_CUR) };
        let offset = u64::try_from(offset).ok()?;
        let len = meta.len().saturating_sub(offset);
        Some(FileSpan { file, offset, len })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// Sends no more than `len` bytes.
    pub fn truncate(&mut self, len: u64) {
        self.len = self.len.min(len);
    }

    /// Sends the span. False when the client left or stalled, or the file ended
    /// before the span did: then the response cannot be completed and the
    /// connection must close. Without `sendfile` (the setting turned off),
    /// the file is read in blocks into `scratch` and written, as on TLS.
    pub async fn send(self, stream: &Stream, scratch: &mut Vec<u8>, sendfile: bool) -> bool {
        let sent = match stream {
            Stream::Tcp(_) | Stream::Unix(_) if sendfile => self.sendfile(stream.as_raw_fd()).await,
            _ => self.copy(stream, scratch).await,
        };
        if let Err(e) = &sent {
            log::debug!("Sending a file stopped: {e}");
        }
        sent.is_ok()
    }

    async fn sendfile(self, socket: RawFd) -> std::io::Result<()> {
        let mut offset = i64::try_from(self.offset).map_err(std::io::Error::other)?;
        // SAFETY: fcntl on the connection's own descriptor.
        let flags = unsafe { libc::fcntl(socket, libc::F_GETFL) };
        if flags < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut left = self.len;
        while left > 0 {
            let want = usize::try_from(left).unwrap_or(CALL_MAX).min(CALL_MAX);
            match sendfile_now(socket, flags, self.file.as_raw_fd(), &mut offset, want) {
                Ok(0) => return Err(shrank()),
                Ok(n) => left -= n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let ready =
                        compio::runtime::submit(PollOnce::new(Watched(socket), Interest::Writable));
                    match super::deadline::timeout(write_stall(), ready).await {
                        Ok(compio::BufResult(Ok(_), _)) => {}
                        Ok(compio::BufResult(Err(e), _)) => return Err(e),
                        Err(_) => {
                            stalled();
                            return Err(std::io::ErrorKind::TimedOut.into());
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn copy(mut self, stream: &Stream, scratch: &mut Vec<u8>) -> std::io::Result<()> {
        use std::io::{Seek, SeekFrom};
        self.file.seek(SeekFrom::Start(self.offset))?;
        let mut left = self.len;
        while left > 0 {
            let want = usize::try_from(left).unwrap_or(BLOCK).min(BLOCK);
            scratch.resize(want, 0);
            let n = self.file.read(&mut scratch[..want])?;
            if n == 0 {
                scratch.clear();
                return Err(shrank());
            }
            scratch.truncate(n);
            left -= n as u64;
            if !stream.write_out(scratch).await {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
        }
        Ok(())
    }
}

fn shrank() -> std::io::Error {
    log::error!("A file being sent ended before its length: the response is cut short");
    std::io::ErrorKind::UnexpectedEof.into()
}

/// One sendfile(2) that never blocks: a socket accepted through io_uring is in
/// blocking mode (`flags`, its file status flags), so it is made non-blocking
/// for the call and restored after.
fn sendfile_now(
    socket: RawFd,
    flags: i32,
    file: RawFd,
    offset: &mut i64,
    len: usize,
) -> std::io::Result<usize> {
    // SAFETY: fcntl and sendfile on descriptors the caller keeps open; offset
    // points to a live i64.
    unsafe {
        let blocking = flags & libc::O_NONBLOCK == 0;
        if blocking {
            libc::fcntl(socket, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        let n = libc::sendfile(socket, file, offset, len);
        let err = std::io::Error::last_os_error();
        if blocking {
            libc::fcntl(socket, libc::F_SETFL, flags);
        }
        if n < 0 { Err(err) } else { Ok(n as usize) }
    }
}
