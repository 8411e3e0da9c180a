"""The Python half of turbo's ASGI bridge, executed once in every interpreter.

It holds what is control flow rather than the request path: the selector that
puts asyncio on the shard's io_uring ring, the lifespan protocol, and the
shard's main coroutine. Receiving and sending HTTP messages is Rust's job.
"""

import asyncio
import selectors
import sys


class ClientDisconnected(OSError):
    """Raised by send() once the client has gone away."""


class RingSelector(selectors._BaseSelectorImpl):
    """A selector whose waiting is done by the shard's runtime. `watch(fd,
    events)` tells Rust what to poll; `poll(timeout)` runs the runtime and
    returns [(fd, events)]."""

    def __init__(self, watch, poll):
        super().__init__()
        self._watch = watch
        self._poll = poll

    def register(self, fileobj, events, data=None):
        key = super().register(fileobj, events, data)
        self._watch(key.fd, events)
        return key

    def unregister(self, fileobj):
        key = super().unregister(fileobj)
        self._watch(key.fd, 0)
        return key

    def modify(self, fileobj, events, data=None):
        key = super().modify(fileobj, events, data)
        self._watch(key.fd, events)
        return key

    def select(self, timeout=None):
        ready = []
        fd_to_key = self._fd_to_key
        for fd, events in self._poll(timeout):
            key = fd_to_key.get(fd)
            if key is not None and events & key.events:
                ready.append((key, events & key.events))
        return ready

    def close(self):
        for key in list(self._fd_to_key.values()):
            self._watch(key.fd, 0)
        super().close()


def new_loop(watch, poll):
    loop = asyncio.SelectorEventLoop(RingSelector(watch, poll))
    asyncio.set_event_loop(loop)
    return loop


def request_starter(loop):
    """Starts a request's task. From 3.12 the task starts eagerly: the app
    runs up to its first real wait at once, which saves a pass of the loop
    for every request (and the whole task for a simple response)."""
    if sys.version_info >= (3, 12):
        def start(coro):
            return asyncio.Task(coro, loop=loop, eager_start=True)
        return start
    return loop.create_task


def scope_templates(root_path):
    """The constant part of every HTTP and WebSocket scope, copied per request."""
    asgi = {"version": "3.0", "spec_version": "2.4"}
    http = {"type": "http", "asgi": asgi, "root_path": root_path,
            "extensions": {"http.response.pathsend": {}}}
    websocket = {"type": "websocket", "asgi": asgi, "root_path": root_path,
                 "extensions": {"websocket.http.response": {}}}
    return http, websocket


class Lifespan:
    """The ASGI lifespan protocol, as Uvicorn runs it: `auto` carries on when
    the app does not support it, `on` requires it, `off` skips it."""

    def __init__(self, app, mode, state, log):
        self.app = app
        self.mode = mode
        self.state = state
        self.log = log
        self.messages = asyncio.Queue()
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()
        self.failure = None
        self.error = None

    async def startup(self):
        """Returns None, or why the server must not start."""
        if self.mode == "off":
            return None
        asyncio.get_running_loop().create_task(self._main())
        await self.messages.put({"type": "lifespan.startup"})
        await self.started.wait()
        if self.failure is not None:
            return f"Application startup failed: {self.failure}"
        if self.error is not None and self.mode == "on":
            return f"Application startup failed: {self.error!r}"
        return None

    async def shutdown(self):
        if self.mode == "off" or self.error is not None:
            return
        await self.messages.put({"type": "lifespan.shutdown"})
        await self.stopped.wait()
        if self.failure is not None:
            self.log(40, f"Application shutdown failed: {self.failure}")

    async def _main(self):
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        try:
            await self.app(scope, self.messages.get, self._send)
        except BaseException as exc:  # the app's own failure, reported below
            self.error = exc
            if self.mode == "auto" and not self.started.is_set():
                self.log(20, "ASGI 'lifespan' protocol appears unsupported.")
            elif self.failure is None:
                self.log(40, f"Exception in 'lifespan' protocol: {exc!r}")
        finally:
            self.started.set()
            self.stopped.set()

    async def _send(self, message):
        kind = message["type"]
        if kind == "lifespan.startup.complete" and not self.started.is_set():
            self.started.set()
        elif kind == "lifespan.startup.failed" and not self.started.is_set():
            self.failure = message.get("message", "")
            self.started.set()
        elif kind == "lifespan.shutdown.complete" and self.started.is_set():
            self.stopped.set()
        elif kind == "lifespan.shutdown.failed" and self.started.is_set():
            self.failure = message.get("message", "")
            self.stopped.set()
        else:
            raise RuntimeError(f"Unexpected ASGI lifespan message {kind!r}")


async def serve(app, lifespan_mode, state, log, started, stopped):
    """A shard's life: lifespan startup, then serving (Rust accepts once
    `started()` is called) until `stopped` resolves, then lifespan shutdown.
    Returns None, or why the shard could not start."""
    lifespan = Lifespan(app, lifespan_mode, state, log)
    failure = await lifespan.startup()
    if failure is not None:
        return failure
    started()
    await stopped
    await lifespan.shutdown()
    return None
