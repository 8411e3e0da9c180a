"""How each server is started for an app: the command lines, side by side.

WSGI apps: turbo, turbo --no-sendfile (file apps only), turbo --io-engine epoll
(hello only), bare on each engine (hello only: io_uring, provided buffer rings,
compio's epoll, tokio), Granian, bjoern, Gunicorn sync and gthread.
ASGI apps: the same turbo and bare variants, Granian, Uvicorn (uvloop, httptools) and
Gunicorn's own ASGI worker (`-k asgi`, Gunicorn 24+; else Uvicorn's worker class
under Gunicorn). Every one runs a single worker on one core."""

import importlib.util
import sys

from harness import BIN, HERE

BARE = HERE / "bare" / "target" / "release" / "bare"
WSGI_SERVERS = ["turbo", "turbo-metrics", "turbo-nosendfile", "turbo-epoll", "bare", "bare-bufring", "bare-epoll", "bare-tokio", "granian", "bjoern", "gunicorn-sync", "gunicorn-gthread"]
ASGI_SERVERS = ["turbo", "turbo-metrics", "turbo-nosendfile", "turbo-epoll", "bare", "bare-bufring", "bare-epoll", "bare-tokio", "granian", "uvicorn", "gunicorn-asgi"]
GTHREAD_THREADS = 4  # the upper end of Gunicorn's advice (2-4 per core); apps that block set their own


def gunicorn_asgi_worker():
    if importlib.util.find_spec("gunicorn.workers.gasgi"):
        return "asgi"
    return "uvicorn.workers.UvicornWorker"


def command(server, app, port, turbo, cores=1):
    """argv for `server` serving `app` on 127.0.0.1:port, or None where it can't."""
    host = ["127.0.0.1", str(port)]
    if server.startswith("turbo"):
        argv = [turbo, app.target, "--cores", str(cores), "--bind", f"127.0.0.1:{port}", "--log-level", "warning"]
        argv += {"turbo-nosendfile": ["--no-sendfile"], "turbo-epoll": ["--io-engine", "epoll"],
                 "turbo-metrics": ["--metrics-bind", "127.0.0.1:0"],
                 "turbo-process": ["--isolation", "process"],
                 "turbo-subinterpreter": ["--isolation", "subinterpreter"]}.get(server, [])
        return argv + (["--threads", str(app.threads)] if app.threads else [])
    if server.startswith("bare"):
        engine = server.partition("-")[2] or "uring"
        return [str(BARE), str(port), engine] if app.bare else None
    if server == "granian":
        argv = [str(BIN / "granian"), "--interface", app.interface, "--workers", str(cores),
                "--host", host[0], "--port", host[1], "--log-level", "warning"]
        if app.threads and app.interface == "wsgi":
            argv += ["--blocking-threads", str(app.threads)]
        return argv + [app.target]
    gunicorn = [str(BIN / "gunicorn"), "-w", str(cores), "-b", f"127.0.0.1:{port}", "--log-level", "warning"]
    if app.interface == "wsgi":
        if server == "bjoern":
            module, attr = app.target.split(":")
            return [sys.executable, "-c", f'import bjoern, importlib; '
                    f'bjoern.run(getattr(importlib.import_module("{module}"), "{attr}"), "127.0.0.1", {port})']
        if server == "gunicorn-sync":
            return gunicorn + ["-k", "sync", app.target]
        if server == "gunicorn-gthread":
            return gunicorn + ["-k", "gthread", "--threads", str(app.threads or GTHREAD_THREADS), app.target]
    else:
        if server == "uvicorn":
            return [str(BIN / "uvicorn"), "--workers", "1", "--loop", "uvloop", "--http", "httptools",
                    "--host", host[0], "--port", host[1], "--log-level", "warning", "--no-access-log", app.target]
        if server == "gunicorn-asgi":
            worker = gunicorn_asgi_worker()
            extra = ["--asgi-loop", "uvloop"] if worker == "asgi" else []
            return gunicorn + ["-k", worker, *extra, app.target]
    return None


def applicable(app, wanted):
    """The servers to run for `app`, in table order: those in `wanted` (names, or
    families such as "gunicorn") that serve its interface, less those it skips."""
    names = WSGI_SERVERS if app.interface == "wsgi" else ASGI_SERVERS
    chosen = [n for n in names if n in wanted or n.split("-")[0] in wanted]
    return [n for n in chosen if n not in app.skip and (not n.startswith("bare") or app.bare)
            and (n != "turbo-nosendfile" or app.sends_file) and (n != "turbo-epoll" or app.bare)
            # The cost of counting for /metrics: only when named.
            and (n != "turbo-metrics" or n in wanted)]
