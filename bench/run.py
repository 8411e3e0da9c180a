"""Benchmark: turbo against the usual Python servers, one core each, on the same apps.

Method: every server runs pinned to CPU 0 (taskset) and the load generator to CPU 1
(wrk -t1, or bench/wsload.py for the WebSocket echo). Each round starts every server
in turn, checks one response, warms it up, then measures; the order of the servers
reverses every other round so drift on a shared machine hits them alike. Tables
show medians over the rounds. The server's CPU time per request is the user+system
time of its whole process tree (psutil, i.e. /proc), which stays meaningful when
the load generator is the bottleneck; PSS is summed over the same tree after the
load. "bare" is a Rust hello server on compio with no Python, the floor.

Modes: the apps (default), --memory (PSS of the Flask app at 1 and 2 workers),
--scaling (turbo's CPU-bound throughput on 1 and 2 shards), --placement (CPU-bound
and mixed handlers at 2, 4 and 16 connections against 2-worker peers; bench/placement.py),
--hostile (memory
per idle connection and the CPU a dribbled head costs; bench/hostile.py).
"""

import argparse
import inspect
import os
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

import harness
import hostile
import peers
import placement
import report
import suite
from harness import Server, free_port


def shown(argv):
    """A command line as the report shows it: quoted, paths relative to the repository."""
    return shlex.join(str(a) for a in argv).replace(f"{harness.HERE.parent}/", "")


def run_load(app, port, duration, connections, cpus=harness.LOAD_CPUS):
    if app.load == "ws":
        return harness.wsload(port, duration, connections, cpus=cpus)
    return harness.wrk(port, duration, connections, cpus=cpus, post_bytes=app.post_bytes)


def check(app, port):
    """One request of the app's kind; raises unless it is answered as expected, and
    returns a note from the `x-bench-via` header where the app sets one."""
    body = b"x" * app.post_bytes if app.post_bytes else None
    status, headers, data = harness.probe(port, "POST" if body else "GET", body)
    if status != 200:
        raise RuntimeError(f"probe got HTTP {status}")
    if app.expect_bytes is not None and len(data) != app.expect_bytes:
        raise RuntimeError(f"probe got {len(data)} bytes, not {app.expect_bytes}")
    return headers.get("x-bench-via")


def measure(app, argv, port, args, env):
    with Server(argv, port, cpus="0", env=env, log_dir=args.tmp) as srv:
        via = check(app, port)
        run_load(app, port, args.warmup, args.connections)
        cpu0 = srv.cpu_seconds()
        res = run_load(app, port, args.duration, args.connections)
        cpu = srv.cpu_seconds() - cpu0
        res["cpu_us"] = cpu / max(res["count"], 1) * 1e6
        res["pss_mb"] = srv.pss_bytes() / 2**20
        res["via"] = via
        return res


def bench_apps(args, turbo, env):
    out = report.Report("latest.md")
    out.add("# turbo benchmark", "", report.environment(turbo), "", *__doc__.strip().splitlines(), "",
            "`bench/run.py " + " ".join(sys.argv[1:]) + "`", "")
    wanted = set(args.servers.split(","))
    ratios, commands = {}, []
    for app in suite.select(args.apps):
        names = peers.applicable(app, wanted)
        results = {n: [] for n in names}
        failures, vias = {}, {}
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else reversed(names):
                if name in failures:
                    continue
                port = free_port()
                argv = peers.command(name, app, port, turbo)
                if r == 0:
                    commands.append(f"- {app.name}, {name}: `{shown(argv)}`")
                try:
                    res = measure(app, argv, port, args, env)
                except Exception as e:  # one server failing must not lose the others' numbers
                    failures[name] = " ".join(str(e).split())[:200]
                    print(f"  round {r + 1} {app.name} {name}: FAILED {failures[name]}", file=sys.stderr)
                    continue
                results[name].append(res)
                if res["via"]:
                    vias[name] = res["via"]
                print(f"  round {r + 1} {app.name} {name}: {res['rate']:.0f} {app.unit}/s, "
                      f"{res['cpu_us']:.1f} us CPU/{app.unit}", file=sys.stderr)
        medians = {n: {k: statistics.median(x[k] for x in rs) for k in rs[0] if k != "via"}
                   for n, rs in results.items() if rs and n not in failures}
        notes = []
        if vias:
            notes.append("Sent by: " + ", ".join(f"{n} {v}" for n, v in vias.items()) + ".")
        if app.threads:
            notes.append(f"Threads: turbo --threads {app.threads}, gunicorn -k gthread --threads {app.threads}, "
                         f"granian --blocking-threads {app.threads}; gunicorn sync has one.")
        out.add(*report.app_table(app, names, medians, failures, notes, args.duration, args.rounds,
                                  args.connections))
        ratios[app.name] = report.ratios(medians)
    out.add("## Commands", "", "Run from bench/apps/ under `taskset -c 0`, each on a free port.", "", *commands)
    png = report.chart(ratios, report.RESULTS / "ratios.png")
    print(f"\nWrote {out.path}" + (f" and {png}" if png else ""), file=sys.stderr)


def pss_rounds(args, env, variants):
    """Median PSS in MiB of each variant's whole process tree after a warm-up
    load, and why any failed. `variants` maps a key to argv(port); their order
    flips every round."""
    app = suite.BY_NAME["flask"]
    pss = {key: [] for key in variants}
    failures = {}
    for r in range(args.rounds):
        keys = list(variants) if r % 2 == 0 else list(reversed(variants))
        for key in keys:
            port = free_port()
            try:
                with Server(variants[key](port), port, cpus=None, env=env, log_dir=args.tmp) as srv:
                    check(app, port)
                    harness.wrk(port, args.warmup, args.connections)
                    pss[key].append(srv.pss_bytes() / 2**20)
            except Exception as e:
                failures[key] = " ".join(str(e).split())[:200]
                print(f"  round {r + 1} {key}: FAILED {failures[key]}", file=sys.stderr)
                continue
            print(f"  round {r + 1} {key}: {pss[key][-1]:.1f} MiB", file=sys.stderr)
    return {k: statistics.median(v) if v else float("nan") for k, v in pss.items()}, failures


def memory(args, turbo, env):
    """PSS of the Flask app's whole process tree at one and two workers, after a
    short warm-up load, for turbo (shards share one process), Gunicorn and Granian
    (a process per worker). Servers are not pinned here (two workers want two CPUs);
    the warm-up's wrk runs on CPU 1."""
    out = report.Report("memory.md")
    out.add("# turbo memory benchmark", "", report.environment(turbo), "", inspect.cleandoc(memory.__doc__), "")
    app = suite.BY_NAME["flask"]
    configs = [("turbo", "turbo"), ("gunicorn", "gunicorn-sync"), ("granian", "granian")]
    med, failures = pss_rounds(args, env, {
        (label, c): (lambda port, server=server, c=c: peers.command(server, app, port, turbo, cores=c))
        for label, server in configs for c in (1, 2)})
    out.add(f"Flask hello, warm-up wrk -c{args.connections} {args.warmup} s, PSS summed over the process tree, "
            f"medians over {args.rounds} rounds.", "",
            "| server | PSS MiB, 1 worker | PSS MiB, 2 workers | growth per added worker MiB |", "|---|---|---|---|")
    for label, _ in configs:
        one, two = med[label, 1], med[label, 2]
        out.add(f"| {label} | {report.fmt(one, 1)} | {report.fmt(two, 1)} | {report.fmt(two - one, 1)} |")
    out.add("", "turbo's workers are shards (`--cores N`), Gunicorn's `-w N` sync workers, Granian's `--workers N`.")
    for label, _ in configs[1:]:
        ratio = med["turbo", 2] / med[label, 2]
        target = " (target: 0.6x or less)" if label == "gunicorn" else ""
        out.add("", f"turbo/{label} PSS at 2 workers: **{report.fmt(ratio, 2)}x**{target}.")
    for (label, cores), why in failures.items():
        out.add("", f"{label} with {cores} workers failed: {why}")


def memory_process(args, turbo, env):
    """PSS of the Flask app's whole process tree in turbo's process mode
    (`--isolation process --cores N`) and Gunicorn's sync workers (`-w N`), at
    2, 4 and 8 workers, with and without `--preload`, after a short warm-up
    load. Not pinned."""
    out = report.Report("memory-process.md")
    out.add("# turbo process-mode memory", "", report.environment(turbo), "",
            inspect.cleandoc(memory_process.__doc__), "")
    app = suite.BY_NAME["flask"]
    counts = [int(n) for n in args.workers.split(",")]
    variants = {}
    for n in counts:
        for preload in (False, True):
            extra = ["--preload"] if preload else []
            variants["turbo", n, preload] = (lambda port, n=n, extra=extra: peers.command(
                "turbo", app, port, turbo, cores=n) + ["--isolation", "process", *extra])
            variants["gunicorn", n, preload] = (lambda port, n=n, extra=extra: peers.command(
                "gunicorn-sync", app, port, turbo, cores=n) + extra)
    med, failures = pss_rounds(args, env, variants)
    out.add(f"Flask hello, warm-up wrk -c{args.connections} {args.warmup} s, medians over {args.rounds} rounds.",
            "", "| workers | preload | turbo PSS MiB | Gunicorn PSS MiB | turbo/Gunicorn |", "|---|---|---|---|---|")
    for n in counts:
        for preload in (False, True):
            t, g = med["turbo", n, preload], med["gunicorn", n, preload]
            out.add(f"| {n} | {'yes' if preload else 'no'} | {report.fmt(t, 1)} | {report.fmt(g, 1)} "
                    f"| **{report.fmt(t / g, 2)}x** |")
    for key, why in failures.items():
        out.add("", f"{key} failed: {why}")


def scaling(args, turbo, env):
    """Req/s of a CPU-bound handler on one shard and on two, alternating. The
    handler is so slow that wrk, on either CPU, takes little from the shards."""
    out = report.Report("scaling.md")
    app = suite.App("cpu", "cpu:app", "wsgi", "CPU-bound handler")
    results = {1: [], 2: []}
    for r in range(args.rounds):
        for cores in (1, 2) if r % 2 == 0 else (2, 1):
            port = free_port()
            with Server(peers.command("turbo", app, port, turbo, cores=cores), port, cpus=None, env=env,
                        log_dir=args.tmp):
                harness.wrk(port, args.warmup, 8, cpus="0,1")
                rps = harness.wrk(port, args.duration, 8, cpus="0,1")["rate"]
            results[cores].append(rps)
            print(f"  round {r + 1} --cores {cores}: {rps:.1f} req/s", file=sys.stderr)
    one, two = (statistics.median(results[c]) for c in (1, 2))
    out.add(f"### CPU-bound handler, --cores 1 vs 2 (wrk -c8, {args.duration}s x {args.rounds} rounds, medians)", "",
            "| shards | req/s | speed-up |", "|---|---|---|",
            f"| 1 | {one:.1f} | 1.00x |", f"| 2 | {two:.1f} | {two / one:.2f}x |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turbo", required=True, help="the turbo command: a virtualenv's bin/turbo (or an older standalone binary)")
    ap.add_argument("--duration", type=int, default=10, help="seconds of measured load per server and round")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of load before measuring")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--placement-rounds", type=int, default=5, help="keep-alive rounds in --placement")
    ap.add_argument("--baseline", help="--placement: another turbo build to run beside it")
    ap.add_argument("--placement-modes", action="store_true",
                    help="--placement: turbo in process mode against sub-interpreters, without the peers")
    ap.add_argument("--placement-only", metavar="LOAD:MODE:CONNECTIONS,...",
                    help="--placement: only these rows, e.g. mixed:keep-alive:4,cpu:close:16 "
                         "(LOAD cpu or mixed, MODE keep-alive or close)")
    ap.add_argument("--apps", default="all", help=f"comma-separated, of: {', '.join(suite.BY_NAME)} (or all)")
    ap.add_argument("--servers", default="turbo,bare,granian,bjoern,gunicorn,uvicorn",
                    help="those that serve each app's interface are run; gunicorn means all its worker kinds")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--memory", action="store_true", help="PSS at 1 and 2 workers instead (Flask app)")
    mode.add_argument("--memory-process", action="store_true",
                      help="PSS in process mode against Gunicorn, with and without --preload (Flask app)")
    ap.add_argument("--workers", default="2,4,8", help="--memory-process: the worker counts")
    mode.add_argument("--scaling", action="store_true", help="turbo on 1 and 2 shards instead (CPU-bound app)")
    mode.add_argument("--placement", action="store_true",
                      help="CPU-bound and mixed handlers at 2, 4, 16 connections on 2 cores (bench/placement.py)")
    mode.add_argument("--hostile", action="store_true",
                      help="memory per idle connection and a dribbled head's CPU instead (bench/hostile.py)")
    args = ap.parse_args()
    turbo = os.path.abspath(args.turbo)
    if not os.access(turbo, os.X_OK):
        raise SystemExit(f"no turbo binary at {turbo}")
    if args.baseline:
        args.baseline = os.path.abspath(args.baseline)
    with tempfile.TemporaryDirectory(prefix="turbo-bench-") as tmp:
        args.tmp = tmp
        big = Path(tmp) / "1mib.bin"  # the file apps' file, made once per run
        big.write_bytes(os.urandom(1 << 20))
        env = {"BENCH_FILE": str(big)}
        if args.memory:
            memory(args, turbo, env)
        elif args.memory_process:
            memory_process(args, turbo, env)
        elif args.scaling:
            scaling(args, turbo, env)
        elif args.hostile:
            hostile.run(args, turbo, env)
        elif args.placement:
            placement.run(args, turbo, env)
        else:
            wants_bare = "bare" in args.servers.split(",") and any(a.bare for a in suite.select(args.apps))
            if wants_bare and not peers.BARE.exists():
                raise SystemExit(f"no {peers.BARE}: cargo build --release --manifest-path bench/bare/Cargo.toml")
            bench_apps(args, turbo, env)

if __name__ == "__main__":
    main()
