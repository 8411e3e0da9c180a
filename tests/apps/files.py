"""Files sent through wsgi.file_wrapper. The query string names the file; headers
steer the rest. The file object counts its read() calls in /reads, so a test can
tell a file that went out by sendfile (never read by Python) from one iterated."""

import io
import os

READS = {"n": 0}


class CountingFile(io.FileIO):
    """A real file whose reads through Python are counted."""

    def read(self, size=-1):
        READS["n"] += 1
        return super().read(size)


class NoDescriptor:
    """A file-like object without fileno(): it can only be iterated."""

    def __init__(self, data):
        self.buf = io.BytesIO(data)

    def read(self, size=-1):
        READS["n"] += 1
        return self.buf.read(size)


def app(environ, start_response):
    if environ["PATH_INFO"] == "/reads":
        body = str(READS["n"]).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    path = environ["QUERY_STRING"]
    headers = [("Content-Type", "application/octet-stream")]
    if "HTTP_X_LENGTH" in environ:
        headers.append(("Content-Length", environ["HTTP_X_LENGTH"]))
    start_response("200 OK", headers)
    if environ["PATH_INFO"] == "/nofileno":
        with open(path, "rb") as f:
            filelike = NoDescriptor(f.read())
    else:
        filelike = CountingFile(path, "r")
        filelike.seek(int(environ.get("HTTP_X_SEEK", "0")))
    return environ["wsgi.file_wrapper"](filelike, 65536)
