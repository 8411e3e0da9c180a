"""Gunicorn's environment settings: chdir, pythonpath, raw_env, umask, user,
group and daemon."""

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from conftest import APPS, BIN, free_port


def worker_pid(srv):
    line = srv.wait_for(r"Booting worker with pid: \d+")
    return int(re.search(r"pid: (\d+)", line).group(1))


def status_field(pid, field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return line.split()[1]
    raise AssertionError(field)


def test_chdir_imports_the_app_from_there(turbo, tmp_path):
    srv = turbo("hello:app", "--chdir", str(APPS), cwd=tmp_path)
    assert httpx.get(srv.url(), timeout=10).text == "Hello, World!"


def test_pythonpath_is_searched_in_every_interpreter(turbo, tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "elsewhere.py").write_text(
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'from elsewhere']\n")
    srv = turbo("elsewhere:app", "--pythonpath", f"/nonexistent,{lib}", "--cores", "2", cwd=tmp_path)
    assert httpx.get(srv.url(), timeout=10).text == "from elsewhere"


def test_raw_env_sets_variables_for_the_app(turbo):
    srv = turbo("echo:osenv_app", "-e", "TURBO_TEST_A=one", "--env", "TURBO_TEST_B=two=2")
    assert httpx.get(srv.url("/?TURBO_TEST_A"), timeout=10).text == "one"
    assert httpx.get(srv.url("/?TURBO_TEST_B"), timeout=10).text == "two=2"


def test_umask_applies_to_workers(turbo):
    srv = turbo("hello:app", "--umask", "0o027")
    assert status_field(worker_pid(srv), "Umask") == "0027"


@pytest.mark.skipif(os.geteuid() != 0, reason="changing user needs root")
def test_user_and_group_apply_to_workers(turbo):
    # Python lives under /root here, so the worker stays user root (by name)
    # while its group changes.
    srv = turbo("hello:app", "--user", "root", "--group", "nogroup")
    pid = worker_pid(srv)
    assert status_field(pid, "Uid") == "0"
    assert status_field(pid, "Gid") == "65534"
    assert status_field(srv.proc.pid, "Gid") == "0"  # the supervisor keeps its own
    assert httpx.get(srv.url(), timeout=10).status_code == 200


def test_unknown_user_is_an_error():
    env = dict(os.environ)
    r = subprocess.run([BIN, "hello:app", "--user", "no-such-user-here"], cwd=APPS, env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "no such user 'no-such-user-here'" in r.stderr


def test_daemon_detaches_and_serves(tmp_path):
    port = free_port()
    pidfile = tmp_path / "d.pid"
    log = tmp_path / "error.log"
    env = dict(os.environ)
    r = subprocess.run([BIN, "hello:app", "-D", "--bind", f"127.0.0.1:{port}", "--cores", "1",
                        "--pid", str(pidfile), "--error-logfile", str(log)],
                       cwd=APPS, env=env, timeout=30, capture_output=True)
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 30
    while "Ready:" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, "the daemon did not become ready"
        time.sleep(0.05)
    pid = int(pidfile.read_text())
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).text == "Hello, World!"
        assert os.getsid(pid) != os.getsid(0)  # detached from our session
    finally:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while pidfile.exists():
        assert time.monotonic() < deadline, "the daemon did not stop"
        time.sleep(0.05)


def test_capture_output_sends_prints_to_the_error_log(turbo, tmp_path):
    log = tmp_path / "error.log"
    srv = turbo("echo:print_app", "--error-logfile", str(log), "--capture-output", wait=False)
    deadline = time.monotonic() + 30
    while "Ready:" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    httpx.get(srv.url("/?captured"), timeout=10)
    assert "printed: captured" in log.read_text()


def test_without_capture_output_prints_stay_on_stdout(turbo, tmp_path):
    log = tmp_path / "error.log"
    srv = turbo("echo:print_app", "--error-logfile", str(log), wait=False)
    deadline = time.monotonic() + 30
    while "Ready:" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    httpx.get(srv.url("/?free"), timeout=10)
    srv.wait_for("printed: free")
    assert "printed: free" not in log.read_text()
