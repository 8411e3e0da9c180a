"""Gunicorn's configuration sources: the config file (-c FILE, python:MODULE,
./gunicorn.conf.py), GUNICORN_CMD_ARGS and the command line, in Gunicorn's
order of precedence, and HUP reading them again."""

import os
import re
import signal
import subprocess
import sys

import httpx

from conftest import APPS, BIN


def run(*args, cwd=APPS, env=None):
    full_env = dict(os.environ)
    full_env.pop("GUNICORN_CMD_ARGS", None)
    full_env.update(env or {})
    return subprocess.run([BIN, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=30)


def settings(*args, cwd=APPS, env=None):
    r = run("hello:app", "--print-config", *args, cwd=cwd, env=env)
    assert r.returncode == 0, r.stderr
    pairs = (line.split(" = ", 1) for line in r.stdout.strip().splitlines())
    return {name.strip(): value for name, value in pairs}


def test_config_file_values_apply(tmp_path):
    conf = tmp_path / "turbo.conf.py"
    conf.write_text("import multiprocessing\n"
                    "bind = ['127.0.0.1:9101', '127.0.0.1:9102']\n"
                    "workers = 3\nthreads = 2\ntimeout = 45.0\npreload_app = True\n"
                    "cpu_count = multiprocessing.cpu_count()  # a helper, not a setting\n")
    s = settings("-c", str(conf))
    assert s["bind"] == "['127.0.0.1:9101', '127.0.0.1:9102']"
    assert (s["workers"], s["threads"], s["timeout"], s["preload_app"]) == ("3", "2", "45", "True")


def test_precedence_file_then_gunicorn_cmd_args_then_command_line(tmp_path):
    conf = tmp_path / "c.py"
    conf.write_text("threads = 2\nbacklog = 100\nworkers = 2\n")
    s = settings("-c", str(conf), "--threads", "4",
                 env={"GUNICORN_CMD_ARGS": "--threads 3 --backlog 200", "WEB_CONCURRENCY": "9"})
    assert s["threads"] == "4"  # command line over all
    assert s["backlog"] == "200"  # GUNICORN_CMD_ARGS over the file
    assert s["workers"] == "2"  # the file over the environment


def test_gunicorn_conf_py_is_read_when_present(tmp_path):
    (tmp_path / "gunicorn.conf.py").write_text("threads = 6\n")
    assert settings(cwd=tmp_path)["threads"] == "6"
    assert settings(cwd=APPS)["threads"] == "1"


def test_python_module_config(tmp_path):
    (tmp_path / "myconf.py").write_text("threads = 7\n")
    s = settings("-c", "python:myconf", env={"PYTHONPATH": str(tmp_path)})
    assert s["threads"] == "7"


def test_a_typo_is_an_error_naming_it(tmp_path):
    (tmp_path / "c.py").write_text("wokers = 4\n")
    r = run("hello:app", "-c", str(tmp_path / "c.py"))
    assert r.returncode == 2
    assert "unknown setting 'wokers' (did you mean 'workers'?)" in r.stderr


def test_a_missing_config_file_is_an_error(tmp_path):
    r = run("hello:app", "-c", str(tmp_path / "nope.py"))
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_a_raising_config_file_shows_its_traceback(tmp_path):
    (tmp_path / "c.py").write_text("raise ValueError('no config today')\n")
    r = run("hello:app", "-c", str(tmp_path / "c.py"))
    assert r.returncode == 1
    assert "Traceback" in r.stderr and "ValueError: no config today" in r.stderr


def test_bad_value_in_config_names_the_setting(tmp_path):
    (tmp_path / "c.py").write_text("threads = [1, 2]\n")
    r = run("hello:app", "-c", str(tmp_path / "c.py"))
    assert r.returncode == 2 and "invalid value [1, 2] for threads" in r.stderr


def test_ignored_and_unsupported_settings_warn(turbo, tmp_path):
    conf = tmp_path / "c.py"
    conf.write_text("worker_connections = 5\nworker_tmp_dir = '/dev/shm'\n")
    srv = turbo("hello:app", "-c", str(conf), "--print-config", wait=False)
    assert srv.wait_exit() == 0
    # worker_connections is a real setting now.
    assert re.search(r"worker_connections\s*=\s*5", srv.log)
    srv = turbo("hello:app", "-c", str(conf))
    assert srv.log.count("has no meaning in turbo and is ignored") == 1
    assert httpx.get(srv.url(), timeout=10).status_code == 200


def test_wsgi_app_from_the_config_file(turbo, tmp_path):
    conf = tmp_path / "c.py"
    conf.write_text("wsgi_app = 'hello:app'\n")
    srv = turbo("", "-c", str(conf))
    assert httpx.get(srv.url(), timeout=10).text == "Hello, World!"


def test_hup_reads_the_config_file_again(turbo, tmp_path):
    conf = tmp_path / "c.py"
    conf.write_text("threads = 1\n")
    srv = turbo("echo:environ_app", "-c", str(conf))
    assert httpx.get(srv.url(), timeout=10).json()["wsgi.multithread"] is False
    conf.write_text("threads = 3\n")
    srv.proc.send_signal(signal.SIGHUP)
    srv.wait_for_count("Ready:", 2, timeout=30)
    srv.wait_for(r"Worker \(pid:\d+\) exited", timeout=30)
    assert httpx.get(srv.url(), timeout=10).json()["wsgi.multithread"] is True


def test_hup_with_a_broken_config_keeps_the_old_one(turbo, tmp_path):
    conf = tmp_path / "c.py"
    conf.write_text("threads = 1\n")
    srv = turbo("hello:app", "-c", str(conf))
    conf.write_text("threads = 'many'\n")
    srv.proc.send_signal(signal.SIGHUP)
    srv.wait_for("could not be reloaded, so it stays as it was")
    srv.wait_for_count("Ready:", 2, timeout=30)
    assert httpx.get(srv.url(), timeout=10).status_code == 200
