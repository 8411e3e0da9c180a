"""StatsD metrics under Gunicorn's names: the same requests against turbo and
the real Gunicorn, with the same statsd settings, give the same datagrams
once durations are masked."""

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from conftest import APPS, BIN, free_port, wait_port

PATHS = ["/?200", "/?404", "/?200", "/?503"]


class Collector:
    """A StatsD server on loopback that keeps every datagram."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.lines = []

    def wait_for(self, predicate, timeout=10):
        deadline = time.monotonic() + timeout
        while not predicate(self.lines):
            left = deadline - time.monotonic()
            assert left > 0, f"no such datagrams; got {self.lines}"
            self.sock.settimeout(left)
            try:
                self.lines.append(self.sock.recv(65536).decode())
            except socket.timeout:
                pass

    def close(self):
        self.sock.close()


def run(argv, collector):
    """Starts a server, sends PATHS and returns the request datagrams."""
    port = free_port()
    env = dict(os.environ)
    env.pop("GUNICORN_CMD_ARGS", None)
    proc = subprocess.Popen(
        [*argv, "-b", f"127.0.0.1:{port}", "-w", "1", "--statsd-host",
         f"127.0.0.1:{collector.port}", "--statsd-prefix", "shop",
         "--dogstatsd-tags", "env:test", "echo:status"],
        cwd=APPS, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        collector.wait_for(lambda lines: any("gunicorn.workers" in x for x in lines), 30)
        wait_port(port)
        for path in PATHS:
            httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10)
        collector.wait_for(lambda lines: sum("gunicorn.requests:" in x for x in lines) == len(PATHS))
    finally:
        proc.terminate()
        proc.wait(30)
    requests = [x for x in collector.lines if ".request" in x]
    return [re.sub(r"duration:[0-9.]+\|", "duration:D|", x) for x in requests], collector.lines


def test_statsd_metrics_match_gunicorn():
    ours_collector, theirs_collector = Collector(), Collector()
    try:
        ours, ours_all = run([BIN], ours_collector)
        gunicorn = str(Path(sys.executable).parent / "gunicorn")
        theirs, theirs_all = run([gunicorn], theirs_collector)
    finally:
        ours_collector.close()
        theirs_collector.close()
    print("turbo:", ours_all, "\ngunicorn:", theirs_all)
    assert ours == theirs
    assert "shop.gunicorn.request.status.404:1|c|@1.0|#env:test" in ours
    assert "shop.gunicorn.workers:1|g|#env:test" in ours_all
    assert "shop.gunicorn.workers:1|g|#env:test" in theirs_all


def test_durations_are_milliseconds(turbo):
    collector = Collector()
    try:
        srv = turbo("lifecycle:app", "--statsd-host", f"127.0.0.1:{collector.port}")
        httpx.get(srv.url("/slow?0.2"), timeout=10)
        collector.wait_for(lambda lines: any("duration" in x for x in lines))
    finally:
        collector.close()
    duration = next(x for x in collector.lines if "duration" in x)
    value = float(re.match(r"gunicorn\.request\.duration:([0-9.]+)\|ms$", duration).group(1))
    assert 150 <= value < 10_000, duration


def test_warnings_and_errors_are_counted(turbo):
    collector = Collector()
    try:
        srv = turbo("echo:raises", "--statsd-host", f"127.0.0.1:{collector.port}")
        assert httpx.get(srv.url("/"), timeout=10).status_code == 500
        collector.wait_for(lambda lines: "gunicorn.log.error:1|c|@1.0" in lines)
    finally:
        collector.close()
