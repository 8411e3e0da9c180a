//! `bare PORT`: the benchmark's floor. One thread, one compio (io_uring) runtime,
//! accepting on 127.0.0.1:PORT and answering every request on a keep-alive
//! connection with a fixed 200 "Hello, World!". It parses each request head with
//! httparse (and skips a Content-Length body), so pipelined requests each get
//! their answer, written together in one send. What turbo adds on top of this is
//! the cost of Python and of a complete server.

use compio::BufResult;
use compio::io::{AsyncRead, AsyncWriteExt};
use compio::net::{TcpListener, TcpStream};

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!";
const BAD_REQUEST: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("usage: bare PORT");
    let runtime = compio::runtime::Runtime::new().expect("io_uring runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
        loop {
            match listener.accept().await {
                Ok((stream, _)) => compio::runtime::spawn(serve(stream)).detach(),
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
                    match std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse().ok()) {
                        Some(n) => body = n,
                        None => return Parsed::Invalid,
                    }
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    return Parsed::Invalid; // not needed by the benchmark
                }
            }
            if buf.len() >= head + body { Parsed::Request(head + body) } else { Parsed::Partial }
        }
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(_) => Parsed::Invalid,
    }
}

async fn serve(mut stream: TcpStream) {
    let mut rbuf: Vec<u8> = Vec::with_capacity(8192);
    let mut wbuf: Vec<u8> = Vec::with_capacity(8192);
    loop {
        // Answer every whole request already read, then send the answers at once.
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
        if !wbuf.is_empty() {
            let BufResult(res, out) = stream.write_all(wbuf).await;
            wbuf = out;
            wbuf.clear();
            if res.is_err() || close {
                return;
            }
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
