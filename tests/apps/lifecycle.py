"""An app for the supervisor tests: it answers with its worker's pid, and can
crash, exit, hang or take its time on request."""

import os
import signal
import sys
import time

print(f"lifecycle imported in pid {os.getpid()}", file=sys.stderr, flush=True)


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/abort":
        os.abort()
    if path == "/segfault":
        # As a segfault does (ctypes refuses sub-interpreters on 3.12).
        signal.raise_signal(signal.SIGSEGV)
    if path == "/exit":
        sys.exit(3)
    if path == "/hang":
        time.sleep(3600)
    if path == "/slow":
        environ["wsgi.errors"].write("slow request started\n")
        environ["wsgi.errors"].flush()
        time.sleep(float(environ.get("QUERY_STRING") or 1))
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
