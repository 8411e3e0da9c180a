"""The hostile-client benchmark (`bench/run.py --hostile`): what a bad client
costs each server, measured, not pass/fail (tests/test_hostile.py checks the
behaviour).

- Memory per idle keep-alive connection: PSS of the server's process tree
  with N connections open (each after one request), less PSS before, over N.
- The server CPU a dribbled head costs: a 700 KB head (90 fields of 7.8 KB,
  within Gunicorn's and turbo's default limits) sent 100 bytes at a time with
  TCP_NODELAY, 0.5 ms apart, the server's CPU seconds over the time it took,
  and the status it answered ("closed" where it closed the connection).

Servers are pinned to CPU 0 and the client to CPU 1, as in the other modes.
"""

import os
import socket
import statistics
import sys
import time

import harness
import peers
import report
import suite
from harness import Server, free_port

# Long keep-alive for every server, so idle connections stay open.
KEEP_ALIVE = {
    "turbo": ["--keep-alive", "120", "--worker-connections", "10000"],
    "gunicorn-gthread": ["--keep-alive", "120", "--worker-connections", "10000"],
    "uvicorn": ["--timeout-keep-alive", "120"],
    "granian": [],
}
# TURBO_FLAGS replaces turbo's, to measure a build without these settings.
if "TURBO_FLAGS" in os.environ:
    KEEP_ALIVE["turbo"] = os.environ["TURBO_FLAGS"].split()
HEAD = (b"GET / HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 7800) for i in range(90)) + b"\r\n")


def with_flags(name, app, port, turbo):
    argv = peers.command(name, app, port, turbo)
    extra = KEEP_ALIVE.get(name, [])
    if name == "granian":
        return argv
    # Every server's argv ends with the app for all but turbo, whose app comes first.
    return argv + extra if name == "turbo" else argv[:-1] + extra + argv[-1:]


def pin_client():
    os.sched_setaffinity(0, {int(c) for c in harness.LOAD_CPUS.split(",")})


def idle_connections(port, n):
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        socks.append(s)
    for s in socks:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError("a connection closed after its first request")
            data += chunk
    return socks


def dribble(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for i in range(0, len(HEAD), 100):
            s.sendall(HEAD[i:i + 100])
            time.sleep(0.0005)  # the client's pace: each piece arrives on its own
        s.settimeout(30)
        data = s.recv(65536)
    except OSError:
        return "closed"
    finally:
        s.close()
    return int(data.split()[1]) if data.startswith(b"HTTP/") else "closed"


def run(args, turbo, env):
    pin_client()
    out = report.Report("hostile.md")
    out.add("# turbo hostile-client benchmark", "", report.environment(turbo), "",
            *(__doc__ or "").strip().splitlines(), "")
    n = args.connections if args.connections != 64 else 2000
    rows = []
    for app_name, names in (("hello", ["turbo", "granian", "gunicorn-gthread"]),
                            ("asgihello", ["turbo", "granian", "uvicorn"])):
        app = suite.BY_NAME[app_name]
        for name in names:
            per_conn, cpu, status = [], [], None
            for _ in range(args.rounds):
                port = free_port()
                argv = with_flags(name, app, port, turbo)
                try:
                    with Server(argv, port, cpus="0", env=env, log_dir=args.tmp) as srv:
                        harness.probe(port)
                        before = srv.pss_bytes()
                        socks = idle_connections(port, n)
                        time.sleep(0.5)  # let the server settle before reading its memory
                        per_conn.append((srv.pss_bytes() - before) / n)
                        for s in socks:
                            s.close()
                        cpu0, t0 = srv.cpu_seconds(), time.monotonic()
                        status = dribble(port)
                        cpu.append((srv.cpu_seconds() - cpu0, time.monotonic() - t0))
                except Exception as e:
                    print(f"  {app_name} {name}: FAILED {' '.join(str(e).split())[:200]}", file=sys.stderr)
                    break
            if per_conn:
                kib = statistics.median(per_conn) / 1024
                used = statistics.median(c for c, _ in cpu) * 1000 if cpu else float("nan")
                took = statistics.median(t for _, t in cpu) if cpu else float("nan")
                rows.append((app_name, name, kib, used, took, status))
                print(f"  {app_name} {name}: {kib:.1f} KiB per idle connection, dribbled head "
                      f"{used:.0f} ms CPU over {took:.1f} s, HTTP {status}", file=sys.stderr)
    out.add(f"{n} idle keep-alive connections; the dribbled head once per round; medians over "
            f"{args.rounds} rounds.", "",
            "| app | server | KiB per idle connection | dribbled 700 KB head: server CPU ms | over s | status |",
            "|---|---|---|---|---|---|")
    for app_name, name, kib, used, took, status in rows:
        out.add(f"| {app_name} | {name} | {kib:.1f} | {used:.0f} | {took:.1f} | {status} |")
