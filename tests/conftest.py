"""Starts the real turbo on a free loopback port, with the test apps in
tests/apps, and stops it after the test. TURBO_BIN names the command; by
default it is the `turbo` that pip installed into the virtualenv running
pytest, whose Python then hosts it."""

import http.client
import os
import re
import socket
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from postgres import Postgres

APPS = Path(__file__).resolve().parent / "apps"
BIN = os.path.abspath(os.environ.get("TURBO_BIN", str(Path(sys.prefix) / "bin" / "turbo")))
START_TIMEOUT = 30
# TURBO_THREADS=N runs every server with --threads N (unless a test sets it),
# so the same tests cover responses made on a shard's Python threads.
THREADS = int(os.environ.get("TURBO_THREADS", "1"))
# TURBO_IO_ENGINE=epoll runs every server on the epoll engine instead.
IO_ENGINE = os.environ.get("TURBO_IO_ENGINE")
# TURBO_ISOLATION=MODE runs every server with --isolation MODE, unless a test
# sets it or asks for the default (default_isolation=True). The suite's own
# virtualenv holds modules that refuse sub-interpreters (pydantic-core,
# PyYAML), so without it auto would serve every test from processes.
ISOLATION = os.environ.get("TURBO_ISOLATION")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30):
    """Waits, for `timeout` seconds at most, until something accepts on the
    loopback port: for servers started outside `Turbo` (the real Gunicorn)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on port {port}"
            time.sleep(0.05)


class Turbo:
    """A running turbo process whose error log is collected line by line."""

    def __init__(
        self, app, *args, env=None, cwd=APPS, wait=True, prefix=(), pass_fds=(), port=None,
        command=None, default_isolation=False,
    ):
        self.port = port or free_port()
        self.lines = []
        self.cond = threading.Condition()
        full_env = dict(os.environ)
        full_env.pop("PORT", None)
        full_env.update(env or {})
        cmd = [*prefix, *(command or [BIN]), *([app] if app else []), "--bind", f"127.0.0.1:{self.port}", *args]
        if not any(a.startswith("--cores") or a == "-w" for a in args):
            cmd += ["--cores", "1"]
        if THREADS != 1 and "--threads" not in args:
            cmd += ["--threads", str(THREADS)]
        if IO_ENGINE and "--io-engine" not in args:
            cmd += ["--io-engine", IO_ENGINE]
        if ISOLATION and not default_isolation and not any(a.startswith("--isolation") for a in args):
            cmd += ["--isolation", ISOLATION]
        self.proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=pass_fds,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if wait:
            self.wait_for("Ready:", START_TIMEOUT)

    def _read(self):
        for raw in self.proc.stdout:
            with self.cond:
                self.lines.append(raw.decode("utf-8", "replace"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    @property
    def log(self):
        with self.cond:
            return "".join(self.lines)

    def wait_for(self, pattern, timeout=10):
        """Returns the first log line matching `pattern`, waiting for it for at
        most `timeout` seconds."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = next((line for line in self.lines if regex.search(line)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self.reader.is_alive()):
                    raise AssertionError(f"no log line matching {pattern!r}; log:\n{self.log}")
                self.cond.wait(min(left, 0.2))

    def wait_for_count(self, pattern, count, timeout=10):
        """Waits until `count` log lines match `pattern`."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while sum(1 for line in self.lines if regex.search(line)) < count:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"fewer than {count} lines matching {pattern!r}; log:\n{self.log}")
                self.cond.wait(min(left, 0.2))

    def wait_exit(self, timeout=30):
        code = self.proc.wait(timeout)
        self.reader.join(5)
        return code

    def url(self, path="/"):
        return f"http://127.0.0.1:{self.port}{path}"

    def connect(self, timeout=10):
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(5)


# What the supervisor logs when a worker died in a way nobody asked for, and
# what a Rust panic prints. The supervisor replaces such a worker within
# milliseconds, so without reading the log a test would pass anyway.
WORKER_DEATH = re.compile(
    r"Worker \(pid:\d+\) was sent SIG|Worker \(pid:\d+\) exited with code|"
    r"WORKER TIMEOUT|panicked at|fatal runtime error"
)


def worker_deaths(log):
    """The log lines that say a worker died unexpectedly."""
    return [line for line in log.splitlines() if WORKER_DEATH.search(line)]


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "worker_deaths: the test kills or crashes workers on purpose, so the "
        "turbo fixture does not fail it for deaths in the log",
    )


@pytest.fixture
def turbo(request):
    """turbo(app, *flags) starts a server; all are stopped after the test.
    A test whose server logged a worker's unexpected death fails, unless it
    is marked `worker_deaths`."""
    started = []

    def start(app, *args, **kwargs):
        server = Turbo(app, *args, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
    if request.node.get_closest_marker("worker_deaths") is None:
        for server in started:
            deaths = worker_deaths(server.log)
            assert not deaths, "a worker died during the test:\n" + "\n".join(deaths)


@pytest.fixture(scope="session")
def venv_with(tmp_path_factory):
    """venv_with(*requirements) is the turbo command of a virtualenv of this
    Python that holds turbo and just those distributions with what they
    depend on ("psycopg[binary]" takes the extra), linked from the suite's
    virtualenv: an app's own environment, without the suite's other modules
    (some of which refuse sub-interpreters)."""
    import importlib.metadata
    import sysconfig

    from packaging.requirements import Requirement

    made = {}

    def closure(requirements):
        """The distributions `requirements` need, with their extras."""
        extras, dists, todo = {}, {}, [Requirement(r) for r in requirements]
        while todo:
            req = todo.pop()
            name = req.name.lower().replace("_", "-")
            if name in extras and req.extras <= extras[name]:
                continue
            dist = dists.setdefault(name, importlib.metadata.distribution(req.name))
            extras[name] = extras.get(name, set()) | req.extras
            envs = [{"extra": e} for e in ("", *extras[name])]
            for dep in map(Requirement, dist.requires or ()):
                if dep.marker is None or any(dep.marker.evaluate(env) for env in envs):
                    todo.append(dep)
        return dists.values()

    def make(*requirements):
        if requirements not in made:
            root = tmp_path_factory.mktemp("venv")
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
            site = Path(sysconfig.get_path("purelib", vars={"base": str(root), "platbase": str(root)}))
            for dist in closure(["turbo-server", *requirements]):
                tops = {f.parts[0] for f in dist.files or () if f.parts[0] != ".."}
                for top in tops:
                    if not (site / top).exists():
                        (site / top).symlink_to(dist.locate_file(top))
            made[requirements] = [str(root / "bin" / "python"), "-m", "turbo"]
        return made[requirements]

    return make


@pytest.fixture(scope="session")
def postgres():
    """The session's PostgreSQL server, stopped at the end even when tests fail."""
    server = Postgres()
    try:
        yield server
    finally:
        server.stop()


def wait_for_file(path, limit=20, text=None):
    """Waits, with a bound, for a file an app writes to mark an event (and,
    given text, for the file to hold exactly that)."""
    deadline = time.monotonic() + limit
    while True:
        found = Path(path).read_text() if os.path.exists(path) else None
        if found is not None and (text is None or found == text):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} holds {found!r} after {limit} s, not {text!r}")
        time.sleep(0.01)


def recv_all(sock, timeout=10):
    """Reads until the peer closes the connection."""
    sock.settimeout(timeout)
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


_LEFTOVER = weakref.WeakKeyDictionary()


def leftover(sock):
    """Bytes read_response read past the end of the last response."""
    return _LEFTOVER.get(sock, b"")


def read_response(sock, timeout=10):
    """Reads one response with a Content-Length or chunked body from `sock`,
    keeping what follows it for the next call. Returns (status, headers dict
    with lower-case names, body, head)."""
    sock.settimeout(timeout)
    buf = _LEFTOVER.pop(sock, b"")
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"closed before a full head: {buf!r}")
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()

    def need(n):
        nonlocal rest
        while len(rest) < n:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed inside the body")
            rest += data

    if "content-length" in headers:
        n = int(headers["content-length"])
        need(n)
        body, rest = rest[:n], rest[n:]
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            while b"\r\n" not in rest:
                need(len(rest) + 1)
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            need(size + 2)
            body += rest[:size]
            rest = rest[size + 2 :]
            if size == 0:
                break
    else:
        body = rest + recv_all(sock)
        rest = b""
    _LEFTOVER[sock] = rest
    return status, headers, body, head


# The operations port (--metrics-bind), read as Prometheus reads it.
def ops_get(port, path, method="GET", timeout=10):
    """(status, body) of one request to the operations port."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def scrape(port):
    """/metrics parsed by prometheus_client: [(labels, value)] by sample name."""
    status, text = ops_get(port, "/metrics")
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples, name, **labels):
    """The sum of the samples of `name` whose labels include `labels`."""
    return sum(v for l, v in samples.get(name, []) if all(l.get(k) == w for k, w in labels.items()))
