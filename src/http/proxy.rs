//! Trusting a proxy, as Gunicorn does: only peers in `forwarded_allow_ips`
//! may say, through `secure_scheme_headers`, that the client used https.
//! Headers that contradict each other are refused with 400.

use std::net::IpAddr;

use super::HttpError;
use super::parse::RequestHead;

/// `forwarded_allow_ips`: addresses and CIDR networks, or `*`.
#[derive(Clone, Debug, PartialEq)]
pub enum Allow {
    All,
    Nets(Vec<(IpAddr, u8)>),
}

impl Allow {
    pub fn parse(list: &str) -> Result<Allow, String> {
        let mut nets = Vec::new();
        for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            if item == "*" {
                return Ok(Allow::All);
            }
            let (addr, prefix) = match item.split_once('/') {
                Some((a, p)) => (a, Some(p)),
                None => (item, None),
            };
            let ip: IpAddr = addr
                .parse()
                .map_err(|_| format!("invalid address '{item}' in forwarded_allow_ips"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let prefix =
                match prefix {
                    Some(p) => p.parse::<u8>().ok().filter(|&p| p <= max).ok_or_else(|| {
                        format!("invalid network '{item}' in forwarded_allow_ips")
                    })?,
                    None => max,
                };
            nets.push((ip, prefix));
        }
        Ok(Allow::Nets(nets))
    }

    pub fn allows(&self, peer: IpAddr) -> bool {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
            v4 => v4,
        };
        match self {
            Allow::All => true,
            Allow::Nets(nets) => nets.iter().any(|&(net, prefix)| in_net(peer, net, prefix)),
        }
    }
}

fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// `secure_scheme_headers`: header names (any case) and the value that means https.
pub type SchemeHeaders = Vec<(String, String)>;

/// Gunicorn's default `secure_scheme_headers`.
pub fn default_scheme_headers() -> SchemeHeaders {
    [
        ("X-FORWARDED-PROTOCOL", "ssl"),
        ("X-FORWARDED-PROTO", "https"),
        ("X-FORWARDED-SSL", "on"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect()
}

/// Whether a trusted proxy says the client used https; headers that
/// disagree are an error. Returns false when no scheme header is present.
pub fn is_https(buf: &[u8], head: &RequestHead, secure: &SchemeHeaders) -> Result<bool, HttpError> {
    let mut said: Option<bool> = None;
    for (name, value) in &head.headers {
        let name = &buf[name.clone()];
        let Some((_, wanted)) = secure
            .iter()
            .find(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name))
        else {
            continue;
        };
        let https = super::parse::trim(&buf[value.clone()]) == wanted.as_bytes();
        match said {
            Some(before) if before != https => {
                return Err(HttpError::bad_request("contradictory scheme headers"));
            }
            _ => said = Some(https),
        }
    }
    Ok(said.unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_networks_and_star() {
        let allow = Allow::parse("127.0.0.1, 10.0.0.0/8,::1, fd00::/8").unwrap();
        assert!(allow.allows("127.0.0.1".parse().unwrap()));
        assert!(allow.allows("10.20.30.40".parse().unwrap()));
        assert!(!allow.allows("11.0.0.1".parse().unwrap()));
        assert!(allow.allows("::ffff:10.0.0.1".parse().unwrap()));
        assert!(allow.allows("fd12::1".parse().unwrap()));
        assert!(!allow.allows("fe80::1".parse().unwrap()));
        assert!(
            Allow::parse("*")
                .unwrap()
                .allows("8.8.8.8".parse().unwrap())
        );
        assert!(Allow::parse("10.0.0.0/33").is_err());
        assert!(Allow::parse("example.com").is_err());
    }
}
