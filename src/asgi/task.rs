//! Where an app's task meets the connection serving it. The app calls
//! `receive` and `send`, which change the connection's state and wake it
//! through a `Link`; the task's end is reported on the same link. HTTP and
//! WebSocket connections differ only in the callables they hand the app.

use std::cell::Cell;
use std::rc::Rc;
use std::task::{Poll, Waker};

use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::{PyCFunction, PyDict, PyTuple};

use super::{Asgi, ThreadBound};

/// A wake-up channel from the app's side to the connection, on one thread.
#[derive(Default)]
pub struct Link {
    changed: Cell<bool>,
    waker: Cell<Option<Waker>>,
    /// Set when the app's task ends: whether it raised.
    ended: Cell<Option<bool>>,
}

impl Link {
    /// Tells the connection that something changed.
    pub fn wake(&self) {
        self.changed.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Resolves at the next change since the last one seen.
    pub async fn changed(&self) {
        std::future::poll_fn(|cx| {
            if self.changed.replace(false) {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    /// None while the app's task runs; then whether it raised.
    pub fn ended(&self) -> Option<bool> {
        self.ended.get()
    }
}

/// The asgi pointer the callables carry: the shard's `Asgi` outlives every
/// connection on its thread, the only thread `ThreadBound` lets through.
fn bridge(ptr: &ThreadBound<*const Asgi>) -> PyResult<&Asgi> {
    // SAFETY: see above.
    Ok(unsafe { &**ptr.get()? })
}

/// Starts the app's task for `scope`, handing it `receive` and `send`.
pub fn start<R, S>(
    py: Python<'_>,
    asgi: &Asgi,
    scope: Bound<'_, PyDict>,
    link: &Rc<Link>,
    receive: R,
    send: S,
) -> PyResult<()>
where
    R: Fn(Python<'_>, &Asgi) -> PyResult<Py<PyAny>> + 'static,
    S: Fn(Python<'_>, &Asgi, &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> + 'static,
{
    let ptr = ThreadBound::new(asgi as *const Asgi);
    let receive = ThreadBound::new(receive);
    let receive_fn = PyCFunction::new_closure(
        py,
        Some(c"receive"),
        None,
        move |args: &Bound<'_, PyTuple>, _kw: Option<&Bound<'_, PyDict>>| -> PyResult<Py<PyAny>> {
            (receive.get()?)(args.py(), bridge(&ptr)?)
        },
    )?;
    let ptr = ThreadBound::new(asgi as *const Asgi);
    let send = ThreadBound::new(send);
    let send_fn = PyCFunction::new_closure(
        py,
        Some(c"send"),
        None,
        move |args: &Bound<'_, PyTuple>, _kw: Option<&Bound<'_, PyDict>>| -> PyResult<Py<PyAny>> {
            (send.get()?)(args.py(), bridge(&ptr)?, &args.get_item(0)?)
        },
    )?;
    let coro = asgi.app.call1(py, (scope, receive_fn, send_fn))?;
    let task = asgi.create_task.bind(py).call1((coro,))?;
    // The loop gets a turn either way: the app may have left it work (a
    // callback, a task of its own) even when it answered at once.
    asgi.reactor.wake_python();
    // An eager task (3.12 and later) often runs to its end inside
    // create_task, and then needs no done callback.
    if task.call_method0(asgi.keys.done.bind(py))?.is_truthy()? {
        return ended(asgi, &task, link);
    }
    let ptr = ThreadBound::new(asgi as *const Asgi);
    let link = ThreadBound::new(link.clone());
    let done_fn = PyCFunction::new_closure(
        py,
        Some(c"done"),
        None,
        move |args: &Bound<'_, PyTuple>, _kw: Option<&Bound<'_, PyDict>>| -> PyResult<()> {
            ended(bridge(&ptr)?, &args.get_item(0)?, link.get()?)
        },
    )?;
    task.call_method1(asgi.keys.add_done_callback.bind(py), (done_fn,))?;
    Ok(())
}

/// The app's task has ended: logs what it raised and tells the connection.
fn ended(asgi: &Asgi, task: &Bound<'_, PyAny>, link: &Link) -> PyResult<()> {
    let py = task.py();
    let mut failed = false;
    if !task
        .call_method0(asgi.keys.cancelled.bind(py))?
        .is_truthy()?
    {
        let exc = task.call_method0(asgi.keys.exception.bind(py))?;
        if !exc.is_none() {
            failed = true;
            asgi.loaded.app_failed(py, &PyErr::from_value(exc));
        }
    }
    link.ended.set(Some(failed));
    link.wake();
    Ok(())
}

/// Whether a future is done: resolved, or cancelled because the app gave up
/// waiting for it.
pub fn is_done(py: Python<'_>, asgi: &Asgi, fut: &Py<PyAny>) -> bool {
    fut.call_method0(py, asgi.keys.done.bind(py))
        .and_then(|d| d.is_truthy(py))
        .unwrap_or(true)
}

/// Refuses a second `receive()` while one is awaited. One the app gave up on
/// (cancelled, as Starlette's `is_disconnected()` does) does not count.
pub fn check_receive(py: Python<'_>, asgi: &Asgi, waiter: &Option<Py<PyAny>>) -> PyResult<()> {
    match waiter {
        Some(w) if !is_done(py, asgi, w) => Err(super::http::runtime_error(
            "receive() is already being awaited".into(),
        )),
        _ => Ok(()),
    }
}

/// A message the app sent, as a dict, with its `type`.
pub fn message_type<'py>(
    py: Python<'py>,
    asgi: &Asgi,
    message: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyDict>, PyBackedStr)> {
    let message = message
        .cast::<PyDict>()
        .map_err(|_| pyo3::exceptions::PyTypeError::new_err("an ASGI message must be a dict"))?
        .clone();
    let kind: PyBackedStr = message
        .get_item(asgi.keys.type_.bind(py))?
        .ok_or_else(|| pyo3::exceptions::PyKeyError::new_err("type"))?
        .extract()?;
    Ok((message, kind))
}

/// What `send` raises once the client has gone: an OSError subclass.
pub fn disconnected(py: Python<'_>, asgi: &Asgi) -> PyErr {
    match asgi
        .disconnected
        .bind(py)
        .call1(("the client has disconnected",))
    {
        Ok(exc) => PyErr::from_value(exc),
        Err(e) => e,
    }
}

/// Moves the output the app queued onto the connection's buffer: a swap when
/// that buffer is empty (no copy), else an append. `queued` is left empty,
/// with its capacity, for the app's next output.
pub fn gather(out: &mut Vec<u8>, queued: &mut Vec<u8>) {
    if out.is_empty() {
        std::mem::swap(out, queued);
    } else {
        out.append(queued);
    }
}

/// Resolves with None a future the app awaits (a send held back by a slow
/// client), and lets the event loop see it.
pub fn release(asgi: &Asgi, waiter: Option<Py<PyAny>>) {
    if let Some(waiter) = waiter {
        Python::attach(|py| {
            let _ = waiter.call_method1(py, asgi.keys.set_result.bind(py), (py.None(),));
        });
        asgi.reactor.wake_python();
    }
}

/// Bytes the app sent (a body, a header name or value): borrowed from a
/// `bytes` object (the usual case, no copy), copied from a bytearray or a
/// memoryview, as Uvicorn accepts; anything else is a TypeError that says
/// `what` it was. Only builtin type checks are used: pyo3's sequence
/// extraction caches a type across interpreters (docs/architecture.md).
pub fn bytes_like<'a>(
    value: &'a Bound<'_, PyAny>,
    copy: &'a mut Vec<u8>,
    what: &str,
) -> PyResult<&'a [u8]> {
    if let Ok(bytes) = value.cast::<pyo3::types::PyBytes>() {
        return Ok(bytes.as_bytes());
    }
    if let Ok(array) = value.cast::<pyo3::types::PyByteArray>() {
        *copy = array.to_vec();
        return Ok(copy);
    }
    if value.cast::<pyo3::types::PyMemoryView>().is_ok() {
        // SAFETY: PyBytes_FromObject takes a memoryview and returns a new
        // reference or NULL with an exception set; both are handled here.
        let bytes = unsafe {
            Bound::from_owned_ptr_or_err(value.py(), pyo3::ffi::PyBytes_FromObject(value.as_ptr()))
        }?;
        *copy = bytes.cast::<pyo3::types::PyBytes>()?.as_bytes().to_vec();
        return Ok(copy);
    }
    Err(pyo3::exceptions::PyTypeError::new_err(format!(
        "{what} must be bytes, bytearray or memoryview"
    )))
}

/// The connection's side of an exchange, for the app's `send` or `receive`.
/// The app's code can run while one holds it (a headers iterator, a dict
/// subclass), and a `send` or `receive` made from there is refused with a
/// RuntimeError instead of a double borrow, which would abort the worker.
pub fn exclusive<T>(cell: &std::cell::RefCell<T>) -> PyResult<std::cell::RefMut<'_, T>> {
    cell.try_borrow_mut().map_err(|_| {
        pyo3::exceptions::PyRuntimeError::new_err(
            "send() or receive() called from inside another send()",
        )
    })
}

/// One of the app's header pairs: a tuple or a list of two items, as Uvicorn
/// accepts (the ASGI spec's examples use both).
pub fn header_pair<'py>(
    item: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let pair = match (
        item.cast::<pyo3::types::PyTuple>(),
        item.cast::<pyo3::types::PyList>(),
    ) {
        (Ok(t), _) if t.len() == 2 => Some((t.get_item(0)?, t.get_item(1)?)),
        (_, Ok(l)) if l.len() == 2 => Some((l.get_item(0)?, l.get_item(1)?)),
        _ => None,
    };
    pair.ok_or_else(|| {
        pyo3::exceptions::PyTypeError::new_err("headers must be [name, value] pairs of bytes")
    })
}
