"""Test apps that report what the server gave them."""

import json
import os
import sys
import threading
import time


def environ_app(environ, start_response):
    """Returns the environ's str/int/bool values as JSON, plus facts about wsgi.*."""
    out = {k: v for k, v in environ.items() if isinstance(v, (str, int, bool))}
    out["wsgi.version"] = list(environ["wsgi.version"])
    out["input_type"] = type(environ["wsgi.input"]).__name__
    out["errors_has_write"] = hasattr(environ["wsgi.errors"], "write")
    out["file_wrapper"] = environ["wsgi.file_wrapper"].__name__
    out["body"] = environ["wsgi.input"].read().decode("latin-1")
    body = json.dumps(out).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def echo(environ, start_response):
    """Echoes the body, read in the way the query string names."""
    inp = environ["wsgi.input"]
    how = environ.get("QUERY_STRING", "")
    if how == "readline":
        parts = []
        while True:
            line = inp.readline()
            if not line:
                break
            parts.append(line)
        data = b"".join(parts)
    elif how == "readline-limited":
        parts = []
        while True:
            line = inp.readline(5)
            if not line:
                break
            assert len(line) <= 5
            parts.append(line)
        data = b"".join(parts)
    elif how == "readlines":
        data = b"".join(inp.readlines())
    elif how == "iter":
        data = b"".join(line for line in inp)
    elif how == "chunks":
        parts = []
        while True:
            chunk = inp.read(1000)
            if not chunk:
                break
            assert len(chunk) <= 1000
            parts.append(chunk)
        # Every read but the last is whole.
        assert all(len(p) == 1000 for p in parts[:-1])
        data = b"".join(parts)
    elif how == "length":
        # One read of CONTENT_LENGTH gets the whole body, however it arrives.
        data = inp.read(int(environ["CONTENT_LENGTH"]))
    elif how == "ignore":
        data = b"ignored"
    else:
        data = inp.read()
    # read() at the end of the body returns b"".
    if how != "ignore":
        assert inp.read() == b""
        assert inp.read(10) == b""
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(data)))])
    return [data]


def download(environ, start_response):
    """A body of the size in the query string, as generated chunks of 64 KiB."""
    size = int(environ["QUERY_STRING"] or "0")
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    block = bytes(range(256)) * 256

    def gen():
        left = size
        while left > 0:
            n = min(left, len(block))
            yield block[:n]
            left -= n

    return gen()


def generator(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b""
    yield b"hello "
    yield b""
    yield b"world"


def lazy_start(environ, start_response):
    """Calls start_response only when iterated, which PEP 3333 allows."""
    def gen():
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"lazy"
    return gen()


def write_callable(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"written ")
    return [b"returned"]


def raises(environ, start_response):
    raise RuntimeError("boom from the app")


def raises_after_start(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])

    def gen():
        yield b"partial"
        raise RuntimeError("boom in the middle")

    return gen()


def exc_info_before_head(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    try:
        raise ValueError("caught")
    except ValueError:
        start_response("500 Oops", [("Content-Type", "text/plain")], sys.exc_info())
    return [b"replaced"]


def exc_info_after_head(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])

    def gen():
        yield b"first"
        try:
            raise ValueError("late")
        except ValueError:
            start_response("500 Oops", [], sys.exc_info())
        yield b"never"

    return gen()


def second_start_response(environ, start_response):
    start_response("200 OK", [])
    start_response("200 OK", [])
    return [b"x"]


def not_bytes(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return ["a str, not bytes"]


def not_bytes_later(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])

    def gen():
        yield b"ok"
        yield 42

    return gen()


def bad_header(environ, start_response):
    kind = environ["QUERY_STRING"]
    headers = {
        "crlf": [("X-Bad", "a\r\nInjected: yes")],
        "nul": [("X-Bad", "a\x00b")],
        "name": [("Bad Name", "v")],
        "hop": [("Transfer-Encoding", "chunked")],
        "upgrade": [("Upgrade", "h2c")],
        "type": [("X-Num", 5)],
        "status": None,
    }[kind]
    if headers is None:
        start_response("OK", [])
    else:
        start_response("200 OK", headers)
    return [b"must not be sent"]


def no_start_response(environ, start_response):
    return [b"nothing"]


CLOSED = []


class Tracked:
    """An iterable that records close() calls in a file named by the query."""

    def __init__(self, path, chunks):
        self.path = path
        self.chunks = chunks

    def __iter__(self):
        return iter(self.chunks)

    def close(self):
        with open(self.path, "a") as f:
            f.write("closed\n")


def tracked(environ, start_response):
    path = environ["HTTP_X_CLOSE_FILE"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    size = int(environ.get("QUERY_STRING") or "5")
    return Tracked(path, [b"x" * size])


def tracked_raises(environ, start_response):
    path = environ["HTTP_X_CLOSE_FILE"]
    start_response("200 OK", [("Content-Type", "text/plain")])

    class Failing(Tracked):
        def __iter__(self):
            yield b"a"
            raise RuntimeError("fails while iterating")

    return Failing(path, [])


def head_info(environ, start_response):
    body = b"0123456789"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


def status(environ, start_response):
    code = environ["QUERY_STRING"]
    start_response(f"{code} Whatever", [("Content-Type", "text/plain")])
    return [b"body"] if code not in ("204", "304") else []


def close_header(environ, start_response):
    start_response("200 OK", [("Content-Length", "2"), ("Connection", "close")])
    return [b"ok"]


def file_wrapper(environ, start_response):
    path = environ["QUERY_STRING"]
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return environ["wsgi.file_wrapper"](open(path, "rb"), 4096)


def errors_stream(environ, start_response):
    environ["wsgi.errors"].write("message to wsgi.errors\n")
    environ["wsgi.errors"].flush()
    start_response("200 OK", [])
    return [b"logged"]


_released = threading.Event()
_barrier = threading.Barrier(4)


def _stream_until_released():
    yield b"first;"
    yield b"released" if _released.wait(30) else b"timed out"


# What /hash hashes: a few milliseconds of a CPU.
_HASHED = bytes(2 << 20)

# A body large enough that turbo sends it from the object's own memory.
_LENT = b"x" * 65536


def _hog(environ):
    """Holds the interpreter's GIL, computing, until the first byte of the file
    named by the query string is no longer 0 (or for at most 30 s): the switch
    interval is raised so that no other thread of the interpreter runs
    meanwhile, and the loop makes no system call, which would let the GIL go."""
    import mmap
    with open(environ["QUERY_STRING"], "rb") as f:
        flag = mmap.mmap(f.fileno(), 1, prot=mmap.PROT_READ)
    environ["wsgi.errors"].write("hogging\n")
    environ["wsgi.errors"].flush()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1000)
    try:
        deadline = time.monotonic() + 30
        while flag[0] == 0 and time.monotonic() < deadline:
            pass
    finally:
        sys.setswitchinterval(interval)
        flag.close()


def blocker(environ, start_response):
    """/wait blocks its thread until /release, and /stream does the same between
    two chunks of its body; /meet returns only once four
    calls are inside the app together; /hash computes without the GIL and
    /sleep?SECONDS sleeps; anything else answers at once."""
    path = environ["PATH_INFO"]
    if path == "/wait":
        environ["wsgi.errors"].write("waiting\n")
        environ["wsgi.errors"].flush()
        body = b"released" if _released.wait(30) else b"timed out"
    elif path == "/meet":
        try:
            _barrier.wait(20)
            body = b"met"
        except threading.BrokenBarrierError:
            body = b"alone"
    elif path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _stream_until_released()
    elif path == "/release":
        _released.set()
        body = b"ok"
    elif path == "/hog":
        _hog(environ)
        body = b"hogged"
    elif path == "/lend":
        body = _LENT
    elif path == "/big":
        # More than the kernel's socket buffers hold.
        body = bytes(16 << 20)
    elif path == "/refs":
        body = str(sys.getrefcount(_LENT)).encode()
    elif path == "/hash":
        # Computing without the GIL (hashlib lets it go for large data).
        import hashlib
        body = hashlib.sha256(_HASHED).hexdigest().encode()
    elif path == "/sleep":
        time.sleep(float(environ["QUERY_STRING"]))
        body = b"slept"
    else:
        body = b"fast"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


def print_app(environ, start_response):
    """Prints the query string to standard output."""
    print(f"printed: {environ['QUERY_STRING']}", flush=True)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"printed"]


def osenv_app(environ, start_response):
    """Returns the process environment variable named by the query string."""
    value = os.environ.get(environ["QUERY_STRING"], "<unset>")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [value.encode()]


def factory(greeting="hi"):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [greeting.encode()]
    return app
