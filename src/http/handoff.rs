//! A connection leaving its shard between two requests, for another shard to
//! go on serving (docs/architecture.md, "Moving connections"): the socket, the
//! bytes read and not yet answered (a whole head at least), and what was
//! learnt of the client when it connected. A shard of the same worker takes
//! it as it is; a shard in another worker process takes the socket by
//! SCM_RIGHTS and the rest as the bytes `encode` writes.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::proxy_protocol;
use super::stream::Endpoints;

/// Who the client is, as the connection's start established it.
#[derive(Clone)]
pub(super) struct Client {
    pub ends: Endpoints,
    pub proxied: Option<proxy_protocol::Header>,
}

pub struct Handoff {
    pub(super) fd: OwnedFd,
    /// A unix socket rather than TCP.
    pub(super) unix: bool,
    pub(super) rbuf: Vec<u8>,
    pub(super) client: Client,
    pub(super) trusted: bool,
    pub(super) zerocopy: bool,
}

/// The PROXY header's protocol names, by their number in `encode`.
const PROTOCOLS: [&str; 5] = ["UNKNOWN", "TCP4", "TCP6", "LOCAL", "UNSPEC"];

impl Handoff {
    /// The client's address, as the log shows it.
    pub fn peer_host(&self) -> String {
        self.client.ends.peer_host()
    }

    /// The connection's socket, to send to another process.
    pub fn socket(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Everything but the socket, as bytes `decode` reads back; None for a
    /// PROXY header whose protocol name it does not know.
    pub fn encode(&self) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(64 + self.rbuf.len());
        let flags =
            u8::from(self.unix) | u8::from(self.trusted) << 1 | u8::from(self.zerocopy) << 2;
        out.push(flags);
        match &self.client.ends {
            Endpoints::Tcp { peer, local } => {
                out.push(0);
                put_addr(&mut out, peer);
                put_addr(&mut out, local);
            }
            Endpoints::Unix { path } => {
                out.push(1);
                put_bytes(&mut out, path.as_os_str().as_bytes());
            }
        }
        match &self.client.proxied {
            None => out.push(0),
            Some(header) => {
                out.push(1);
                let protocol = PROTOCOLS.iter().position(|p| *p == header.protocol)?;
                out.push(protocol as u8);
                for addr in [header.client, header.proxy] {
                    match addr {
                        Some(addr) => {
                            out.push(1);
                            put_addr(&mut out, &addr);
                        }
                        None => out.push(0),
                    }
                }
            }
        }
        out.extend_from_slice(&self.rbuf);
        Some(out)
    }

    /// The handoff `encode` wrote, with the socket that came with it; None
    /// for bytes it did not write.
    pub fn decode(fd: OwnedFd, bytes: &[u8]) -> Option<Handoff> {
        let mut r = Reader(bytes);
        let flags = r.byte()?;
        let ends = match r.byte()? {
            0 => Endpoints::Tcp {
                peer: r.addr()?,
                local: r.addr()?,
            },
            1 => Endpoints::Unix {
                path: PathBuf::from(std::ffi::OsStr::from_bytes(r.bytes()?)),
            },
            _ => return None,
        };
        let proxied = match r.byte()? {
            0 => None,
            1 => {
                let protocol = *PROTOCOLS.get(usize::from(r.byte()?))?;
                let mut addrs = [None, None];
                for addr in &mut addrs {
                    *addr = match r.byte()? {
                        0 => None,
                        _ => Some(r.addr()?),
                    };
                }
                let [client, proxy] = addrs;
                Some(proxy_protocol::Header {
                    protocol,
                    client,
                    proxy,
                })
            }
            _ => return None,
        };
        Some(Handoff {
            fd,
            unix: flags & 1 != 0,
            rbuf: r.0.to_vec(),
            client: Client { ends, proxied },
            trusted: flags & 2 != 0,
            zerocopy: flags & 4 != 0,
        })
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_addr(out: &mut Vec<u8>, addr: &SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            out.push(4);
            out.extend_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            out.push(6);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.flowinfo().to_le_bytes());
            out.extend_from_slice(&a.scope_id().to_le_bytes());
        }
    }
    out.extend_from_slice(&addr.port().to_le_bytes());
}

/// Reads what `encode` wrote, front to back; None past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take::<1>().map(|[b]| b)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.u32()?).ok()?;
        let (bytes, rest) = self.0.split_at_checked(len)?;
        self.0 = rest;
        Some(bytes)
    }

    fn port(&mut self) -> Option<u16> {
        self.take().map(u16::from_le_bytes)
    }

    fn addr(&mut self) -> Option<SocketAddr> {
        match self.byte()? {
            4 => {
                let ip = Ipv4Addr::from(self.take::<4>()?);
                Some(SocketAddrV4::new(ip, self.port()?).into())
            }
            6 => {
                let ip = Ipv6Addr::from(self.take::<16>()?);
                let (flowinfo, scope) = (self.u32()?, self.u32()?);
                Some(SocketAddrV6::new(ip, self.port()?, flowinfo, scope).into())
            }
            _ => None,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn socket() -> OwnedFd {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.into()
    }

    /// A plain TCP connection's handoff around `fd`, with a request waiting.
    pub fn sample(fd: OwnedFd) -> Handoff {
        Handoff {
            fd,
            unix: false,
            rbuf: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            client: Client {
                ends: Endpoints::Tcp {
                    peer: "1.2.3.4:5".parse().unwrap(),
                    local: "5.6.7.8:9".parse().unwrap(),
                },
                proxied: None,
            },
            trusted: false,
            zerocopy: false,
        }
    }

    fn roundtrip(handoff: &Handoff) -> Handoff {
        Handoff::decode(socket(), &handoff.encode().unwrap()).unwrap()
    }

    #[test]
    fn a_tcp_connection_with_a_proxy_header_comes_back_whole() {
        let peer: SocketAddr = "[fe80::1%3]:4431".parse().unwrap();
        let handoff = Handoff {
            fd: socket(),
            unix: false,
            rbuf: b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /next".to_vec(),
            client: Client {
                ends: Endpoints::Tcp {
                    peer,
                    local: "127.0.0.1:8000".parse().unwrap(),
                },
                proxied: Some(proxy_protocol::Header {
                    protocol: "TCP4",
                    client: Some("10.1.2.3:5555".parse().unwrap()),
                    proxy: None,
                }),
            },
            trusted: true,
            zerocopy: false,
        };
        let back = roundtrip(&handoff);
        assert_eq!(back.rbuf, handoff.rbuf);
        assert!(!back.unix && back.trusted && !back.zerocopy);
        match back.client.ends {
            Endpoints::Tcp { peer: p, local } => {
                assert_eq!(p, peer);
                assert_eq!(local, "127.0.0.1:8000".parse().unwrap());
            }
            Endpoints::Unix { .. } => panic!("came back as a unix socket"),
        }
        let header = back.client.proxied.unwrap();
        assert_eq!(header.protocol, "TCP4");
        assert_eq!(header.client, Some("10.1.2.3:5555".parse().unwrap()));
        assert_eq!(header.proxy, None);
    }

    #[test]
    fn a_unix_connection_keeps_its_path_and_flags() {
        let handoff = Handoff {
            fd: socket(),
            unix: true,
            rbuf: Vec::new(),
            client: Client {
                ends: Endpoints::Unix {
                    path: PathBuf::from("/run/app \u{e9}.sock"),
                },
                proxied: None,
            },
            trusted: false,
            zerocopy: true,
        };
        let back = roundtrip(&handoff);
        assert!(back.unix && !back.trusted && back.zerocopy);
        assert!(back.rbuf.is_empty() && back.client.proxied.is_none());
        match back.client.ends {
            Endpoints::Unix { path } => assert_eq!(path, PathBuf::from("/run/app \u{e9}.sock")),
            Endpoints::Tcp { .. } => panic!("came back as TCP"),
        }
    }

    #[test]
    fn a_proxy_protocol_name_it_does_not_know_keeps_the_connection_home() {
        let mut handoff = sample(socket());
        handoff.client.proxied = Some(proxy_protocol::Header {
            protocol: "LOCAL",
            client: None,
            proxy: None,
        });
        assert_eq!(
            roundtrip(&handoff).client.proxied.unwrap().protocol,
            "LOCAL"
        );
        handoff.client.proxied = Some(proxy_protocol::Header {
            protocol: "TCP9",
            client: None,
            proxy: None,
        });
        assert!(handoff.encode().is_none());
    }

    #[test]
    fn cut_or_foreign_bytes_are_refused() {
        let mut handoff = sample(socket());
        handoff.rbuf.clear();
        let bytes = handoff.encode().unwrap();
        for end in 0..bytes.len() {
            assert!(
                Handoff::decode(socket(), &bytes[..end]).is_none(),
                "cut at {end}"
            );
        }
        assert!(Handoff::decode(socket(), &[0, 9]).is_none());
    }
}
