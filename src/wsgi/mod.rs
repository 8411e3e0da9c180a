//! The WSGI bridge (PEP 3333): one `Wsgi` per shard, built inside that shard's
//! interpreter, holding the app and every per-interpreter object a request needs.

pub mod environ;
pub mod handler;
pub mod input;
pub mod limit;
pub mod pool;
pub mod response;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};

use std::sync::Arc;

use crate::config::Config;
use crate::python::app::Loaded;
use crate::python::embedded::Embedded;

/// The WSGI shim, which the supervisor compiles for process workers.
pub static SHIM: Embedded = crate::embedded!("shim.py", c"turbo_wsgi.py", c"turbo_wsgi");

/// Environ keys and constant values, made once per interpreter.
pub struct Keys {
    pub request_method: Py<PyString>,
    pub path_info: Py<PyString>,
    pub query_string: Py<PyString>,
    pub raw_uri: Py<PyString>,
    pub request_uri: Py<PyString>,
    pub server_protocol: Py<PyString>,
    pub server_name: Py<PyString>,
    pub server_port: Py<PyString>,
    pub remote_addr: Py<PyString>,
    pub remote_port: Py<PyString>,
    pub content_type: Py<PyString>,
    pub content_length: Py<PyString>,
    pub wsgi_input: Py<PyString>,
    pub url_scheme: Py<PyString>,
    pub https: Py<PyString>,
    pub http_10: Py<PyString>,
    pub http_11: Py<PyString>,
    pub methods: Vec<(&'static [u8], Py<PyString>)>,
}

/// Attribute names read or set on every request, interned once per
/// interpreter so that a lookup neither allocates nor hashes a new string.
pub struct Names {
    pub status: Py<PyString>,
    pub headers: Py<PyString>,
    pub writes: Py<PyString>,
    pub sent: Py<PyString>,
    pub close: Py<PyString>,
    pub filelike: Py<PyString>,
    pub fileno: Py<PyString>,
}

/// Everything one shard needs to run WSGI requests in its interpreter.
pub struct Wsgi {
    pub app: Py<PyAny>,
    pub start_response: Py<PyAny>,
    pub input_stream: Py<PyAny>,
    pub bytes_io: Py<PyAny>,
    /// `io.open`, for a body spooled to a file.
    pub open: Py<PyAny>,
    /// `wsgi.file_wrapper`, whose files may go out by sendfile.
    pub file_wrapper: Py<PyAny>,
    /// The app as loaded, which formats its errors.
    pub loaded: Arc<Loaded>,
    /// The constant part of every environ, copied per request.
    pub template: Py<PyDict>,
    pub keys: Keys,
    pub names: Names,
    /// `wsgi.input` of every request without a body: it has no state to share.
    pub empty_input: Py<PyAny>,
    /// `$SCRIPT_NAME`, stripped from the front of PATH_INFO.
    pub script_name: String,
}

fn key(py: Python<'_>, s: &str) -> Py<PyString> {
    PyString::intern(py, s).unbind()
}

impl Wsgi {
    /// Builds the bridge for an app loaded in the current interpreter.
    pub fn new(py: Python<'_>, config: &Config, loaded: Arc<Loaded>) -> Result<Wsgi, String> {
        // Sub-interpreters share no Python state, so to the app they are processes.
        let multiprocess = config.cores > 1;
        let multithread = config.threads > 1;
        let shim = SHIM
            .load(py)
            .map_err(|e| format!("turbo's WSGI shim failed: {e}"))?;
        let attr = |name: &str| {
            shim.getattr(name)
                .map(Bound::unbind)
                .map_err(|e| format!("turbo's WSGI shim lacks {name}: {e}"))
        };
        let app = loaded.app.clone_ref(py);
        let failed = |e: PyErr| loaded.format(py, &e);
        let template = PyDict::new(py);
        let errors = attr("Errors")?.call0(py).map_err(failed)?;
        let script_name = std::env::var("SCRIPT_NAME").unwrap_or_default();
        let file_wrapper = attr("FileWrapper")?;
        for (k, v) in [
            (
                "wsgi.version",
                PyTuple::new(py, [1, 0]).map_err(failed)?.into_any(),
            ),
            ("wsgi.url_scheme", PyString::new(py, "http").into_any()),
            ("wsgi.errors", errors.into_bound(py)),
            (
                "wsgi.multithread",
                pyo3::types::PyBool::new(py, multithread)
                    .to_owned()
                    .into_any(),
            ),
            (
                "wsgi.multiprocess",
                pyo3::types::PyBool::new(py, multiprocess)
                    .to_owned()
                    .into_any(),
            ),
            (
                "wsgi.run_once",
                pyo3::types::PyBool::new(py, false).to_owned().into_any(),
            ),
            (
                "wsgi.input_terminated",
                pyo3::types::PyBool::new(py, true).to_owned().into_any(),
            ),
            (
                "wsgi.file_wrapper",
                file_wrapper.clone_ref(py).into_bound(py),
            ),
            ("SCRIPT_NAME", PyString::new(py, &script_name).into_any()),
        ] {
            template.set_item(key(py, k), v).map_err(failed)?;
        }
        let keys = Keys {
            request_method: key(py, "REQUEST_METHOD"),
            path_info: key(py, "PATH_INFO"),
            query_string: key(py, "QUERY_STRING"),
            raw_uri: key(py, "RAW_URI"),
            request_uri: key(py, "REQUEST_URI"),
            server_protocol: key(py, "SERVER_PROTOCOL"),
            server_name: key(py, "SERVER_NAME"),
            server_port: key(py, "SERVER_PORT"),
            remote_addr: key(py, "REMOTE_ADDR"),
            remote_port: key(py, "REMOTE_PORT"),
            content_type: key(py, "CONTENT_TYPE"),
            content_length: key(py, "CONTENT_LENGTH"),
            wsgi_input: key(py, "wsgi.input"),
            url_scheme: key(py, "wsgi.url_scheme"),
            https: key(py, "https"),
            http_10: key(py, "HTTP/1.0"),
            http_11: key(py, "HTTP/1.1"),
            methods: ["GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"]
                .into_iter()
                .map(|m| (m.as_bytes(), key(py, m)))
                .collect(),
        };
        let io = py.import("io").map_err(failed)?;
        Ok(Wsgi {
            app,
            start_response: attr("StartResponse")?,
            input_stream: attr("Input")?,
            bytes_io: io.getattr("BytesIO").map_err(failed)?.unbind(),
            open: io.getattr("open").map_err(failed)?.unbind(),
            file_wrapper,
            loaded: loaded.clone(),
            template: template.unbind(),
            keys,
            names: Names {
                status: key(py, "status"),
                headers: key(py, "headers"),
                writes: key(py, "writes"),
                sent: key(py, "sent"),
                close: key(py, "close"),
                filelike: key(py, "filelike"),
                fileno: key(py, "fileno"),
            },
            empty_input: attr("EmptyInput")?.call0(py).map_err(failed)?,
            script_name,
        })
    }

    /// An exception from the app while it handled a request.
    pub fn app_failed(&self, py: Python<'_>, err: &PyErr) {
        self.loaded.app_failed(py, err);
    }

    pub fn log_exception(&self, py: Python<'_>, context: &str, err: &PyErr) {
        self.loaded.log_exception(py, context, err);
    }
}
