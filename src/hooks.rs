//! Gunicorn's server hooks from the config file, called at Gunicorn's moments
//! in the supervisor and in worker processes (which inherit the supervisor's
//! interpreter across fork). The Python half, `config/hooks.py`, holds the
//! functions and the `server` and `worker` objects they receive.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyDict, PyModule, PyTuple};

use crate::config::Config;
use crate::python::Held;

const HOOKS: &std::ffi::CStr = match std::ffi::CStr::from_bytes_with_nul(
    concat!(include_str!("config/hooks.py"), "\0").as_bytes(),
) {
    Ok(s) => s,
    Err(_) => panic!("hooks.py contains a NUL byte"),
};

/// The hooks a config file defined; calls on it do nothing when it defined none.
#[derive(Clone, Default)]
pub struct Hooks(Option<Arc<Held<PyAny>>>);

impl Hooks {
    /// Builds the hooks from the config file's namespace, if it had any.
    pub fn new(config: &Config) -> Hooks {
        let Some(namespace) = &config.hooks else {
            return Hooks::default();
        };
        let built = Python::attach(|py| -> PyResult<Py<PyAny>> {
            let module = PyModule::from_code(py, HOOKS, c"turbo_hooks.py", c"turbo_hooks")?;
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
            module
                .getattr("Hooks")?
                .call1((namespace.get().bind(py), emit, settings))
                .map(Bound::unbind)
        });
        match built {
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
