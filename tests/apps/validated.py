"""An app wrapped in wsgiref.validate, which asserts PEP 3333 on both sides."""

from wsgiref.validate import validator


def inner(environ, start_response):
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    payload = b"method=" + environ["REQUEST_METHOD"].encode() + b" body=" + body
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(payload)))])
    return [payload]


app = validator(inner)
