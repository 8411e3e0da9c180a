"""A 10 KB response body (WSGI `wsgi`, ASGI `asgi`): the cost of a response that no
longer fits in a small write, without any app work. `apps(size)` makes the pair
for another size (body1m.py)."""


def apps(size):
    """The WSGI and ASGI apps answering `size` bytes of b"x"."""
    body = b"x" * size
    headers = [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))]
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
    }
    done = {"type": "http.response.body", "body": body}

    def wsgi(environ, start_response):
        start_response("200 OK", headers)
        return [body]

    async def asgi(scope, receive, send):
        if scope["type"] != "http":
            return
        await send(start)
        await send(done)

    return wsgi, asgi


wsgi, asgi = apps(10240)
