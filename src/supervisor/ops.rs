//! The operations port (`--metrics-bind`): `GET /metrics`, `/livez` and
//! `/readyz`, answered by the supervisor's own loop. No app code and no shard
//! is involved, so a busy or hung worker cannot starve a probe, and a
//! supervisor that stops turning its loop fails `/livez` by not answering.
//! Each client gets one response and a close. The port is built for
//! probes and scrapers, not for the open internet, but a hostile client
//! still costs little: at most `CLIENTS_MAX` connections (the oldest is cut
//! to make room), a head of at most `HEAD_MAX` bytes, and `DEADLINE` to send
//! it and read the answer.

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

struct Client {
    stream: TcpStream,
    input: Vec<u8>,
    /// The response, once the head is in; `written` of it went out.
    output: Option<Vec<u8>>,
    written: usize,
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
    /// Listens at `address`. SO_REUSEPORT lets the new supervisor that USR2
    /// starts bind the same port while this one still serves.
    pub fn bind(address: SocketAddr) -> std::io::Result<Ops> {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.bind(&address.into())?;
        socket.listen(128)?;
        socket.set_nonblocking(true)?;
        Ok(Ops {
            listener: socket.into(),
            clients: Vec::new(),
            resume_accept: None,
        })
    }

    /// The descriptors to poll, with the events each waits for.
    pub fn poll_fds(&self) -> Vec<(RawFd, libc::c_short)> {
        let accepting = self.resume_accept.is_none_or(|at| Instant::now() >= at);
        let mut fds = vec![(
            self.listener.as_raw_fd(),
            if accepting { libc::POLLIN } else { 0 },
        )];
        fds.extend(self.clients.iter().map(|c| {
            let events = if c.output.is_some() {
                libc::POLLOUT
            } else {
                libc::POLLIN
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

    /// Accepts, reads, answers and writes what it can without blocking;
    /// `answer` makes the response to each complete request.
    pub fn serve(&mut self, mut answer: impl FnMut(Page) -> Answer) {
        self.accept();
        let now = Instant::now();
        self.clients.retain_mut(|client| {
            if now >= client.deadline {
                return false;
            }
            if client.output.is_none() {
                match read_head(client) {
                    Step::Wait => return true,
                    Step::Close => return false,
                    Step::Answer(response) => {
                        let response = match response {
                            Ok((page, head_only)) => encode(answer(page), head_only),
                            Err(answer) => encode(answer, false),
                        };
                        client.output = Some(response);
                    }
                }
            }
            write_out(client)
        });
    }

    fn accept(&mut self) {
        if self.resume_accept.is_some_and(|at| Instant::now() < at) {
            return;
        }
        self.resume_accept = None;
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    if self.clients.len() >= CLIENTS_MAX {
                        // The oldest has had the longest to finish.
                        self.clients.remove(0);
                    }
                    self.clients.push(Client {
                        stream,
                        input: Vec::new(),
                        output: None,
                        written: 0,
                        deadline: Instant::now() + DEADLINE,
                    });
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

enum Step {
    Wait,
    Close,
    /// The page asked for and whether it was a HEAD; or an error's answer.
    Answer(Result<(Page, bool), Answer>),
}

fn read_head(client: &mut Client) -> Step {
    let mut buf = [0u8; 2048];
    loop {
        match client.stream.read(&mut buf) {
            Ok(0) => return Step::Close,
            Ok(n) => client.input.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(_) => return Step::Close,
        }
        if client.input.len() > HEAD_MAX {
            return Step::Answer(Err(Answer::text(431, "request head too large")));
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(&client.input) {
        Ok(httparse::Status::Partial) => Step::Wait,
        Err(_) => Step::Answer(Err(Answer::text(400, "bad request"))),
        Ok(httparse::Status::Complete(_)) => {
            let method = request.method.unwrap_or("");
            let path = request.path.unwrap_or("");
            let path = path.split_once('?').map_or(path, |(p, _)| p);
            let page = match path {
                "/metrics" => Page::Metrics,
                "/livez" => Page::Live,
                "/readyz" => Page::Ready,
                _ => return Step::Answer(Err(Answer::text(404, "not found"))),
            };
            match method {
                "GET" => Step::Answer(Ok((page, false))),
                "HEAD" => Step::Answer(Ok((page, true))),
                _ => Step::Answer(Err(Answer::text(405, "method not allowed"))),
            }
        }
    }
}

fn encode(answer: Answer, head_only: bool) -> Vec<u8> {
    let reason = match answer.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    };
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

/// Writes what the socket takes; false once the client is done with.
fn write_out(client: &mut Client) -> bool {
    let Some(output) = &client.output else {
        return true;
    };
    while client.written < output.len() {
        match client.stream.write(&output[client.written..]) {
            Ok(0) => return false,
            Ok(n) => client.written += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
    // All of it went out: half-close and let the client read it. The
    // request was read whole, so closing sends no reset over unread bytes.
    let _ = client.stream.shutdown(std::net::Shutdown::Write);
    false
}
