"""A raw ASGI WebSocket app: echo, subprotocols, accept headers, close codes
both ways, refusal before accept and denial with an HTTP response."""

import asyncio
import sys


def note(text):
    print(text, file=sys.stderr, flush=True)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"plain http"})
        return
    assert scope["type"] == "websocket"
    path = scope["path"]
    message = await receive()
    assert message["type"] == "websocket.connect", message
    if path == "/refuse":
        await send({"type": "websocket.close"})
        return
    if path == "/deny":
        await send({"type": "websocket.http.response.start", "status": 401,
                    "headers": [(b"content-type", b"text/plain"), (b"x-why", b"token")]})
        await send({"type": "websocket.http.response.body", "body": b"no ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"entry"})
        return
    if path == "/crash":
        raise RuntimeError("crash before accept")
    accept = {"type": "websocket.accept", "headers": [(b"x-served-by", b"turbo")]}
    if scope["subprotocols"]:
        accept["subprotocol"] = scope["subprotocols"][-1]
    await send(accept)
    if path == "/close":
        await send({"type": "websocket.close", "code": 4001, "reason": "go away"})
        return
    if path == "/late":
        # Receives nothing for a while, then counts what came.
        await asyncio.sleep(3)
        total = 0
        while total < 100 << 20:
            message = await receive()
            total += len(message.get("bytes") or b"")
        await send({"type": "websocket.send", "text": str(total)})
        return
    if path == "/patient":
        # receive() given up on twice before a message comes.
        for _ in range(2):
            try:
                await asyncio.wait_for(receive(), 0.01)
            except asyncio.TimeoutError:
                await send({"type": "websocket.send", "text": "nothing yet"})
    if path == "/scope":
        await send({"type": "websocket.send", "text": repr(
            {k: scope[k] for k in ("scheme", "path", "query_string", "subprotocols", "http_version")})})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            note(f"disconnect {message['code']} {message.get('reason', '')!r}")
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})
