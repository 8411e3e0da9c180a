"""A CPU-bound handler, and a report of which interpreter served the request."""

import sys


def interpreter_id():
    try:
        import _interpreters  # 3.13

        return _interpreters.get_current()[0]
    except ImportError:
        pass
    try:
        import _xxsubinterpreters  # 3.12

        return _xxsubinterpreters.get_current()
    except ImportError:
        return 0


def app(environ, start_response):
    n = int(environ.get("QUERY_STRING") or "200000")
    total = 0
    for i in range(n):
        total += i * i % 7
    body = f"{interpreter_id()} {id(sys.modules)} {total}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
