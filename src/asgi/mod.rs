//! The ASGI 3 bridge: one asyncio event loop per shard, in the shard's own
//! interpreter and on its thread, driven by the shard's io_uring runtime
//! (`event_loop.rs`). `http.rs` runs one HTTP request through the app and
//! `websocket.rs` one WebSocket connection; the lifespan protocol and the shard's main coroutine live in `shim.py`.

pub mod event_loop;
pub mod handler;
pub mod http;
pub mod task;
pub mod websocket;

use std::rc::Rc;
use std::sync::Arc;
use std::thread::ThreadId;

use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyDict, PyModule, PyString, PyTuple};

use crate::config::{Config, LifespanMode};
use crate::python::app::Loaded;
use crate::python::embedded::Embedded;
use event_loop::Reactor;

/// The ASGI shim, which the supervisor compiles for process workers.
pub static SHIM: Embedded = crate::embedded!("shim.py", c"turbo_asgi.py", c"turbo_asgi");

/// A shard-thread value inside a Python callable, which pyo3 requires to be
/// Send. Python could call it (or drop it) from another thread of the same
/// interpreter; such calls are refused and such drops leak rather than touch
/// thread-local state.
pub struct ThreadBound<T> {
    value: std::mem::ManuallyDrop<T>,
    thread: ThreadId,
}

// SAFETY: the value is only reached on the thread that made it (checked in
// `get` and `drop`).
unsafe impl<T> Send for ThreadBound<T> {}
// SAFETY: as above; other threads cannot reach the value through a reference.
unsafe impl<T> Sync for ThreadBound<T> {}

impl<T> ThreadBound<T> {
    pub fn new(value: T) -> Self {
        ThreadBound {
            value: std::mem::ManuallyDrop::new(value),
            thread: std::thread::current().id(),
        }
    }

    pub fn get(&self) -> PyResult<&T> {
        if std::thread::current().id() == self.thread {
            Ok(&self.value)
        } else {
            Err(pyo3::exceptions::PyRuntimeError::new_err(
                "ASGI callables must be called from the event loop's thread",
            ))
        }
    }
}

impl<T> Drop for ThreadBound<T> {
    fn drop(&mut self) {
        if std::thread::current().id() == self.thread {
            // SAFETY: dropped once, on its own thread.
            unsafe { std::mem::ManuallyDrop::drop(&mut self.value) };
        }
    }
}

/// Interned message keys and values, made once per interpreter.
pub struct Keys {
    pub type_: Py<PyString>,
    pub body: Py<PyString>,
    pub more_body: Py<PyString>,
    pub status: Py<PyString>,
    pub headers: Py<PyString>,
    pub http_request: Py<PyString>,
    pub http_disconnect: Py<PyString>,
    pub method: Py<PyString>,
    pub scheme: Py<PyString>,
    pub http_version: Py<PyString>,
    pub path: Py<PyString>,
    pub raw_path: Py<PyString>,
    pub query_string: Py<PyString>,
    pub client: Py<PyString>,
    pub server: Py<PyString>,
    pub state: Py<PyString>,
    pub subprotocols: Py<PyString>,
    pub http: Py<PyString>,
    pub https: Py<PyString>,
    pub ws: Py<PyString>,
    pub wss: Py<PyString>,
    pub v10: Py<PyString>,
    pub v11: Py<PyString>,
    /// Method names called on tasks and futures.
    pub done: Py<PyString>,
    pub cancelled: Py<PyString>,
    pub exception: Py<PyString>,
    pub add_done_callback: Py<PyString>,
    pub set_result: Py<PyString>,
    /// WebSocket message keys and values.
    pub websocket_receive: Py<PyString>,
    pub text: Py<PyString>,
    pub bytes: Py<PyString>,
    pub methods: Vec<(&'static [u8], Py<PyString>)>,
}

/// Everything one shard needs to run ASGI requests in its interpreter.
pub struct Asgi {
    pub loaded: Arc<Loaded>,
    pub app: Py<PyAny>,
    pub event_loop: Py<PyAny>,
    pub create_task: Py<PyAny>,
    pub create_future: Py<PyAny>,
    /// A finished future: what send() returns when nothing needs waiting for.
    pub done: Py<PyAny>,
    pub disconnected: Py<PyAny>,
    pub shim: Py<PyModule>,
    /// What lifespan startup stored; each request gets a shallow copy.
    pub state: Py<PyDict>,
    /// The constant part of every HTTP and WebSocket scope, copied per request.
    pub http_template: Py<PyDict>,
    pub ws_template: Py<PyDict>,
    pub keys: Keys,
    pub reactor: Rc<Reactor>,
    pub lifespan: LifespanMode,
    pub ws_max_size: usize,
}

fn key(py: Python<'_>, s: &str) -> Py<PyString> {
    PyString::intern(py, s).unbind()
}

impl Asgi {
    /// Builds the bridge and the shard's event loop for an app loaded in the
    /// current interpreter.
    pub fn new(py: Python<'_>, config: &Config, loaded: Arc<Loaded>) -> Result<Asgi, String> {
        let failed = |e: PyErr| loaded.format(py, &e);
        let shim = SHIM
            .load(py)
            .map_err(|e| format!("turbo's ASGI shim failed: {e}"))?;
        let reactor = Rc::new(Reactor::default());
        let watch_reactor = ThreadBound::new(reactor.clone());
        let watch = PyCFunction::new_closure(
            py,
            Some(c"watch"),
            None,
            move |args: &Bound<'_, PyTuple>, _kw: Option<&Bound<'_, PyDict>>| -> PyResult<()> {
                let (fd, events): (i32, i32) = args.extract()?;
                watch_reactor.get()?.watch(fd, events);
                Ok(())
            },
        )
        .map_err(failed)?;
        let poll_reactor = ThreadBound::new(reactor.clone());
        let poll = PyCFunction::new_closure(
            py,
            Some(c"poll"),
            None,
            move |args: &Bound<'_, PyTuple>,
                  _kw: Option<&Bound<'_, PyDict>>|
                  -> PyResult<Vec<(i32, i32)>> {
                let (timeout,): (Option<f64>,) = args.extract()?;
                Ok(poll_reactor.get()?.select(timeout))
            },
        )
        .map_err(failed)?;
        let event_loop = shim
            .getattr("new_loop")
            .and_then(|f| f.call1((watch, poll)))
            .map_err(failed)?;
        let done = event_loop.call_method0("create_future").map_err(failed)?;
        done.call_method1("set_result", (py.None(),))
            .map_err(failed)?;
        let root_path = std::env::var("SCRIPT_NAME").unwrap_or_default();
        let (http_template, ws_template): (Bound<'_, PyDict>, Bound<'_, PyDict>) = shim
            .getattr("scope_templates")
            .and_then(|f| f.call1((root_path,)))
            .and_then(|t| t.extract())
            .map_err(failed)?;
        Ok(Asgi {
            app: loaded.app.clone_ref(py),
            create_task: shim
                .getattr("request_starter")
                .and_then(|f| f.call1((&event_loop,)))
                .map_err(failed)?
                .unbind(),
            create_future: event_loop
                .getattr("create_future")
                .map_err(failed)?
                .unbind(),
            event_loop: event_loop.unbind(),
            done: done.unbind(),
            disconnected: shim.getattr("ClientDisconnected").map_err(failed)?.unbind(),
            shim: shim.unbind(),
            state: PyDict::new(py).unbind(),
            http_template: http_template.unbind(),
            ws_template: ws_template.unbind(),
            keys: Keys {
                type_: key(py, "type"),
                body: key(py, "body"),
                more_body: key(py, "more_body"),
                status: key(py, "status"),
                headers: key(py, "headers"),
                http_request: key(py, "http.request"),
                http_disconnect: key(py, "http.disconnect"),
                method: key(py, "method"),
                scheme: key(py, "scheme"),
                http_version: key(py, "http_version"),
                path: key(py, "path"),
                raw_path: key(py, "raw_path"),
                query_string: key(py, "query_string"),
                client: key(py, "client"),
                server: key(py, "server"),
                state: key(py, "state"),
                subprotocols: key(py, "subprotocols"),
                http: key(py, "http"),
                https: key(py, "https"),
                ws: key(py, "ws"),
                wss: key(py, "wss"),
                v10: key(py, "1.0"),
                v11: key(py, "1.1"),
                done: key(py, "done"),
                cancelled: key(py, "cancelled"),
                exception: key(py, "exception"),
                add_done_callback: key(py, "add_done_callback"),
                set_result: key(py, "set_result"),
                websocket_receive: key(py, "websocket.receive"),
                text: key(py, "text"),
                bytes: key(py, "bytes"),
                methods: ["GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"]
                    .into_iter()
                    .map(|m| (m.as_bytes(), key(py, m)))
                    .collect(),
            },
            reactor,
            lifespan: config.lifespan,
            ws_max_size: config.ws_max_size,
            loaded,
        })
    }

    /// Runs the shard's event loop: lifespan startup, then `serve` (called once
    /// startup succeeded) until it returns, then lifespan shutdown. Returns why
    /// the shard could not start, if it could not.
    pub fn run<F, S>(&self, py: Python<'_>, started: F, serve: S) -> Result<(), String>
    where
        F: FnOnce() + 'static,
        S: FnOnce() -> futures_util::future::LocalBoxFuture<'static, ()> + 'static,
    {
        let failed = |e: PyErr| self.loaded.format(py, &e);
        let stopped = self.create_future.call0(py).map_err(failed)?;
        let stopped_handle = ThreadBound::new(stopped.clone_ref(py));
        let reactor = ThreadBound::new(self.reactor.clone());
        let pieces = ThreadBound::new(std::cell::Cell::new(Some((started, serve))));
        let on_started = PyCFunction::new_closure(
            py,
            Some(c"started"),
            None,
            move |_args: &Bound<'_, PyTuple>, _kw: Option<&Bound<'_, PyDict>>| -> PyResult<()> {
                let Some((started, serve)) = pieces.get()?.take() else {
                    return Ok(());
                };
                started();
                let stopped = stopped_handle.get()?.clone_ref(_args.py());
                let reactor = reactor.get()?.clone();
                compio::runtime::spawn(async move {
                    serve().await;
                    Python::attach(|py| {
                        let _ = stopped.call_method1(py, "set_result", (py.None(),));
                    });
                    reactor.wake_python();
                })
                .detach();
                Ok(())
            },
        )
        .map_err(failed)?;
        let log = PyCFunction::new_closure(
            py,
            Some(c"log"),
            None,
            |args: &Bound<'_, PyTuple>, _kw: Option<&Bound<'_, PyDict>>| -> PyResult<()> {
                let (level, msg): (i32, String) = args.extract()?;
                if level >= 40 {
                    log::error!("{msg}");
                } else {
                    log::info!("{msg}");
                }
                Ok(())
            },
        )
        .map_err(failed)?;
        let mode = match self.lifespan {
            LifespanMode::Auto => "auto",
            LifespanMode::On => "on",
            LifespanMode::Off => "off",
        };
        let main = self
            .shim
            .getattr(py, "serve")
            .and_then(|f| f.call1(py, (&self.app, mode, &self.state, log, on_started, stopped)))
            .map_err(failed)?;
        let outcome = self
            .event_loop
            .call_method1(py, "run_until_complete", (main,))
            .map_err(failed)?;
        if outcome.is_none(py) {
            Ok(())
        } else {
            Err(outcome.to_string())
        }
    }
}
