//! The PROXY protocol (HAProxy's, versions 1 and 2), as Gunicorn reads it
//! (`proxy_protocol`, `proxy_allow_ips`): a load balancer that terminates TCP
//! or TLS puts the client's address in a header before the first request.
//! Parsing works on bytes alone, so it is tested without sockets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::HttpError;

/// Which headers are accepted (`proxy_protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Off,
    V1,
    V2,
    Auto,
}

impl Mode {
    /// Gunicorn's values; `true` and `false` from older config files too.
    pub fn parse(text: &str) -> Result<Mode, String> {
        match text.to_ascii_lowercase().as_str() {
            "off" | "false" | "none" => Ok(Mode::Off),
            "v1" => Ok(Mode::V1),
            "v2" => Ok(Mode::V2),
            "auto" | "true" => Ok(Mode::Auto),
            _ => Err(format!(
                "invalid value '{text}' for --proxy-protocol (expected off, v1, v2 or auto)"
            )),
        }
    }
}

/// What the header said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// `TCP4`, `TCP6`, or for headers without addresses `LOCAL` or `UNSPEC`.
    pub protocol: &'static str,
    pub client: Option<SocketAddr>,
    pub proxy: Option<SocketAddr>,
}

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line, CRLF included (the spec's limit).
const V1_MAX: usize = 107;

fn invalid(detail: &'static str) -> HttpError {
    HttpError::bad_request(detail)
}

/// Reads a PROXY header at the start of `buf`. Ok(None): more bytes are
/// needed to tell. Ok(Some((None, 0))): the connection does not start with
/// one. Otherwise the header and the bytes it took.
#[allow(clippy::type_complexity)]
pub fn parse(buf: &[u8], mode: Mode) -> Result<Option<(Option<Header>, usize)>, HttpError> {
    let could_be = |sig: &[u8]| buf.len() < sig.len() && sig.starts_with(buf);
    let v2 = matches!(mode, Mode::V2 | Mode::Auto);
    let v1 = matches!(mode, Mode::V1 | Mode::Auto);
    if (v2 && could_be(V2_SIGNATURE)) || (v1 && could_be(b"PROXY ")) {
        return Ok(None);
    }
    if v2 && buf.starts_with(V2_SIGNATURE) {
        return parse_v2(buf);
    }
    if v1 && buf.starts_with(b"PROXY ") {
        return parse_v1(buf);
    }
    Ok(Some((None, 0)))
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Option<Header>, usize)>, HttpError> {
    let Some(end) = buf.windows(2).take(V1_MAX - 1).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(invalid("PROXY line too long"))
        } else {
            Ok(None)
        };
    };
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| invalid("invalid PROXY line"))?;
    if line == "PROXY UNKNOWN" || line.starts_with("PROXY UNKNOWN ") {
        // The spec: the connection's own addresses stand (health checks).
        let header = Header {
            protocol: "UNKNOWN",
            client: None,
            proxy: None,
        };
        return Ok(Some((Some(header), end + 2)));
    }
    let bits: Vec<&str> = line.split(' ').collect();
    let [_, proto, src, dst, sport, dport] = bits[..] else {
        return Err(invalid("invalid PROXY line"));
    };
    let (src, dst): (IpAddr, IpAddr) = match proto {
        "TCP4" => (
            src.parse::<Ipv4Addr>()
                .map_err(|_| invalid("invalid PROXY line"))?
                .into(),
            dst.parse::<Ipv4Addr>()
                .map_err(|_| invalid("invalid PROXY line"))?
                .into(),
        ),
        "TCP6" => (
            src.parse::<Ipv6Addr>()
                .map_err(|_| invalid("invalid PROXY line"))?
                .into(),
            dst.parse::<Ipv6Addr>()
                .map_err(|_| invalid("invalid PROXY line"))?
                .into(),
        ),
        _ => return Err(invalid("PROXY protocol not supported")),
    };
    let port = |p: &str| p.parse::<u16>().map_err(|_| invalid("invalid PROXY port"));
    let header = Header {
        protocol: if proto == "TCP4" { "TCP4" } else { "TCP6" },
        client: Some(SocketAddr::new(src, port(sport)?)),
        proxy: Some(SocketAddr::new(dst, port(dport)?)),
    };
    Ok(Some((Some(header), end + 2)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(Option<Header>, usize)>, HttpError> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let (ver_cmd, fam_proto) = (buf[12], buf[13]);
    let length = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if ver_cmd >> 4 != 2 {
        return Err(invalid("unsupported PROXY version"));
    }
    let total = 16 + length;
    if buf.len() < total {
        return Ok(None);
    }
    let addresses = &buf[16..total];
    let bare = |protocol| {
        Ok(Some((
            Some(Header {
                protocol,
                client: None,
                proxy: None,
            }),
            total,
        )))
    };
    match ver_cmd & 0x0f {
        0 => return bare("LOCAL"),
        1 => {}
        _ => return Err(invalid("unsupported PROXY command")),
    }
    // The spec: families and transports a receiver does not handle (UDP,
    // unix) fall back to UNSPEC, the connection's own addresses.
    match (fam_proto >> 4, fam_proto & 0x0f) {
        (0, _) | (1..=3, 0 | 2) | (3, 1) => return bare("UNSPEC"),
        (1 | 2, 1) => {}
        _ => return Err(invalid("unsupported PROXY address family")),
    }
    let port = |at: usize| u16::from_be_bytes([addresses[at], addresses[at + 1]]);
    let header = match fam_proto >> 4 {
        1 if addresses.len() >= 12 => {
            let ip = |at: usize| {
                IpAddr::from(<[u8; 4]>::try_from(&addresses[at..at + 4]).unwrap_or_default())
            };
            Header {
                protocol: "TCP4",
                client: Some(SocketAddr::new(ip(0), port(8))),
                proxy: Some(SocketAddr::new(ip(4), port(10))),
            }
        }
        2 if addresses.len() >= 36 => {
            let ip = |at: usize| {
                IpAddr::from(<[u8; 16]>::try_from(&addresses[at..at + 16]).unwrap_or_default())
            };
            Header {
                protocol: "TCP6",
                client: Some(SocketAddr::new(ip(0), port(32))),
                proxy: Some(SocketAddr::new(ip(16), port(34))),
            }
        }
        _ => return Err(invalid("PROXY header too short for its addresses")),
    };
    Ok(Some((Some(header), total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(buf: &[u8]) -> (Header, usize) {
        match parse(buf, Mode::Auto) {
            Ok(Some((Some(h), used))) => (h, used),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn v1() {
        let buf = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET / HTTP/1.1\r\n";
        let (h, used) = header(buf);
        assert_eq!(h.protocol, "TCP4");
        assert_eq!(h.client, Some("192.0.2.1:56324".parse().unwrap()));
        assert_eq!(h.proxy, Some("198.51.100.2:443".parse().unwrap()));
        assert_eq!(&buf[used..], b"GET / HTTP/1.1\r\n");
        let (h, _) = header(b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n");
        assert_eq!(h.client, Some("[2001:db8::1]:1".parse().unwrap()));
    }

    #[test]
    fn v1_errors_and_partial_input() {
        assert_eq!(parse(b"PROX", Mode::Auto), Ok(None));
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4", Mode::Auto), Ok(None));
        assert_eq!(header(b"PROXY UNKNOWN\r\n").0.protocol, "UNKNOWN");
        assert_eq!(
            header(b"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n").0.client,
            None
        );
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"[..],
            b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 70000\r\n",
        ] {
            assert!(parse(bad, Mode::Auto).is_err(), "{bad:?}");
        }
        assert_eq!(parse(&[b'x'; 200], Mode::V1), Ok(Some((None, 0))));
        let mut long = b"PROXY ".to_vec();
        long.extend([b'1'; 150]);
        assert!(parse(&long, Mode::Auto).is_err());
    }

    #[test]
    fn v2() {
        let mut buf = V2_SIGNATURE.to_vec();
        buf.extend([
            0x21, 0x11, 0, 12, 10, 0, 0, 1, 10, 0, 0, 2, 0x1f, 0x90, 0x01, 0xbb,
        ]);
        buf.extend(b"GET");
        let (h, used) = header(&buf);
        assert_eq!(h.protocol, "TCP4");
        assert_eq!(h.client, Some("10.0.0.1:8080".parse().unwrap()));
        assert_eq!(h.proxy, Some("10.0.0.2:443".parse().unwrap()));
        assert_eq!(&buf[used..], b"GET");
        assert_eq!(parse(&buf[..20], Mode::Auto), Ok(None));
        let mut local = V2_SIGNATURE.to_vec();
        local.extend([0x20, 0x00, 0, 0]);
        assert_eq!(header(&local).0.protocol, "LOCAL");
        let mut udp = V2_SIGNATURE.to_vec();
        udp.extend([0x21, 0x12, 0, 12]);
        udp.extend([0; 12]);
        assert_eq!(header(&udp).0.protocol, "UNSPEC");
        let mut bad_family = V2_SIGNATURE.to_vec();
        bad_family.extend([0x21, 0x41, 0, 0]);
        assert!(parse(&bad_family, Mode::Auto).is_err());
    }

    #[test]
    fn modes_and_plain_http() {
        let v1 = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n";
        assert_eq!(parse(v1, Mode::V2), Ok(Some((None, 0))));
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n", Mode::Auto),
            Ok(Some((None, 0)))
        );
        assert_eq!(Mode::parse("True"), Ok(Mode::Auto));
        assert!(Mode::parse("v3").is_err());
    }
}
