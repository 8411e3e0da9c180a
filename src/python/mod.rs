//! The hosting CPython: the virtualenv's own interpreter, which imported
//! turbo, one own-GIL sub-interpreter per shard (PEP 684), and the main
//! interpreter of a worker process as the fallback where sub-interpreters
//! cannot serve the app.
//!
//! pyo3 keeps some process-wide caches that break across interpreters, so this
//! module and the bridges use only per-interpreter objects: no `intern!`, no
//! `#[pyclass]`, no once-cells (docs/architecture.md, "Python references").

pub mod app;
pub mod embedded;
pub mod lent;
pub mod probe;
pub mod watchdog;

use pyo3::ffi;

/// The Python version turbo was built for, `major.minor`: the host's, since
/// an extension module loads only into the version it was built for.
pub const LINKED_VERSION: &str = env!("TURBO_PYTHON_VERSION");

/// Where a shard's Python objects live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// One own-GIL sub-interpreter per shard.
    Subinterpreter,
    /// The worker process's main interpreter: one shard per process.
    Main,
}

/// Whether this Python can give each shard its own GIL (PEP 684, 3.12+).
pub fn supports_own_gil() -> bool {
    cfg!(Py_3_12)
}

/// Readies the host's main interpreter (the virtualenv's own `python`, which
/// imported turbo) to serve as the supervisor's; the caller holds its GIL.
pub fn hosted(_py: pyo3::Python<'_>) {
    if cfg!(all(Py_3_12, not(Py_3_13))) {
        // SAFETY: the caller holds the main interpreter's GIL.
        unsafe { preimport_for_312() };
    }
}

/// Makes the main interpreter's `os.environ`, which Python copied from the
/// process's environment as it started, equal to that environment again.
pub fn sync_environ() {
    use pyo3::prelude::*;
    pyo3::Python::attach(|py| {
        let Ok(environ) = py.import("os").and_then(|os| os.getattr("environ")) else {
            return;
        };
        let now: Vec<(std::ffi::OsString, std::ffi::OsString)> = std::env::vars_os().collect();
        if let Ok(keys) = environ.call_method0("keys").and_then(|k| k.try_iter()) {
            let gone: Vec<_> = keys
                .flatten()
                .filter(|key| {
                    key.extract::<std::ffi::OsString>()
                        .is_ok_and(|key| !now.iter().any(|(k, _)| *k == key))
                })
                .collect();
            for key in gone {
                let _ = environ.del_item(key);
            }
        }
        for (key, value) in &now {
            let _ = environ.set_item(key, value);
        }
    });
}

/// Runs `load` (the app's import before the workers fork) so that the pages
/// it fills stay shared with the workers, copy-on-write: the collector is off
/// meanwhile, so no collection frees objects in the middle of the app's pages,
/// and what survives is frozen before the fork (`gc.freeze`), so the
/// workers' collections never write to those objects' headers. The collector
/// is then as it was (docs/architecture.md, "Memory").
pub fn shared_after_fork<T>(py: pyo3::Python<'_>, load: impl FnOnce() -> T) -> T {
    use pyo3::prelude::*;
    let gc = py.import("gc").ok();
    let call = |name: &str| gc.as_ref().and_then(|gc| gc.call_method0(name).ok());
    let was_on = call("isenabled").is_some_and(|on| on.is_truthy().unwrap_or(true));
    call("disable");
    let out = load();
    call("freeze");
    if was_on {
        call("enable");
    }
    out
}

/// The standard-library modules that Django, Flask and FastAPI all import
/// (their apps' `sys.modules` on CPython 3.13, less what Python itself
/// imports at startup).
const COMMON_STDLIB: &[&str] = &[
    "array",
    "ast",
    "atexit",
    "base64",
    "binascii",
    "bisect",
    "bz2",
    "collections",
    "collections.abc",
    "contextlib",
    "contextvars",
    "copy",
    "copyreg",
    "dataclasses",
    "datetime",
    "decimal",
    "dis",
    "email",
    "email.base64mime",
    "email.charset",
    "email.encoders",
    "email.errors",
    "email.feedparser",
    "email.header",
    "email.iterators",
    "email.message",
    "email.parser",
    "email.quoprimime",
    "email.utils",
    "enum",
    "errno",
    "fnmatch",
    "functools",
    "glob",
    "grp",
    "hashlib",
    "hmac",
    "html",
    "html.entities",
    "http",
    "http.client",
    "importlib",
    "importlib.machinery",
    "importlib.util",
    "inspect",
    "ipaddress",
    "itertools",
    "json",
    "json.decoder",
    "json.encoder",
    "json.scanner",
    "keyword",
    "logging",
    "lzma",
    "math",
    "mimetypes",
    "ntpath",
    "numbers",
    "opcode",
    "operator",
    "pathlib",
    "pwd",
    "quopri",
    "random",
    "re",
    "reprlib",
    "secrets",
    "select",
    "selectors",
    "shutil",
    "socket",
    "ssl",
    "string",
    "struct",
    "tempfile",
    "textwrap",
    "threading",
    "token",
    "tokenize",
    "traceback",
    "types",
    "typing",
    "urllib",
    "urllib.parse",
    "uuid",
    "warnings",
    "weakref",
    "zlib",
];

/// Imports COMMON_STDLIB in the supervisor's interpreter before it forks
/// process-mode workers, so that every worker shares one copy of those
/// modules instead of importing its own, as Gunicorn's workers share what
/// its master imported (docs/architecture.md, "Memory"). A module this
/// Python lacks is skipped.
pub fn import_common_stdlib(py: pyo3::Python<'_>) {
    shared_after_fork(py, || {
        for name in COMMON_STDLIB {
            let _ = py.import(*name);
        }
    });
}

/// CPython 3.12.1 double-frees when a second interpreter first imports these
/// single-phase extension modules; importing them in the main interpreter first
/// avoids it (docs/architecture.md, "Facts").
unsafe fn preimport_for_312() {
    for name in [
        c"_datetime",
        c"_decimal",
        c"_ctypes",
        c"_elementtree",
        c"pyexpat",
    ] {
        // SAFETY: the caller holds the main interpreter's GIL (`hosted`).
        unsafe {
            let module = ffi::PyImport_ImportModule(name.as_ptr());
            if module.is_null() {
                ffi::PyErr_Clear();
            } else {
                ffi::Py_DECREF(module);
            }
        }
    }
}

/// Creates an own-GIL sub-interpreter on the calling thread, which must have no
/// Python thread state yet, and makes it current.
#[cfg(not(Py_3_12))]
pub fn attach_subinterpreter() -> Result<(), String> {
    Err(format!(
        "Python {LINKED_VERSION} has no per-interpreter GIL"
    ))
}

/// Creates an own-GIL sub-interpreter on the calling thread, which must have no
/// Python thread state yet, and makes it current.
#[cfg(Py_3_12)]
pub fn attach_subinterpreter() -> Result<(), String> {
    let config = ffi::PyInterpreterConfig {
        use_main_obmalloc: 0,
        allow_fork: 0,
        allow_exec: 0,
        allow_threads: 1,
        allow_daemon_threads: 1,
        check_multi_interp_extensions: 1,
        gil: ffi::PyInterpreterConfig_OWN_GIL,
    };
    let mut tstate = std::ptr::null_mut();
    // SAFETY: no thread state is current on this fresh thread; CPython creates and
    // binds one for the new interpreter and leaves its GIL held.
    let status = unsafe { ffi::Py_NewInterpreterFromConfig(&mut tstate, &config) };
    // SAFETY: reading a status returned by CPython.
    if unsafe { ffi::PyStatus_Exception(status) } != 0 || tstate.is_null() {
        return Err("Python could not create a sub-interpreter".into());
    }
    Ok(())
}

/// Attaches the calling thread to the main interpreter with a new thread state.
pub fn attach_main() {
    // SAFETY: the main interpreter is the host's, and lives as long as the process.
    attach_thread(InterpreterRef(unsafe { ffi::PyInterpreterState_Main() }));
}

/// The interpreter of the calling thread, which must hold its GIL.
pub fn current_interpreter() -> InterpreterRef {
    // SAFETY: the caller holds a GIL, so a thread state is current.
    InterpreterRef(unsafe { ffi::PyInterpreterState_Get() })
}

/// An interpreter, passed to threads that will attach to it.
#[derive(Clone, Copy)]
pub struct InterpreterRef(*mut ffi::PyInterpreterState);

// SAFETY: an interpreter state may be used from any thread through its own thread
// state; the pointer is only given to PyThreadState_New.
unsafe impl Send for InterpreterRef {}

impl InterpreterRef {
    fn as_ptr(self) -> *mut ffi::PyInterpreterState {
        self.0
    }
}

/// Attaches the calling thread, which has no thread state, to `interp` with a new
/// thread state, and takes that interpreter's GIL.
pub fn attach_thread(interp: InterpreterRef) {
    // SAFETY: the interpreter outlives the process's threads (it is never ended
    // while shards run); the new thread state is bound to this thread.
    unsafe {
        let tstate = ffi::PyThreadState_New(interp.as_ptr());
        ffi::PyEval_RestoreThread(tstate);
    }
}

/// Detaches the calling thread, at its end, from the interpreter it was
/// attached to for its life, releasing that interpreter's GIL.
pub fn detach_thread() {
    // SAFETY: the thread holds its interpreter's GIL (attached for its life)
    // and touches no Python object afterwards.
    unsafe { ffi::PyEval_SaveThread() };
}

/// A Python error as a log shows it: the traceback, then the error.
pub fn error_text(py: pyo3::Python<'_>, err: &pyo3::PyErr) -> String {
    use pyo3::types::PyTracebackMethods;
    let tb = err
        .traceback(py)
        .and_then(|t| t.format().ok())
        .unwrap_or_default();
    format!("{tb}{err}")
}

/// Releases the GIL around a blocking wait so other threads of the same
/// interpreter can run.
///
/// Unlike `Python::detach`, this takes closures that are not `Send`, which the
/// I/O driver is. The closure must not touch Python objects, but it may drop
/// `Held` ones: the kernel wait completes cancelled operations, whose buffers
/// (a lent body) go then. Those references are released here, once the thread
/// state is back (docs/architecture.md, "Python references").
pub fn without_gil<T>(f: impl FnOnce() -> T) -> T {
    let released = release_gil();
    let out = f();
    released.restore();
    out
}

/// Gives up the calling thread's GIL until `Released::restore`. The caller
/// holds it (it runs inside its thread's attachment) and touches no Python
/// object meanwhile; it may drop `Held` ones, which wait in DEFERRED.
pub fn release_gil() -> Released {
    debug_assert!(!DETACHED.get(), "the GIL given up twice");
    watchdog::discard_pending();
    DETACHED.set(true);
    // SAFETY: the caller holds the GIL and gives it up here; Held drops are
    // deferred until `restore`.
    Released {
        tstate: unsafe { ffi::PyEval_SaveThread() },
    }
}

/// A thread's GIL, given up by `release_gil`. Not `Send`: only the thread
/// that gave it up takes it back.
pub struct Released {
    tstate: *mut ffi::PyThreadState,
}

impl Released {
    /// Takes the GIL back, waiting for it if another thread holds it, and
    /// releases what was dropped meanwhile.
    pub fn restore(self) {
        // SAFETY: restores the thread state saved by `release_gil` on this
        // thread (Released is not Send).
        unsafe { ffi::PyEval_RestoreThread(self.tstate) };
        DETACHED.set(false);
        release_deferred();
    }
}

/// The references that a thread which keeps its GIL given up between tasks
/// (a WSGI shard with `--threads`: docs/architecture.md, "Shards") dropped,
/// waiting for another thread of the same interpreter to release them while
/// it holds the GIL. Waking that thread is the owner's business (`wake`).
pub struct Graveyard {
    dead: std::sync::Mutex<Vec<Dead>>,
    wake: Box<dyn Fn() + Send + Sync>,
}

/// An owned reference into the interpreter of a graveyard's threads.
struct Dead(std::ptr::NonNull<ffi::PyObject>);

// SAFETY: a reference is only moved between threads of its own interpreter,
// and released by one that holds that interpreter's GIL (`Graveyard::sweep`).
unsafe impl Send for Dead {}

impl Graveyard {
    /// `wake` gets a thread of the interpreter to `sweep` soon.
    pub fn new(wake: impl Fn() + Send + Sync + 'static) -> Graveyard {
        Graveyard {
            dead: std::sync::Mutex::new(Vec::new()),
            wake: Box::new(wake),
        }
    }

    /// Moves what the calling thread dropped without its GIL here, and wakes
    /// a sweeper if the graveyard was empty.
    pub fn take_deferred(&self) {
        let batch = DEFERRED.with_borrow_mut(std::mem::take);
        if batch.is_empty() {
            return;
        }
        let Ok(mut dead) = self.dead.lock() else {
            // A sweeper panicked (it cannot: decrefs do not unwind); the
            // references stay deferred rather than leak.
            DEFERRED.with_borrow_mut(|d| d.extend(batch));
            return;
        };
        let was_empty = dead.is_empty();
        dead.extend(batch.into_iter().map(Dead));
        drop(dead);
        if was_empty {
            (self.wake)();
        }
    }

    /// Releases every reference here. The caller holds the GIL of the
    /// interpreter they belong to.
    pub fn sweep(&self, _py: pyo3::Python<'_>) {
        let batch = match self.dead.lock() {
            Ok(mut dead) => std::mem::take(&mut *dead),
            Err(_) => return,
        };
        for Dead(ptr) in batch {
            // SAFETY: owned references into the caller's interpreter, whose
            // GIL it holds.
            unsafe { ffi::Py_DECREF(ptr.as_ptr()) };
        }
    }
}

thread_local! {
    /// Set while this thread has given up its interpreter's GIL
    /// (`release_gil`): pyo3 still counts the thread as attached then, so a
    /// reference dropped there must not be decref'd until it is again.
    static DETACHED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// References dropped while DETACHED, released once the thread state is
    /// back, or by another thread (`Graveyard`). Owned references into this
    /// thread's interpreter.
    static DEFERRED: std::cell::RefCell<Vec<std::ptr::NonNull<ffi::PyObject>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether the calling thread has a Python thread state attached.
fn thread_state_attached() -> bool {
    // SAFETY: PyThreadState_GetUnchecked may be called on any thread, with or
    // without a thread state.
    !unsafe { ffi::compat::PyThreadState_GetUnchecked() }.is_null()
}

/// Gives back one owned reference. On a thread inside `without_gil` it waits
/// in DEFERRED; on an attached thread it goes now; on a thread with no
/// thread state at all (the supervisor, the logging thread) the main
/// interpreter's GIL is taken for it, as those threads hold only main
/// interpreter objects.
fn release(obj: pyo3::Py<pyo3::PyAny>) {
    if DETACHED.get() {
        let ptr = obj.into_ptr();
        // into_ptr of a live object is never null.
        if let Some(ptr) = std::ptr::NonNull::new(ptr) {
            DEFERRED.with_borrow_mut(|d| d.push(ptr));
        }
        return;
    }
    if thread_state_attached() {
        // SAFETY: an owned reference, released with a thread state attached;
        // the raw decref does not depend on pyo3's count of attachments.
        unsafe { ffi::Py_DECREF(obj.into_ptr()) };
    } else {
        pyo3::Python::attach(|_| drop(obj));
    }
}

/// Releases what was dropped while the thread waited without its GIL.
fn release_deferred() {
    loop {
        // Taken out first: a release may run a finalizer that drops more.
        let batch = DEFERRED.with_borrow_mut(std::mem::take);
        if batch.is_empty() {
            return;
        }
        debug_assert!(
            thread_state_attached(),
            "a Python reference released without a thread state"
        );
        for ptr in batch {
            // SAFETY: each pointer is an owned reference into this thread's
            // interpreter, whose thread state is attached again.
            unsafe { ffi::Py_DECREF(ptr.as_ptr()) };
        }
    }
}

/// A Python object held by Rust code that may drop it anywhere, even inside a
/// kernel wait: see `release`. A bare `Py` must never be dropped there.
pub struct Held<T>(Option<pyo3::Py<T>>);

impl<T> Held<T> {
    pub fn new(obj: pyo3::Py<T>) -> Held<T> {
        Held(Some(obj))
    }

    pub fn get(&self) -> &pyo3::Py<T> {
        match &self.0 {
            Some(obj) => obj,
            None => unreachable!("a Held object is only emptied by its drop"),
        }
    }

    /// The object itself, for a thread that holds its interpreter's GIL.
    pub fn into_inner(mut self, _py: pyo3::Python<'_>) -> pyo3::Py<T> {
        match self.0.take() {
            Some(obj) => obj,
            None => unreachable!("a Held object is only emptied by its drop"),
        }
    }
}

impl<T> Drop for Held<T> {
    fn drop(&mut self) {
        if let Some(obj) = self.0.take() {
            release(obj.into_any());
        }
    }
}

impl<T> std::fmt::Debug for Held<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<Python object>")
    }
}

/// Forks the supervisor, in which the host's Python runs, following
/// CPython's protocol: the GIL is held across the fork, and the child leaves
/// with it released, as the parent does.
pub fn fork_with_python() -> libc::pid_t {
    // SAFETY: the calling thread is the main thread, which owns the main
    // interpreter's thread state; the calls bracket fork() as CPython documents.
    unsafe {
        let gil = ffi::PyGILState_Ensure();
        ffi::PyOS_BeforeFork();
        let pid = libc::fork();
        if pid == 0 {
            ffi::PyOS_AfterFork_Child();
            ffi::PyEval_SaveThread();
        } else {
            ffi::PyOS_AfterFork_Parent();
            ffi::PyGILState_Release(gil);
        }
        pid
    }
}

/// A latin-1 `str` from bytes: every byte maps to the code point of its value.
pub fn latin1<'py>(py: pyo3::Python<'py>, bytes: &[u8]) -> pyo3::Bound<'py, pyo3::types::PyString> {
    if bytes.is_ascii() {
        // SAFETY: ASCII is valid UTF-8.
        return pyo3::types::PyString::new(py, unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    let text: String = bytes.iter().map(|&b| b as char).collect();
    pyo3::types::PyString::new(py, &text)
}
