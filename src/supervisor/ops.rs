//! The operations port (`--metrics-bind`): `GET /metrics`, `/livez` and
//! `/readyz`, answered by the supervisor's own loop. No app code and no shard
//! is involved, so a busy or hung worker cannot starve a probe, and a
//! supervisor that stops turning its loop fails `/livez` by not answering.
//! Each client gets one response and a close. The port is built for
//! probes and scrapers, not for the open internet, but a hostile client
//! still costs little: at most `CLIENTS_MAX` connections (the oldest is cut
//! to make room; a new client whose request is already there is answered
//! before the next accept), a head of at most `HEAD_MAX` bytes, and
//! `DEADLINE` to send it and read the answer.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

const CLIENTS_MAX: usize = 64;
const HEAD_MAX: usize = 8192;
const DEADLINE: Duration = Duration::from_secs(5);

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Page {
    Metrics,
    Live,
    Ready,
}

/// An answer: the status, the content type and the body.
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Answer {
    pub fn text(status: u16, body: &str) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n"),
        }
    }
}

/// Where a client is: sending its request, being answered, or, once the
/// answer is out and the socket half-closed, having what it sent beyond
/// the head read and dropped until it closes, so that closing with unread
/// input does not reset the connection before the answer is read.
enum Phase {
    Reading,
    Writing(Vec<u8>, usize),
    Lingering,
}

struct Client {
    stream: TcpStream,
    input: Vec<u8>,
    phase: Phase,
    deadline: Instant,
}

pub struct Ops {
    listener: TcpListener,
    clients: Vec<Client>,
    /// After an accept failed (out of descriptors), the listener is not
    /// polled until then: it would stay readable and spin the loop.
    resume_accept: Option<Instant>,
}

impl Ops {
    /// Listens at `address`, or takes over `inherited`, the socket the
    /// previous supervisor listened on (USR2): both then accept from it
    /// until the old one stops.
    pub fn bind(address: SocketAddr, inherited: Option<socket2::Socket>) -> std::io::Result<Ops> {
        use socket2::{Domain, Socket, Type};
        let socket = match inherited {
            Some(socket) => socket,
            None => {
                let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
                socket.set_reuse_address(true)?;
                socket.bind(&address.into())?;
                socket.listen(128)?;
                socket
            }
        };
        socket.set_nonblocking(true)?;
        Ok(Ops {
            listener: socket.into(),
            clients: Vec::new(),
            resume_accept: None,
        })
    }

    /// The listening socket, which USR2 hands to the new supervisor.
    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// The descriptors to poll, with the events each waits for.
    pub fn poll_fds(&self) -> Vec<(RawFd, libc::c_short)> {
        let accepting = self.resume_accept.is_none_or(|at| Instant::now() >= at);
        let listening = if accepting { libc::POLLIN } else { 0 };
        let mut fds = vec![(self.listener.as_raw_fd(), listening)];
        fds.extend(self.clients.iter().map(|c| {
            let events = match c.phase {
                Phase::Writing(..) => libc::POLLOUT,
                Phase::Reading | Phase::Lingering => libc::POLLIN,
            };
            (c.stream.as_raw_fd(), events)
        }));
        fds
    }

    /// Every descriptor the port holds, which a forked worker closes.
    pub fn fds(&self) -> Vec<RawFd> {
        self.poll_fds().into_iter().map(|(fd, _)| fd).collect()
    }

    /// When the next client's time runs out, or accepting resumes.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.clients
            .iter()
            .map(|c| c.deadline)
            .chain(self.resume_accept)
            .min()
    }

    /// Reads, answers and writes what it can without blocking, for the
    /// clients it has and then for each one it accepts, at once: a probe
    /// whose request is already there is answered before the next accept,
    /// so a flood of connections cannot push it out. `answer` makes the
    /// response to each complete request.
    pub fn serve(&mut self, mut answer: impl FnMut(Page) -> Answer) {
        let now = Instant::now();
        self.clients
            .retain_mut(|client| now < client.deadline && step(client, &mut answer));
        if self.resume_accept.is_some_and(|at| now < at) {
            return;
        }
        self.resume_accept = None;
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let mut client = Client {
                        stream,
                        input: Vec::new(),
                        phase: Phase::Reading,
                        deadline: Instant::now() + DEADLINE,
                    };
                    if !step(&mut client, &mut answer) {
                        continue;
                    }
                    if self.clients.len() >= CLIENTS_MAX {
                        // The oldest has had the longest to finish.
                        self.clients.remove(0);
                    }
                    self.clients.push(client);
                }
                // A client that reset before its accept.
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                // Out of descriptors, or memory: try again a little later.
                Err(_) => {
                    self.resume_accept = Some(Instant::now() + Duration::from_millis(100));
                    return;
                }
            }
        }
    }
}

/// Moves a client on as far as it can go now; false once it is done with.
fn step(client: &mut Client, answer: &mut impl FnMut(Page) -> Answer) -> bool {
    if let Phase::Reading = client.phase {
        let response = match read_head(client) {
            Step::Wait => return true,
            Step::Close => return false,
            Step::Answer(Ok((page, head_only))) => encode(answer(page), head_only),
            Step::Answer(Err(refusal)) => encode(refusal, false),
        };
        client.phase = Phase::Writing(response, 0);
    }
    if let Phase::Writing(output, written) = &mut client.phase {
        while *written < output.len() {
            match client.stream.write(&output[*written..]) {
                Ok(0) => return false,
                Ok(n) => *written += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
        if client.stream.shutdown(std::net::Shutdown::Write).is_err() {
            return false;
        }
        client.phase = Phase::Lingering;
    }
    // Lingering: drop what comes until the client closes, a bounded amount
    // per turn, so a client that keeps sending cannot hold the loop.
    let mut buf = [0u8; 4096];
    for _ in 0..16 {
        match client.stream.read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
    true
}

enum Step {
    Wait,
    Close,
    /// The page asked for and whether it was a HEAD; or an error's answer.
    Answer(Result<(Page, bool), Answer>),
}

fn read_head(client: &mut Client) -> Step {
    let mut buf = [0u8; 2048];
    loop {
        // A client may half-close once its request is sent.
        let ended = match client.stream.read(&mut buf) {
            Ok(0) => true,
            Ok(n) => {
                client.input.extend_from_slice(&buf[..n]);
                false
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Wait,
            Err(_) => return Step::Close,
        };
        // What follows a complete head (a body, pipelined requests) is
        // never read as part of it.
        match parse(&client.input) {
            Some(step) => return step,
            None if ended => return Step::Close,
            None if client.input.len() > HEAD_MAX => {
                return Step::Answer(Err(Answer::text(431, "request head too large")));
            }
            None => {}
        }
    }
}

/// The answer to a complete head; None while it is partial.
fn parse(input: &[u8]) -> Option<Step> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(input) {
        Ok(httparse::Status::Partial) => None,
        Err(_) => Some(Step::Answer(Err(Answer::text(400, "bad request")))),
        Ok(httparse::Status::Complete(_)) => {
            let method = request.method.unwrap_or("");
            let path = request.path.unwrap_or("");
            let path = path.split_once('?').map_or(path, |(p, _)| p);
            let page = match path {
                "/metrics" => Page::Metrics,
                "/livez" => Page::Live,
                "/readyz" => Page::Ready,
                _ => return Some(Step::Answer(Err(Answer::text(404, "not found")))),
            };
            Some(Step::Answer(match method {
                "GET" => Ok((page, false)),
                "HEAD" => Ok((page, true)),
                _ => Err(Answer::text(405, "method not allowed")),
            }))
        }
    }
}

fn encode(answer: Answer, head_only: bool) -> Vec<u8> {
    let reason = crate::http::reason(answer.status);
    let allow = if answer.status == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\n{allow}Connection: close\r\n\r\n",
        answer.status,
        answer.content_type,
        answer.body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(answer.body.as_bytes());
    }
    out
}
