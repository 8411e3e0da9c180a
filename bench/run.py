"""Benchmark: turbo against Granian, bjoern and Gunicorn (WSGI) and against
Granian and Uvicorn (ASGI), one core each.

Method: every server runs pinned to CPU 0 (taskset) and wrk to CPU 1. Each round
starts every server in turn, warms it up, then measures with wrk; rounds alternate
between servers so drift on this shared machine hits all of them alike. The table
shows medians over the rounds. The server's CPU time per request comes from its
process tree's user+system time (psutil, i.e. /proc), which stays meaningful when
wrk itself is the bottleneck.
"""

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
APPS = HERE / "apps"
BIN = Path(sys.executable).parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ASGI_APPS = {"asgihello:app"}


def servers(turbo, app):
    """The servers to run `app` with, as argv builders taking the port."""
    asgi = app in ASGI_APPS
    interface = "asgi" if asgi else "wsgi"
    table = {
        "turbo": lambda port: [turbo, app, "--cores", "1", "--bind", f"127.0.0.1:{port}", "--log-level", "warning"],
        "granian": lambda port: [str(BIN / "granian"), "--interface", interface, "--workers", "1",
                                 "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", app],
    }
    if asgi:
        table["uvicorn"] = lambda port: [str(BIN / "uvicorn"), "--workers", "1", "--loop", "uvloop",
                                         "--http", "httptools", "--host", "127.0.0.1", "--port", str(port),
                                         "--log-level", "warning", "--no-access-log", app]
    else:
        table["bjoern"] = lambda port: [sys.executable, "-c",
                                        f"import bjoern, importlib; m, a = {app!r}.split(':'); "
                                        f"bjoern.run(getattr(importlib.import_module(m), a), '127.0.0.1', {port})"]
        table["gunicorn"] = lambda port: [str(BIN / "gunicorn"), "-w", "1", "-b", f"127.0.0.1:{port}",
                                          "--log-level", "warning", app]
    return table


def wait_port(port, proc, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not open its port")


def cpu_seconds(proc):
    procs = [proc] + proc.children(recursive=True)
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def rss_pss(proc):
    total = 0
    for p in [proc] + proc.children(recursive=True):
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied, AttributeError):
            pass
    return total


def wrk(port, duration, connections, cpus="1"):
    out = subprocess.run(
        ["taskset", "-c", cpus, "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
         f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)

    def pct(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        value, unit = float(m.group(1)), m.group(2)
        return value * {"us": 0.001, "ms": 1, "s": 1000}[unit]

    return rps, total, pct(50), pct(99), int(errors.group(1)) if errors else 0


def measure(name, argv, duration, connections):
    port = free_port()
    env = dict(os.environ, VIRTUAL_ENV=str(BIN.parent), PYTHONPATH=str(APPS))
    proc = subprocess.Popen(["taskset", "-c", "0", *argv(port)], cwd=APPS, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        wrk(port, 2, connections)  # warm-up
        ps = psutil.Process(proc.pid)
        cpu0 = cpu_seconds(ps)
        rps, total, p50, p99, errors = wrk(port, duration, connections)
        cpu = cpu_seconds(ps) - cpu0
        mem = rss_pss(ps)
        return {"rps": rps, "p50": p50, "p99": p99, "cpu_us": cpu / max(total, 1) * 1e6,
                "pss_mb": mem / 2**20, "errors": errors}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def scaling(turbo, duration, rounds):
    """Req/s of a CPU-bound handler on one shard and on two, alternating. The
    handler is so slow that wrk, on either CPU, takes little from the shards."""
    results = {1: [], 2: []}
    for r in range(rounds):
        for cores in (1, 2) if r % 2 == 0 else (2, 1):
            port = free_port()
            env = dict(os.environ, VIRTUAL_ENV=str(BIN.parent))
            proc = subprocess.Popen([turbo, "cpu:app", "--cores", str(cores), "--bind", f"127.0.0.1:{port}",
                                     "--log-level", "warning"], cwd=APPS, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_port(port, proc)
                wrk(port, 2, 8, cpus="0,1")
                rps = wrk(port, duration, 8, cpus="0,1")[0]
            finally:
                proc.terminate()
                proc.wait(10)
            results[cores].append(rps)
            print(f"  round {r + 1} --cores {cores}: {rps:.1f} req/s", file=sys.stderr)
    one, two = (statistics.median(results[c]) for c in (1, 2))
    print(f"\n### CPU-bound handler, --cores 1 vs 2 (wrk -c8, {duration}s x {rounds} rounds, medians)\n")
    print("| shards | req/s | speed-up |\n|---|---|---|")
    print(f"| 1 | {one:.1f} | 1.00x |\n| 2 | {two:.1f} | {two / one:.2f}x |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turbo", required=True)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--apps", default="hello:app,flaskhello:app,asgihello:app")
    ap.add_argument("--servers", default="turbo,granian,bjoern,gunicorn,uvicorn",
                    help="those that serve each app's interface are run")
    ap.add_argument("--scaling", action="store_true", help="measure turbo on 1 and 2 shards instead")
    args = ap.parse_args()
    if args.scaling:
        scaling(os.path.abspath(args.turbo), args.duration, args.rounds)
        return
    turbo = os.path.abspath(args.turbo)
    print(__doc__)
    for app in args.apps.split(","):
        table = servers(turbo, app)
        names = [n for n in args.servers.split(",") if n in table]
        results = {n: [] for n in names}
        for r in range(args.rounds):
            order = names if r % 2 == 0 else list(reversed(names))
            for name in order:
                res = measure(name, table[name], args.duration, args.connections)
                results[name].append(res)
                print(f"  round {r + 1} {app} {name}: {res['rps']:.0f} req/s, {res['cpu_us']:.1f} us CPU/req",
                      file=sys.stderr)
        med = {n: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for n, rs in results.items()}
        print(f"\n### {app} (wrk -c{args.connections}, {args.duration}s x {args.rounds} rounds, medians)\n")
        print("| server | req/s | p50 ms | p99 ms | CPU us/req | PSS MiB | non-2xx | turbo req/s ratio |")
        print("|---|---|---|---|---|---|---|---|")
        for n in names:
            m = med[n]
            ratio = med["turbo"]["rps"] / m["rps"] if "turbo" in med and m["rps"] else float("nan")
            print(f"| {n} | {m['rps']:.0f} | {m['p50']:.2f} | {m['p99']:.2f} | {m['cpu_us']:.1f} | "
                  f"{m['pss_mb']:.1f} | {m['errors']:.0f} | {ratio:.2f}x |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
