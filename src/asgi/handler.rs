//! ASGI as a handler of the HTTP driver: each request runs as a task on the
//! shard's event loop (`http`), or, when it asks to upgrade, as a WebSocket
//! session (`websocket`).

use std::rc::Rc;
use std::sync::Arc;

use pyo3::prelude::*;

use super::Asgi;
use super::http::{self, Peers};
use super::websocket;
use crate::http::conn::{Exchange, Handler, Opened};
use crate::http::tls::{self, Tls};
use crate::observe::Observers;
use crate::python::Held;
use crate::scoreboard::Scoreboard;

/// One shard's ASGI app and what its requests need.
pub struct Bridge {
    pub asgi: Asgi,
    pub board: Arc<Scoreboard>,
    /// The scoreboard slot of the shard's thread, which runs the event loop.
    pub slot: usize,
    pub observers: Observers,
    /// The server's TLS settings, for the scope's `tls` extension.
    pub tls: Option<Arc<Tls>>,
}

/// Per-connection values, made once and reused for every request on it.
pub struct Peer {
    peers: Peers,
    /// The client as the request hooks' `req.peer_addr`.
    hook: Option<Held<PyAny>>,
}

impl Handler for Rc<Bridge> {
    type Peer = Peer;

    fn open(&self, opened: Opened<'_>) -> Option<Peer> {
        Python::attach(|py| {
            let facts = match (opened.tls, &self.tls) {
                (Some(t), Some(config)) => Some((tls::lock(&t.session).facts(), config.as_ref())),
                _ => None,
            };
            let peers = Peers::new(py, &self.asgi, opened.ends, facts).ok()?;
            Some(Peer {
                peers,
                hook: self.observers.peer(opened.ends),
            })
        })
    }

    async fn respond(&self, peer: &Peer, ex: Exchange<'_>) -> Option<bool> {
        self.board.count_request(self.slot);
        // An upgraded connection is neither logged nor hooked: it is not a
        // request with a response.
        if ex.meta().minor == 1 && websocket::is_upgrade(ex.buf(), ex.head()) {
            websocket::serve(&self.asgi, ex, &peer.peers, self.observers.meter.as_ref()).await
        } else {
            http::respond(
                &self.asgi,
                &self.observers,
                ex,
                &peer.peers,
                peer.hook.as_ref(),
            )
            .await
        }
    }
}
