"""Apps for the hostile-client tests, in WSGI (`wsgi`) and ASGI (`asgi`) form.

- `/pid`: the worker's pid and the serving thread's id, so a test can see
  that the worker survived and which shard answered.
- `/big?mb=N`: a fresh N MiB bytes object, which turbo lends to the kernel.
- `/pad?N`: N bytes.
- `/upload`: reads the whole body and answers its length.
- `/spin`: `while True: pass`, a request stuck in Python bytecode.
- `/keep` (WSGI): keeps `wsgi.input` past its request without reading it;
  `/late` then reads it to its end and answers how many bytes it gave and
  which byte values, or the error.
"""

import os
import threading
from urllib.parse import parse_qs


def _answer(path, query, body_length):
    if path == "/pid":
        return f"{os.getpid()} {threading.get_native_id()}".encode()
    if path == "/big":
        mb = int(parse_qs(query).get("mb", ["64"])[0])
        return b"x" * (mb << 20)
    if path == "/pad":
        return b"p" * int(query or 0)
    if path == "/upload":
        return str(body_length).encode()
    if path == "/spin":
        while True:
            pass
    return b"ok"


_kept = []


def _late():
    """Reads the kept input to its end: how many bytes it gave, and which."""
    try:
        got = b""
        for _ in range(100):
            chunk = _kept[-1].read(65536)
            if not chunk:
                break
            got += chunk
        return f"{len(got)} {bytes(sorted(set(got))).decode()}".strip().encode()
    except Exception as e:
        return f"error {e!r}".encode()


def wsgi(environ, start_response):
    length = None
    path = environ["PATH_INFO"]
    if path == "/upload":
        length = len(environ["wsgi.input"].read())
    if path == "/keep":
        _kept.append(environ["wsgi.input"])
        body = b"kept"
    elif path == "/late":
        body = _late()
    else:
        body = _answer(path, environ["QUERY_STRING"], length)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


async def asgi(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    length = 0
    if scope["path"] == "/upload":
        more = True
        while more:
            message = await receive()
            length += len(message.get("body", b""))
            more = message.get("more_body", False)
    body = _answer(scope["path"], scope["query_string"].decode(), length)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
