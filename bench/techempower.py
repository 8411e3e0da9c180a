"""The database benchmark: TechEmpower's six test types on its Django app
(bench/techempower/tfb: psycopg2, orjson), against a PostgreSQL server this
bench starts, for turbo in its default isolation, Gunicorn gthread (4 threads)
and Granian WSGI, each configured as TechEmpower's Django configs set them.

    .venv-bench/bin/python bench/techempower.py --turbo .venv-bench/bin/turbo
        [--layout pinned,unpinned] [--duration 10] [--rounds 3] [--connections 64]
        [--servers turbo,gunicorn,granian] [--tests json,db,...] [--turbo-flags "..."]

Layouts:
- pinned: one worker on CPU 0; PostgreSQL and wrk on CPU 1.
- unpinned: two workers; the server, PostgreSQL and wrk all share both CPUs,
  as on a host with sidecars or the database beside the server.

Rounds alternate the servers' order. The table gives medians of req/s and
p99, and turbo's req/s over the best peer's; a second one the CPU time per
request of the server's processes and of PostgreSQL's, over the measured
load; results/techempower.md keeps it
with the exact commands. bench/run.sh installs what this needs (Django,
psycopg2, orjson are in bench/requirements.txt)."""

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile

from harness import BIN, HERE, Server, free_port, wrk
import report

sys.path.insert(0, str(HERE.parent / "tests"))
from postgres import Postgres  # noqa: E402

APP = HERE / "techempower"
TARGET = "tfb.wsgi:application"
# (name, path, pipelined depth): TechEmpower's test types.
TESTS = [
    ("json", "/json", None),
    ("db", "/db", None),
    ("queries-20", "/queries?queries=20", None),
    ("fortunes", "/fortunes", None),
    ("updates-20", "/updates?queries=20", None),
    ("plaintext-pipelined", "/plaintext", 16),
]


def command(server, turbo, port, workers, extra):
    bind = f"127.0.0.1:{port}"
    if server == "turbo":
        # Gunicorn's flags, as TechEmpower's gunicorn config gives them; a
        # flag in `extra` replaces the same one here.
        flags = {"-w": str(workers), "-k": "gthread", "--threads": "4", "--keep-alive": "120", "-b": bind,
                 "--log-level": "warning"}
        pairs = [(f, v) for f, v in flags.items() if f not in extra]
        return [turbo, TARGET, *(x for pair in pairs for x in pair), *extra]
    if server == "gunicorn":
        return [str(BIN / "gunicorn"), TARGET, "-w", str(workers), "-k", "gthread", "--threads", "4",
                "--keep-alive", "120", "-b", bind, "--log-level", "warning"]
    if server == "granian":
        # As TechEmpower's django-granian.dockerfile runs it: one blocking
        # (Python) thread per worker, the multi-threaded runtime.
        return [str(BIN / "granian"), "--interface", "wsgi", "--workers", str(workers), "--backlog", "16384",
                "--blocking-threads", "1", "--runtime-mode", "mt", "--host", "127.0.0.1", "--port", str(port),
                "--log-level", "warning", TARGET]
    raise SystemExit(f"unknown server {server}")


def check(port, path):
    """One request before the load: a server that answers wrongly is reported, not measured."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200 or not body:
        raise RuntimeError(f"{path}: {response.status} {body[:200]!r}")


def tree_cpu(process):
    """CPU seconds (user and system) of a process and its live descendants."""
    import psutil

    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        try:
            times = p.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def run_layout(args, layout, db, log_dir):
    pinned = layout == "pinned"
    workers = 1 if pinned else 2
    server_cpus, load_cpus = ("0", "1") if pinned else (None, None)
    servers = args.servers.split(",")
    tests = [t for t in TESTS if t[0] in args.tests.split(",")] if args.tests else TESTS
    results = {(s, t[0]): [] for s in servers for t in tests}
    failures = {}
    commands = {}
    env = {**db.env, "DJANGO_SETTINGS_MODULE": "tfb.settings"}
    import psutil

    database = psutil.Process(db.proc.pid)
    for r in range(args.rounds):
        for server in servers if r % 2 == 0 else list(reversed(servers)):
            port = free_port()
            argv = command(server, args.turbo, port, workers, shlex.split(args.turbo_flags))
            commands[server] = argv
            with Server(argv, port, cpus=server_cpus, env=env, log_dir=log_dir, cwd=APP) as srv:
                for name, path, depth in tests:
                    try:
                        check(port, path)
                    except (OSError, RuntimeError) as e:
                        failures.setdefault((server, name), " ".join(str(e).split())[:160])
                        print(f"  {layout} round {r + 1} {server} {name}: FAILED {e}"[:300], file=sys.stderr)
                        continue
                    # A short warm-up: connections, Django's caches, the pool.
                    wrk(port, 2, args.connections, cpus=load_cpus, path=path, pipeline=depth)
                    before = tree_cpu(srv.ps), tree_cpu(database)
                    res = wrk(port, args.duration, args.connections, cpus=load_cpus, path=path, pipeline=depth)
                    served = max(1.0, res["rate"] * args.duration)
                    res["server_cpu"] = (tree_cpu(srv.ps) - before[0]) / served * 1000
                    res["db_cpu"] = (tree_cpu(database) - before[1]) / served * 1000
                    results[server, name].append(res)
                    print(f"  {layout} round {r + 1} {server} {name}: {res['rate']:.0f} req/s, "
                          f"p99 {res['p99']:.1f} ms, errors {res['non2xx'] + res['sock_err']}, CPU ms/request: "
                          f"server {res['server_cpu']:.2f}, PostgreSQL {res['db_cpu']:.2f}", file=sys.stderr)
                log = srv.log_tail(4000)
                if "Traceback" in log or "Error handling request" in log:
                    print(f"  {server} logged errors:\n{log}", file=sys.stderr)
    lines = [f"### {layout}: {workers} worker(s)"
             + (", server on CPU 0, PostgreSQL and wrk on CPU 1" if pinned else ", nothing pinned"), "",
             "| test | " + " | ".join(f"{s} req/s (p99 ms)" for s in servers) + " | turbo / best peer |",
             "|---|" + "---|" * (len(servers) + 1)]
    nan = float("nan")
    for name, _, _ in tests:
        med = {s: (statistics.median(x["rate"] for x in results[s, name]) if results[s, name] else nan,
                   statistics.median(x["p99"] for x in results[s, name]) if results[s, name] else nan,
                   sum(x["non2xx"] + x["sock_err"] for x in results[s, name])) for s in servers}
        peers = [med[s][0] for s in servers if s != "turbo" and results[s, name]]
        ratio = med["turbo"][0] / max(peers) if "turbo" in med and peers else nan
        cells = [(f"{rate:.0f} ({p99:.0f})" if rate == rate else "failed")
                 + (f", {err} errors" if err else "") for rate, p99, err in med.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | **{report.fmt(ratio, 2)}x** |")
    lines += ["", "CPU per request, ms (medians): the server's processes, then PostgreSQL's.", "",
              "| test | " + " | ".join(servers) + " |", "|---|" + "---|" * len(servers)]
    for name, _, _ in tests:
        cells = [f"{statistics.median(x['server_cpu'] for x in results[s, name]):.2f} + "
                 f"{statistics.median(x['db_cpu'] for x in results[s, name]):.2f}"
                 if results[s, name] else "failed" for s in servers]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Rounds: " + "; ".join(
        f"{s} {n} " + ", ".join(f"{x['rate']:.0f}/{x['p99']:.0f}" for x in results[s, n])
        for s in servers for n, _, _ in tests), ""]
    lines += [f"{s} failed {n}: {why}" for (s, n), why in failures.items()]
    lines += ["", "Commands (from bench/techempower/):", ""] + [f"- `{shlex.join(map(str, a))}`" for a in commands.values()]
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turbo", required=True)
    ap.add_argument("--layout", default="pinned,unpinned")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--servers", default="turbo,gunicorn,granian")
    ap.add_argument("--tests", help="comma-separated, of: " + ", ".join(t[0] for t in TESTS))
    ap.add_argument("--turbo-flags", default="", help="more flags for turbo, e.g. '--threads 1'")
    args = ap.parse_args()
    args.turbo = os.path.abspath(args.turbo)
    out = report.Report("techempower.md")
    out.add("# TechEmpower's test types on Django and PostgreSQL", "", report.environment(args.turbo), "",
            f"wrk -t1 -c{args.connections}, {args.duration} s after a 2 s warm-up, medians over "
            f"{args.rounds} rounds; pipelined plaintext sends 16 requests at once.", "")
    for layout in args.layout.split(","):
        # Granian's threads each keep a connection of Django's.
        db = Postgres(cpus="1" if layout == "pinned" else None, max_connections=1000)
        try:
            subprocess.run(["psql", "-qAt", "-v", "ON_ERROR_STOP=1", "-c", "CREATE DATABASE hello_world"],
                           env={**os.environ, **db.env}, check=True, capture_output=True)
            subprocess.run(["psql", "-qAt", "-v", "ON_ERROR_STOP=1", "-d", "hello_world", "-f",
                            str(APP / "schema.sql")], env={**os.environ, **db.env}, check=True, capture_output=True)
            db.env["PGDATABASE"] = "hello_world"
            with tempfile.TemporaryDirectory(prefix="turbo-tfb-") as log_dir:
                out.add(*run_layout(args, layout, db, log_dir))
        finally:
            db.stop()


if __name__ == "__main__":
    main()
