"""The access log: Gunicorn's format atoms give the same line as Gunicorn for
the same request, byte for byte once time, duration and pid are masked."""

import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from conftest import APPS, free_port, read_response, wait_port

FORMAT = ('%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s %(B)s "%(f)s" "%(a)s" %(m)s %(U)s %(q)s '
          '%(H)s %(T)s %(M)s %(D)s %(L)s %(p)s %({x-test}i)s %({x-served}o)s %({content-type}o)s '
          '%({REQUEST_METHOD}e)s %({http_x_test}e)s %(missing)s 100%%')

REQUESTS = [
    b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /p%20q/x?a=1&b=two HTTP/1.1\r\nHost: x\r\nUser-Agent: agent/1\r\n"
    b"Referer: http://ref/\r\nX-Test: say \"hi\"\r\nAuthorization: Basic Ym9iOnNlY3JldA==\r\n\r\n",
    b"GET /missing/page HTTP/1.0\r\nHost: x\r\n\r\n",
    b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Type: text/x\r\n\r\nhello",
    b"HEAD /head HTTP/1.1\r\nHost: x\r\n\r\n",
]


def mask(line):
    line = re.sub(r"\[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\]", "[TIME]", line)
    line = re.sub(r"<\d+>", "<PID>", line)
    # T, M, D and L: the durations differ by nature.
    return re.sub(r" \d+ \d+ \d+ \d+\.\d{6} ", " T M D L ", line)


def send_all(port):
    import socket
    for request in REQUESTS:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(request)
            if request.startswith(b"HEAD"):
                head = b""
                while b"\r\n\r\n" not in head:
                    head += s.recv(4096)
            else:
                read_response(s)


def access_lines(text):
    return [mask(line) for line in text.splitlines() if not line.startswith("[20")]


def test_lines_match_gunicorn(turbo, tmp_path):
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(f"accesslog = '-'\naccess_log_format = {FORMAT!r}\n")
    srv = turbo("access_app:app", "-c", str(conf))
    send_all(srv.port)
    srv.stop()
    ours = access_lines(srv.log)

    port = free_port()
    gunicorn = Path(sys.executable).parent / "gunicorn"
    proc = subprocess.Popen([str(gunicorn), "access_app:app", "-c", str(conf), "-b", f"127.0.0.1:{port}"],
                            cwd=APPS, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port)
        send_all(port)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    theirs = access_lines(out)
    assert len(ours) == len(REQUESTS)
    assert ours == theirs


def test_default_format_and_a_log_file_reopened_on_usr1(turbo, tmp_path):
    log = tmp_path / "access.log"
    srv = turbo("access_app:app", "--access-logfile", str(log))
    httpx.get(srv.url("/first"), headers={"User-Agent": "ua/1"}, timeout=10)
    line = log.read_text().strip()
    assert re.fullmatch(r'127\.0\.0\.1 - - \[[^]]+\] "GET /first HTTP/1\.1" 200 11 "-" "ua/1"', line), line
    log.rename(tmp_path / "access.log.1")
    srv.proc.send_signal(signal.SIGUSR1)
    srv.wait_for("Reopened the access log")
    httpx.get(srv.url("/again"), timeout=10)
    assert "/again" in log.read_text()
    assert "/again" not in (tmp_path / "access.log.1").read_text()


def test_asgi_requests_are_logged(turbo):
    srv = turbo("access_app:asgi", "--access-logfile", "-",
                "--access-logformat", "%(m)s %(U)s %(s)s %(b)s %({x-served}o)s")
    httpx.post(srv.url("/made"), content=b"x", timeout=10)
    srv.wait_for("^POST /made 201 7 asgi$")


def test_no_access_log_by_default(turbo):
    srv = turbo("access_app:app")
    httpx.get(srv.url("/quiet"), timeout=10)
    srv.stop()
    assert "/quiet" not in srv.log


def test_json_lines_parse_back_whatever_the_request_carries(turbo, tmp_path):
    """--access-log-json: one object per line, which a quote, a backslash or a
    tab in a header cannot break."""
    import json
    import socket
    log = tmp_path / "access.json"
    srv = turbo("access_app:app", "--access-log-json", "--access-logfile", str(log))
    agent = 'curl "quoted" \\back\\slash\ttab {"json": 1}'
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"GET /p%20q/x?a=1&b=%22 HTTP/1.1\r\nHost: x\r\nUser-Agent: "
                  + agent.encode() + b"\r\nX-Request-ID: req-42\r\nReferer: caf\xe9\r\n\r\n")
        read_response(s)
    httpx.post(srv.url("/missing"), content=b"hello", timeout=10)
    srv.stop()
    first, second = (json.loads(line) for line in log.read_text().splitlines())
    assert first.pop("time").endswith("Z")
    assert isinstance(first.pop("duration_ms"), float)
    assert first == {
        "remote": "127.0.0.1", "method": "GET", "path": "/p q/x", "query": "a=1&b=%22",
        "protocol": "HTTP/1.1", "status": 200, "bytes": len("path=/p q/x"),
        "referer": "caf\xe9", "user_agent": agent, "request_id": "req-42",
    }
    assert (second["method"], second["status"], second["bytes"]) == ("POST", 404, 5)
    assert second["user_agent"].startswith("python-httpx/")
    assert second["referer"] is None and second["request_id"] is None


def test_json_lines_go_to_standard_output_without_a_file(turbo):
    import json
    srv = turbo("access_app:asgi", "--access-log-json")
    httpx.get(srv.url("/made"), timeout=10)
    line = srv.wait_for(r'^\{"time":')
    assert json.loads(line)["status"] == 201
