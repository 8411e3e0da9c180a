//! One client connection, as HTTP/1.1 sees it and no further: the PROXY
//! header and the TLS handshake, heads read and parsed, the body delivered the
//! way the handler asks, responses written in order (pipelined ones leave in
//! one write), 100 Continue after any earlier response, keep-alive, write
//! stalls and the lingering close. What a request means is the `Handler`'s
//! business: WSGI and ASGI each implement it (docs/architecture.md, "HTTP").

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use compio::buf::BufResult;
use compio::driver::op::{Interest, PollOnce};
use compio::io::{AsyncRead, AsyncReadExt};
use futures_util::future::{Either, LocalBoxFuture};

use super::HttpError;
use super::blocking_body::BodyStream;
use super::body::Decoder;
use super::drain::Drain;
use super::encode::{self, DateCache};
use super::handoff::{Client, Handoff};
use super::output::{Lent, Meta, Zerocopy, zerocopy_for};
use super::parse::{BodyKind, HeadScan, Limits, RequestHead};
use super::proxy;
use super::proxy_protocol;
use super::sendfile::FileSpan;
use super::spool::{self, Spool};
use super::stream::{Endpoints, HandshakeError, Peek, Stream, TlsStream, Watched};

/// A connection's read buffer, and the most it keeps between requests.
const RBUF_SIZE: usize = 8192;
const RBUF_KEEP: usize = 64 * 1024;
/// Room made in the read buffer for each read of a body.
const BODY_READ: usize = 64 * 1024;
/// Bounds on one read of a body read as the app asks for it: each read is a
/// trip through the app, so fewer, larger ones pay.
const BODY_READ_MIN: usize = 16 * 1024;
const BODY_READ_MAX: usize = 256 * 1024;
/// Pipelined responses are gathered up to this size before a write.
const FLUSH_AT: usize = 64 * 1024;
/// How long a closing connection keeps reading, so unread input does not turn the
/// close into a reset that destroys the response (RFC 9112 9.6).
const LINGER: Duration = Duration::from_secs(2);

/// The settings the protocol follows, built from the configuration.
pub struct Settings {
    pub keep_alive: Duration,
    pub header_timeout: Duration,
    pub limits: Limits,
    pub proxy_protocol: proxy_protocol::Mode,
    pub proxy_allow_ips: proxy::Allow,
    pub forwarded_allow_ips: proxy::Allow,
    pub secure_scheme_headers: proxy::SchemeHeaders,
    pub zerocopy: Zerocopy,
    /// Files go out by sendfile(2) rather than read and written.
    pub sendfile: bool,
    /// Where large request bodies are spooled; None: `$TMPDIR`.
    pub tmp_upload_dir: Option<PathBuf>,
}

/// Where a shard publishes its load as connections and requests come and
/// go: the kernel places new connections by it (docs/architecture.md,
/// "Placement").
pub trait Load {
    fn opened(&self);
    fn closed(&self);
    /// A request's head has arrived; it is being answered.
    fn started(&self);
    fn finished(&self);
    /// Asked as each request's head is complete, read from a connection
    /// that began to wait for it at `waiting_since`: if the request waited
    /// behind this shard's busy thread while another shard sat idle, that
    /// shard's number (docs/architecture.md, "Moving connections"). None,
    /// the fast path, keeps the request here.
    fn relief(&self, waiting_since: Instant) -> Option<usize>;
    /// Hands a connection to shard `to`; gives it back if `to` cannot take it.
    fn hand_off(&self, to: usize, handoff: Box<Handoff>) -> Result<(), Box<Handoff>>;
    /// A request refused with `status` by turbo itself, not by the app.
    fn refused(&self, status: u16);
    /// Bytes read from a client (after TLS).
    fn received(&self, bytes: usize);
    /// Bytes written to a client (before TLS).
    fn sent(&self, bytes: usize);
}

/// How a connection comes to a shard.
pub enum Start {
    /// Accepted from a listening socket; `peer` as accept gave it.
    Accepted {
        stream: Stream,
        peer: Option<SocketAddr>,
    },
    /// Handed over by another shard.
    Moved(Box<Handoff>),
}

/// Calls `end` when dropped, so a count stays right however a future ends.
struct Span<'a> {
    load: &'a dyn Load,
    end: fn(&dyn Load),
}

impl Drop for Span<'_> {
    fn drop(&mut self) {
        (self.end)(self.load);
    }
}

/// What all connections of one shard share.
pub struct Host {
    pub settings: Settings,
    date: RefCell<DateCache>,
    pub drain: Drain,
    /// The server is stopping: responses say `Connection: close`.
    stopping: Box<dyn Fn() -> bool>,
    load: Box<dyn Load>,
}

impl Host {
    pub fn new(settings: Settings, stopping: Box<dyn Fn() -> bool>, load: Box<dyn Load>) -> Host {
        Host {
            settings,
            date: RefCell::new(DateCache::default()),
            drain: Drain::default(),
            stopping,
            load,
        }
    }

    /// The Date header's value for now.
    pub fn date(&self) -> Vec<u8> {
        self.date.borrow_mut().get().to_vec()
    }

    pub fn stopping(&self) -> bool {
        (self.stopping)()
    }
}

/// The connection as a handler first sees it.
pub struct Opened<'a> {
    /// The client and the local end, as a trusted PROXY header gave them.
    pub ends: &'a Endpoints,
    pub proxied: Option<&'a proxy_protocol::Header>,
    pub tls: Option<&'a TlsStream>,
}

/// What an interface does with a connection's requests.
pub trait Handler {
    /// What the handler keeps for the life of one connection.
    type Peer;

    /// A connection is set up; None refuses it (it closes).
    fn open(&self, opened: Opened<'_>) -> Option<Self::Peer>;

    /// Answers one request. Returns whether the connection may carry another
    /// request, or None when it must close at once.
    fn respond(&self, peer: &Self::Peer, ex: Exchange<'_>) -> impl Future<Output = Option<bool>>;
}

/// A request body, read before the handler's app runs.
pub enum Body {
    InMemory(Vec<u8>),
    /// A body over `spool::MEMORY_MAX`, whole, in an unlinked temporary file.
    Spooled(std::fs::File),
    /// A body the app reads from the socket itself on its own thread, with the
    /// bytes decoded so far. Give it back with `Exchange::restore_body`.
    Stream(BodyStream, Vec<u8>),
}

enum ReadError {
    Closed,
    TimedOut,
    Failed,
}

struct Conn {
    /// First, so it drops before the socket closes.
    open: Open,
    host: Rc<Host>,
    /// The client's address, for the access log.
    peer: String,
    /// The peer is a trusted proxy (`forwarded_allow_ips`).
    trusted: bool,
    /// The connection is TLS.
    tls: bool,
    stream: Stream,
    rbuf: Vec<u8>,
    out: Vec<u8>,
    /// Body chunks lent by the app, to go out within `out`.
    lent: Lent,
    /// Large bodies go out by send_zc (decided by the socket's own peer,
    /// before any PROXY header).
    zerocopy: bool,
}

/// Counts a connection as open from its accept (not its task's first poll,
/// so a burst of connects sees every one) until it serves no more: just
/// before its last response goes out, or else its socket closes. So a client
/// that saw either sees the count fallen, and a client that reconnects at
/// once is not placed by a connection that merely lingers, or whose close a
/// shard busy in the app has not read yet.
struct Open {
    host: Rc<Host>,
    counted: bool,
}

impl Open {
    fn end(&mut self) {
        if std::mem::take(&mut self.counted) {
            self.host.load.closed();
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.end();
    }
}

/// Serves a connection to its end; it counts as open from this call.
pub fn serve<H: Handler>(host: Rc<Host>, handler: H, start: Start) -> impl Future<Output = ()> {
    host.load.opened();
    let open = Open {
        host,
        counted: true,
    };
    async move {
        match start {
            Start::Accepted { stream, peer } => accepted(open, handler, stream, peer).await,
            Start::Moved(handoff) => moved(open, handler, handoff).await,
        }
    }
}

impl Conn {
    fn new(open: Open, stream: Stream, trusted: bool, zerocopy: bool) -> Conn {
        Conn {
            host: open.host.clone(),
            open,
            peer: String::new(),
            trusted,
            tls: false,
            zerocopy,
            stream,
            rbuf: Vec::with_capacity(RBUF_SIZE),
            // Grown by the first response to the size responses need: an idle
            // connection should not hold a write buffer it has never used.
            out: Vec::new(),
            lent: Lent::default(),
        }
    }
}

async fn accepted<H: Handler>(open: Open, handler: H, stream: Stream, peer: Option<SocketAddr>) {
    let host = open.host.clone();
    let Ok(mut ends) = stream.endpoints(peer) else {
        return;
    };
    let settings = &host.settings;
    // Only a process on this host can reach a unix socket: Gunicorn trusts
    // it as a proxy.
    let trusted = match &ends {
        Endpoints::Tcp { peer, .. } => settings.forwarded_allow_ips.allows(peer.ip()),
        Endpoints::Unix { .. } => true,
    };
    let zerocopy = zerocopy_for(settings.zerocopy, &ends);
    let mut conn = Conn::new(open, stream, trusted, zerocopy);
    let mut proxied = None;
    if settings.proxy_protocol != proxy_protocol::Mode::Off {
        let Ok(header) = conn.proxy_header(&ends).await else {
            return;
        };
        if let Some(client) = header.as_ref().and_then(|h| h.client) {
            // As Gunicorn: the header's client, on a unix socket too.
            let local = match (&ends, header.as_ref().and_then(|h| h.proxy)) {
                (Endpoints::Tcp { local, .. }, _) => *local,
                (Endpoints::Unix { .. }, Some(proxy)) => proxy,
                (Endpoints::Unix { .. }, None) => client,
            };
            ends = Endpoints::Tcp {
                peer: client,
                local,
            };
        }
        proxied = header;
    }
    let tls = match &conn.stream {
        Stream::Tls(tls) => Some(tls.clone()),
        _ => None,
    };
    if let Some(tls) = &tls {
        let until = Instant::now() + settings.header_timeout;
        let early = std::mem::take(&mut conn.rbuf);
        match tls.handshake(&early, until).await {
            Ok(()) => conn.tls = true,
            Err(HandshakeError::PlainHttp) => {
                // As nginx answers it, in plain text, so the mistake is plain.
                let err = HttpError::bad_request("The plain HTTP request was sent to HTTPS port");
                conn.refuse_raw(&tls.transport(), err).await;
                return;
            }
            Err(HandshakeError::Failed) => return,
        }
    }
    conn.start(&handler, Client { ends, proxied }, tls.as_ref(), true)
        .await;
}

/// A connection another shard handed over, with a request waiting in its
/// buffer: served from that request on as if it had been accepted here.
async fn moved<H: Handler>(open: Open, handler: H, handoff: Box<Handoff>) {
    let Handoff {
        fd,
        unix,
        rbuf,
        client,
        trusted,
        zerocopy,
    } = *handoff;
    let Ok(stream) = Stream::from_fd(fd, unix) else {
        return;
    };
    let mut conn = Conn::new(open, stream, trusted, zerocopy);
    conn.rbuf = rbuf;
    conn.start(&handler, client, None, false).await;
}

impl Conn {
    /// Opens the connection to the handler and serves its requests; `first`:
    /// the next head is the connection's first.
    async fn start<H: Handler>(
        &mut self,
        handler: &H,
        client: Client,
        tls: Option<&TlsStream>,
        first: bool,
    ) {
        self.peer = client.ends.peer_host();
        let opened = Opened {
            ends: &client.ends,
            proxied: client.proxied.as_ref(),
            tls,
        };
        let Some(peer) = handler.open(opened) else {
            return;
        };
        self.serve(handler, &peer, &client, first).await;
    }

    /// Reads the PROXY header that may open the connection. Err when the
    /// connection ended or was refused (a bad header, or one from a peer not
    /// in `proxy_allow_ips`).
    async fn proxy_header(
        &mut self,
        ends: &Endpoints,
    ) -> Result<Option<proxy_protocol::Header>, ()> {
        let host = self.host.clone();
        let settings = &host.settings;
        let until = Instant::now() + settings.header_timeout;
        // The header comes before any TLS, so it is read from the socket itself.
        let mut raw = match &self.stream {
            Stream::Tls(tls) => tls.transport(),
            other => other.clone(),
        };
        loop {
            match proxy_protocol::parse(&self.rbuf, settings.proxy_protocol) {
                Ok(None) => {
                    let mut buf = std::mem::take(&mut self.rbuf);
                    buf.reserve(8192);
                    match super::deadline::timeout_at(until, raw.append(buf)).await {
                        Ok(BufResult(Ok(n), buf)) if n > 0 => self.rbuf = buf,
                        _ => return Err(()),
                    }
                }
                Ok(Some((header, used))) => {
                    let allowed = match ends {
                        Endpoints::Tcp { peer, .. } => settings.proxy_allow_ips.allows(peer.ip()),
                        Endpoints::Unix { .. } => true,
                    };
                    if header.is_some() && !allowed {
                        self.refuse_raw(&raw, HttpError::new(403, "Request forbidden"))
                            .await;
                        return Err(());
                    }
                    self.rbuf.drain(..used);
                    return Ok(header);
                }
                Err(err) => {
                    self.refuse_raw(&raw, err).await;
                    return Err(());
                }
            }
        }
    }

    /// Refuses a connection before any TLS: the answer goes out as it is.
    async fn refuse_raw(&mut self, raw: &Stream, err: HttpError) {
        self.host.load.refused(err.status);
        let mut out = Vec::new();
        encode::error_response(&mut out, err, &self.host.date());
        self.host.load.sent(out.len());
        let _ = raw.write_out(&mut out).await;
    }

    async fn serve<H: Handler>(
        &mut self,
        handler: &H,
        peer: &H::Peer,
        client: &Client,
        mut first: bool,
    ) {
        let mut head = RequestHead::default();
        let host = self.host.clone();
        let settings = &host.settings;
        loop {
            // A head: an idle connection waits at most keep-alive for its first
            // byte, and the whole head must arrive within the header timeout.
            let mut deadline: Option<Instant> = None;
            // When the connection began to wait for this head; None if it
            // was in the buffer already.
            let mut waiting_since: Option<Instant> = None;
            let mut scan = HeadScan::default();
            loop {
                match scan.parse(&self.rbuf, &settings.limits, &mut head) {
                    Ok(Some(())) => break,
                    Ok(None) => {}
                    Err(err) => return self.refuse(err).await,
                }
                if self.pending() > 0 && !self.flush().await {
                    return;
                }
                let now = Instant::now();
                waiting_since.get_or_insert(now);
                let until = if self.rbuf.is_empty() && !first {
                    now + settings.keep_alive
                } else {
                    *deadline.get_or_insert(now + settings.header_timeout)
                };
                let partial = !self.rbuf.is_empty();
                // Between requests a draining shard closes the connection; a
                // new connection still gets its first request answered.
                let idle = !partial && !first;
                if idle && host.drain.is_draining() {
                    return;
                }
                match self.read(until, idle).await {
                    Ok(()) => {}
                    Err(ReadError::TimedOut) if partial => {
                        return self
                            .refuse(HttpError::new(408, "request head not received in time"))
                            .await;
                    }
                    Err(_) => return,
                }
            }

            // A request that waited behind this shard's busy thread goes to an
            // idle shard, with its connection (docs/architecture.md, "Moving
            // connections"). Earlier pipelined answers must be out first.
            if let Some(since) = waiting_since
                && self.pending() == 0
                && !host.drain.is_draining()
                && self.stream.movable()
                && let Some(to) = host.load.relief(since)
                && self.hand_off(to, client)
            {
                return;
            }
            first = false;
            let https = match self.trusted {
                true => match proxy::is_https(&self.rbuf, &head, &settings.secure_scheme_headers) {
                    Ok(https) => https || self.tls,
                    Err(err) => return self.refuse(err).await,
                },
                false => self.tls,
            };
            // A declared length over limit_request_body is refused before
            // the app runs; a chunked body is cut where it passes the limit.
            if let (Some(limit), BodyKind::Length(length)) = (settings.limits.body, head.body)
                && length > limit
            {
                return self
                    .refuse(HttpError::new(413, "request body too large"))
                    .await;
            }
            let meta = Meta {
                minor: head.minor,
                is_head: head.is_head(&self.rbuf),
                // A stopping server says Connection: close on its last responses.
                keep_alive: head.keep_alive && !host.stopping(),
            };
            let ex = Exchange {
                conn: self,
                head: &head,
                meta,
                https,
                head_kept: true,
            };
            host.load.started();
            let answering = Span {
                load: &*host.load,
                end: |load| load.finished(),
            };
            let answered = handler.respond(peer, ex).await;
            drop(answering);
            let Some(keep_alive) = answered else {
                return;
            };
            if self.ends_after(keep_alive) {
                self.open.end();
                let _ = self.flush().await;
                return self.linger().await;
            }
            if self.pending() >= FLUSH_AT && !self.flush().await {
                return;
            }
            // A large head or body grew the buffer: between requests an idle
            // connection keeps only a small one.
            if self.rbuf.capacity() > RBUF_KEEP && self.rbuf.len() <= RBUF_SIZE {
                self.rbuf.shrink_to(RBUF_SIZE);
            }
        }
    }

    /// Offers the connection to shard `to`; true once that shard has it, and
    /// this one must let it go without touching the socket. A TLS
    /// connection's session lives in this shard: it stays.
    fn hand_off(&mut self, to: usize, client: &Client) -> bool {
        let Some((fd, unix)) = self.stream.dup_plain() else {
            return false;
        };
        let handoff = Box::new(Handoff {
            fd,
            unix,
            rbuf: std::mem::take(&mut self.rbuf),
            client: client.clone(),
            trusted: self.trusted,
            zerocopy: self.zerocopy,
        });
        match self.host.load.hand_off(to, handoff) {
            Ok(()) => true,
            Err(back) => {
                self.rbuf = back.rbuf;
                false
            }
        }
    }

    /// Reads more input into `rbuf`, appending. An `idle` read also ends, as
    /// Closed, when the shard starts draining.
    async fn read(&mut self, until: Instant, idle: bool) -> Result<(), ReadError> {
        // A read into zero spare bytes would look like EOF.
        self.rbuf.reserve(8192);
        let buf = std::mem::take(&mut self.rbuf);
        let read = super::deadline::timeout_at(until, self.stream.append(buf));
        let read = if idle {
            let drain = self.host.drain.started();
            match futures_util::future::select(std::pin::pin!(read), std::pin::pin!(drain)).await {
                Either::Left((read, _)) => read,
                Either::Right(_) => return Err(ReadError::Closed),
            }
        } else {
            read.await
        };
        match read {
            Ok(BufResult(res, buf)) => {
                self.rbuf = buf;
                match res {
                    Ok(0) => Err(ReadError::Closed),
                    Ok(n) => {
                        self.host.load.received(n);
                        Ok(())
                    }
                    Err(_) => Err(ReadError::Failed),
                }
            }
            Err(_) => Err(ReadError::TimedOut),
        }
    }

    /// Whether a response the handler answers `keep_alive` for is the
    /// connection's last.
    fn ends_after(&self, keep_alive: bool) -> bool {
        !keep_alive || self.host.settings.keep_alive.is_zero() || self.host.stopping()
    }

    /// Bytes waiting to be written.
    fn pending(&self) -> usize {
        self.out.len() + self.lent.len()
    }

    /// Writes `out`; false when the client is gone or stalled.
    async fn flush(&mut self) -> bool {
        let bytes = self.pending();
        let written = self
            .stream
            .write_spliced(&mut self.out, &mut self.lent, self.zerocopy)
            .await;
        if written {
            self.host.load.sent(bytes);
        }
        written
    }

    /// Answers a bad request with its status and closes the connection.
    async fn refuse(&mut self, err: HttpError) {
        log::debug!("Refusing request: {} {}", err.status, err.detail);
        self.host.load.refused(err.status);
        encode::error_response(&mut self.out, err, &self.host.date());
        self.open.end();
        if self.flush().await {
            self.linger().await;
        }
    }

    /// Half-closes and drains input until the client closes, for at most LINGER.
    async fn linger(&mut self) {
        if let Stream::Tls(tls) = &self.stream {
            tls.close_notify().await;
        }
        // SAFETY: shutdown on our own socket descriptor.
        unsafe { libc::shutdown(self.stream.as_raw_fd(), libc::SHUT_WR) };
        let until = Instant::now() + LINGER;
        let mut drained = 0usize;
        while drained < 1 << 20 {
            self.rbuf.clear();
            match self.read(until, false).await {
                Ok(()) => drained += self.rbuf.len(),
                Err(_) => break,
            }
        }
    }
}

/// One request and the connection's means to answer it. The head's bytes
/// stay at the start of `buf` until `end_head`; the response goes into
/// `output`, and leaves on `flush` or once the handler returns.
pub struct Exchange<'c> {
    conn: &'c mut Conn,
    head: &'c RequestHead,
    meta: Meta,
    https: bool,
    /// The head's bytes are still at the start of the read buffer.
    head_kept: bool,
}

impl<'c> Exchange<'c> {
    pub fn head(&self) -> &RequestHead {
        self.head
    }

    /// The read buffer, which starts with the head until `end_head`.
    pub fn buf(&self) -> &[u8] {
        &self.conn.rbuf
    }

    /// Drops the head's bytes, once the handler has taken what it needs.
    pub fn end_head(&mut self) {
        if std::mem::take(&mut self.head_kept) {
            self.conn.rbuf.drain(..self.head.len);
        }
    }

    pub fn meta(&self) -> Meta {
        self.meta
    }

    /// The request came through https: over TLS, or as its trusted proxy says.
    pub fn https(&self) -> bool {
        self.https
    }

    /// The client's address, for the access log.
    pub fn remote(&self) -> &str {
        &self.conn.peer
    }

    pub fn host(&self) -> &Host {
        &self.conn.host
    }

    /// The Date header's value for now.
    pub fn date(&self) -> Vec<u8> {
        self.conn.host.date()
    }

    /// The handler is about to write its response's last bytes, and will
    /// answer `keep_alive`. If that ends the connection, it stops counting
    /// for placement now (see `Open`): a handler that writes as it goes
    /// returns only once the write completes, and a shard then computing
    /// the next request reaps that only after it, while the client has
    /// already reconnected.
    pub fn last_bytes(&mut self, keep_alive: bool) {
        if self.conn.ends_after(keep_alive) {
            self.conn.open.end();
        }
    }

    /// Where the response goes: turbo's buffer, and buffers lent to it.
    pub fn output(&mut self) -> (&mut Vec<u8>, &mut Lent) {
        (&mut self.conn.out, &mut self.conn.lent)
    }

    /// Answers with turbo's own error response; the connection then closes.
    pub fn error(&mut self, err: HttpError) {
        encode::error_response(&mut self.conn.out, err, &self.conn.host.date());
    }

    /// Answers with turbo's own error where the request itself is at fault
    /// (its target, its body), and counts the refusal.
    pub fn refuse(&mut self, err: HttpError) {
        self.conn.host.load.refused(err.status);
        self.error(err);
    }

    /// Writes what the output holds, behind any earlier pipelined responses;
    /// false when the client is gone or stalled.
    pub async fn flush(&mut self) -> bool {
        self.conn.flush().await
    }

    /// Writes the output (the head), then the file; false when the
    /// connection must close.
    pub async fn send_file(&mut self, file: FileSpan) -> bool {
        let sendfile = self.conn.host.settings.sendfile;
        let bytes = file.len();
        let sent = self.conn.flush().await
            && file
                .send(&self.conn.stream, &mut Vec::new(), sendfile)
                .await;
        if sent {
            self.conn.host.load.sent(bytes as usize);
        }
        sent
    }

    /// Sends `100 Continue`, after whatever is owed before it.
    pub async fn send_continue(&mut self) -> bool {
        self.conn.out.extend_from_slice(encode::CONTINUE);
        self.conn.flush().await
    }

    /// Reads the body before the app runs, through the ring, so a slow upload
    /// never holds the shard's thread: in memory up to `spool::MEMORY_MAX`,
    /// in a temporary file past it. A client waiting for `100 Continue` gets
    /// it at once, as from Gunicorn. With `stream_at`, a larger body, or one
    /// the client holds back until `100 Continue`, is handed over instead
    /// (`Body::Stream`): the app then reads it on its own thread, and sends
    /// the 100 Continue on its first read. Err(None) when the client is gone.
    pub async fn read_body(&mut self, stream_at: Option<usize>) -> Result<Body, Option<HttpError>> {
        let head = self.head;
        let host = self.conn.host.clone();
        let settings = &host.settings;
        let conn = &mut *self.conn;
        let mut decoder = Decoder::new(head.body).limited(settings.limits.body);
        let mut body = Vec::new();
        let mut spool: Option<Spool> = None;
        let mut continued = false;
        loop {
            // The head stays for the app's request; decoded body bytes leave rbuf.
            let used = decoder
                .decode_into(&conn.rbuf[head.len..], &mut body)
                .map_err(Some)?;
            conn.rbuf.drain(head.len..head.len + used);
            if decoder.is_done() {
                return match spool {
                    None => Ok(Body::InMemory(body)),
                    Some(mut spool) => spool
                        .write(&body)
                        .and_then(|()| spool.finish())
                        .map(Body::Spooled)
                        .map_err(|e| Some(spool_failed(e))),
                };
            }
            let nothing_yet = body.is_empty() && spool.is_none() && conn.rbuf.len() == head.len;
            let waiting_for_continue = head.expect_continue && nothing_yet && !continued;
            if let Some(stream_at) = stream_at {
                let large = decoder
                    .remaining_length()
                    .is_some_and(|n| n as usize + body.len() > stream_at)
                    || body.len() + (conn.rbuf.len() - head.len) > stream_at;
                if waiting_for_continue || large {
                    // The app's thread sends 100 Continue on its first read,
                    // straight to the socket: what is owed before it goes first.
                    if waiting_for_continue && conn.pending() > 0 && !conn.flush().await {
                        return Err(None);
                    }
                    let pending = conn.rbuf.split_off(head.len);
                    let stream = BodyStream::new(
                        conn.stream.as_raw_fd(),
                        match &conn.stream {
                            Stream::Tls(tls) => Some(tls.session.clone()),
                            _ => None,
                        },
                        pending,
                        decoder,
                        waiting_for_continue,
                        settings.header_timeout,
                    )
                    .map_err(|e| Some(spool_failed(e)))?;
                    return Ok(Body::Stream(stream, body));
                }
            } else if waiting_for_continue {
                conn.out.extend_from_slice(encode::CONTINUE);
                if !conn.flush().await {
                    return Err(None);
                }
                continued = true;
            }
            if body.len() > spool::MEMORY_MAX {
                let spooled = match spool.as_mut() {
                    Some(spool) => spool.write(&body),
                    None => Spool::new(settings.tmp_upload_dir.as_deref()).and_then(|mut s| {
                        let written = s.write(&body);
                        spool = Some(s);
                        written
                    }),
                };
                spooled.map_err(|e| Some(spool_failed(e)))?;
                body.clear();
            }
            let until = Instant::now() + settings.header_timeout;
            conn.rbuf.reserve(BODY_READ);
            match conn.read(until, false).await {
                Ok(()) => {}
                Err(ReadError::TimedOut) => {
                    return Err(Some(HttpError::new(
                        408,
                        "request body not received in time",
                    )));
                }
                Err(_) => return Err(None),
            }
        }
    }

    /// Takes a handed-over body back from the app (None: the app kept it).
    /// Bytes read past its end belong to the next request. Returns false if
    /// the body was not read to its end: the connection cannot be reused.
    pub fn restore_body(&mut self, stream: Option<BodyStream>) -> bool {
        match stream {
            Some(stream) if stream.decoder.is_done() => {
                self.conn.host.load.received(stream.received);
                self.conn.rbuf.extend_from_slice(&stream.pending);
                true
            }
            _ => false,
        }
    }

    /// A reader for a body the app asks for piece by piece while its response
    /// may already be going out. Call after `end_head`.
    pub fn body_reader(&self) -> BodyReader {
        BodyReader {
            decoder: Decoder::new(self.head.body).limited(self.conn.host.settings.limits.body),
            stream: self.conn.stream.clone(),
            scratch: Vec::new(),
            reading: None,
            timeout: self.conn.host.settings.header_timeout,
        }
    }

    /// Resolves when the socket turns readable: the next request's bytes, or
    /// the client leaving (tell them apart with `peek`). Unlike a read, it
    /// can be dropped without losing a pipelined request's bytes.
    pub fn readable(&self) -> LocalBoxFuture<'static, ()> {
        let fd = Watched(self.conn.stream.as_raw_fd());
        Box::pin(async move {
            let _ = compio::runtime::submit(PollOnce::new(fd, Interest::Readable)).await;
        })
    }

    pub fn peek(&self) -> Peek {
        self.conn.stream.peek()
    }

    /// Hands the connection over to another protocol (a WebSocket): the
    /// socket, what was read past the head, the output buffer, with any
    /// earlier response still in it, and the host, whose drain ends the
    /// upgraded connection too. The connection closes when it ends.
    pub fn upgrade(mut self) -> (Stream, &'c mut Vec<u8>, &'c mut Vec<u8>, Rc<Host>) {
        self.end_head();
        let conn = self.conn;
        (
            conn.stream.clone(),
            &mut conn.rbuf,
            &mut conn.out,
            conn.host.clone(),
        )
    }
}

/// A body that could not be spooled is the server's failure, not the
/// client's.
fn spool_failed(e: std::io::Error) -> HttpError {
    log::error!("Cannot keep a request body: {e}");
    HttpError::new(500, "the request body could not be kept")
}

/// What a body read brought.
pub enum BodyRead {
    /// Bytes were decoded (maybe none yet: read again).
    Data,
    /// The client closed its end, or the socket failed.
    Closed,
    /// The client stalled past the header timeout.
    Stalled,
    /// The body is framed badly, or passed `limit_request_body`: the
    /// connection cannot go on, and the error says why.
    Refused(HttpError),
}

type Read = LocalBoxFuture<'static, BufResult<usize, Vec<u8>>>;

/// A request body read as the app asks for it. Its read owns a handle to the
/// socket, so it stays in flight across writes of the response.
pub struct BodyReader {
    decoder: Decoder,
    stream: Stream,
    /// The read buffer, made on the first read (most requests have none).
    scratch: Vec<u8>,
    /// The read in flight, and the stall it must beat.
    reading: Option<(Read, LocalBoxFuture<'static, ()>)>,
    timeout: Duration,
}

impl BodyReader {
    /// Decodes the body bytes the connection has read into `into`.
    pub fn decode(&mut self, ex: &mut Exchange<'_>, into: &mut Vec<u8>) -> Result<(), HttpError> {
        let rbuf = &mut ex.conn.rbuf;
        let used = self.decoder.decode_into(rbuf, into)?;
        rbuf.drain(..used);
        Ok(())
    }

    pub fn is_done(&self) -> bool {
        self.decoder.is_done()
    }

    pub fn is_reading(&self) -> bool {
        self.reading.is_some()
    }

    /// Starts a read, unless one is in flight; it must bring bytes within the
    /// header timeout.
    pub fn start(&mut self) {
        if self.reading.is_some() {
            return;
        }
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        let left = self
            .decoder
            .remaining_length()
            .unwrap_or(BODY_READ_MAX as u64);
        buf.reserve((left as usize).clamp(BODY_READ_MIN, BODY_READ_MAX));
        let mut reader = self.stream.clone();
        let deadline = Instant::now() + self.timeout;
        self.reading = Some((
            Box::pin(async move { reader.read(buf).await }),
            Box::pin(compio::time::sleep_until(deadline)),
        ));
    }

    /// Polls the read in flight: what it read is decoded into `into`, and
    /// what follows the body stays for the next request.
    pub fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        ex: &mut Exchange<'_>,
        into: &mut Vec<u8>,
    ) -> Poll<BodyRead> {
        let Some((read, stall)) = self.reading.as_mut() else {
            return Poll::Pending;
        };
        let done = match read.as_mut().poll(cx) {
            Poll::Ready(done) => done,
            Poll::Pending => {
                if stall.as_mut().poll(cx).is_ready() {
                    self.reading = None;
                    return Poll::Ready(BodyRead::Stalled);
                }
                return Poll::Pending;
            }
        };
        self.reading = None;
        let BufResult(res, buf) = done;
        let read = match res {
            Ok(n) if n > 0 => {
                ex.conn.host.load.received(n);
                ex.conn.rbuf.extend_from_slice(&buf[..n]);
                match self.decode(ex, into) {
                    Ok(()) => BodyRead::Data,
                    Err(err) => BodyRead::Refused(err),
                }
            }
            // EOF or an error: the client is gone.
            _ => BodyRead::Closed,
        };
        self.scratch = buf;
        Poll::Ready(read)
    }
}
