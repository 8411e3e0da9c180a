//! A client connection's socket, TCP, unix or TLS, behind one type, so the
//! HTTP and ASGI code reads and writes without caring which bind it came from.
//! Cloning gives a second handle to the same socket, so a read can stay in
//! flight while a write goes out.

use std::io::ErrorKind::InvalidData;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use compio::BufResult;
use compio::buf::{IntoInner, IoBuf, IoBufMut, IoVectoredBuf};
use compio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use compio::net::{TcpStream, UnixStream};

use super::tls::{Session, SharedSession, Tls, lock, looks_like_tls};

#[derive(Clone)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(TlsStream),
}

/// Where the client and the server are, as the app sees them.
#[derive(Clone, Debug)]
pub enum Endpoints {
    Tcp {
        peer: SocketAddr,
        local: SocketAddr,
    },
    /// A unix socket: the client has no address, the server its path.
    Unix {
        path: PathBuf,
    },
}

impl Endpoints {
    /// The client's address as Gunicorn prints it: empty on a unix socket.
    pub fn peer_host(&self) -> String {
        match self {
            Endpoints::Tcp { peer, .. } => peer.ip().to_string(),
            Endpoints::Unix { .. } => String::new(),
        }
    }
}

impl Stream {
    pub fn endpoints(&self, peer: Option<SocketAddr>) -> std::io::Result<Endpoints> {
        match self {
            Stream::Tls(tls) => tls.transport().endpoints(peer),
            Stream::Tcp(s) => Ok(Endpoints::Tcp {
                peer: match peer {
                    Some(peer) => peer,
                    None => s.peer_addr()?,
                },
                local: s.local_addr()?,
            }),
            Stream::Unix(s) => Ok(Endpoints::Unix {
                path: s
                    .local_addr()?
                    .as_pathname()
                    .map(PathBuf::from)
                    .unwrap_or_default(),
            }),
        }
    }
}

impl Stream {
    /// Whether the connection can move to another shard: a TLS session
    /// lives in its shard.
    pub fn movable(&self) -> bool {
        !matches!(self, Stream::Tls(_))
    }

    /// A second descriptor for a plain socket (true: unix), for another
    /// shard to serve it; None for TLS, whose session stays in this shard.
    pub fn dup_plain(&self) -> Option<(OwnedFd, bool)> {
        let (fd, unix) = match self {
            Stream::Tcp(s) => (s.as_fd(), false),
            Stream::Unix(s) => (s.as_fd(), true),
            Stream::Tls(_) => return None,
        };
        fd.try_clone_to_owned().ok().map(|fd| (fd, unix))
    }

    /// A plain socket another shard handed over.
    pub fn from_fd(fd: OwnedFd, unix: bool) -> std::io::Result<Stream> {
        if unix {
            UnixStream::from_std(std::os::unix::net::UnixStream::from(fd)).map(Stream::Unix)
        } else {
            TcpStream::from_std(std::net::TcpStream::from(fd)).map(Stream::Tcp)
        }
    }
}

/// A descriptor polled by io_uring that something else owns and keeps open
/// while the poll is in flight: Python unregisters a descriptor (cancelling
/// its poll) before closing it, and a connection drops its poll before itself.
pub struct Watched(pub RawFd);

impl AsFd for Watched {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the owner keeps the descriptor open while the poll is in
        // flight (see above).
        unsafe { BorrowedFd::borrow_raw(self.0) }
    }
}

/// What a readable connection holds, found without losing any of it.
pub enum Peek {
    Data,
    Nothing,
    Closed,
}

impl Stream {
    /// Whether a readable connection holds request bytes or the client's
    /// close. On TLS the records are read into the session (a close_notify or
    /// a ticket is not request data); their plaintext waits there.
    pub fn peek(&self) -> Peek {
        let Stream::Tls(tls) = self else {
            let mut byte = 0u8;
            return match recv_now(self.as_raw_fd(), std::slice::from_mut(&mut byte), true) {
                Ok(0) => Peek::Closed,
                Ok(_) => Peek::Data,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Peek::Nothing,
                Err(_) => Peek::Closed,
            };
        };
        let mut cipher = vec![0u8; 16 * 1024];
        let read = recv_now(self.as_raw_fd(), &mut cipher, false);
        let mut session = lock(&tls.session);
        match read {
            Ok(0) => return Peek::Closed,
            Ok(n) => {
                if session.feed(&cipher[..n]).is_err() {
                    return Peek::Closed;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return Peek::Closed,
        }
        if session.has_plain() {
            Peek::Data
        } else if session.is_closed() {
            Peek::Closed
        } else {
            Peek::Nothing
        }
    }
}

/// One non-blocking recv(2), or a peek.
fn recv_now(fd: RawFd, buf: &mut [u8], peek: bool) -> std::io::Result<usize> {
    let flags = libc::MSG_DONTWAIT | if peek { libc::MSG_PEEK } else { 0 };
    // SAFETY: buf is valid for writes of its length.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// How long a client may take no bytes at all (its receive window full)
/// before the connection is given up (`send_timeout`, 30 s unless set). A slow
/// but steady reader may take as long as it needs: the clock restarts with
/// every write that makes progress.
pub fn write_stall() -> Duration {
    Duration::from_millis(WRITE_STALL_MS.load(std::sync::atomic::Ordering::Relaxed))
}

static WRITE_STALL_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(30_000);

/// Notes a write given up at the stall limit, for the debug log.
pub(super) fn stalled() {
    log::debug!(
        "Closing a connection whose client took no bytes for {} s (send_timeout)",
        write_stall().as_secs()
    );
}

/// Sets the write stall limit for the whole process, once, before serving.
pub fn set_write_stall(limit: Duration) {
    let ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX).max(1);
    WRITE_STALL_MS.store(ms, std::sync::atomic::Ordering::Relaxed);
}

impl Stream {
    /// Writes all of `out` and empties it, keeping its allocation; false when
    /// the client is gone or stalled past write_stall().
    pub async fn write_out(&self, out: &mut Vec<u8>) -> bool {
        let mut buf = std::mem::take(out);
        let total = buf.len();
        let mut sent = 0;
        let mut writer = self;
        while sent < total {
            let write = writer.write(buf.slice(sent..));
            let Ok(BufResult(res, rest)) = super::deadline::timeout(write_stall(), write).await
            else {
                stalled();
                return false;
            };
            buf = rest.into_inner();
            if !progress(res, &mut sent) {
                return false;
            }
        }
        buf.clear();
        *out = buf;
        true
    }

    /// Writes all of `buf`, as `write_out` does; None when the client is gone
    /// or stalled.
    pub async fn write_all_vectored<T: IoVectoredBuf>(&self, buf: T) -> Option<T> {
        let total = buf.total_len();
        let mut buf = buf;
        let mut sent = 0;
        let mut writer = self;
        while sent < total {
            let write = writer.write_vectored(buf.slice(sent));
            let Ok(BufResult(res, rest)) = super::deadline::timeout(write_stall(), write).await
            else {
                stalled();
                return None;
            };
            buf = rest.into_inner();
            if !progress(res, &mut sent) {
                return None;
            }
        }
        Some(buf)
    }
}

/// Counts a write's bytes; false when the connection failed or closed.
pub(super) fn progress(res: std::io::Result<usize>, sent: &mut usize) -> bool {
    match res {
        Ok(0) => false,
        Ok(n) => {
            *sent += n;
            true
        }
        Err(e) => e.kind() == std::io::ErrorKind::Interrupted,
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tls(s) => match &s.inner {
                Transport::Tcp(t) => t.as_raw_fd(),
                Transport::Unix(u) => u.as_raw_fd(),
            },
        }
    }
}

impl AsyncRead for &Stream {
    async fn read<B: IoBufMut>(&mut self, buf: B) -> BufResult<usize, B> {
        match self {
            Stream::Tcp(s) => { s }.read(buf).await,
            Stream::Unix(s) => { s }.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
        }
    }
}

impl AsyncRead for Stream {
    async fn read<B: IoBufMut>(&mut self, buf: B) -> BufResult<usize, B> {
        (&*self).read(buf).await
    }
}

impl AsyncWrite for &Stream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Stream::Tcp(s) => { s }.write(buf).await,
            Stream::Unix(s) => { s }.write(buf).await,
            Stream::Tls(s) => s.write(buf).await,
        }
    }

    async fn write_vectored<T: IoVectoredBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Stream::Tcp(s) => { s }.write_vectored(buf).await,
            Stream::Unix(s) => { s }.write_vectored(buf).await,
            Stream::Tls(s) => s.write_vectored(buf).await,
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => { s }.shutdown().await,
            Stream::Unix(s) => { s }.shutdown().await,
            Stream::Tls(s) => {
                s.close_notify().await;
                s.inner.shutdown().await
            }
        }
    }
}

impl AsyncWrite for Stream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        (&*self).write(buf).await
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        (&*self).shutdown().await
    }
}

/// The most plaintext one TLS write encrypts and sends.
const TLS_WRITE_MAX: usize = 256 * 1024;

/// A TLS connection: a TCP or unix socket underneath, with the session that
/// encrypts and decrypts what crosses it.
#[derive(Clone)]
pub struct TlsStream {
    inner: Transport,
    pub session: SharedSession,
}

/// The socket under TLS.
#[derive(Clone)]
enum Transport {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Transport {
    async fn read(&self, buf: Vec<u8>) -> BufResult<usize, Vec<u8>> {
        match self {
            Transport::Tcp(s) => { s }.append(buf).await,
            Transport::Unix(s) => { s }.append(buf).await,
        }
    }

    async fn write_all(&self, buf: Vec<u8>) -> BufResult<(), Vec<u8>> {
        match self {
            Transport::Tcp(s) => { s }.write_all(buf).await,
            Transport::Unix(s) => { s }.write_all(buf).await,
        }
    }

    async fn shutdown(&self) -> std::io::Result<()> {
        match self {
            Transport::Tcp(s) => { s }.shutdown().await,
            Transport::Unix(s) => { s }.shutdown().await,
        }
    }
}

/// Why a TLS connection never got to HTTP.
pub enum HandshakeError {
    /// The client spoke plain HTTP to the TLS port.
    PlainHttp,
    /// It left, stalled, or failed the handshake.
    Failed,
}

impl TlsStream {
    pub fn new(plain: Stream, tls: &Tls) -> std::io::Result<TlsStream> {
        let inner = match plain {
            Stream::Tcp(s) => Transport::Tcp(s),
            Stream::Unix(s) => Transport::Unix(s),
            Stream::Tls(_) => return Err(std::io::Error::other("already TLS")),
        };
        let session = Session::new(tls).map_err(std::io::Error::other)?;
        Ok(TlsStream {
            inner,
            session: Arc::new(Mutex::new(session)),
        })
    }

    /// The socket under the encryption, for what comes before the handshake
    /// (a PROXY header, or an answer to plain HTTP).
    pub fn transport(&self) -> Stream {
        match &self.inner {
            Transport::Tcp(s) => Stream::Tcp(s.clone()),
            Transport::Unix(s) => Stream::Unix(s.clone()),
        }
    }

    /// Completes the handshake by `until`. `early` holds bytes already read
    /// from the socket.
    pub async fn handshake(&self, early: &[u8], until: Instant) -> Result<(), HandshakeError> {
        let mut fed_any = false;
        let mut cipher = early.to_vec();
        loop {
            if !cipher.is_empty() {
                if !fed_any && !looks_like_tls(cipher[0]) {
                    return Err(HandshakeError::PlainHttp);
                }
                fed_any = true;
                let fed = lock(&self.session).feed(&cipher);
                if let Err(e) = fed {
                    log::debug!("TLS handshake failed: {e}");
                    let mut alert = Vec::new();
                    lock(&self.session).pending_output(&mut alert);
                    let _ = super::deadline::timeout_at(until, self.inner.write_all(alert)).await;
                    return Err(HandshakeError::Failed);
                }
            }
            let mut out = Vec::new();
            lock(&self.session).pending_output(&mut out);
            if !out.is_empty() {
                match super::deadline::timeout_at(until, self.inner.write_all(out)).await {
                    Ok(BufResult(Ok(()), _)) => {}
                    _ => return Err(HandshakeError::Failed),
                }
            }
            if !lock(&self.session).is_handshaking() {
                return Ok(());
            }
            cipher.clear();
            cipher.reserve(16 * 1024);
            match super::deadline::timeout_at(until, self.inner.read(cipher)).await {
                Ok(BufResult(Ok(n), read)) if n > 0 => cipher = read,
                _ => return Err(HandshakeError::Failed),
            }
        }
    }

    async fn read<B: IoBufMut>(&self, mut buf: B) -> BufResult<usize, B> {
        loop {
            {
                let mut session = lock(&self.session);
                if session.has_plain() || session.is_closed() {
                    let n = session.take_into(buf.as_uninit());
                    // SAFETY: take_into initialised the first n bytes.
                    unsafe { buf.advance_to(n) };
                    return BufResult(Ok(n), buf);
                }
            }
            let cipher = Vec::with_capacity(16 * 1024);
            let BufResult(read, cipher) = self.inner.read(cipher).await;
            match read {
                Ok(0) => return BufResult(Ok(0), buf),
                Ok(_) => {}
                Err(e) => return BufResult(Err(e), buf),
            }
            if let Err(e) = lock(&self.session).feed(&cipher) {
                return BufResult(Err(std::io::Error::new(InvalidData, e)), buf);
            }
        }
    }

    /// Encrypts and writes up to TLS_WRITE_MAX bytes of the parts, which
    /// bounds how long one call may take against write_stall().
    async fn write_vectored<T: IoVectoredBuf>(&self, buf: T) -> BufResult<usize, T> {
        let mut n = 0;
        let mut out = Vec::with_capacity(buf.total_len().min(TLS_WRITE_MAX) + 256);
        {
            let mut session = lock(&self.session);
            for part in buf.iter_slice() {
                let part = &part[..part.len().min(TLS_WRITE_MAX - n)];
                session.encrypt(part, &mut out);
                n += part.len();
                if n == TLS_WRITE_MAX {
                    break;
                }
            }
        }
        let BufResult(written, _) = self.inner.write_all(out).await;
        BufResult(written.map(|()| n), buf)
    }

    async fn write<T: IoBuf>(&self, buf: T) -> BufResult<usize, T> {
        let BufResult(res, (buf,)) = self.write_vectored((buf,)).await;
        BufResult(res, buf)
    }

    /// Says close_notify, so the client knows the response is whole.
    pub async fn close_notify(&self) {
        let mut out = Vec::new();
        lock(&self.session).close_notify(&mut out);
        let _ = self.inner.write_all(out).await;
    }
}
