//! StatsD metrics under Gunicorn's names (`statsd_host`, `statsd_prefix`,
//! `dogstatsd_tags`), so dashboards built for Gunicorn keep working: per
//! request `gunicorn.requests`, `gunicorn.request.status.CODE` and
//! `gunicorn.request.duration`; from the supervisor `gunicorn.workers`; and
//! `gunicorn.log.error` / `gunicorn.log.warning` for each such log line. One
//! datagram per metric, from whichever process or shard has it; the socket is
//! made in the supervisor and inherited across fork.

use std::net::UdpSocket;
use std::os::unix::net::UnixDatagram;
use std::sync::OnceLock;
use std::time::Duration;

enum Socket {
    Udp(UdpSocket),
    Unix(UnixDatagram),
}

pub struct Statsd {
    socket: Socket,
    /// Ends with a dot unless empty, as Gunicorn makes it.
    prefix: String,
    /// `|#tags`, or empty.
    tags: String,
}

static SINK: OnceLock<Statsd> = OnceLock::new();

/// Where metrics go: `HOST:PORT` (port 8125 when omitted) or `unix:PATH` /
/// `unix://PATH`, as Gunicorn reads `statsd_host`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    Udp(String, u16),
    Unix(std::path::PathBuf),
}

impl Address {
    pub fn parse(text: &str) -> Result<Address, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            return Ok(Address::Unix(path.into()));
        }
        let (host, port) = match text.strip_prefix('[') {
            Some(rest) => match rest.split_once(']') {
                Some((host, after)) => (host, after.strip_prefix(':').unwrap_or("8125")),
                None => return Err(format!("invalid statsd address '{text}'")),
            },
            None => match text.rsplit_once(':') {
                Some((host, port)) => (host, port),
                None => (text, "8125"),
            },
        };
        let port = port
            .parse()
            .map_err(|_| format!("invalid statsd address '{text}': bad port '{port}'"))?;
        Ok(Address::Udp(host.to_ascii_lowercase(), port))
    }
}

/// Sets up the process's metrics; later calls do nothing.
pub fn install(address: &Address, prefix: &str, tags: &str) -> std::io::Result<()> {
    let socket = match address {
        Address::Udp(host, port) => {
            let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), *port))?
                .next()
                .ok_or_else(|| std::io::Error::other("no address"))?;
            let bind: std::net::SocketAddr = if addr.is_ipv6() {
                "[::]:0".parse().map_err(std::io::Error::other)?
            } else {
                "0.0.0.0:0".parse().map_err(std::io::Error::other)?
            };
            let socket = UdpSocket::bind(bind)?;
            socket.connect(addr)?;
            socket.set_nonblocking(true)?;
            Socket::Udp(socket)
        }
        Address::Unix(path) => {
            let socket = UnixDatagram::unbound()?;
            socket.connect(path)?;
            socket.set_nonblocking(true)?;
            Socket::Unix(socket)
        }
    };
    let trimmed = prefix.trim_end_matches('.');
    let _ = SINK.set(Statsd {
        socket,
        prefix: if trimmed.is_empty() {
            String::new()
        } else {
            format!("{trimmed}.")
        },
        tags: if tags.is_empty() {
            String::new()
        } else {
            format!("|#{tags}")
        },
    });
    Ok(())
}

/// The process's metrics, when `statsd_host` is set.
pub fn get() -> Option<&'static Statsd> {
    SINK.get()
}

impl Statsd {
    fn send(&self, name: &str, value: &str, kind: &str) {
        let line = format!("{}{name}:{value}|{kind}{}", self.prefix, self.tags);
        // Metrics never hold up a request: a full buffer or an absent server
        // loses the datagram.
        let _ = match &self.socket {
            Socket::Udp(s) => s.send(line.as_bytes()),
            Socket::Unix(s) => s.send(line.as_bytes()),
        };
    }

    pub fn increment(&self, name: &str) {
        self.send(name, "1", "c|@1.0");
    }

    pub fn gauge(&self, name: &str, value: usize) {
        self.send(name, &value.to_string(), "g");
    }

    /// A finished request, as Gunicorn's access() reports it.
    pub fn request(&self, status: u16, duration: Duration) {
        let ms = duration.as_micros() as f64 / 1000.0;
        self.send("gunicorn.request.duration", &python_float(ms), "ms");
        self.increment("gunicorn.requests");
        self.increment(&format!("gunicorn.request.status.{status}"));
    }
}

/// A float as Python's str() writes it (`2.0`, not Rust's `2`).
fn python_float(value: f64) -> String {
    let text = value.to_string();
    if text.contains(['.', 'e', 'i', 'N']) {
        text
    } else {
        text + ".0"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            Address::parse("localhost:9125"),
            Ok(Address::Udp("localhost".into(), 9125))
        );
        assert_eq!(
            Address::parse("Stats.local"),
            Ok(Address::Udp("stats.local".into(), 8125))
        );
        assert_eq!(Address::parse("[::1]:1"), Ok(Address::Udp("::1".into(), 1)));
        assert_eq!(
            Address::parse("unix:///run/statsd.sock"),
            Ok(Address::Unix("/run/statsd.sock".into()))
        );
        assert!(Address::parse("host:port").is_err());
    }

    #[test]
    fn floats_as_python_writes_them() {
        assert_eq!(python_float(2.0), "2.0");
        assert_eq!(python_float(0.512), "0.512");
    }
}
