"""Gunicorn's server hooks, called at Gunicorn's moments with stand-ins for
the objects Gunicorn passes: `server` (log, cfg, pid), `worker` (pid, ppid,
age, log, cfg), `req` and `resp`. Executed in the supervisor's interpreter,
which worker processes inherit across fork; pre_request and post_request run
in each shard's own interpreter, with a copy made there."""

import os
import traceback

NAMES = (
    "on_starting", "on_reload", "when_ready", "pre_fork", "post_fork",
    "post_worker_init", "worker_int", "worker_abort", "pre_exec", "pre_request",
    "post_request", "child_exit", "worker_exit", "nworkers_changed", "on_exit",
)


class Log:
    """The logger hooks get as server.log and worker.log."""

    def __init__(self, emit):
        self._emit = emit

    def _log(self, level, msg, args):
        self._emit(level, str(msg) % args if args else str(msg))

    def debug(self, msg, *args, **kw):
        self._log(10, msg, args)

    def info(self, msg, *args, **kw):
        self._log(20, msg, args)

    def warning(self, msg, *args, **kw):
        self._log(30, msg, args)

    warn = warning

    def error(self, msg, *args, **kw):
        self._log(40, msg, args)

    def critical(self, msg, *args, **kw):
        self._log(50, msg, args)

    def exception(self, msg, *args, **kw):
        self._log(40, f"{msg % args if args else msg}\n{traceback.format_exc().rstrip()}", ())


class Config:
    """server.cfg: settings by name, as resolved."""

    def __init__(self, settings):
        self.__dict__.update(settings)


class Server:
    def __init__(self, log, cfg):
        self.log = log
        self.cfg = cfg
        self.pid = os.getpid()
        self.num_workers = getattr(cfg, "workers", 1)


class Worker:
    def __init__(self, pid, age, log, cfg):
        self.pid = pid
        self.ppid = os.getpid() if pid is None else None
        self.age = age
        self.log = log
        self.cfg = cfg


class Request:
    """`req` for pre_request and post_request: the attributes of Gunicorn's."""

    def __init__(self, method, uri, path, query, minor, headers, scheme, peer_addr):
        self.method = method
        self.uri = uri
        self.path = path
        self.query = query
        self.fragment = ""
        self.version = (1, minor)
        # (NAME, value) pairs in arrival order, names upper-case as Gunicorn's.
        self.headers = headers
        self.scheme = scheme
        self.peer_addr = self.remote_addr = peer_addr


class Response:
    """`resp` for post_request."""

    def __init__(self, status, headers, sent):
        self.status = status
        self.status_code = int(status.split(" ", 1)[0])
        self.headers = headers
        self.sent = self.response_length = sent


class Hooks:
    request_class = Request

    def __init__(self, namespace, emit, settings):
        self.functions = {n: namespace[n] for n in NAMES if callable(namespace.get(n))}
        self.log = Log(emit)
        self.cfg = Config(settings)
        self.server = Server(self.log, self.cfg)
        self.worker = None

    def _call(self, name, *args):
        function = self.functions.get(name)
        if function is None:
            return
        try:
            function(*args)
        except Exception:
            self.log.exception(f"Exception in {name} hook")

    # The supervisor's hooks.
    def on_starting(self):
        self._call("on_starting", self.server)

    def when_ready(self):
        self._call("when_ready", self.server)

    def on_reload(self):
        self._call("on_reload", self.server)

    def pre_fork(self, age):
        self._call("pre_fork", self.server, Worker("[booting]", age, self.log, self.cfg))

    def pre_exec(self):
        self._call("pre_exec", self.server)

    def child_exit(self, pid, age):
        self._call("child_exit", self.server, Worker(pid, age, self.log, self.cfg))

    def nworkers_changed(self, new, old):
        """`old` is negative at start-up, where Gunicorn passes None."""
        self.server.num_workers = new
        self._call("nworkers_changed", self.server, new, None if old < 0 else old)

    def on_exit(self):
        self._call("on_exit", self.server)

    # A worker's hooks, in the worker process.
    def post_fork(self, age):
        self.server.pid = os.getppid()
        self.worker = Worker(os.getpid(), age, self.log, self.cfg)
        self.worker.ppid = os.getppid()
        self._call("post_fork", self.server, self.worker)

    def post_worker_init(self):
        self._call("post_worker_init", self.worker)

    def worker_int(self):
        self._call("worker_int", self.worker)

    def worker_abort(self):
        self._call("worker_abort", self.worker)

    def worker_exit(self):
        self._call("worker_exit", self.server, self.worker)

    # A shard's hooks, in the shard's interpreter.
    def bind_worker(self, age):
        self.server.pid = os.getppid()
        self.worker = Worker(os.getpid(), age, self.log, self.cfg)
        self.worker.ppid = os.getppid()
        return "pre_request" in self.functions, "post_request" in self.functions

    def pre_request(self, req):
        """A failing pre_request fails the request, as in Gunicorn."""
        self.functions["pre_request"](self.worker, req)

    def post_request(self, req, environ, status, headers, sent):
        self._call("post_request", self.worker, req, environ, Response(status, headers, sent))
