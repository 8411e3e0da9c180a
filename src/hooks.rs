//! Gunicorn's server hooks from the config file, called at Gunicorn's moments
//! in the supervisor and in worker processes (which inherit the supervisor's
//! interpreter across fork). pre_request and post_request run on the shard
//! thread in the shard's own interpreter (`RequestHooks`): a sub-interpreter
//! executes the config file again for its own copy of them. The Python half,
//! `config/hooks.py`, holds the functions and the `server`, `worker`, `req` and
//! `resp` objects they receive.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyDict, PyTuple};

use crate::access_log::Outcome;
use crate::config::Config;
use crate::http::parse::RequestHead;
use crate::http::reason;
use crate::http::target::split_target;
use crate::python::embedded::Embedded;
use crate::python::latin1;
use crate::python::{Held, Isolation};

static HOOKS: Embedded = crate::embedded!("config/hooks.py", c"turbo_hooks.py", c"turbo_hooks");

/// The Python `Hooks` object for the config file's `namespace`, in the
/// current interpreter.
fn build<'py>(
    py: Python<'py>,
    config: &Config,
    namespace: &Bound<'py, PyDict>,
) -> PyResult<Bound<'py, PyAny>> {
    let module = HOOKS.load(py)?;
    let emit = PyCFunction::new_closure(
        py,
        Some(c"emit"),
        None,
        |args: &Bound<'_, PyTuple>, _kw: Option<&Bound<'_, PyDict>>| -> PyResult<()> {
            let (level, msg): (i32, String) = args.extract()?;
            match level {
                ..=10 => log::debug!("{msg}"),
                11..=20 => log::info!("{msg}"),
                21..=30 => log::warn!("{msg}"),
                _ => log::error!("{msg}"),
            }
            Ok(())
        },
    )?;
    let settings = PyDict::new(py);
    settings.set_item("workers", config.cores)?;
    settings.set_item("threads", config.threads)?;
    settings.set_item(
        "bind",
        config
            .binds
            .iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>(),
    )?;
    settings.set_item("timeout", config.timeout.as_secs())?;
    settings.set_item("graceful_timeout", config.graceful_timeout.as_secs())?;
    settings.set_item("keepalive", config.keep_alive.as_secs())?;
    settings.set_item("max_requests", config.max_requests)?;
    settings.set_item("preload_app", config.preload)?;
    settings.set_item("proc_name", "turbo")?;
    module.getattr("Hooks")?.call1((namespace, emit, settings))
}

/// The hooks a config file defined; calls on it do nothing when it defined none.
#[derive(Clone, Default)]
pub struct Hooks(Option<Arc<Held<PyAny>>>);

impl Hooks {
    /// Builds the hooks from the config file's namespace, if it had any.
    pub fn new(config: &Config) -> Hooks {
        let Some(namespace) = &config.hooks else {
            return Hooks::default();
        };
        match Python::attach(|py| build(py, config, namespace.get().bind(py)).map(Bound::unbind)) {
            Ok(hooks) => Hooks(Some(Arc::new(Held::new(hooks)))),
            Err(e) => {
                log::error!("The config file's hooks cannot be used: {e}");
                Hooks::default()
            }
        }
    }

    /// Calls hook `name` (a method of the Python `Hooks`) with integer
    /// arguments (pids, ages, counts); a failing hook is logged, never fatal.
    pub fn call(&self, name: &str, args: &[i64]) {
        let Some(hooks) = &self.0 else {
            return;
        };
        Python::attach(|py| {
            let called =
                PyTuple::new(py, args).and_then(|args| hooks.get().call_method1(py, name, args));
            if let Err(e) = called {
                log::error!("Calling the {name} hook failed: {e}");
            }
        });
    }
}

/// pre_request and post_request for one shard, in its interpreter.
pub struct RequestHooks {
    hooks: Py<PyAny>,
    request_class: Py<PyAny>,
    pub pre: bool,
    pub post: bool,
}

impl RequestHooks {
    /// Loads the hooks into the current interpreter when the config file
    /// defines pre_request or post_request. In a sub-interpreter the file is
    /// executed again; the main interpreter has it already.
    pub fn load(
        py: Python<'_>,
        config: &Config,
        isolation: Isolation,
        age: u64,
    ) -> Result<Option<RequestHooks>, String> {
        let Some(location) = &config.request_hooks else {
            return Ok(None);
        };
        let namespace = match (isolation, &config.hooks) {
            (Isolation::Main, Some(namespace)) => namespace.get().bind(py).clone(),
            _ => crate::config::file::namespace(py, location)?,
        };
        let loaded = || -> PyResult<RequestHooks> {
            let hooks = build(py, config, &namespace)?;
            let (pre, post): (bool, bool) = hooks.call_method1("bind_worker", (age,))?.extract()?;
            let request_class = hooks.getattr("request_class")?;
            Ok(RequestHooks {
                hooks: hooks.unbind(),
                request_class: request_class.unbind(),
                pre,
                post,
            })
        };
        loaded()
            .map(Some)
            .map_err(|e| format!("the pre_request and post_request hooks cannot be used: {e}"))
    }

    /// Calls pre_request with Gunicorn's `req` for the request whose head is
    /// in `buf`, and returns `req` for post_request. A failing hook fails the
    /// request, as in Gunicorn: it is logged, post_request still runs (with
    /// no environ and a 500), and the caller answers 500.
    pub fn begin(
        &self,
        py: Python<'_>,
        buf: &[u8],
        head: &RequestHead,
        https: bool,
        peer: Option<&Py<PyAny>>,
    ) -> Result<Py<PyAny>, ()> {
        let log = |e: PyErr| {
            let text = crate::python::error_text(py, &e);
            log::error!("Error handling request (pre_request hook)\n{text}");
        };
        let req = self.request(py, buf, head, https, peer).map_err(log)?;
        if self.pre
            && let Err(e) = self.hooks.bind(py).call_method1("pre_request", (&req,))
        {
            log(e);
            let failed = Outcome {
                status: 500,
                ..Outcome::default()
            };
            self.finish(py, req.unbind(), None, &failed);
            return Err(());
        }
        Ok(req.unbind())
    }

    /// Gunicorn's `req`.
    fn request<'py>(
        &self,
        py: Python<'py>,
        buf: &[u8],
        head: &RequestHead,
        https: bool,
        peer: Option<&Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let target = &buf[head.target.clone()];
        let (path, query) = split_target(target).unwrap_or((target, b""));
        let headers = head
            .headers
            .iter()
            .map(|(name, value)| {
                let name = buf[name.clone()].to_ascii_uppercase();
                (latin1(py, &name), latin1(py, &buf[value.clone()]))
            })
            .collect::<Vec<_>>();
        self.request_class.bind(py).call1((
            latin1(py, &buf[head.method.clone()]),
            latin1(py, target),
            latin1(py, path),
            latin1(py, query),
            head.minor,
            headers,
            if https { "https" } else { "http" },
            peer.map(|p| p.bind(py)),
        ))
    }

    /// Calls post_request once the response is done, logging a failure.
    /// `environ` is the WSGI environ or the ASGI scope.
    pub fn finish(
        &self,
        py: Python<'_>,
        req: Py<PyAny>,
        environ: Option<Py<PyAny>>,
        outcome: &Outcome,
    ) {
        if !self.post {
            return;
        }
        let status = format!("{} {}", outcome.status, reason(outcome.status));
        let headers = outcome
            .headers
            .iter()
            .map(|(n, v)| (latin1(py, n), latin1(py, v)))
            .collect::<Vec<_>>();
        let called = self.hooks.bind(py).call_method1(
            "post_request",
            (req, environ, status, headers, outcome.sent.unwrap_or(0)),
        );
        if let Err(e) = called {
            log::error!("Calling the post_request hook failed: {e}");
        }
    }
}
