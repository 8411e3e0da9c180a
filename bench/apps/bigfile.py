"""A 1 MiB file (WSGI `wsgi`, ASGI `asgi`): what a server does for static-ish files.

The WSGI app hands the open file to `wsgi.file_wrapper` (so a server may use
sendfile), or iterates it where a server offers none. The ASGI app sends
`http.response.pathsend` where the scope's extensions offer it, else streams the
file in 64 KiB chunks. The `x-bench-via` header says which path was taken.

bench/run.py creates the file once in a temporary directory and names it in
$BENCH_FILE; run by hand, the app creates its own."""

import os
import tempfile

SIZE = 1 << 20
CHUNK = 64 << 10


def _default_file():
    path = os.path.join(tempfile.gettempdir(), "turbo-bench-1mib.bin")
    if not os.path.exists(path) or os.path.getsize(path) != SIZE:
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(os.urandom(SIZE))
        os.replace(tmp, path)  # atomic, should several workers race
    return path


PATH = os.environ.get("BENCH_FILE") or _default_file()
LENGTH = str(os.path.getsize(PATH))


def _iterate(f, block_size=CHUNK):
    with f:
        while chunk := f.read(block_size):
            yield chunk


def wsgi(environ, start_response):
    wrapper = environ.get("wsgi.file_wrapper")
    via = "file_wrapper" if wrapper else "iterate"
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", LENGTH),
                              ("X-Bench-Via", via)])
    f = open(PATH, "rb")
    return wrapper(f, CHUNK) if wrapper else _iterate(f)


async def asgi(scope, receive, send):
    if scope["type"] != "http":
        return
    pathsend = "http.response.pathsend" in (scope.get("extensions") or {})
    await send({
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"application/octet-stream"), (b"content-length", LENGTH.encode()),
                    (b"x-bench-via", b"pathsend" if pathsend else b"stream")],
    })
    if pathsend:
        await send({"type": "http.response.pathsend", "path": PATH})
        return
    with open(PATH, "rb") as f:
        while True:
            chunk = f.read(CHUNK)
            more = len(chunk) == CHUNK
            await send({"type": "http.response.body", "body": chunk, "more_body": more})
            if not more:
                break
