"""Hostile and careless clients against the real binary. Each case asserts that
other connections are served while it runs and that the worker survives it
(the same pid before and after; the turbo fixture also fails a test whose log
shows a worker's death)."""

import http.client
import re
import socket
import time

import pytest

from conftest import read_response, recv_all

APPS = ["hostile:wsgi", "hostile:asgi"]


def get(server, path, timeout=5):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def pid(server, timeout=5):
    """The worker's pid, asked over a fresh connection that must be answered
    within `timeout` seconds."""
    status, body = get(server, "/pid", timeout)
    assert status == 200
    return int(body.split()[0])


def answered_at_once(server, worker):
    """A fresh connection is answered within a second, by the same worker."""
    started = time.monotonic()
    assert pid(server, timeout=2) == worker
    assert time.monotonic() - started < 1


def rss_kib(process):
    """The resident memory of a process, in KiB."""
    with open(f"/proc/{process}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def drain(sock, limit=20):
    """Reads until the server closes, for at most `limit` seconds; the bytes
    read."""
    deadline = time.monotonic() + limit
    total = 0
    sock.settimeout(1)
    while time.monotonic() < deadline:
        try:
            data = sock.recv(1 << 20)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return total
        if not data:
            return total
        total += len(data)
    raise AssertionError(f"the server kept the connection open past {limit} s")


@pytest.mark.parametrize("app", APPS)
def test_a_reader_that_stops_costs_only_its_connection(turbo, app):
    # A fresh 64 MiB body is lent to the kernel; the client takes 100 bytes
    # and stops. At the stall limit the write is cancelled and the lent object
    # released: that used to crash the worker (SIGSEGV, a decref with no
    # thread state attached).
    server = turbo(app, "--send-timeout", "2", "--log-level", "debug")
    before = pid(server)
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", server.port))
    slow.sendall(b"GET /big?mb=64 HTTP/1.1\r\nHost: x\r\n\r\n")
    slow.settimeout(10)
    assert slow.recv(100)
    for _ in range(3):
        assert pid(server, timeout=2) == before
    server.wait_for("took no bytes for 2 s", timeout=20)
    assert drain(slow) < 64 << 20
    slow.close()
    assert pid(server) == before
    # The same again: the worker is still whole.
    assert get(server, "/big?mb=1")[1] == b"x" * (1 << 20)


def start_with_dead_log(app, *args):
    """Starts turbo with standard output and error on a pipe whose reader is
    already gone, as under `turbo app:app 2>&1 | head -1` once head exits."""
    import os
    import subprocess
    import sys

    from conftest import APPS, BIN, free_port

    read_end, write_end = os.pipe()
    os.close(read_end)
    port = free_port()
    env = dict(os.environ)
    try:
        proc = subprocess.Popen(
            [BIN, app, "--bind", f"127.0.0.1:{port}", "--cores", "1", *args],
            cwd=APPS,
            env=env,
            stdout=write_end,
            stderr=write_end,
        )
    finally:
        os.close(write_end)
    return proc, port


def test_a_failed_boot_with_a_dead_log_pipe_exits_with_code_4():
    # The worker used to panic writing the traceback (SIGABRT) instead of
    # exiting with 4, so the supervisor never halted: a fork loop.
    proc, _ = start_with_dead_log("broken:app")
    try:
        assert proc.wait(30) == 4
    finally:
        proc.kill()
        proc.wait()


def test_a_dead_log_pipe_costs_log_lines_not_requests():
    import subprocess

    from conftest import wait_port

    proc, port = start_with_dead_log("hostile:wsgi", "--access-logfile", "-", "--log-level", "debug")
    try:
        wait_port(port)

        class At:
            pass

        server = At()
        server.port = port
        before = pid(server)
        for _ in range(200):
            assert pid(server) == before
        assert proc.poll() is None
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_log_pipe_nobody_reads_never_blocks_a_shard(turbo, tmp_path):
    # The access log goes to a pipe that is never read: once the pipe's
    # buffer (64 KiB) is full, writing a line would block. The worker's log
    # thread queues up to 8192 lines, further lines are dropped and counted,
    # and every request is still answered at once.
    import os

    read_end, write_end = os.pipe()
    try:
        server = turbo(
            "hostile:wsgi",
            "--access-logfile",
            f"/dev/fd/{write_end}",
            pass_fds=(write_end,),
        )
        before = pid(server)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        requests, queued = 10000, 8192
        for _ in range(requests):
            conn.request("GET", "/pid?" + "q" * 200)
            resp = conn.getresponse()
            assert resp.status == 200
            assert int(resp.read().split()[0]) == before
        conn.close()
        server.stop()
        # What the pipe took at once (about 230 lines of 280 bytes) and what
        # the queue held were not dropped; the rest were, and said so as the
        # worker left (a few error-log lines may have been dropped too).
        dropped = [int(n) for n in re.findall(r"(\d+) log line\(s\) could not be written", server.log)]
        assert len(dropped) == 1
        assert requests - queued - 300 <= dropped[0] <= requests - queued + 20
    finally:
        os.close(read_end)
        os.close(write_end)


@pytest.mark.parametrize("app", APPS)
def test_a_slow_upload_costs_only_its_connection(turbo, app):
    # 70 KB at once, then a byte a second for longer than --timeout. The body
    # is read through the ring (or, with --threads, on the app's own thread,
    # whose busy clock each byte restarts): no other request waits for it, and
    # the worker is not killed as stuck.
    server = turbo(app, "--timeout", "2")
    before = pid(server)
    up = server.connect()
    up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    up.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 70005\r\n\r\n" + b"a" * 70000)
    for _ in range(5):
        up.sendall(b"a")
        answered_at_once(server, before)
        time.sleep(1)  # the client's pace, not a synchronisation

    status, _, body, _ = read_response(up)
    assert (status, body) == (200, b"70005")
    up.close()
    assert pid(server) == before


def test_a_streamed_body_kept_past_its_request_reads_nothing(turbo):
    """With --threads, a large body streams to the app's thread. An app that
    keeps `wsgi.input` and reads it after its connection closed gets only what
    was already read for it: it never reads the socket, or the descriptor
    number, of a later client."""
    server = turbo("hostile:wsgi", "--threads", "3", "--cores", "1")
    worker = pid(server)
    first = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    first.sendall(b"POST /keep HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
    first.sendall(b"a" * 200_000)
    status, _, body, _ = read_response(first)
    assert (status, body) == (200, b"kept")
    # The body was not read to its end: the server closes this connection.
    first.shutdown(socket.SHUT_WR)
    drain(first)
    first.close()
    # A later client's upload, half sent, on what is likely the same
    # descriptor number in the worker.
    later = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    later.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 50000\r\n\r\n")
    later.sendall(b"b" * 10_000)
    # At most what was read before the app ran, of the kept request's own
    # body: never a byte of the later client's, and nothing from any socket.
    status, late = get(server, "/late")
    count, _, values = late.decode().partition(" ")
    assert status == 200 and values in ("", "a") and int(count) < 200_000, late
    later.sendall(b"b" * 40_000)
    status, _, body, _ = read_response(later)
    assert (status, body) == (200, b"50000")
    later.close()
    assert pid(server) == worker


@pytest.mark.parametrize("app", APPS)
def test_a_declared_body_over_the_limit_is_refused_before_the_app_runs(turbo, app):
    server = turbo(app, "--limit-request-body", "1000")
    with server.connect() as s:
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n")
        data = recv_all(s)
    assert data.startswith(b"HTTP/1.1 413 ")
    with server.connect() as s:
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n" + b"a" * 1000)
        data = recv_all(s)
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"\r\n\r\n1000")


@pytest.mark.parametrize("app", APPS)
def test_a_chunked_body_over_the_limit_is_refused(turbo, app):
    # With one thread a WSGI body is read before the app runs, so it never
    # sees it; an ASGI app that is reading it hears http.disconnect. 1000
    # bytes pass, the 1001st is refused.
    server = turbo(app, "--limit-request-body", "1000", "--threads", "1")
    with server.connect() as s:
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        s.sendall(b"3e8\r\n" + b"a" * 1000 + b"\r\n")
        # The app has the first 1000 bytes; the next chunk passes the limit.
        s.sendall(b"1\r\nb\r\n0\r\n\r\n")
        data = recv_all(s)
    assert data.startswith(b"HTTP/1.1 413 ")
    with server.connect() as s:
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        s.sendall(b"3e8\r\n" + b"a" * 1000 + b"\r\n0\r\n\r\n")
        data = recv_all(s)
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"\r\n\r\n1000")


def test_a_large_upload_is_spooled_and_arrives_whole(turbo):
    import os

    payload = os.urandom(5 << 20)
    server = turbo("echo:echo")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    for _ in range(2):
        conn.request("POST", "/", body=payload)
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.read() == payload
    conn.close()


def test_asgi_values_uvicorn_accepts_are_accepted(turbo):
    server = turbo("asgi_values:app")
    status, headers, body = fetch(server, "/lists")
    assert (status, headers.get("x-list"), body) == (200, "yes", b"ok")
    status, headers, body = fetch(server, "/bytes-like")
    assert (status, headers.get("x-array"), body) == (200, "view", b"from a memoryview")
    assert fetch(server, "/bytearray")[::2] == (200, b"from a bytearray")


@pytest.mark.parametrize("path", ["/none-body", "/str-body", "/bad-pair", "/int-header", "/reenter"])
def test_wrong_asgi_values_fail_their_request_only(turbo, path):
    # Each raises a TypeError or RuntimeError in the app (a 500), on both
    # shards: a wrong type must not go through a pyo3 cache that another
    # interpreter filled, and a re-entered send() must not abort the worker.
    server = turbo("asgi_values:app", "--cores", "2")
    threads = set()
    for _ in range(40):
        assert fetch(server, path)[0] == 500
        threads.add(fetch(server, "/thread")[2])
        if len(threads) == 2:
            break
    assert len(threads) == 2, threads
    assert fetch(server, "/lists")[0] == 200
    assert "Traceback" in server.log


def fetch(server, path):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize("app", APPS)
def test_a_request_stuck_in_python_costs_one_request_not_the_worker(turbo, app):
    # `while True: pass` past --timeout: the watchdog raises TimeoutError in
    # the stuck thread, the request gets a 500, and the worker (every shard's
    # connections) lives on.
    server = turbo(app, "--timeout", "1", "--cores", "2")
    if "(main interpreter)" in server.log:
        pytest.skip("no sub-interpreters on this Python: the worker is the shard")
    before = pid(server)
    kept = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    kept.request("GET", "/pid")
    assert kept.getresponse().read()
    started = time.monotonic()
    status, _ = get(server, "/spin", timeout=15)
    assert status == 500
    assert time.monotonic() - started < 4
    server.wait_for("ran past --timeout")
    assert "TimeoutError" in server.log
    assert pid(server) == before
    kept.request("GET", "/pid")
    assert int(kept.getresponse().read().split()[0]) == before
    kept.close()


def test_worker_connections_caps_a_shard_and_leaves_the_rest_in_the_backlog(turbo):
    server = turbo("hostile:wsgi", "--worker-connections", "10", "--keep-alive", "30")
    held = []
    for _ in range(10):
        s = server.connect()
        s.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s)[0] == 200
        held.append(s)
    server.wait_for("10 connections \\(worker_connections\\)")
    waiting = server.connect()
    waiting.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
    waiting.settimeout(1)
    with pytest.raises(socket.timeout):
        waiting.recv(1)
    # One held connection ends: the waiting one is accepted and answered,
    # never reset.
    held.pop().close()
    assert read_response(waiting, timeout=10)[0] == 200
    for s in held + [waiting]:
        s.close()


def test_a_slowloris_crowd_is_closed_at_the_header_timeout(turbo):
    # 2000 connections each send part of a head and then one byte now and
    # then; a normal client is answered at once throughout, and the crowd is
    # closed (408) once the header timeout passes.
    server = turbo("hostile:wsgi", "--header-timeout", "3", "--worker-connections", "5000")
    before = pid(server)
    crowd = []
    for _ in range(2000):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        crowd.append(s)
    started = time.monotonic()
    for s in crowd[::50]:
        s.sendall(b"X")
        answered_at_once(server, before)
    closed = 0
    deadline = time.monotonic() + 20
    for s in crowd:
        s.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            data = s.recv(4096)
        except (socket.timeout, ConnectionResetError):
            data = None
        if data is not None and (data == b"" or data.startswith(b"HTTP/1.1 408")):
            closed += 1
        s.close()
    assert closed == 2000
    assert time.monotonic() - started >= 2
    assert pid(server) == before


def test_thousands_of_idle_keep_alive_connections_cost_nobody_else(turbo):
    server = turbo("hostile:wsgi", "--keep-alive", "60", "--worker-connections", "6000")
    before = pid(server)
    idle = []
    for _ in range(5000):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        s.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s)[0] == 200
        idle.append(s)
    answered_at_once(server, before)
    # Each idle connection still serves its next request.
    for s in idle[::100]:
        s.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s)[0] == 200
    for s in idle:
        s.close()
    assert pid(server) == before


def test_a_pipelining_client_that_does_not_read_gets_backpressure(turbo):
    import threading

    server = turbo("hostile:wsgi")
    before = pid(server)
    # 30000 requests of 1 KB for 2 KB each: more than loopback's socket
    # buffers hold either way.
    n = 30000
    flood = server.connect(timeout=30)
    request = b"GET /pad?2000 HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 1000 + b"\r\n\r\n"
    sent = threading.Event()

    def send_all():
        flood.sendall(request * n)
        sent.set()

    sender = threading.Thread(target=send_all, daemon=True)
    sender.start()
    # While the flood goes unread, the server stops reading it (its socket
    # buffers fill): the send cannot finish, and others are served.
    rss_before = rss_kib(before)
    assert not sent.wait(2)
    for _ in range(5):
        assert pid(server, timeout=2) == before
    # 32 MB of requests and 60 MB of responses: the server holds few of them.
    assert rss_kib(before) - rss_before < 32 * 1024
    # Once the client reads, every request is answered.
    answered = 0
    while answered < n:
        status, _, _, _ = read_response(flood, timeout=30)
        assert status == 200
        answered += 1
    assert sent.wait(30)
    flood.close()
    assert pid(server) == before


def test_a_large_head_dribbled_in_small_pieces_is_served(turbo):
    # 700 KB of header fields, 100 bytes at a time: the head scan looks at
    # each byte once, so the shard stays responsive and the request is served.
    server = turbo("hostile:wsgi", "--header-timeout", "60")
    before = pid(server)
    fields = b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 7800) for i in range(90))
    head = b"GET /pid HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n"
    assert len(head) > 700_000
    s = server.connect(timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(0, len(head), 100):
        s.sendall(head[i : i + 100])
        if i % 100_000 == 0:
            assert pid(server, timeout=2) == before
    status, _, body, _ = read_response(s, timeout=30)
    assert status == 200 and int(body.split()[0]) == before
    s.close()


@pytest.mark.parametrize(
    "flag, request_",
    [
        ("--limit-request-line", b"GET /" + b"a" * 8000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("--limit-request-fields", b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(500)) + b"\r\n"),
        ("--limit-request-field_size", b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n"),
    ],
)
def test_gunicorns_zero_limits(turbo, flag, request_):
    # 0 is Gunicorn's: a request line of 8190, 32768 fields, no limit on one
    # field. Each of these requests is over the default.
    server = turbo("hostile:wsgi", flag, "0")
    with server.connect() as s:
        s.sendall(request_)
        assert read_response(s)[0] == 200
    default = turbo("hostile:wsgi")
    with default.connect() as s:
        s.sendall(request_)
        assert read_response(s)[0] in (414, 431)
