"""Apps for the operations port's tests: a WSGI app whose answers the test
picks (status, pid, an echo, a view that spins in Python), and an ASGI app with lifespan and a WebSocket
that says how it ended."""

import asyncio
import os
import sys
import time


def note(text):
    print(text, file=sys.stderr, flush=True)


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/spin":
        # Python bytecode that holds the GIL for 200 ms, but for the switch
        # interval's hand-offs.
        until = time.monotonic() + 0.2
        while time.monotonic() < until:
            pass
    status = path.rsplit("/", 1)[-1] if path.startswith("/status/") else "200"
    body = environ["wsgi.input"].read() or str(os.getpid()).encode()
    start_response(f"{status} X", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


async def gate():
    """Lifespan startup waits, for 30 s at most, until $OPS_GATE exists."""
    path = os.environ.get("OPS_GATE")
    for _ in range(3000):
        if not path or os.path.exists(path):
            return
        await asyncio.sleep(0.01)


async def asgi(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                note("lifespan startup began")
                await gate()
            if message["type"] == "lifespan.shutdown":
                note("lifespan shutdown ran")
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    await receive()
    if scope["path"] == "/slow-accept":
        note("accept pending")
        await asyncio.sleep(1)
    await send({"type": "websocket.accept"})
    note("websocket open")
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            note(f"websocket disconnect {message['code']}")
            return
        await send({"type": "websocket.send", "text": message.get("text") or ""})
