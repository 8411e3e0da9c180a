"""A WSGI handler that waits `?ms=N` milliseconds (default 50) in time.sleep,
as a view waits on a database or an upstream, then answers: bench/burst.py."""

import time
from urllib.parse import parse_qs

BODY = b"done"


def app(environ, start_response):
    ms = int(parse_qs(environ.get("QUERY_STRING", "")).get("ms", ["50"])[0])
    time.sleep(ms / 1000)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))])
    return [BODY]
