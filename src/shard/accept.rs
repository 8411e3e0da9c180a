//! Accepting connections: a shard's listening sockets, and the loop that takes
//! connections from them until the shard drains.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::rc::Rc;

use compio::driver::op::{Interest, PollOnce};
use compio::net::{TcpStream, UnixStream};
use futures_util::future::Either;
use socket2::Socket;

use super::{App, Shard};
use crate::http::conn::{self, Handler, Host, Start};
use crate::http::stream::{Stream, TlsStream};

/// One listening socket as a shard sees it.
pub struct Listener {
    pub socket: Socket,
    pub unix: bool,
    /// Other shards accept from this same socket, so no shard may shut it down.
    pub shared: bool,
}

impl Listener {
    pub fn dup(&self) -> std::io::Result<Listener> {
        Ok(Listener {
            socket: self.socket.try_clone()?,
            unix: self.unix,
            shared: self.shared,
        })
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

/// A connection the shard counts as live from its accept until it ends; the
/// shard drains until none is left.
struct Admitted(Rc<Host>);

impl Admitted {
    fn new(host: Rc<Host>) -> Admitted {
        host.drain.admit();
        Admitted(host)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.drain.leave();
    }
}

/// Serves a connection on the shard's interface, counted from now.
pub(super) fn spawn(shard: &Shard, start: Start) {
    let admitted = Admitted::new(shard.host.clone());
    match &shard.app {
        App::Wsgi(bridge) => spawn_counted(admitted, bridge.clone(), start),
        App::Asgi(bridge) => spawn_counted(admitted, bridge.clone(), start),
    }
}

fn spawn_counted<H: Handler + 'static>(admitted: Admitted, handler: H, start: Start) {
    let conn = conn::serve(admitted.0.clone(), handler, start);
    compio::runtime::spawn(async move {
        conn.await;
        drop(admitted);
    })
    .detach();
}

/// Accepts connections while the shard runs. It waits for readiness and then
/// accepts without blocking, rather than keeping an accept in flight: during a
/// reload the old and new workers share this socket, and an accept cancelled
/// at the drain could swallow a connection.
pub async fn accept_loop(shard: Rc<Shard>, listener: Rc<Listener>) {
    let cap = shard.config.worker_connections;
    // This shard serves again: the kernel may place connections here.
    if let Some(load) = crate::placement::shard(shard.id) {
        load.down.store(0, std::sync::atomic::Ordering::Relaxed);
    }
    // Said once each time the shard fills up, not per connection after.
    let mut full_said = false;
    loop {
        accept_queued(&shard, &listener).await;
        if shard.host.drain.is_draining() || crate::report::stop_accepting() {
            break;
        }
        if shard.host.drain.live() >= cap {
            // Full: new connections wait in the kernel's backlog, neither
            // accepted nor reset, until one of ours ends.
            if !full_said {
                log::warn!(
                    "Shard {}: {cap} connections (worker_connections); new ones wait in the backlog",
                    shard.id
                );
                full_said = true;
            }
            shard.host.drain.room_below(cap).await;
            continue;
        }
        full_said &= shard.host.drain.live() > cap - cap / 10;
        let ready = compio::runtime::submit(PollOnce::new(listener.clone(), Interest::Readable));
        let drain = shard.host.drain.started();
        let ready = std::pin::pin!(ready);
        let drain = std::pin::pin!(drain);
        if let Either::Right(_) = futures_util::future::select(ready, drain).await {
            break;
        }
    }
    if shard.board.retiring(shard.local) && !listener.shared {
        // This socket dies with the worker (TTOU): take what is queued, then stop
        // listening, so the kernel sends new connections to the other shards.
        accept_queued(&shard, &listener).await;
        // SAFETY: shutdown on our own listening descriptor.
        unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RD) };
    }
}

async fn accept_queued(shard: &Rc<Shard>, listener: &Listener) {
    let placed = crate::placement::shard(shard.id).filter(|_| !listener.shared);
    // A late refusal leaves what is queued to the workers that replace this one.
    while shard.host.drain.live() < shard.config.worker_connections
        && !crate::report::stop_accepting()
    {
        match listener.socket.accept() {
            Ok((socket, addr)) => {
                let peer = addr.as_socket();
                let stream = if listener.unix {
                    UnixStream::from_std(socket.into()).map(Stream::Unix)
                } else {
                    let _ = socket.set_tcp_nodelay(true);
                    TcpStream::from_std(socket.into()).map(Stream::Tcp)
                };
                // Every listener speaks TLS when it is configured, as in Gunicorn.
                let stream = match &shard.config.tls {
                    Some(tls) => stream.and_then(|s| TlsStream::new(s, tls)).map(Stream::Tls),
                    None => stream,
                };
                match stream {
                    Ok(stream) => spawn(shard, Start::Accepted { stream, peer }),
                    Err(e) => log::error!("Shard {}: cannot serve a connection: {e}", shard.id),
                }
                // After the connection counts as open, so no placement in
                // between sees this shard without it.
                if let Some(load) = placed {
                    load.accepted();
                    log::debug!(
                        "Shard {}: accepted a connection from {}; placement counts now {}",
                        shard.id,
                        peer.map_or_else(String::new, |p| p.to_string()),
                        load
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(load) = placed {
                    load.queue_empty();
                }
                return;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {}
            Err(e) => {
                // Out of descriptors or memory: back off briefly instead of spinning.
                log::error!("Shard {}: accept failed: {e}", shard.id);
                compio::time::sleep(std::time::Duration::from_millis(100)).await;
                return;
            }
        }
    }
}
