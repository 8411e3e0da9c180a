"""A 10 KB response body (WSGI `wsgi`, ASGI `asgi`): the cost of a response that no
longer fits in a small write, without any app work."""

BODY = b"x" * 10240
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


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
