//! wsgi.input for bodies that stream to the app (`--threads` above 1): the
//! app's reads pull from the socket as it asks (`http::blocking_body`), on
//! the app's own Python thread with the GIL released, while the shard's own
//! thread goes on serving. Each read that brings bytes restarts the thread's
//! busy clock, so a slow upload never counts toward `--timeout`.

use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyCFunction, PyDict, PyTuple};

use crate::http::blocking_body::BodyStream;

/// The body shared between the connection and the app's `pull` function. The
/// connection takes it back when the app returns; later pulls see the end.
pub type SharedBody = Arc<Mutex<Option<BodyStream>>>;

/// A streaming `wsgi.input` over `body`.
pub fn stream_input<'py>(
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
