"""A handler that waits 10 ms before answering (WSGI `wsgi`: time.sleep, ASGI `asgi`:
asyncio.sleep), standing in for a database or an upstream call. Throughput then
depends on how many requests a server keeps in flight on one core: threads for
WSGI servers, the event loop for ASGI ones."""

import asyncio
import time

BODY = b"Hello, World!"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def wsgi(environ, start_response):
    time.sleep(0.01)
    start_response("200 OK", HEADERS)
    return [BODY]


START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(k.lower().encode(), v.encode()) for k, v in HEADERS],
}
DONE = {"type": "http.response.body", "body": BODY}


async def asgi(scope, receive, send):
    if scope["type"] != "http":
        return
    await asyncio.sleep(0.01)
    await send(START)
    await send(DONE)
