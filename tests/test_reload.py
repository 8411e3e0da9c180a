"""--reload: a changed source file (or a reload_extra_files entry) brings fresh
workers, and an edit that breaks the app leaves the running code serving."""

import os
import re
import time

import httpx
import pytest

APP = '''
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"{version}"]
'''


def write(path, text, bump):
    path.write_text(text)
    # A modification time clearly different from the last one, whatever the
    # file system's timestamp resolution.
    stamp = path.stat().st_mtime + bump
    os.utime(path, (stamp, stamp))


def get(srv):
    return httpx.get(srv.url("/"), timeout=10).text


@pytest.mark.worker_deaths
def test_a_changed_module_brings_fresh_workers(turbo, tmp_path):
    module = tmp_path / "reloadme.py"
    write(module, APP.format(version="v1"), 0)
    srv = turbo("reloadme:app", "--reload", "--pythonpath", str(tmp_path))
    first_pid = re.search(r"Booting worker with pid: (\d+)", srv.log).group(1)
    assert get(srv) == "v1"

    write(module, APP.format(version="v2"), 10)
    srv.wait_for(re.escape(f"Worker reloading: {module} modified"))
    srv.wait_for(re.escape(f"Worker (pid:{first_pid}) exited"), timeout=30)
    assert get(srv) == "v2"

    # A broken edit: the new worker cannot load it, and the running one stays.
    write(module, "def app(:\n", 20)
    srv.wait_for("The running workers keep serving", timeout=30)
    assert get(srv) == "v2"
    assert srv.proc.poll() is None

    # Fixing it is picked up too.
    write(module, APP.format(version="v3"), 30)
    srv.wait_for_count(r"Worker reloading: .*reloadme\.py modified", 3, timeout=30)
    srv.wait_for_count(r"Worker \(pid:\d+\) exited$", 2, timeout=30)
    assert get(srv) == "v3"


def test_reload_extra_files_are_watched(turbo, tmp_path):
    extra = tmp_path / "settings.toml"
    write(extra, "a = 1\n", 0)
    srv = turbo("hello:app", "--reload", "--reload-extra-file", str(extra))
    write(extra, "a = 2\n", 10)
    srv.wait_for(re.escape(f"Worker reloading: {extra} modified"))
    srv.wait_for_count("Ready:", 2, timeout=30)
    assert get(srv) == "Hello, World!"


def thread_names(pid):
    return {
        open(f"/proc/{pid}/task/{t}/comm").read().strip()
        for t in os.listdir(f"/proc/{pid}/task")
    }


@pytest.mark.parametrize("flags", [(), ("--reload",)])
def test_only_reload_starts_a_watcher(turbo, flags):
    srv = turbo("hello:app", *flags)
    worker = re.search(r"Booting worker with pid: (\d+)", srv.log).group(1)
    if not flags:
        assert "Watching" not in srv.log
        assert "turbo-reloader" not in thread_names(worker)
        return
    srv.wait_for(r"Watching \d+ files for changes")
    # A new thread names itself once it runs: give it a moment, bounded.
    deadline = time.monotonic() + 10
    while "turbo-reloader" not in thread_names(worker):
        assert time.monotonic() < deadline, thread_names(worker)
        time.sleep(0.01)
