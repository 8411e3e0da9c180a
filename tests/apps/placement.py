"""Apps for the placement tests, in WSGI (`wsgi`) and ASGI (`asgi`) form.

- `/where`: the CPU the serving shard's thread is pinned to, which names
  the shard.
- `/hold?NAME[&MS]`: a handler that holds its shard's CPU, as a view
  computing does: it creates `$TURBO_HOLD_DIR/NAME.started`, then spins
  until the test creates `$TURBO_HOLD_DIR/NAME` (at most 30 s) and for MS
  milliseconds at least (a shard moves requests only from behind a pass of
  1 ms or more), creates `$TURBO_HOLD_DIR/NAME.ended`, and answers
  `/where`'s.
- `/echo`: `/where`'s answer, the client's address and the request body,
  one per line.
"""

import os
import time

HOLD_DIR = os.environ.get("TURBO_HOLD_DIR", "/tmp")


def _where():
    (cpu,) = os.sched_getaffinity(0)
    return str(cpu).encode()


def _answer(path, query):
    if path == "/hold":
        name, _, least = query.partition("&")
        release = os.path.join(HOLD_DIR, name)
        least = int(least or 0) / 1000
        open(release + ".started", "w").close()
        began = time.monotonic()
        while time.monotonic() < began + 30:
            if time.monotonic() > began + least and os.path.exists(release):
                break
        open(release + ".ended", "w").close()
    return _where()


def _echo(client, body):
    return b"\n".join([_where(), client.encode(), body])


def wsgi(environ, start_response):
    if environ["PATH_INFO"] == "/echo":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = _echo(environ["REMOTE_ADDR"], environ["wsgi.input"].read(length))
    else:
        body = _answer(environ["PATH_INFO"], environ["QUERY_STRING"])
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
    if scope["path"] == "/echo":
        received = b""
        while True:
            message = await receive()
            received += message.get("body", b"")
            if not message.get("more_body"):
                break
        body = _echo(scope["client"][0], received)
    else:
        body = _answer(scope["path"], scope["query_string"].decode())
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
