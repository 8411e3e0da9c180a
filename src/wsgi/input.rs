//! wsgi.input for bodies that stream to the app (`--threads` above 1): the
//! app's reads pull from the socket as it asks (`http::blocking_body`), on
//! the app's own Python thread with the GIL released, while the shard's own
//! thread goes on serving. Each read that brings bytes restarts the thread's
//! busy clock, so a slow upload never counts toward `--timeout`.

use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyCFunction, PyDict, PyTuple};

use super::Wsgi;
use crate::http::blocking_body::BodyStream;
use crate::http::conn::Body;

/// The body shared between the connection and the app's `pull` function. The
/// connection takes it back when the app returns; later pulls see the end.
pub type SharedBody = Arc<Mutex<Option<BodyStream>>>;

/// `wsgi.input`'s source, as the connection delivered the body.
pub enum Input {
    InMemory(Vec<u8>),
    Spooled(std::fs::File),
    Stream(SharedBody, Vec<u8>),
}

impl Input {
    /// The source of `body`, and the stream the connection takes back when
    /// the app is done, if the body streams.
    pub fn of(body: Body) -> (Input, Option<SharedBody>) {
        match body {
            Body::Stream(stream, initial) => {
                let shared: SharedBody = Arc::new(Mutex::new(Some(stream)));
                (Input::Stream(shared.clone(), initial), Some(shared))
            }
            Body::InMemory(data) => (Input::InMemory(data), None),
            Body::Spooled(file) => (Input::Spooled(file), None),
        }
    }

    /// The `wsgi.input` object.
    pub fn into_python<'py>(self, py: Python<'py>, wsgi: &Wsgi) -> PyResult<Bound<'py, PyAny>> {
        match self {
            Input::InMemory(data) if data.is_empty() => Ok(wsgi.empty_input.bind(py).clone()),
            Input::InMemory(data) => wsgi.bytes_io.bind(py).call1((PyBytes::new(py, &data),)),
            // Python's file object takes the descriptor over.
            Input::Spooled(file) => {
                use std::os::fd::IntoRawFd;
                wsgi.open.bind(py).call1((file.into_raw_fd(), "rb"))
            }
            Input::Stream(shared, initial) => {
                stream_input(py, &wsgi.input_stream, shared, &initial)
            }
        }
    }
}

/// A streaming `wsgi.input` over `body`.
fn stream_input<'py>(
    py: Python<'py>,
    input_class: &Py<PyAny>,
    body: SharedBody,
    initial: &[u8],
) -> PyResult<Bound<'py, PyAny>> {
    let pull = PyCFunction::new_closure(
        py,
        Some(c"pull"),
        None,
        move |args: &Bound<'_, PyTuple>, _: Option<&Bound<'_, PyDict>>| -> PyResult<Py<PyBytes>> {
            let py = args.py();
            let mut guard = body
                .lock()
                .map_err(|_| PyOSError::new_err("request body unavailable"))?;
            let data = match guard.as_mut() {
                Some(stream) => stream
                    .pull(|wait| crate::python::without_gil(wait))
                    .map_err(PyOSError::new_err)?,
                None => Vec::new(),
            };
            Ok(PyBytes::new(py, &data).unbind())
        },
    )?;
    input_class
        .bind(py)
        .call1((pull, PyBytes::new(py, initial)))
}
