"""A WSGI app whose responses vary by path, for comparing access logs."""


def app(environ, start_response):
    path = environ["PATH_INFO"]
    status = "404 Not Found" if path.startswith("/missing") else "200 OK"
    body = environ["wsgi.input"].read() or f"path={path}".encode()
    start_response(status, [("Content-Type", "text/plain"), ("X-Served", "yes"),
                            ("Content-Length", str(len(body)))])
    return [body]


async def asgi(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 201, "headers": [(b"x-served", b"asgi")]})
    await send({"type": "http.response.body", "body": b"created"})
