"""Gunicorn's server hooks from the config file, called at Gunicorn's moments:
the same config runs under turbo and under the real Gunicorn, and the hooks
each process called are compared."""

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import APPS, BIN, free_port, read_response, wait_port

HOOKS = '''
import os

def record(server_or_worker, name):
    with open(os.environ["HOOK_LOG"], "a") as f:
        f.write(f"{os.getpid()} {name}\\n")

def on_starting(server): record(server, "on_starting")
def when_ready(server): record(server, "when_ready")
def on_reload(server): record(server, "on_reload")
def pre_fork(server, worker): record(server, "pre_fork")
def post_fork(server, worker):
    assert worker.pid == os.getpid() and server.log is not None and server.cfg.workers == 1
    record(worker, "post_fork")
def post_worker_init(worker): record(worker, "post_worker_init")
def worker_exit(server, worker): record(worker, "worker_exit")
def child_exit(server, worker): record(server, "child_exit")
def on_exit(server): record(server, "on_exit")
def nworkers_changed(server, new, old): record(server, f"nworkers_changed {new} {old}")
def pre_request(worker, req):
    headers = dict(req.headers)
    record(worker, f"pre_request {req.method} {req.path} {req.query} {req.version} {'HOST' in headers}")
def post_request(worker, req, environ, resp):
    record(worker, f"post_request {resp.status} {environ['PATH_INFO']} {req.uri}")
'''


def wait_lines(log, count):
    deadline = time.monotonic() + 30
    while len(log.read_text().splitlines()) < count if log.exists() else True:
        assert time.monotonic() < deadline, log.read_text() if log.exists() else "no hook log"
        time.sleep(0.05)


def wait_text(log, text):
    deadline = time.monotonic() + 30
    while not (log.exists() and text in log.read_text()):
        assert time.monotonic() < deadline, log.read_text() if log.exists() else "no hook log"
        time.sleep(0.05)


def scenario(argv, tmp_path, name):
    """Start, serve a request, HUP (new worker, old one gone), TERM.
    Returns the hook calls per process, in order."""
    log = tmp_path / f"{name}.log"
    env = dict(os.environ, HOOK_LOG=str(log))
    env.pop("GUNICORN_CMD_ARGS", None)
    proc = subprocess.Popen(argv, cwd=APPS, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        port = int(argv[argv.index("-b") + 1].rsplit(":", 1)[1])
        wait_port(port)
        wait_lines(log, 4)  # on_starting, when_ready, pre_fork, post_fork...
        assert httpx.get(f"http://127.0.0.1:{port}/one?x=1", timeout=10).status_code == 200
        proc.send_signal(signal.SIGHUP)
        wait_text(log, "child_exit")  # ...then on_reload and a whole worker swap
        assert httpx.get(f"http://127.0.0.1:{port}/two", timeout=10).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    calls = collections.defaultdict(list)
    for line in log.read_text().splitlines():
        pid, call = line.split(" ", 1)
        calls[pid].append(call)
    return sorted(calls.values(), key=lambda c: c[0]), err


def test_hooks_are_called_as_gunicorn_calls_them(tmp_path):
    conf = tmp_path / "hooks.conf.py"
    conf.write_text(HOOKS)
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    ours, err = scenario([BIN, "hello:app", "-c", str(conf), "-w", "1",
                          "-b", f"127.0.0.1:{free_port()}"], tmp_path, "turbo")
    theirs, _ = scenario([gunicorn, "hello:app", "-c", str(conf), "-w", "1",
                          "-b", f"127.0.0.1:{free_port()}"], tmp_path, "gunicorn")
    print("turbo:", ours, "\ngunicorn:", theirs)
    assert "Traceback" not in err, err
    master = ["nworkers_changed 1 None", "on_starting", "when_ready", "pre_fork",
              "nworkers_changed 1 1", "on_reload", "pre_fork", "child_exit", "child_exit", "on_exit"]
    first = ["post_fork", "post_worker_init", "pre_request GET /one x=1 (1, 1) True",
             "post_request 200 OK /one /one?x=1", "worker_exit"]
    second = ["post_fork", "post_worker_init", "pre_request GET /two  (1, 1) True",
              "post_request 200 OK /two /two", "worker_exit"]
    for calls in (ours, theirs):
        masters = [c for c in calls if "on_starting" in c]
        workers = [c for c in calls if c[0] == "post_fork"]
        assert len(masters) == 1 and len(workers) == 2, calls
        assert sorted(masters[0]) == sorted(master), calls
        assert masters[0][:2] == ["nworkers_changed 1 None", "on_starting"]
        assert masters[0][-1] == "on_exit"
        assert masters[0].index("nworkers_changed 1 1") < masters[0].index("on_reload")
        assert masters[0].index("on_reload") < masters[0].index("child_exit")
        assert sorted(workers) == [first, second], calls


def test_a_failing_hook_is_logged_not_fatal(turbo, tmp_path):
    conf = tmp_path / "c.py"
    conf.write_text("def when_ready(server):\n    raise RuntimeError('hook trouble')\n")
    srv = turbo("hello:app", "-c", str(conf))
    srv.wait_for("Exception in when_ready hook")
    assert "RuntimeError: hook trouble" in srv.log
    assert httpx.get(srv.url(), timeout=10).status_code == 200


def test_hooks_get_a_working_server_log(turbo, tmp_path):
    conf = tmp_path / "c.py"
    conf.write_text("def on_starting(server):\n    server.log.info('hello from %s', 'a hook')\n")
    srv = turbo("hello:app", "-c", str(conf))
    assert "[INFO] hello from a hook" in srv.log


@pytest.mark.worker_deaths
def test_worker_abort_and_worker_int(turbo, tmp_path):
    log = tmp_path / "calls.log"
    conf = tmp_path / "c.py"
    conf.write_text(
        "import os\n"
        f"def record(name):\n    open({str(log)!r}, 'a').write(name + '\\n')\n"
        "def worker_abort(worker): record(f'worker_abort {worker.pid == os.getpid()}')\n"
        "def worker_int(worker): record('worker_int')\n")
    srv = turbo("lifecycle:app", "-c", str(conf), "--timeout", "1")
    try:
        httpx.get(srv.url("/hang"), timeout=30)
    except httpx.HTTPError:
        pass
    srv.wait_for(r"was sent SIGABRT!")
    assert log.read_text().splitlines() == ["worker_abort True"]
    srv.wait_for_count("Ready:", 2)
    srv.proc.send_signal(signal.SIGINT)
    assert srv.wait_exit() == 0
    assert log.read_text().splitlines() == ["worker_abort True", "worker_int"]


REQUEST_HOOKS = """
import hookapp

def pre_request(worker, req):
    hookapp.seen.append(req.path)

def post_request(worker, req, environ, resp):
    hookapp.seen.append(f"post {resp.status_code} {worker.pid == __import__('os').getpid()} "
                        f"{environ.get('PATH_INFO') or environ.get('path')}")
"""

APPS_WITH_STATE = {
    "wsgi": """
seen = []
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [",".join(seen).encode()]
""",
    "asgi": """
seen = []
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": ",".join(seen).encode()})
""",
}


@pytest.mark.parametrize("interface,threads", [("wsgi", "1"), ("wsgi", "4"), ("asgi", "1")])
def test_request_hooks_run_in_the_apps_own_interpreter(turbo, tmp_path, interface, threads):
    """The hooks change the app module's state, which the app then shows: they
    ran in the interpreter that serves the app (a shard's sub-interpreter on
    3.12+), not in the supervisor's. With `--threads`, the shard thread takes
    the GIL for them, and post_request gets the environ a Python thread made."""
    (tmp_path / "hookapp.py").write_text(APPS_WITH_STATE[interface])
    conf = tmp_path / "c.py"
    conf.write_text(REQUEST_HOOKS)
    srv = turbo("hookapp:app", "-c", str(conf), "--pythonpath", str(tmp_path),
                "--threads", threads)
    assert httpx.get(srv.url("/a"), timeout=10).text == "/a"
    assert httpx.get(srv.url("/b"), timeout=10).text == "/a,post 200 True /a,/b"


def test_a_failing_pre_request_fails_the_request_only(turbo, tmp_path):
    conf = tmp_path / "c.py"
    conf.write_text(
        "def pre_request(worker, req):\n"
        "    if req.path == '/bad':\n"
        "        raise RuntimeError('refused by the hook')\n"
        "def post_request(worker, req, environ, resp):\n"
        "    worker.log.info('post_request %s %s %s', req.path, environ is None, resp.status)\n")
    srv = turbo("hello:app", "-c", str(conf))
    assert httpx.get(srv.url("/bad"), timeout=10).status_code == 500
    srv.wait_for("Error handling request")
    assert "RuntimeError: refused by the hook" in srv.log
    # As Gunicorn's finally: post_request runs anyway.
    srv.wait_for("post_request /bad True 500 Internal Server Error")
    assert httpx.get(srv.url("/good"), timeout=10).status_code == 200


def test_request_hooks_with_a_relative_config_and_chdir(turbo, tmp_path):
    """Shards execute the config file again after chdir: its path must still
    lead to it."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "hooks.py").write_text(
        "def pre_request(worker, req):\n    worker.log.info('pre_request ran')\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    srv = turbo("hello:app", "-c", "conf/hooks.py", "--chdir", str(elsewhere),
                "--pythonpath", str(APPS), cwd=tmp_path)
    assert httpx.get(srv.url("/"), timeout=10).status_code == 200
    srv.wait_for("pre_request ran")


def test_no_request_is_served_before_post_worker_init(turbo, tmp_path):
    """Gunicorn runs post_worker_init before its worker accepts: apps use it to
    set up what requests need. A request already waiting must see it done."""
    marker = tmp_path / "initialised"
    conf = tmp_path / "c.py"
    conf.write_text(
        "import time\n"
        "def post_worker_init(worker):\n"
        "    time.sleep(0.5)\n"
        f"    open({str(marker)!r}, 'w').close()\n")
    (tmp_path / "initapp.py").write_text(
        "import os\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        f"    return [b'ready' if os.path.exists({str(marker)!r}) else b'too early']\n")
    srv = turbo("initapp:app", "-c", str(conf), "--pythonpath", str(tmp_path), wait=False)
    srv.wait_for("Booting worker")
    # Queued in the backlog while the worker is still starting.
    with srv.connect(timeout=30) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s, timeout=30)[2] == b"ready"
