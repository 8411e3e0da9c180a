"""The Python half of turbo's WSGI bridge, executed once in every interpreter.

Only what is simpler or faster in Python lives here: wsgi.input for bodies
that stream from the socket and for requests without one, start_response,
wsgi.file_wrapper and wsgi.errors. The Rust side holds references to these objects per shard.
"""

import sys


class StartResponse:
    """start_response, with PEP 3333's exc_info rules. Rust reads status and
    headers after the app returns, and sets `sent` once the head is on the wire."""

    __slots__ = ("status", "headers", "sent", "writes")

    def __init__(self):
        self.status = None
        self.headers = None
        self.sent = False
        self.writes = None

    def __call__(self, status, headers, exc_info=None):
        if exc_info is not None:
            try:
                if self.sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response() called a second time without exc_info")
        if type(status) is not str:
            raise TypeError(f"status must be str, not {type(status).__name__}")
        if type(headers) is not list:
            raise TypeError(f"headers must be a list, not {type(headers).__name__}")
        self.status = status
        self.headers = headers
        return self.write

    def write(self, data):
        """The legacy write() callable: data goes out before the returned iterable."""
        if self.status is None:
            raise AssertionError("write() called before start_response()")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"write() argument must be bytes, not {type(data).__name__}")
        if self.writes is None:
            self.writes = []
        self.writes.append(bytes(data))


class Input:
    """wsgi.input for a body that streams from the socket. `pull(n)` is a Rust
    function returning at most n body bytes, b"" at the end of the body."""

    __slots__ = ("_pull", "_buf", "_eof")

    CHUNK = 65536

    def __init__(self, pull, initial=b""):
        self._pull = pull
        self._buf = initial
        self._eof = False

    def _fill(self, want):
        # Pieces are joined once: growing one bytes object piece by piece
        # copies a large body over and over.
        have = len(self._buf)
        if self._eof or have >= want:
            return
        parts = [self._buf]
        while have < want:
            data = self._pull(max(want - have, self.CHUNK))
            if not data:
                self._eof = True
                break
            parts.append(data)
            have += len(data)
        self._buf = b"".join(parts)

    def read(self, size=-1):
        if size is None or size < 0:
            parts = [self._buf]
            self._buf = b""
            while not self._eof:
                data = self._pull(self.CHUNK)
                if not data:
                    self._eof = True
                parts.append(data)
            return b"".join(parts)
        # As Gunicorn's: `size` bytes unless the body ends first, since apps
        # read(CONTENT_LENGTH) and expect the whole body.
        self._fill(size)
        data, self._buf = self._buf[:size], self._buf[size:]
        return data

    def readline(self, size=-1):
        if size is None:
            size = -1
        while True:
            end = self._buf.find(b"\n")
            if end >= 0 and (size < 0 or end < size):
                end += 1
                break
            if 0 <= size <= len(self._buf) or self._eof:
                end = len(self._buf) if size < 0 else min(size, len(self._buf))
                break
            data = self._pull(self.CHUNK)
            if not data:
                self._eof = True
            self._buf += data
        line, self._buf = self._buf[:end], self._buf[end:]
        return line

    def readlines(self, hint=-1):
        lines = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self):
        return self

    def __next__(self):
        line = self.readline()
        if not line:
            raise StopIteration
        return line


class EmptyInput:
    """wsgi.input for a request without a body. It holds no state, so one
    object serves every such request of the interpreter."""

    __slots__ = ()

    def read(self, size=-1):
        return b""

    def readline(self, size=-1):
        return b""

    def readlines(self, hint=-1):
        return []

    def readable(self):
        return True

    def __iter__(self):
        return iter(())


class FileWrapper:
    """wsgi.file_wrapper: iterates a file-like object in blocks."""

    def __init__(self, filelike, blksize=8192):
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self):
        return self

    def __next__(self):
        data = self.filelike.read(self.blksize)
        if data:
            return data
        raise StopIteration


class Errors:
    """wsgi.errors: text written here goes to turbo's error log (stderr)."""

    def write(self, text):
        sys.stderr.write(text)

    def writelines(self, lines):
        for line in lines:
            sys.stderr.write(line)

    def flush(self):
        sys.stderr.flush()
