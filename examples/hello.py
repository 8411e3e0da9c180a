"""The smallest WSGI app: `turbo hello:app` serves it."""


def app(environ, start_response):
    body = b"Hello from turbo!\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
