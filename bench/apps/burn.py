"""A handler that holds its CPU for `?ms=N` milliseconds of the thread's own
CPU time (default 20), as a Django or Flask view computing does: the app for
placement across shards (bench/placement.py)."""

import time


def app(environ, start_response):
    query = environ.get("QUERY_STRING", "")
    ms = float(query[3:]) if query.startswith("ms=") else 20.0
    until = time.thread_time() + ms / 1000
    while time.thread_time() < until:
        pass
    body = b"done"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
