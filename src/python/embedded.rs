//! The Python source that ships inside turbo's binary (the loader, the WSGI
//! and ASGI shims, the hooks' and logging's helpers), run as modules.
//!
//! Compiling a few hundred lines of Python writes close to a megabyte of
//! memory (the parser's and compiler's working space, which the allocator
//! keeps). A worker process that compiled its own shim paid that in private
//! pages. So in the main interpreter the compiled code is kept for the
//! process, and the supervisor compiles what its workers will run before it
//! forks them (`precompile`): the workers only execute it, and share the code
//! copy-on-write (docs/architecture.md, "Memory"). A sub-interpreter shares no
//! object with another, so each compiles its own.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyModule;
use std::ffi::CStr;
use std::sync::Mutex;

/// A Python source file compiled into turbo, with the file and module names
/// its tracebacks show.
pub struct Embedded {
    pub source: &'static CStr,
    pub file: &'static CStr,
    pub module: &'static CStr,
}

/// Declares an [`Embedded`] from a file next to the Rust source.
#[macro_export]
macro_rules! embedded {
    ($path:literal, $file:literal, $module:literal) => {
        $crate::python::embedded::Embedded {
            source: match ::std::ffi::CStr::from_bytes_with_nul(
                concat!(include_str!($path), "\0").as_bytes(),
            ) {
                Ok(s) => s,
                Err(_) => panic!(concat!($path, " contains a NUL byte")),
            },
            file: $file,
            module: $module,
        }
    };
}

/// Code objects compiled in the main interpreter, by module name. Only ever
/// read or written with the main interpreter's GIL held, and never dropped:
/// they live as long as the process, and a fork inherits them.
static COMPILED: Mutex<Vec<(&'static CStr, Py<PyAny>)>> = Mutex::new(Vec::new());

impl Embedded {
    /// Runs the source as a new module `module` in the current interpreter.
    pub fn load<'py>(&'static self, py: Python<'py>) -> PyResult<Bound<'py, PyModule>> {
        let code = if in_main_interpreter() {
            self.compiled_in_main(py)?
        } else {
            self.compile(py)?
        };
        // SAFETY: the GIL is held; CPython copies both names.
        let module = unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                ffi::PyImport_ExecCodeModuleEx(
                    self.module.as_ptr(),
                    code.as_ptr(),
                    self.file.as_ptr(),
                ),
            )
        }?;
        Ok(module.cast_into::<PyModule>()?)
    }

    /// Compiles the source now, in the main interpreter, for the workers
    /// forked after this to execute without compiling it again.
    pub fn precompile(&'static self, py: Python<'_>) {
        if in_main_interpreter()
            && let Err(e) = self.compiled_in_main(py)
        {
            log::debug!("{:?} did not compile: {e}", self.file);
        }
    }

    fn compiled_in_main<'py>(&'static self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let known = COMPILED.lock().ok().and_then(|compiled| {
            let (_, code) = compiled.iter().find(|(module, _)| *module == self.module)?;
            Some(code.bind(py).clone())
        });
        if let Some(code) = known {
            return Ok(code);
        }
        let code = self.compile(py)?;
        if let Ok(mut compiled) = COMPILED.lock() {
            compiled.push((self.module, code.clone().unbind()));
        }
        Ok(code)
    }

    fn compile<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        // SAFETY: the GIL is held; both strings end in NUL.
        unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                ffi::Py_CompileString(self.source.as_ptr(), self.file.as_ptr(), ffi::Py_file_input),
            )
        }
    }
}

/// Whether the calling thread, which holds a GIL, runs in the main interpreter.
fn in_main_interpreter() -> bool {
    // SAFETY: the caller holds a GIL, so a thread state is current; the main
    // interpreter lives as long as the process.
    unsafe { ffi::PyInterpreterState_Get() == ffi::PyInterpreterState_Main() }
}
