//! What WSGI and ASGI do alike around each request, above the HTTP driver:
//! the access log's line, Gunicorn's pre_request and post_request hooks, and
//! the request's metrics.

use std::sync::Arc;
use std::time::Instant;

use pyo3::prelude::*;

use crate::access_log::{self, AccessLog, Outcome};
use crate::hooks::RequestHooks;
use crate::http::HttpError;
use crate::http::conn::Exchange;
use crate::http::stream::Endpoints;
use crate::metrics::{self, Meters};
use crate::python::Held;
use crate::runtime;
use crate::scoreboard::Scoreboard;

/// A shard's request meters in its worker's scoreboard (`--metrics-bind`).
#[derive(Clone)]
pub struct Meter {
    board: Arc<Scoreboard>,
    local: usize,
}

impl Meter {
    pub fn new(board: Arc<Scoreboard>, local: usize) -> Meter {
        Meter { board, local }
    }

    pub fn get(&self) -> &Meters {
        self.board.meters(self.local)
    }
}

/// The access log and the request hooks of one shard.
pub struct Observers {
    pub access_log: Option<Arc<AccessLog>>,
    /// The config file's pre_request and post_request, in this interpreter.
    pub hooks: Option<RequestHooks>,
    pub meter: Option<Meter>,
}

/// What became of a request, for the access log and post_request.
#[derive(Default)]
pub struct Done {
    pub outcome: Outcome,
    /// The environ or scope, kept for post_request.
    pub environ: Option<Held<PyAny>>,
}

/// A request being observed: the access log's copy of it, and the hooks'
/// `req`.
pub struct Observed {
    request: Option<access_log::Request>,
    hook: Option<Held<PyAny>>,
    /// The method's index in `metrics::METHODS`, when metered.
    method: Option<u8>,
    /// When the app began on the request: the access log's and the
    /// meters' duration.
    began: Instant,
}

impl Observers {
    /// The response's headers are kept for the access log or post_request.
    pub fn wants_headers(&self) -> bool {
        self.access_log
            .as_ref()
            .is_some_and(|l| l.format.wants_response_headers)
            || self.keeps_environ()
    }

    /// post_request runs, so the environ or scope is kept for it.
    pub fn keeps_environ(&self) -> bool {
        self.hooks.as_ref().is_some_and(|h| h.post)
    }

    /// The client's address as the hooks' `req.peer_addr`, made once per
    /// connection, only when there are hooks.
    pub fn peer(&self, ends: &Endpoints) -> Option<Held<PyAny>> {
        self.hooks.as_ref()?;
        runtime::python(|py| match ends {
            Endpoints::Tcp { peer, .. } => (peer.ip().to_string(), peer.port())
                .into_pyobject(py)
                .ok()
                .map(|t| Held::new(t.into_any().unbind())),
            Endpoints::Unix { .. } => Some(Held::new(
                pyo3::types::PyString::new(py, "").into_any().unbind(),
            )),
        })
    }

    /// Before the app runs: takes the access log's copy of the request (its
    /// target as UTF-8 for ASGI) and runs pre_request. None when there is
    /// nothing to observe. When pre_request fails, the request is answered
    /// with a 500 and logged, and Err says the connection closes.
    pub fn begin(
        &self,
        ex: &mut Exchange<'_>,
        peer: Option<&Held<PyAny>>,
        utf8: bool,
    ) -> Result<Option<Observed>, ()> {
        if self.access_log.is_none() && self.hooks.is_none() && self.meter.is_none() {
            return Ok(None);
        }
        let began = Instant::now();
        let method = self
            .meter
            .as_ref()
            .map(|_| metrics::method_index(&ex.buf()[ex.head().method.clone()]));
        let request = self
            .access_log
            .as_ref()
            .map(|_| access_log::Request::capture(ex.buf(), ex.head(), utf8));
        let hook = match &self.hooks {
            Some(hooks) => {
                let begun = runtime::python(|py| {
                    let peer = peer.map(Held::get);
                    hooks
                        .begin(py, ex.buf(), ex.head(), ex.https(), peer)
                        .map(Held::new)
                });
                match begun {
                    Ok(hook) => Some(hook),
                    Err(()) => {
                        ex.error(HttpError::new(500, "pre_request failed"));
                        let failed = Done {
                            outcome: Outcome {
                                status: 500,
                                ..Outcome::default()
                            },
                            environ: None,
                        };
                        let observed = Observed {
                            request,
                            hook: None,
                            method,
                            began,
                        };
                        self.finish(Some(observed), ex.remote(), failed);
                        return Err(());
                    }
                }
            }
            None => None,
        };
        Ok(Some(Observed {
            request,
            hook,
            method,
            began,
        }))
    }

    /// After the response: post_request, then the access log's line.
    pub fn finish(&self, observed: Option<Observed>, remote: &str, done: Done) {
        let Some(observed) = observed else {
            return;
        };
        let elapsed = observed.began.elapsed();
        if let (Some(meter), Some(method)) = (&self.meter, observed.method) {
            meter.get().request(method, done.outcome.status, elapsed);
        }
        if let (Some(hooks), Some(hook)) = (&self.hooks, observed.hook) {
            runtime::python(|py| {
                let environ = done.environ.map(|e| e.into_inner(py));
                hooks.finish(py, hook.into_inner(py), environ, &done.outcome)
            });
        }
        if let (Some(log), Some(request)) = (&self.access_log, observed.request) {
            log.log(remote, &request, &done.outcome, elapsed);
        }
    }
}
