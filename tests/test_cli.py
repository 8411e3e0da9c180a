"""The command line: help, errors, exit codes, app loading and the virtualenv."""

import os
import subprocess
import sys

import httpx

from conftest import APPS, BIN, Turbo


def run(*args, env=None, timeout=30):
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([BIN, *args], cwd=APPS, env=full_env, capture_output=True, text=True, timeout=timeout)


def test_help_reads_like_a_real_tool():
    r = run("--help")
    assert r.returncode == 0
    for flag in ["--bind", "--cores", "--workers", "--threads", "--backlog", "--keep-alive",
                 "--limit-request-line", "--limit-request-fields", "--limit-request-field_size", "--log-level"]:
        assert flag in r.stdout
    assert "Usage: turbo [OPTIONS] [APP]" in r.stdout


def test_wrong_flag_is_one_line_and_exit_2():
    r = run("hello:app", "--no-such-flag")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "--no-such-flag" in r.stderr


def test_bad_app_spec_is_one_line_and_exit_2():
    for spec in ["not a spec", "mod:", "mod:1bad", ":app"]:
        r = run(spec)
        assert r.returncode == 2, spec
        assert r.stderr.count("\n") == 1, r.stderr


def test_bad_values_are_one_line_and_exit_2():
    for args in [["--cores", "0"], ["--threads", "x"], ["--log-level", "loud"], ["--bind", "127.0.0.1:http"]]:
        r = run("hello:app", *args)
        assert r.returncode == 2, args
        assert r.stderr.count("\n") == 1, r.stderr


def test_import_failure_shows_traceback_and_exits_nonzero():
    r = run("broken:app", "--bind", "127.0.0.1:0")
    assert r.returncode == 4
    assert "Traceback (most recent call last)" in r.stderr
    assert "this_module_does_not_exist" in r.stderr


def test_missing_attribute_exits_nonzero():
    r = run("hello:nope", "--bind", "127.0.0.1:0")
    assert r.returncode == 4
    assert "Failed to find attribute 'nope' in 'hello'" in r.stderr


def test_default_callable_is_application(turbo):
    srv = turbo("djangoapp.wsgi")
    assert httpx.get(srv.url("/"), timeout=10).status_code == 200


def test_workers_is_an_alias_for_cores(turbo):
    srv = turbo("hello:app", "-w", "2")
    assert srv.log.count("Booting shard") == 2


def test_port_environment_variable():
    port = str(__import__("conftest").free_port())
    env = dict(os.environ, PORT=port)
    proc = subprocess.Popen([BIN, "hello:app", "--cores", "1"], cwd=APPS, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = ""
        while "Listening at" not in line:
            line = proc.stdout.readline()
            assert line, "turbo exited"
        assert f"http://0.0.0.0:{port}" in line
    finally:
        proc.terminate()
        proc.wait(10)


def test_app_from_virtualenv_is_importable(turbo):
    # Flask lives only in the test virtualenv, never in the base interpreter.
    srv = turbo("flaskapp:app")
    assert httpx.get(srv.url("/"), timeout=10).text == "Hello from Flask"


def test_term_exits_zero():
    srv = Turbo("hello:app", "--cores", "1")
    srv.proc.terminate()
    assert srv.wait_exit() == 0


def print_config(*args, env=None):
    r = run("hello:app", "--print-config", *args, env=env)
    assert r.returncode == 0, r.stderr
    pairs = (line.split(" = ", 1) for line in r.stdout.strip().splitlines())
    return {name.strip(): value for name, value in pairs}, r.stdout


def test_print_config_lists_every_setting_resolved():
    settings, text = print_config("-b", "127.0.0.1:9001", "--threads", "3")
    assert settings["bind"] == "['127.0.0.1:9001']"
    assert settings["threads"] == "3"
    assert settings["backlog"] == "2048"
    assert settings["limit_request_field_size"] == "8190"
    assert settings["preload_app"] == "False"
    assert settings["pidfile"] == "None"
    names = [line.split(" = ")[0].strip() for line in text.strip().splitlines()]
    assert names == sorted(names)


def test_gunicorn_cmd_args_sit_between_the_environment_and_the_command_line():
    env = {"GUNICORN_CMD_ARGS": "--threads 5 --bind '127.0.0.1:7001' -w 3 --preload",
           "WEB_CONCURRENCY": "7"}
    settings, _ = print_config("--threads", "4", env=env)
    assert settings["threads"] == "4"  # the command line wins
    assert settings["bind"] == "['127.0.0.1:7001']"  # from GUNICORN_CMD_ARGS
    assert settings["workers"] == "3"  # GUNICORN_CMD_ARGS beats WEB_CONCURRENCY
    assert settings["preload_app"] == "True"
    settings, _ = print_config(env={"WEB_CONCURRENCY": "7"})
    assert settings["workers"] == "7"


def test_bad_gunicorn_cmd_args_name_the_source():
    r = run("hello:app", env={"GUNICORN_CMD_ARGS": "--no-such-flag"})
    assert r.returncode == 2
    assert "GUNICORN_CMD_ARGS" in r.stderr and "--no-such-flag" in r.stderr


def test_check_config():
    assert run("hello:app", "--check-config").returncode == 0
    r = run("hello:app", "--check-config", "--timeout", "soon")
    assert r.returncode == 1
    assert "invalid value 'soon' for --timeout" in r.stderr
