"""Process plumbing for the benchmark: start a server pinned to some CPUs, wait for
its port, drive load at it (wrk, or bench/wsload.py for WebSockets) from another
CPU, and read its process tree's CPU time and PSS from /proc (psutil).

A server runs in its own session (process group), so stopping it also reaps any
worker it forked, and none is ever left running."""

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
APPS = HERE / "apps"
POST_LUA = HERE / "post.lua"
WSLOAD = HERE / "wsload.py"
BIN = Path(sys.executable).parent
LOAD_CPUS = "1"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process, as a context manager: started under `taskset -c cpus`
    (unpinned when cpus is None) with `cwd` (the apps directory) as working
    directory and on PYTHONPATH, ready once its port accepts, stopped (SIGTERM, then SIGKILL to
    its whole group) on exit."""

    def __init__(self, argv, port, cpus="0", env=None, log_dir=None, cwd=APPS):
        self.port = port
        self.log = tempfile.NamedTemporaryFile("w+", prefix="server-", suffix=".log", dir=log_dir, delete=False)
        env = dict(os.environ, VIRTUAL_ENV=str(BIN.parent), PYTHONPATH=str(cwd), **(env or {}))
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        pin = ["taskset", "-c", cpus] if cpus else []
        self.proc = subprocess.Popen([*pin, *argv], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.ps = psutil.Process(self.proc.pid)

    def __enter__(self):
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def wait_ready(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"server did not open port {self.port}: {self.log_tail()}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        try:  # whatever is left of the group: the leader if it hung, workers it orphaned
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)

    def log_tail(self, chars=600):
        self.log.flush()
        text = Path(self.log.name).read_text(errors="replace").strip()
        return text[-chars:] or "(no output)"

    def _tree(self):
        try:
            return [self.ps] + self.ps.children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self):
        """User+system time of the server's whole process tree so far.

        taskset exec()s the server, so the tree's root is the server itself."""
        total = 0.0
        for p in self._tree():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def pss_bytes(self):
        """Proportional set size summed over the process tree: shared pages are split
        between the processes that map them, so the sum is not inflated by fork."""
        total = 0
        for p in self._tree():
            try:
                total += p.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total


def probe(port, method="GET", body=None, timeout=10):
    """One request before any load: the status, headers and body length, so a server
    that answers wrongly is reported rather than measured."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, "/", body=body, headers={"Content-Type": "application/octet-stream"} if body else {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def _ms(value, unit):
    return float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]


def wrk(port, duration, connections, cpus=LOAD_CPUS, post_bytes=None, path="/", pipeline=None):
    """wrk -t1 pinned to `cpus` (unpinned when None) on `path`; with post_bytes,
    POSTs that many bytes per request through bench/post.lua; with pipeline,
    sends that many requests at once through bench/pipeline.lua. Returns rate,
    count, p50/p99 ms, non-2xx and socket errors."""
    pin = ["taskset", "-c", cpus] if cpus else []
    argv = [*pin, "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    if post_bytes is not None:
        argv += ["-s", str(POST_LUA)]
    elif pipeline is not None:
        argv += ["-s", str(HERE / "pipeline.lua")]
    argv.append(f"http://127.0.0.1:{port}{path}")
    if post_bytes is not None:
        argv += ["--", str(post_bytes)]
    elif pipeline is not None:
        argv += ["--", str(pipeline)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return parse_wrk(out)


def parse_wrk(out):
    """wrk --latency's report: rate, count, p50/p99 ms, non-2xx and socket errors."""
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)

    def pct(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)\b", out)
        return _ms(*m.groups()) if m else float("nan")

    return {
        "rate": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "count": int(re.search(r"(\d+) requests in", out).group(1)),
        "p50": pct(50),
        "p99": pct(99),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "sock_err": sum(map(int, sock.groups())) if sock else 0,
    }


def wsload(port, duration, connections, cpus=LOAD_CPUS, size=64):
    """bench/wsload.py pinned to `cpus`, in the same shape as wrk()'s result
    (messages for requests; failed connections and wrong echoes as socket errors)."""
    out = subprocess.run(
        ["taskset", "-c", cpus, sys.executable, str(WSLOAD), "--port", str(port), "--duration", str(duration),
         "--connections", str(connections), "--size", str(size)],
        capture_output=True, text=True, check=True,
    ).stdout
    r = json.loads(out.strip().splitlines()[-1])
    if r["messages"] == 0:
        raise RuntimeError(f"no WebSocket echo: {r.get('first_error', r)}")
    return {"rate": r["rate"], "count": r["messages"], "p50": r["p50_ms"], "p99": r["p99_ms"],
            "non2xx": 0, "sock_err": r["errors"]}
