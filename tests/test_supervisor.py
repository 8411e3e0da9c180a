"""The supervisor keeps the service up: crashed and hung workers are replaced,
TERM drains, HUP and --max-requests swap workers without a failed request,
TTIN/TTOU resize, USR2 hands the sockets to a new supervisor."""

import concurrent.futures
import http.client
import os
import re
import signal
import sys
import threading
import time

import httpx
import pytest

from conftest import free_port, ops_get, read_response, scrape, total

OWN_GIL = sys.version_info >= (3, 12)


def get(srv, path="/", timeout=10):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def worker_pid(srv):
    status, body = get(srv)
    assert status == 200
    return int(body)


class Load:
    """Clients sending requests on fresh connections until stopped, counting
    every request and every failure."""

    def __init__(self, srv, clients=4):
        self.srv = srv
        self.sent = 0
        self.failures = []
        self.pids = set()
        self.lock = threading.Lock()
        self.running = True
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def client(self):
        while self.running:
            try:
                status, body = get(self.srv)
                ok = status == 200
            except Exception as e:  # noqa: BLE001 - every failure counts
                ok, body = False, repr(e).encode()
            with self.lock:
                self.sent += 1
                if ok:
                    self.pids.add(int(body))
                else:
                    self.failures.append(body)

    def wait_for_sent(self, n, timeout=30):
        deadline = time.monotonic() + timeout
        while self.sent < n:
            assert time.monotonic() < deadline, f"only {self.sent} requests sent"
            time.sleep(0.01)

    def stop(self):
        self.running = False
        for t in self.threads:
            t.join(30)


@pytest.mark.parametrize("path, exit_line", [
    ("/abort", "was sent SIGABRT!"),
    ("/segfault", "was sent SIGSEGV!"),
    ("/exit", "exited with code 3"),
])
@pytest.mark.worker_deaths
def test_a_dead_worker_is_logged_and_replaced(turbo, path, exit_line):
    srv = turbo("lifecycle:app")
    old = worker_pid(srv)
    start = time.monotonic()
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        get(srv, path)
    srv.wait_for(re.escape(f"Worker (pid:{old}) {exit_line}"))
    srv.wait_for_count("Ready:", 2)
    new = worker_pid(srv)
    print(f"{path}: serving again {time.monotonic() - start:.3f}s after the crash")
    assert new != old
    assert f"Replacing worker (pid:{old})" in srv.log
    assert re.search(rf"Started worker \(pid:{new}\)", srv.log)


@pytest.mark.worker_deaths
def test_a_worker_that_dies_while_booting_is_restarted_with_backoff_then_the_server_stops(turbo):
    # The app's import aborts the process, as a broken C extension does. The
    # supervisor used to start about 25 workers a second, forever.
    srv = turbo("aborts:app", wait=False)
    assert srv.wait_exit(60) == 3
    delays = [int(d) for d in re.findall(r"died while booting \(\d+ in a row\); the next starts in (\d+) ms", srv.log)]
    assert delays == [100, 200, 400, 800, 1600, 3200, 6400]
    assert srv.log.count("Booting worker with pid") == 8
    assert "8 workers in a row died while booting; stopping" in srv.log


@pytest.mark.worker_deaths
def test_in_process_mode_the_other_workers_keep_serving(turbo):
    srv = turbo("lifecycle:app", "--isolation", "process", "--cores", "2")
    assert srv.log.count("Booting worker with pid") == 2
    pids = set()
    while len(pids) < 2:
        pids.add(worker_pid(srv))
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    srv.wait_for(re.escape(f"Worker (pid:{victim}) was sent SIGKILL!"))
    survivor = (pids - {victim}).pop()
    srv.wait_for_count("Ready:", 2)
    seen = set()
    for _ in range(40):
        seen.add(worker_pid(srv))
        if len(seen) == 2:
            break
    assert survivor in seen and victim not in seen


@pytest.mark.worker_deaths
@pytest.mark.parametrize("threads", ["1", "2"])
def test_a_hung_worker_is_killed_after_timeout(turbo, threads):
    ops = free_port()
    srv = turbo("lifecycle:app", "--timeout", "1", "--threads", threads, "--metrics-bind", f"127.0.0.1:{ops}")
    old = worker_pid(srv)
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        get(srv, "/hang", timeout=30)
    assert f"WORKER TIMEOUT (pid:{old})" in srv.log
    srv.wait_for(re.escape(f"Worker (pid:{old}) was sent SIGABRT!"))
    srv.wait_for_count("Ready:", 2)
    assert worker_pid(srv) != old
    # The supervisor replaced it: liveness held, and the restart is counted.
    assert ops_get(ops, "/livez")[0] == 200
    samples = scrape(ops)
    assert total(samples, "turbo_worker_restarts_total", reason="timeout") == 1
    assert total(samples, "turbo_worker_restarts_total", reason="crash") == 0


def test_term_finishes_the_request_in_flight(turbo):
    srv = turbo("lifecycle:app")
    with srv.connect() as idle, srv.connect(timeout=30) as busy:
        idle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(idle)[0] == 200
        busy.sendall(b"GET /slow?2 HTTP/1.1\r\nHost: x\r\n\r\n")
        srv.wait_for("slow request started")
        srv.proc.send_signal(signal.SIGTERM)
        srv.wait_for("Worker exiting")
        status, headers, body, _ = read_response(busy, timeout=30)
        assert status == 200 and body.isdigit()
        assert headers["connection"] == "close"
        # The idle keep-alive connection was closed, not left to time out.
        idle.settimeout(10)
        assert idle.recv(100) == b""
    assert srv.wait_exit() == 0
    assert "Shutting down: Master" in srv.log


def test_int_exits_at_once(turbo):
    srv = turbo("lifecycle:app")
    with srv.connect(timeout=30) as busy:
        busy.sendall(b"GET /slow?60 HTTP/1.1\r\nHost: x\r\n\r\n")
        srv.wait_for("slow request started")
        srv.proc.send_signal(signal.SIGINT)
        assert srv.wait_exit(timeout=10) == 0


def test_hup_reloads_with_zero_failed_requests(turbo):
    srv = turbo("lifecycle:app", "--cores", "2")
    load = Load(srv)
    try:
        load.wait_for_sent(100)
        before = set(load.pids)
        srv.proc.send_signal(signal.SIGHUP)
        srv.wait_for("Hang up: Master")
        srv.wait_for_count("Ready:", 2, timeout=30)
        for pid in before:
            srv.wait_for(re.escape(f"Worker (pid:{pid}) exited"), timeout=30)
        sent = load.sent
        load.wait_for_sent(sent + 100)
    finally:
        load.stop()
    print(f"HUP: {load.sent} requests, {len(load.failures)} failed")
    assert load.failures == []
    assert load.pids - before, "no request reached a new worker"


def test_max_requests_recycles_without_failures(turbo):
    srv = turbo("lifecycle:app", "--max-requests", "50", "--max-requests-jitter", "10")
    load = Load(srv)
    try:
        srv.wait_for("--max-requests", timeout=30)
        srv.wait_for_count("Ready:", 2, timeout=30)
        load.wait_for_sent(load.sent + 50)
    finally:
        load.stop()
    assert load.failures == []
    assert len(load.pids) >= 2


def test_ttou_stops_routing_to_the_retiring_shard_first(turbo):
    """The retiring shard's worker is frozen, so it can accept nothing: every
    connection made after TTOU must still be served, by the other shard. A
    connection queued on the retiring socket would hang, then be reset."""
    srv = turbo("lifecycle:app", "--cores", "2", "--isolation", "process")
    pids = [int(p) for p in re.findall(r"Started worker \(pid:(\d+)\) for shard\(s\) \[1\]", srv.log)]
    assert len(pids) == 1, srv.log
    os.kill(pids[0], signal.SIGSTOP)
    try:
        srv.proc.send_signal(signal.SIGTTOU)
        srv.wait_for(r"Shards: 1")
        served = {worker_pid(srv) for _ in range(30)}
        assert pids[0] not in served and len(served) == 1
    finally:
        os.kill(pids[0], signal.SIGCONT)
    srv.wait_for(re.escape(f"Worker (pid:{pids[0]}) exited"), timeout=30)


def test_ttin_right_after_ttou_gets_a_fresh_socket(turbo):
    """The retiring shard shuts its socket down; a TTIN while it still drains
    must not hand that dead socket to the new shard."""
    srv = turbo("lifecycle:app", "--cores", "2", "--isolation", "process", "--threads", "8")
    [old] = [int(p) for p in re.findall(r"Started worker \(pid:(\d+)\) for shard\(s\) \[1\]", srv.log)]
    # Slow requests on both shards keep the retiring one draining.
    slow = concurrent.futures.ThreadPoolExecutor(8)
    pending = [slow.submit(get, srv, "/slow?3") for _ in range(8)]
    srv.wait_for_count("slow request started", 8)
    srv.proc.send_signal(signal.SIGTTOU)
    srv.wait_for(r"Shards: 1")
    srv.wait_for(re.escape(f"Stopping worker (pid:{old}) gracefully"))
    srv.proc.send_signal(signal.SIGTTIN)
    srv.wait_for_count(r"Ready: 2 shard\(s\)", 2, timeout=30)
    try:
        served = {worker_pid(srv) for _ in range(40)}
        assert len(served) == 2 and old not in served, served
        assert "accept failed" not in srv.log
    finally:
        assert all(f.result(timeout=30)[0] == 200 for f in pending)
        slow.shutdown()


def test_ttin_and_ttou_change_the_shard_count(turbo):
    srv = turbo("lifecycle:app", "--cores", "1")
    load = Load(srv, clients=2)
    try:
        srv.proc.send_signal(signal.SIGTTIN)
        srv.wait_for(r"Ready: 2 shard\(s\)", timeout=30)
        assert "Booting shard 1 on" in srv.log
        srv.proc.send_signal(signal.SIGTTOU)
        srv.wait_for(r"Ready: 1 shard\(s\)", timeout=30)
        load.wait_for_sent(load.sent + 50)
    finally:
        load.stop()
    assert load.failures == []


@pytest.mark.skipif(not OWN_GIL, reason="sub-interpreters need Python 3.12+")
def test_auto_falls_back_to_processes_naming_the_module(turbo, venv_with):
    # The standard library's extensions are not probed: this one refuses as
    # the app loads, in a virtualenv whose own modules all load.
    srv = turbo("refuses:app", "--cores", "2", command=venv_with(), default_isolation=True)
    assert "one sub-interpreter per shard: all" in srv.log
    assert srv.log.count("cannot load in a sub-interpreter") == 1
    assert "_testsinglephase" in srv.log
    assert "one worker process per shard" in srv.log
    assert srv.log.count("(main interpreter)") == 2
    status, body = get(srv)
    assert (status, body) == (200, b"served from the main interpreter")


@pytest.mark.skipif(not OWN_GIL, reason="sub-interpreters need Python 3.12+")
def test_explicit_subinterpreter_mode_refuses_such_an_app(turbo):
    srv = turbo("refuses:app", "--isolation", "subinterpreter", wait=False)
    assert srv.wait_exit() == 4
    assert "App failed to load" in srv.log


def test_preload_imports_the_app_in_the_supervisor(turbo):
    srv = turbo("lifecycle:app", "--preload", "--isolation", "process", "--cores", "2")
    imported = re.findall(r"lifecycle imported in pid (\d+)", srv.log)
    # Once, in the supervisor; the workers inherit it.
    assert imported == [str(srv.proc.pid)]
    assert worker_pid(srv) != srv.proc.pid


def test_without_preload_the_supervisor_imports_nothing(turbo):
    srv = turbo("lifecycle:app")
    imported = re.findall(r"lifecycle imported in pid (\d+)", srv.log)
    assert str(srv.proc.pid) not in imported
    assert imported


def test_usr2_starts_a_new_supervisor_on_the_same_sockets(turbo, tmp_path):
    pidfile = tmp_path / "turbo.pid"
    ops = free_port()
    srv = turbo("lifecycle:app", "--pid", str(pidfile), "--metrics-bind", f"127.0.0.1:{ops}")
    old = srv.proc.pid
    assert pidfile.read_text().strip() == str(old)
    srv.proc.send_signal(signal.SIGUSR2)
    line = srv.wait_for(r"Started a new supervisor \(pid:\d+\)")
    new = int(re.search(r"pid:(\d+)", line).group(1))
    try:
        srv.wait_for_count("Ready:", 2, timeout=30)
        assert (tmp_path / "turbo.pid.oldbin").read_text().strip() == str(old)
        assert pidfile.read_text().strip() == str(new)
        # Both supervisors serve; stopping the old one leaves the new one.
        srv.proc.send_signal(signal.SIGTERM)
        srv.wait_for(re.escape(f"[{old}] [INFO] Shutting down: Master"))
        assert get(srv)[0] == 200
        # The operations port went over with the app's sockets.
        assert ops_get(ops, "/readyz")[0] == 200
        assert total(scrape(ops), "turbo_workers") == 1
    finally:
        os.kill(new, signal.SIGTERM)
    srv.wait_for(re.escape(f"[{new}] [INFO] Shutting down: Master"))


@pytest.mark.skipif(not OWN_GIL, reason="sub-interpreters need Python 3.12+")
def test_a_pydantic_app_just_works_with_no_flag(turbo, venv_with):
    srv = turbo("pydantic_app:app", "--cores", "2", command=venv_with("pydantic"), default_isolation=True)
    assert "pydantic_core" in srv.log
    assert "one worker process per shard" in srv.log
    status, body = get(srv, "/?name=pen&price=1.5")
    assert status == 200 and b'"price":1.5' in body
    assert get(srv, "/?name=pen&price=cheap")[0] == 422


@pytest.mark.worker_deaths
def test_connections_wait_in_the_backlog_while_a_worker_restarts(turbo):
    srv = turbo("lifecycle:app")
    old = worker_pid(srv)
    # Freeze the supervisor so the dead worker cannot be replaced yet.
    srv.proc.send_signal(signal.SIGSTOP)
    try:
        os.kill(old, signal.SIGKILL)
        with srv.connect(timeout=30) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            srv.proc.send_signal(signal.SIGCONT)
            status, _, body, _ = read_response(s, timeout=30)
    finally:
        srv.proc.send_signal(signal.SIGCONT)
    assert status == 200 and int(body) != old


def wait_in_file(path, text, count=1, timeout=10):
    """Waits, with a bound, until `text` appears `count` times in the file."""
    deadline = time.monotonic() + timeout
    while True:
        content = path.read_text() if path.exists() else ""
        if content.count(text) >= count:
            return content
        assert time.monotonic() < deadline, f"{text!r} not in {path}:\n{content}"
        time.sleep(0.05)


def test_usr1_reopens_the_error_log(turbo, tmp_path):
    log = tmp_path / "error.log"
    srv = turbo("lifecycle:app", "--error-logfile", str(log), wait=False)
    wait_in_file(log, "Ready:")
    rotated = tmp_path / "error.log.1"
    log.rename(rotated)
    srv.proc.send_signal(signal.SIGUSR1)
    # The supervisor and its one worker each reopen the file.
    wait_in_file(log, "Reopened the error log", count=2)
    get(srv, "/slow?0")
    assert "slow request started" in wait_in_file(log, "slow request started")
    assert "slow request started" not in rotated.read_text()


def test_pidfile_is_written_then_removed_on_exit(turbo, tmp_path):
    pidfile = tmp_path / "turbo.pid"
    srv = turbo("lifecycle:app", "--pid", str(pidfile))
    assert pidfile.read_text().strip() == str(srv.proc.pid)
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.wait_exit() == 0
    assert not pidfile.exists()


def test_process_workers_share_the_common_standard_library(turbo, tmp_path):
    """In process mode the supervisor imports the standard library that web
    frameworks use before it forks, so a worker finds those modules already
    loaded (shared copy-on-write) as it starts, and frozen for the collector;
    the app itself is not imported there without --preload."""
    conf = tmp_path / "c.py"
    seen = tmp_path / "seen.txt"
    conf.write_text(
        "import gc, sys\n"
        "def post_fork(server, worker):\n"
        f"    open({str(seen)!r}, 'w').write(' '.join(\n"
        "        str(m in sys.modules) for m in ('email.message', 'json', 'logging', 'echo'))\n"
        "        + ' ' + str(gc.get_freeze_count() > 0))\n")
    srv = turbo("echo:echo", "--isolation", "process", "-c", str(conf))
    assert httpx.get(srv.url(), timeout=10).status_code == 200
    assert seen.read_text() == "True True True False True"


@pytest.mark.parametrize("preload", [False, True], ids=["imported-by-workers", "preload"])
def test_process_workers_run_the_shims_the_supervisor_compiled(turbo, preload):
    """In process mode the supervisor compiles the loader and the shims before
    it forks (without --preload it cannot know the interface, so it compiles
    both): a worker runs them from the shared code, under their own names."""
    extra = ["--preload"] if preload else []
    for app, expected in (("shims:wsgi", "turbo_wsgi turbo_wsgi.py"), ("shims:asgi", "turbo_asgi turbo_asgi.py")):
        srv = turbo(app, "--isolation", "process", "--cores", "2", *extra)
        for _ in range(4):
            response = httpx.get(srv.url(), timeout=10)
            assert (response.status_code, response.text) == (200, expected)
        srv.stop()
        assert "Traceback" not in srv.log
