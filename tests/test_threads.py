"""--threads: a shard keeps serving while app calls block on I/O.

The blocked calls wait on events, not clocks: a test fails by a call finishing
in the wrong order, never by being slow."""

import concurrent.futures
import signal
import socket
import threading
import time

import httpx

from conftest import free_port, read_response, scrape, total


def blocked(srv, pool, n):
    """Starts n calls that block in the app until /release; returns their
    futures once all n are inside the app."""
    calls = [pool.submit(httpx.get, srv.url("/wait"), timeout=60) for _ in range(n)]
    srv.wait_for_count("waiting", n, timeout=10)
    return calls


def test_threads_keep_the_shard_responsive(turbo):
    srv = turbo("echo:blocker", "--threads", "4")
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        calls = blocked(srv, pool, 3)
        # The fourth thread answers while three calls are still blocked.
        assert httpx.get(srv.url("/now"), timeout=10).content == b"fast"
        assert not any(c.done() for c in calls)
        assert httpx.get(srv.url("/release"), timeout=10).content == b"ok"
        assert [c.result().content for c in calls] == [b"released"] * 3


def test_a_blocking_body_iterator_does_not_stall_the_shard(turbo):
    srv = turbo("echo:blocker", "--threads", "2")
    with srv.connect() as s:
        s.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(10)
        got = b""
        while b"first;" not in got:
            got += s.recv(4096)
        # The body's generator now waits for /release; the shard answers meanwhile.
        assert httpx.get(srv.url("/now"), timeout=10).content == b"fast"
        assert httpx.get(srv.url("/release"), timeout=10).content == b"ok"
        while not got.endswith(b"\r\n0\r\n\r\n"):
            got += s.recv(4096)
    assert got.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Transfer-Encoding: chunked\r\n" in got
    assert b"\r\n6\r\nfirst;\r\n8\r\nreleased\r\n0\r\n\r\n" in got


def test_blocked_calls_run_concurrently(turbo):
    # /meet returns only when four calls are inside the app at the same time.
    srv = turbo("echo:blocker", "--threads", "4")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: httpx.get(srv.url("/meet"), timeout=60).content, range(4)))
    assert results == [b"met"] * 4


def test_shard_parses_while_threads_are_busy(turbo):
    # Bad input is answered by the shard itself even when every thread is busy.
    srv = turbo("echo:blocker", "--threads", "2")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        calls = blocked(srv, pool, 2)
        with srv.connect() as s:
            s.sendall(b"GET / HTTP/9.9\r\nHost: x\r\n\r\n")
            status = read_response(s)[0]
        assert status == 505
        assert not any(c.done() for c in calls)
        srv.stop()  # nothing can release the blocked calls now


def test_multithread_flag_is_true_with_threads(turbo):
    srv = turbo("echo:environ_app", "--threads", "2")
    assert httpx.get(srv.url(), timeout=10).json()["wsgi.multithread"] is True


def test_the_shard_reads_and_writes_while_a_thread_holds_the_gil(turbo, tmp_path):
    """A Python thread that computes holds the interpreter's GIL for as long
    as the switch interval lets it (here, raised to 1000 s by the app). The
    shard's own thread needs no GIL to parse a request, to answer what it can
    answer itself, or to write a response a thread made, so those go on."""
    flag = tmp_path / "flag"
    flag.write_bytes(b"\0")
    srv = turbo("echo:blocker", "--threads", "2")
    size = 16 << 20
    with socket.socket() as reader, concurrent.futures.ThreadPoolExecutor(1) as pool:
        # A client that reads slowly: most of the 16 MiB stays with turbo.
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.settimeout(20)
        reader.connect(("127.0.0.1", srv.port))
        reader.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = reader.recv(1024)
            assert chunk, "the connection closed before the head"
            got += chunk
        hog = pool.submit(httpx.get, srv.url(f"/hog?{flag}"), timeout=60)
        try:
            srv.wait_for("hogging")
            with srv.connect() as s:
                s.sendall(b"GET / HTTP/9.9\r\nHost: x\r\n\r\n")
                assert read_response(s)[0] == 505
            head, _, body = got.partition(b"\r\n\r\n")
            assert f"Content-Length: {size}".encode() in head
            received = len(body)
            while received < size:
                chunk = reader.recv(1 << 20)
                assert chunk, "the connection closed inside the body"
                received += len(chunk)
            assert not hog.done(), "the GIL was let go before the shard wrote"
        finally:
            # In place: the app maps the file, and a shorter file would fault.
            with open(flag, "r+b") as f:
                f.write(b"\1")
        assert hog.result().content == b"hogged"


def test_a_lent_body_is_let_go_once_sent(turbo):
    """The shard thread drops the app's body after writing it, without the
    GIL; the reference goes before the next request runs."""
    srv = turbo("echo:blocker", "--threads", "2")
    before = httpx.get(srv.url("/refs"), timeout=10).text
    for _ in range(3):
        assert len(httpx.get(srv.url("/lend"), timeout=10).content) == 65536
    assert httpx.get(srv.url("/refs"), timeout=10).text == before


def test_worker_exit_runs_after_the_threads_in_process_mode(turbo, tmp_path):
    """In process mode the Python threads share the worker's main interpreter
    with its last hooks: each thread lets the GIL go as it ends, so
    worker_exit runs and the worker exits on SIGTERM."""
    log = tmp_path / "exit.log"
    conf = tmp_path / "c.py"
    conf.write_text(f"def worker_exit(server, worker):\n    open({str(log)!r}, 'a').write('worker_exit\\n')\n")
    srv = turbo("echo:blocker", "--threads", "4", "--isolation", "process", "-c", str(conf))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: httpx.get(srv.url("/meet"), timeout=60).content, range(4)))
    assert results == [b"met"] * 4
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.wait_exit(timeout=30) == 0
    assert log.read_text() == "worker_exit\n"


def test_the_pool_runs_fewer_at_once_while_its_requests_only_wait_for_a_cpu(turbo):
    """Requests that compute without the GIL, four at once on the shard's one
    CPU, only wait for that CPU: the pool steps down until one runs at a time
    (turbo_threads_limit), as the rate does not fall. At a limit of one, a
    request that stays in the app gives its place up: the others are still
    answered meanwhile. Requests that sleep step the limit back up to
    --threads."""
    ops = free_port()
    srv = turbo("echo:blocker", "--threads", "4", "--cores", "1", "--metrics-bind", f"127.0.0.1:{ops}")

    def limit():
        return total(scrape(ops), "turbo_threads_limit")

    def until(predicate, seconds=60):
        deadline = time.monotonic() + seconds
        while not predicate():
            assert time.monotonic() < deadline, f"the limit stayed at {limit()}"
            time.sleep(0.1)  # polling /metrics, bounded by the deadline

    assert limit() == 4
    path = ["/hash"]
    stop = threading.Event()
    answers = []

    def client():
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                answers.append(c.get(srv.url(path[0])).status_code)

    with concurrent.futures.ThreadPoolExecutor(9) as pool:
        clients = [pool.submit(client) for _ in range(8)]
        try:
            until(lambda: limit() == 1)
            # A request that stays in the app until /release.
            long = pool.submit(httpx.get, srv.url("/wait"), timeout=60)
            srv.wait_for_count("waiting", 1)
            assert httpx.get(srv.url("/now"), timeout=30).content == b"fast"
            assert not long.done()
            assert httpx.get(srv.url("/release"), timeout=30).content == b"ok"
            assert long.result().content == b"released"
            path[0] = "/sleep?0.02"
            until(lambda: limit() == 4)
        finally:
            stop.set()
        for c in clients:
            c.result()
    assert answers and set(answers) == {200}
