"""Python logging configurations (logconfig_dict, logconfig_json, logconfig):
turbo's log lines and access records go through the gunicorn.error and
gunicorn.access loggers, as with Gunicorn, whose output for the same config
is compared."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from conftest import APPS, BIN, free_port, wait_port

FORMATTER = '''
import logging

class AtomsFormatter(logging.Formatter):
    """Reads the access record's arguments, as JSON access formatters do."""

    def format(self, record):
        if record.name == "gunicorn.access":
            return f"access status={record.args['s']} method={record.args['m']} path={record.args['U']}"
        return f"{record.name}|{record.levelname}|{record.getMessage()}"
'''


def logging_dict(out):
    return {
        "root": {"level": "WARNING", "handlers": ["f"]},
        "formatters": {"atoms": {"()": "atomsformatter.AtomsFormatter"}},
        "handlers": {"f": {"class": "logging.FileHandler", "filename": str(out), "formatter": "atoms"}},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["f"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["f"], "propagate": False},
        },
    }


def serve(argv, out):
    """Starts a server, makes two requests, stops it; returns its log file's lines."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(out.parent))
    env.pop("GUNICORN_CMD_ARGS", None)
    proc = subprocess.Popen([*argv, "-b", f"127.0.0.1:{port}", "-w", "1", "hello:app"], cwd=APPS, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_port(port)
        httpx.get(f"http://127.0.0.1:{port}/first", timeout=10)
        httpx.post(f"http://127.0.0.1:{port}/second", content=b"x", timeout=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    return out.read_text().splitlines(), output


def binaries():
    return BIN, str(Path(sys.executable).parent / "gunicorn")


def check(ours, theirs):
    for lines in (ours, theirs):
        assert [x for x in lines if x.startswith("access")] == [
            "access status=200 method=GET path=/first",
            "access status=200 method=POST path=/second",
        ], lines
        assert any(re.match(r"gunicorn\.error\|INFO\|Listening at: http://127\.0\.0\.1:\d+ \(\d+\)", x) for x in lines)
        assert lines[-1] == "gunicorn.error|INFO|Shutting down: Master", lines


def test_logconfig_dict_matches_gunicorn(tmp_path):
    (tmp_path / "atomsformatter.py").write_text(FORMATTER)
    results = []
    for binary in binaries():
        out = tmp_path / f"{Path(binary).name}.log"
        conf = tmp_path / f"{Path(binary).name}.conf.py"
        conf.write_text(f"logconfig_dict = {logging_dict(out)!r}\n")
        results.append(serve([binary, "-c", str(conf)], out))
    (ours, our_output), (theirs, _) = results
    print(ours, theirs, sep="\n")
    check(ours, theirs)
    # Nothing went to standard output or error: the config sent it all to the file.
    assert our_output == "", our_output


def test_logconfig_json_matches_gunicorn(tmp_path):
    (tmp_path / "atomsformatter.py").write_text(FORMATTER)
    results = []
    for binary in binaries():
        out = tmp_path / f"{Path(binary).name}.log"
        config = tmp_path / f"{Path(binary).name}.json"
        config.write_text(json.dumps(logging_dict(out)))
        results.append(serve([binary, "--log-config-json", str(config)], out))
    check(results[0][0], results[1][0])


def test_logconfig_ini_file(turbo, tmp_path):
    out = tmp_path / "ini.log"
    ini = tmp_path / "logging.ini"
    ini.write_text(f"""
[loggers]
keys=root,access
[handlers]
keys=f
[formatters]
keys=plain
[logger_root]
level=INFO
handlers=f
[logger_access]
level=INFO
handlers=f
propagate=0
qualname=gunicorn.access
[handler_f]
class=FileHandler
args=({str(out)!r},)
formatter=plain
[formatter_plain]
format=%(name)s %(message)s
""")
    srv = turbo("hello:app", "--log-config", str(ini))
    assert httpx.get(srv.url("/ini"), timeout=10).status_code == 200
    srv.stop()
    text = out.read_text()
    assert re.search(r'^gunicorn\.access 127\.0\.0\.1 - - \[.*\] "GET /ini HTTP/1.1" 200 ', text, re.M), text


def test_a_broken_logging_config_is_an_error(turbo, tmp_path):
    conf = tmp_path / "c.py"
    conf.write_text("logconfig_dict = {'handlers': {'x': {'class': 'no.such.Handler'}}}\n")
    srv = turbo("hello:app", "-c", str(conf), wait=False)
    assert srv.wait_exit() == 1
    assert "the logging configuration failed" in srv.log
