"""A 1 MiB response body made in memory (WSGI `wsgi`, ASGI `asgi`): what writing a
large bytes object costs, where a server copies it or sends it from the
object's own buffer."""

BODY = b"x" * (1 << 20)
HEADERS = [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(BODY)))]


def wsgi(environ, start_response):
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
    await send(START)
    await send(DONE)
