"""A CPU-bound handler that says when it ran: it holds its CPU for `?ms=N`
milliseconds of the thread's own CPU time (default 20), then answers
"SHARD START END", the serving thread's CPU (or the process id where it may
run on several) and its start and end on the host's monotonic clock in
nanoseconds. bench/response_delay.py splits each request's latency with it:
the wait before the handler ran, and the delay between the handler's end
and the client having the response. WSGI `app` and ASGI `asgi`."""

import os
import time


def _run(query):
    began = time.monotonic_ns()
    ms = float(query[3:]) if query.startswith("ms=") else 20.0
    until = time.thread_time() + ms / 1000
    while time.thread_time() < until:
        pass
    cpus = os.sched_getaffinity(0)
    where = min(cpus) if len(cpus) == 1 else os.getpid()
    return f"{where} {began} {time.monotonic_ns()}".encode()


def app(environ, start_response):
    body = _run(environ.get("QUERY_STRING", ""))
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


async def asgi(scope, receive, send):
    if scope["type"] != "http":
        return
    body = _run(scope["query_string"].decode())
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
