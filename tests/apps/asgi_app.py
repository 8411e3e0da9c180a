"""A raw ASGI 3 app exercising the protocol: scope, streamed request and
response bodies, disconnects, errors, invalid messages and lifespan state."""

import asyncio
import json
import sys


def note(text):
    print(text, file=sys.stderr, flush=True)


async def read_body(receive):
    body, chunks = b"", 0
    while True:
        message = await receive()
        assert message["type"] == "http.request", message
        body += message.get("body", b"")
        chunks += 1
        if not message.get("more_body", False):
            return body, chunks


async def respond(send, status, body, headers=()):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), *headers]})
    await send({"type": "http.response.body", "body": body})


async def lifespan(scope, receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            scope["state"]["greeting"] = "hello from lifespan"
            note("lifespan startup")
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            note("lifespan shutdown")
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(scope, receive, send)
    path = scope["path"]
    if path.startswith("/scope"):
        body, _ = await read_body(receive)
        shown = {k: v for k, v in scope.items() if k not in ("headers", "state")}
        shown["headers"] = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]]
        shown["types"] = {k: type(v).__name__ for k, v in scope.items()}
        shown["header_types"] = sorted({type(x).__name__ for pair in scope["headers"] for x in pair})
        for key in ("raw_path", "query_string"):
            shown[key] = scope[key].decode("latin-1")
        shown["client"] = scope["client"] and list(scope["client"])
        shown["server"] = list(scope["server"])
        shown["state"] = dict(scope["state"])
        return await respond(send, 200, json.dumps(shown).encode())
    if path == "/background":
        # Work the app leaves to the loop, then an answer at once: the loop
        # must run it although no other request comes.
        async def later(n):
            note(f"background task ran {n}")
        asyncio.get_running_loop().call_soon(note, f"background callback ran {scope['query_string'].decode()}")
        asyncio.create_task(later(scope["query_string"].decode()))
        return await respond(send, 200, b"scheduled")
    if path == "/echo":
        body, chunks = await read_body(receive)
        note(f"echo received {len(body)} bytes in {chunks} messages")
        return await respond(send, 200, body)
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(3):
            await send({"type": "http.response.body", "body": f"part{i};".encode(), "more_body": True})
            await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    if path == "/sleep":
        await read_body(receive)
        await asyncio.sleep(1)
        return await respond(send, 200, b"slept")
    if path == "/raise":
        raise ValueError("boom before the response")
    if path == "/raise-after":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise ValueError("boom after the head")
    if path == "/block":
        import time

        time.sleep(3600)  # blocks the whole event loop
    if path == "/nothing":
        return
    if path == "/invalid":
        errors = []
        for message in (
            {"type": "http.response.body", "body": b"x"},
            {"type": "http.response.start", "status": 200, "headers": [(b"bad name", b"v")]},
            {"type": "http.response.start", "status": 200, "headers": [(b"x", b"a\r\nb")]},
            {"type": "websocket.send", "text": "x"},
        ):
            try:
                await send(message)
            except (RuntimeError, TypeError) as e:
                errors.append(type(e).__name__)
        return await respond(send, 200, json.dumps(errors).encode())
    if path == "/disconnect":
        await read_body(receive)
        note("waiting for disconnect")
        message = await receive()
        note(f"received {message['type']}")
        try:
            await respond(send, 200, b"too late")
        except OSError as e:
            note(f"send raised {type(e).__name__} (an OSError)")
        return
    if path == "/poll-disconnect":
        # As Starlette's is_disconnected(): a receive() given up on at once.
        await read_body(receive)
        for _ in range(2):
            try:
                await asyncio.wait_for(receive(), 0.01)
                return await respond(send, 500, b"a message before the client left")
            except asyncio.TimeoutError:
                pass
        await respond(send, 200, b"still connected")
        note(f"after the polls: {(await receive())['type']}")
        return
    if path == "/file":
        await read_body(receive)
        name = scope["query_string"].decode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")]})
        await send({"type": "http.response.pathsend", "path": name})
        return
    if path == "/length":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"10")]})
        await send({"type": "http.response.body", "body": b"01234", "more_body": True})
        await send({"type": "http.response.body", "body": b"56789"})
        return
    await read_body(receive)
    await respond(send, 200, b"Hello, ASGI!")


class CallableApp:
    """An object whose __call__ is async is ASGI too."""

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            await respond(send, 200, b"from a callable object")


callable_app = CallableApp()


async def failing_startup(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "the database is down"})


async def no_lifespan(scope, receive, send):
    if scope["type"] != "http":
        raise RuntimeError("only http here")
    await respond(send, 200, b"no lifespan")


async def slow_startup(scope, receive, send):
    """Lifespan startup takes a while; requests must wait for it."""
    if scope["type"] == "lifespan":
        message = await receive()
        await asyncio.sleep(0.5)
        note("startup finished")
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    note("handled a request")
    await respond(send, 200, b"after startup")
