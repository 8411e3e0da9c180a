//! A client connection's socket, TCP or unix, behind one type, so the HTTP and
//! ASGI code reads and writes without caring which bind it came from. Cloning
//! gives a second handle to the same socket, so a read can stay in flight while
//! a write goes out.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;

use compio::BufResult;
use compio::buf::{IoBuf, IoBufMut};
use compio::io::{AsyncRead, AsyncWrite};
use compio::net::{TcpStream, UnixStream};

#[derive(Clone)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
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

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl AsyncRead for &Stream {
    async fn read<B: IoBufMut>(&mut self, buf: B) -> BufResult<usize, B> {
        match self {
            Stream::Tcp(s) => { s }.read(buf).await,
            Stream::Unix(s) => { s }.read(buf).await,
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
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => { s }.shutdown().await,
            Stream::Unix(s) => { s }.shutdown().await,
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
