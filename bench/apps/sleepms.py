"""A WSGI handler that computes `?cpu=N` milliseconds in Python (default 0),
holding the GIL as a view's own code does, then waits `?ms=N` milliseconds
(default 50) in time.sleep, as a view waits on a database or an upstream,
then answers: bench/burst.py."""

import time
from urllib.parse import parse_qs

BODY = b"done"


def app(environ, start_response):
    query = parse_qs(environ.get("QUERY_STRING", ""))
    until = time.monotonic() + int(query.get("cpu", ["0"])[0]) / 1000
    while time.monotonic() < until:
        pass
    time.sleep(int(query.get("ms", ["50"])[0]) / 1000)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))])
    return [BODY]
