//! `bare PORT [ENGINE]`: the benchmark's floor. One thread, one runtime,
//! accepting on 127.0.0.1:PORT and answering every request on a keep-alive
//! connection with a fixed 200 "Hello, World!". It parses each request head with
//! httparse (and skips a Content-Length body), so pipelined requests each get
//! their answer, written together in one send. What turbo adds on top of this is
//! the cost of Python and of a complete server.
//!
//! ENGINE compares the I/O engines under the same server:
//! - `uring` (the default): compio on io_uring, with turbo's ring flags;
//! - `bufring`: the same, reading into io_uring provided buffer rings;
//! - `epoll`: compio's polling driver, turbo's fallback engine;
//! - `tokio`: tokio's current-thread runtime on epoll, the usual Rust stack.

use compio::BufResult;
use compio::driver::{DriverType, ProactorBuilder};
use compio::io::{AsyncRead, AsyncReadManaged, AsyncWriteExt};
use compio::net::{TcpListener, TcpStream};
use compio::runtime::RuntimeBuilder;

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!";
const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args
        .next()
        .and_then(|p| p.parse().ok())
        .expect("usage: bare PORT [uring|bufring|epoll|tokio]");
    let engine = args.next().unwrap_or_else(|| "uring".into());
    if engine == "tokio" {
        return tokio_engine::run(port);
    }
    let mut proactor = ProactorBuilder::new();
    proactor
        .capacity(1024)
        .coop_taskrun(true)
        .taskrun_flag(true)
        .single_issuer(true)
        .defer_taskrun(true)
        .driver_type(if engine == "epoll" {
            DriverType::Poll
        } else {
            DriverType::IoUring
        });
    if engine == "bufring" {
        proactor
            .buffer_pool_size(std::num::NonZero::new(1024).expect("nonzero"))
            .buffer_pool_buffer_len(8192);
    }
    let runtime = RuntimeBuilder::new()
        .with_proactor(proactor)
        .build()
        .expect("runtime");
    let ring = engine == "bufring";
    runtime.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
        loop {
            match listener.accept().await {
                Ok((stream, _)) => compio::runtime::spawn(serve(stream, ring)).detach(),
                Err(e) => eprintln!("accept: {e}"),
            }
        }
    });
}

/// What the bytes at the front of the buffer hold.
enum Parsed {
    /// A whole request (head and body) of this many bytes.
    Request(usize),
    /// Not a whole request yet.
    Partial,
    Invalid,
}

fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(head)) => {
            let mut body = 0usize;
            for h in req.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    match std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse().ok())
                    {
                        Some(n) => body = n,
                        None => return Parsed::Invalid,
                    }
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    return Parsed::Invalid; // not needed by the benchmark
                }
            }
            if buf.len() >= head + body {
                Parsed::Request(head + body)
            } else {
                Parsed::Partial
            }
        }
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(_) => Parsed::Invalid,
    }
}

/// Answers every whole request at the front of `rbuf` into `wbuf`, drops them
/// from `rbuf`, and says whether the connection must close.
fn answer(rbuf: &mut Vec<u8>, wbuf: &mut Vec<u8>) -> bool {
    let mut used = 0;
    let mut close = false;
    loop {
        match parse(&rbuf[used..]) {
            Parsed::Request(n) => {
                used += n;
                wbuf.extend_from_slice(RESPONSE);
            }
            Parsed::Partial => break,
            Parsed::Invalid => {
                wbuf.extend_from_slice(BAD_REQUEST);
                close = true;
                break;
            }
        }
    }
    rbuf.drain(..used);
    close
}

async fn serve(mut stream: TcpStream, ring: bool) {
    let mut rbuf: Vec<u8> = Vec::with_capacity(8192);
    let mut wbuf: Vec<u8> = Vec::with_capacity(8192);
    loop {
        // Answer every whole request already read, then send the answers at once.
        let close = answer(&mut rbuf, &mut wbuf);
        if !wbuf.is_empty() {
            let BufResult(res, out) = stream.write_all(wbuf).await;
            wbuf = out;
            wbuf.clear();
            if res.is_err() || close {
                return;
            }
        }
        if ring {
            // The kernel picks a buffer from the ring; its bytes are copied
            // out and it goes back to the ring when dropped.
            match { &stream }.read_managed(0).await {
                Ok(Some(buf)) if !buf.is_empty() => rbuf.extend_from_slice(&buf),
                _ => return,
            }
            continue;
        }
        // A read into zero spare bytes would look like end of file.
        rbuf.reserve(8192);
        let BufResult(res, buf) = stream.read(rbuf).await;
        rbuf = buf;
        match res {
            Ok(n) if n > 0 => {}
            _ => return,
        }
    }
}

/// The same server on tokio (epoll), for comparing compio's engines with it.
mod tokio_engine {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub fn run(port: u16) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("tokio runtime");
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .expect("bind");
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::task::spawn_local(serve(stream));
                    }
                    Err(e) => eprintln!("accept: {e}"),
                }
            }
        });
    }

    async fn serve(mut stream: tokio::net::TcpStream) {
        let _ = stream.set_nodelay(true);
        let mut rbuf: Vec<u8> = Vec::with_capacity(8192);
        let mut wbuf: Vec<u8> = Vec::with_capacity(8192);
        loop {
            let close = super::answer(&mut rbuf, &mut wbuf);
            if !wbuf.is_empty() {
                let res = stream.write_all(&wbuf).await;
                wbuf.clear();
                if res.is_err() || close {
                    return;
                }
            }
            rbuf.reserve(8192);
            match stream.read_buf(&mut rbuf).await {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        }
    }
}
