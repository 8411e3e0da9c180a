//! Building the environ dict for one request: a copy of the per-shard template plus
//! the request's own keys, all native `str` decoded as latin-1 (PEP 3333).

use std::cell::RefCell;
use std::collections::HashMap;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use super::Wsgi;
use super::input::Input;
use crate::http::HttpError;
use crate::http::parse::RequestHead;
use crate::http::proxy_protocol::Header;
use crate::http::stream::Endpoints;
use crate::http::target::{percent_decode, split_target};
use crate::python::latin1;

/// Where a connection's client and server are, as a Python thread of the
/// shard (`--threads`) makes each request's `ConnInfo` from.
#[derive(Clone)]
pub struct Client {
    pub ends: Endpoints,
    pub proxied: Option<Header>,
}

/// Per-connection values, made once and reused for every request on it.
pub struct ConnInfo {
    pub remote_addr: Py<PyString>,
    /// None on a unix socket, where Gunicorn leaves REMOTE_PORT out.
    pub remote_port: Option<Py<PyString>>,
    pub server_name: Py<PyString>,
    pub server_port: Py<PyString>,
    /// Gunicorn's PROXY_PROTOCOL, PROXY_ADDR and PROXY_PORT, when a PROXY
    /// header opened the connection.
    pub proxy: Vec<(Py<PyString>, Py<PyString>)>,
}

impl ConnInfo {
    pub fn new(py: Python<'_>, client: &Client) -> Self {
        let Client { ends, proxied } = client;
        let text = |s: &str| PyString::new(py, s).unbind();
        let mut proxy = Vec::new();
        if let Some(header) = proxied {
            proxy.push((text("PROXY_PROTOCOL"), text(header.protocol)));
            if let Some(addr) = header.proxy {
                proxy.push((text("PROXY_ADDR"), text(&addr.ip().to_string())));
                proxy.push((text("PROXY_PORT"), text(&addr.port().to_string())));
            }
        }
        let info = match ends {
            Endpoints::Tcp { peer, local } => ConnInfo {
                remote_addr: text(&peer.ip().to_string()),
                remote_port: Some(text(&peer.port().to_string())),
                server_name: text(&local.ip().to_string()),
                server_port: text(&local.port().to_string()),
                proxy: Vec::new(),
            },
            Endpoints::Unix { path } => ConnInfo {
                remote_addr: text(""),
                remote_port: None,
                server_name: text(&path.to_string_lossy()),
                server_port: text(""),
                proxy: Vec::new(),
            },
        };
        ConnInfo { proxy, ..info }
    }
}

/// `HTTP_*` environ keys by raw header name, so common headers cost no
/// allocation. One per shard thread.
pub type HeaderKeys = RefCell<HashMap<Box<[u8]>, Py<PyString>>>;

impl Wsgi {
    /// `HTTP_*` (or CONTENT_TYPE / CONTENT_LENGTH) for a header name; None for names
    /// with an underscore, which are dropped as Gunicorn does so that `X_Forwarded`
    /// cannot pose as `X-Forwarded`.
    fn header_key<'py>(
        &self,
        py: Python<'py>,
        cache: &HeaderKeys,
        name: &[u8],
    ) -> Option<Bound<'py, PyString>> {
        if let Some(key) = cache.borrow().get(name) {
            return Some(key.bind(py).clone());
        }
        if name.contains(&b'_') {
            return None;
        }
        let key = if name.eq_ignore_ascii_case(b"content-type") {
            self.keys.content_type.bind(py).clone()
        } else if name.eq_ignore_ascii_case(b"content-length") {
            self.keys.content_length.bind(py).clone()
        } else {
            let mut text = String::with_capacity(name.len() + 5);
            text.push_str("HTTP_");
            text.extend(name.iter().map(|&b| {
                if b == b'-' {
                    '_'
                } else {
                    b.to_ascii_uppercase() as char
                }
            }));
            PyString::intern(py, &text)
        };
        let mut cache = cache.borrow_mut();
        if cache.len() < 512 {
            cache.insert(name.into(), key.clone().unbind());
        }
        Some(key)
    }

    /// The environ and `start_response` for the request whose head is in
    /// `buf`. A failure is logged, and answered with the error.
    #[allow(clippy::too_many_arguments)]
    pub fn prepare<'py>(
        &self,
        py: Python<'py>,
        buf: &[u8],
        head: &RequestHead,
        conn: &ConnInfo,
        header_keys: &HeaderKeys,
        input: Input,
        https: bool,
    ) -> Result<(Bound<'py, PyDict>, Bound<'py, PyAny>), HttpError> {
        let k = &self.keys;
        let input = input.into_python(py, self);
        let start_response = self.start_response.bind(py).call0();
        let (input, start_response) = match (input, start_response) {
            (Ok(input), Ok(sr)) => (input, sr),
            (Err(e), _) | (_, Err(e)) => {
                self.log_exception(py, "Error preparing the request", &e);
                return Err(HttpError::new(500, "the request could not be prepared"));
            }
        };
        let internal = |_| HttpError::new(500, "environ could not be built");
        let env = self.template.bind(py).copy().map_err(internal)?;
        let method = &buf[head.method.clone()];
        let method_str = match k.methods.iter().find(|(m, _)| *m == method) {
            Some((_, s)) => s.bind(py).clone(),
            None => latin1(py, method),
        };
        let target = &buf[head.target.clone()];
        let (path, query) = split_target(target)?;
        let path = percent_decode(path);
        let script_name = self.script_name.as_bytes();
        let path_info: &[u8] = match path.strip_prefix(script_name) {
            Some(rest) if !script_name.is_empty() => rest,
            _ => &path,
        };
        let raw_uri = latin1(py, target);
        let set = |key: &Py<PyString>, value: Bound<'py, PyAny>| {
            env.set_item(key.bind(py), value).map_err(internal)
        };
        set(&k.request_method, method_str.into_any())?;
        set(&k.path_info, latin1(py, path_info).into_any())?;
        set(&k.query_string, latin1(py, query).into_any())?;
        set(&k.raw_uri, raw_uri.clone().into_any())?;
        set(&k.request_uri, raw_uri.into_any())?;
        let protocol = if head.minor == 0 {
            &k.http_10
        } else {
            &k.http_11
        };
        set(&k.server_protocol, protocol.bind(py).clone().into_any())?;
        set(&k.server_name, conn.server_name.bind(py).clone().into_any())?;
        set(&k.server_port, conn.server_port.bind(py).clone().into_any())?;
        set(&k.remote_addr, conn.remote_addr.bind(py).clone().into_any())?;
        if let Some(port) = &conn.remote_port {
            set(&k.remote_port, port.bind(py).clone().into_any())?;
        }
        for (key, value) in &conn.proxy {
            set(key, value.bind(py).clone().into_any())?;
        }
        set(&k.wsgi_input, input)?;
        for (name, value) in &head.headers {
            let Some(key) = self.header_key(py, header_keys, &buf[name.clone()]) else {
                continue;
            };
            let value = &buf[value.clone()];
            let value = match env.get_item(&key).ok().flatten() {
                // Repeated headers are joined with a comma, as Gunicorn does.
                Some(prev) => {
                    let mut joined: String = prev.extract().map_err(internal)?;
                    joined.push(',');
                    joined.extend(value.iter().map(|&b| b as char));
                    PyString::new(py, &joined)
                }
                None => latin1(py, value),
            };
            env.set_item(key, value).map_err(internal)?;
        }
        if https {
            set(&k.url_scheme, k.https.bind(py).clone().into_any())?;
        }
        Ok((env, start_response))
    }
}
