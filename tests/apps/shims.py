"""Answers with the file that turbo's shim was compiled as, read from a shim
class the app can reach: `wsgi.errors` for WSGI, the event loop's selector
for ASGI. A shim compiled by the supervisor must look the same to the app as
one a worker compiled itself."""

import asyncio


def wsgi(environ, start_response):
    errors = type(environ["wsgi.errors"])
    body = f"{errors.__module__} {errors.write.__code__.co_filename}".encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


async def asgi(scope, receive, send):
    if scope["type"] != "http":
        return
    selector = type(asyncio.get_running_loop()._selector)
    body = f"{selector.__module__} {selector.select.__code__.co_filename}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
