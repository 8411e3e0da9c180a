//! Loading the app in the current interpreter, for either bridge: the module
//! and expression from the command line, the interface it speaks, and the
//! traceback formatting every error log line uses.

use pyo3::prelude::*;

use super::Isolation;
use super::embedded::Embedded;
use crate::config::AppSpec;

/// The loader, which the supervisor compiles for process workers.
pub static LOADER: Embedded = crate::embedded!("loader.py", c"turbo_loader.py", c"turbo_loader");

/// Why an app could not be loaded.
pub enum LoadError {
    /// An extension module refused to load in a sub-interpreter.
    RefusesSubinterpreter(String),
    /// The app failed to import or to resolve; the text is the traceback or message.
    Failed(String),
}

/// The app object and what the bridges need to report its errors.
pub struct Loaded {
    pub app: Py<PyAny>,
    /// ASGI 3 rather than WSGI, as detected.
    pub asgi: bool,
    isolation: Isolation,
    format_exception: Py<PyAny>,
    /// The loader's `subinterpreter_refusal`.
    refusal: Py<PyAny>,
}

impl Loaded {
    /// Imports the app as `spec` says, in the current interpreter, with
    /// `pythonpath` at the front of sys.path.
    pub fn load(
        py: Python<'_>,
        spec: &AppSpec,
        isolation: Isolation,
        pythonpath: &[String],
    ) -> Result<Loaded, LoadError> {
        let loader = LOADER
            .load(py)
            .map_err(|e| LoadError::Failed(format!("turbo's loader failed: {e}")))?;
        let function = |name: &str| {
            loader
                .getattr(name)
                .map(Bound::unbind)
                .map_err(|e| LoadError::Failed(format!("turbo's loader is broken: {e}")))
        };
        let format_exception = function("format_exception")?;
        let refusal = function("subinterpreter_refusal")?;
        if isolation == Isolation::Subinterpreter && super::LINKED_VERSION == "3.12" {
            // CPython 3.12's _zoneinfo crashes when a second interpreter imports it;
            // zoneinfo then uses its pure-Python implementation.
            if let Ok(modules) = py.import("sys").and_then(|s| s.getattr("modules")) {
                let _ = modules.set_item("_zoneinfo", py.None());
            }
        }
        let app = loader
            .getattr("load_app")
            .and_then(|f| {
                f.call1((
                    spec.module.as_str(),
                    spec.expr.as_str(),
                    pythonpath.to_vec(),
                ))
            })
            .map_err(|err| match refused(py, &refusal, &err) {
                Some(reason) if isolation == Isolation::Subinterpreter => {
                    LoadError::RefusesSubinterpreter(reason)
                }
                _ => LoadError::Failed(format_error(py, &format_exception, &err)),
            })?;
        let asgi = loader
            .getattr("is_asgi")
            .and_then(|f| f.call1((&app,)))
            .and_then(|r| r.is_truthy())
            .map_err(|e| LoadError::Failed(format_error(py, &format_exception, &e)))?;
        Ok(Loaded {
            app: app.unbind(),
            asgi,
            isolation,
            format_exception,
            refusal,
        })
    }

    /// A Python exception with its traceback, as text.
    pub fn format(&self, py: Python<'_>, err: &PyErr) -> String {
        format_error(py, &self.format_exception, err)
    }

    /// Logs an exception with its traceback at error level.
    pub fn log_exception(&self, py: Python<'_>, context: &str, err: &PyErr) {
        log::error!("{context}\n{}", self.format(py, err).trim_end());
    }

    /// An exception from the app while it handled a request. SystemExit ends
    /// the worker, as it does under Gunicorn; the supervisor replaces it.
    pub fn app_failed(&self, py: Python<'_>, err: &PyErr) {
        if err.is_instance_of::<pyo3::exceptions::PySystemExit>(py) {
            let code = err
                .value(py)
                .getattr("code")
                .and_then(|c| c.extract::<i32>())
                .unwrap_or(1);
            log::error!("The app called sys.exit({code}); the worker exits");
            crate::signals::exit_now(code);
        }
        if self.isolation == Isolation::Subinterpreter
            && let Some(reason) = refused(py, &self.refusal, err)
        {
            // A module outside what auto probed (one loaded by path, or
            // installed since): auto's supervisor turns the workers into
            // processes, so this request is the only one it costs.
            log::error!(
                "The app imported a module that refuses sub-interpreters ({reason}); \
                 --isolation process serves it"
            );
            crate::report::refused_late(&reason);
        }
        self.log_exception(py, "Error handling request", err);
    }
}

/// The refusal's text where `err` is, or was caused by, a module that
/// refused to load in a sub-interpreter.
fn refused(py: Python<'_>, refusal: &Py<PyAny>, err: &PyErr) -> Option<String> {
    refusal
        .call1(py, (err.value(py),))
        .ok()
        .filter(|r| !r.is_none(py))
        .map(|r| r.to_string())
}

fn format_error(py: Python<'_>, format_exception: &Py<PyAny>, err: &PyErr) -> String {
    format_exception
        .call1(py, (err.value(py), err.traceback(py)))
        .and_then(|s| s.extract::<String>(py))
        .unwrap_or_else(|_| err.to_string())
}
