"""What a forked worker of an app writes of its own, with no server around it.

Imports the app (as `--preload` does), freezes the collector (`gc.freeze`),
forks, and in the child calls the WSGI app directly with a plain environ.
Prints the child's private dirty memory (/proc/self/smaps_rollup) written at
its first request and after `--requests` requests, and the same again for a
parent that served one request before it forked: the difference is the
first-execution work (the specializing interpreter's counters in each code
object run, the app's lazily filled caches) that no server can share.

    .venv-bench/bin/python bench/fork_floor.py flaskhello:app --requests 1000
"""

import argparse
import gc
import importlib
import io
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def private_dirty_kib():
    with open("/proc/self/smaps_rollup") as f:
        return sum(int(line.split()[1]) for line in f if line.startswith("Private_Dirty:"))


def request(app):
    environ = {
        "REQUEST_METHOD": "GET", "PATH_INFO": "/", "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "127.0.0.1:8000",
        "REMOTE_ADDR": "127.0.0.1", "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr, "wsgi.multithread": False,
        "wsgi.multiprocess": True, "wsgi.run_once": False,
    }
    body = app(environ, lambda status, headers, exc_info=None: None)
    try:
        return b"".join(body)
    finally:
        getattr(body, "close", lambda: None)()


def child(app, requests, out):
    start = private_dirty_kib()
    request(app)
    first = private_dirty_kib() - start
    for _ in range(requests - 1):
        request(app)
    os.write(out, f"{first} {private_dirty_kib() - start}".encode())
    os._exit(0)


def fork_and_measure(app, requests):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        child(app, requests, write)
    os.close(write)
    with os.fdopen(read) as f:
        first, all_ = (int(n) for n in f.read().split())
    os.waitpid(pid, 0)
    return first, all_


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("app", help="module:attribute of a WSGI app that answers GET /")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--path", default=os.path.join(HERE, "apps"), help="folder to import the app from")
    args = parser.parse_args()
    sys.path.insert(0, args.path)
    module, _, attr = args.app.partition(":")
    app = getattr(importlib.import_module(module), attr or "app")
    gc.disable()
    gc.freeze()
    gc.enable()
    cold = fork_and_measure(app, args.requests)
    request(app)
    gc.freeze()
    warm = fork_and_measure(app, args.requests)
    print(f"{args.app} on Python {sys.version.split()[0]}, private dirty KiB written by the forked child:")
    print(f"  parent never served:       first request {cold[0]}, after {args.requests}: {cold[1]}")
    print(f"  parent served one request: first request {warm[0]}, after {args.requests}: {warm[1]}")


if __name__ == "__main__":
    main()
