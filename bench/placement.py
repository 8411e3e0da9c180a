"""Placement across shards: CPU-bound and mixed handlers on a 2-core server,
at 2, 4 and 16 connections, keep-alive and a new connection per request.

turbo runs on `--cores 1` and `--cores 2`; its peers run 2 workers (Gunicorn
sync, Gunicorn gthread with 4 threads, Granian). The server is not pinned and
wrk shares the machine's 2 CPUs: the handlers' milliseconds of CPU dwarf
wrk's part. Each server starts once per configuration, answers one request
and takes a 1 s warm-up, then serves `--placement-rounds` rounds (default 5)
of `--duration` seconds, each round from fresh connections, after 4
requests on fresh connections at once are answered (so what the last
round's clients left in flight has ended on every shard) and 0.2 s more
(so the shards have read those connections' closes); a new connection
per request runs 2 rounds. The table gives the worst round next to the
median: a connection placed on a busy shard shows in the worst round. The
2-core/1-core ratio divides by turbo's 1-core worst round. With
`--baseline OTHER_TURBO`, that build runs too, on 2 cores.
"""

import concurrent.futures
import statistics
import subprocess
import sys
import time

import harness
import peers
import report
import suite
from harness import Server, free_port

MIXED_LUA = harness.HERE / "mixed.lua"
SCENARIOS = {
    # name: (what, wrk Lua arguments: short ms, long ms, percent long)
    "cpu": ("every request 20 ms of CPU", ("20", "20", "0")),
    "mixed": ("90% 1 ms, 10% 20 ms of CPU", ("1", "20", "10")),
}
PEERS = [("gunicorn-sync", 2), ("gunicorn-gthread", 2), ("granian", 2)]


def load(port, duration, connections, lua_args, keep_alive):
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(MIXED_LUA)]
    if not keep_alive:
        argv += ["-H", "Connection: close"]
    argv += [f"http://127.0.0.1:{port}/", "--", *lua_args]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return harness.parse_wrk(out)


def settle(port, requests=4):
    """Answers to requests sent at once on fresh connections. A single probe
    waits only for the shard it lands on: with a queue per shard, the other
    could still be computing what the last round's clients abandoned (8
    requests of 20 ms at 16 connections), and that counted in the next
    round's p99 for turbo only, since Gunicorn's one accept queue makes a
    single probe wait for all of it."""
    with concurrent.futures.ThreadPoolExecutor(requests) as pool:
        for status, _, _ in pool.map(lambda _: harness.probe(port, timeout=30), range(requests)):
            assert status == 200, status
    # The probes can be answered in the same pass that ends the abandoned
    # requests, before the shards read their connections' closes; those
    # would still count for placement when the next round connects, and
    # place its connections unevenly. A shard at rest reads them at once.
    time.sleep(0.2)


def run(args, turbo, env):
    if args.placement_modes:
        # turbo's two isolation modes against each other, without the peers.
        servers = [(f"turbo-{mode}", cores) for mode in ("process", "subinterpreter") for cores in (1, 2)]
    else:
        servers = [("turbo", 1), ("turbo", 2)]
    if args.baseline:
        # Another build (`--baseline`), to show a change.
        servers += [("turbo-baseline", 2)]
    if not args.placement_modes:
        servers += PEERS
    out = report.Report("placement.md")
    out.add("# Placement across shards", "", report.environment(turbo), "", *__doc__.strip().splitlines(), "")
    app = suite.App("burn", "burn:app", "wsgi", "CPU-bound handler")
    only = set(args.placement_only.split(",")) if args.placement_only else None
    for scenario, (what, lua_args) in SCENARIOS.items():
        for keep_alive in (True, False):
            rounds = args.placement_rounds if keep_alive else 2
            mode = "keep-alive" if keep_alive else "new connection per request"
            rows = [c for c in (2, 4, 16)
                    if only is None or f"{scenario}:{'keep-alive' if keep_alive else 'close'}:{c}" in only]
            if not rows:
                continue
            out.add(f"## {scenario}: {what}, {mode} ({args.duration} s x {rounds} rounds)", "",
                    "| connections | server | workers | req/s median | req/s worst | p99 ms worst | 2 cores / 1 core, worst |",
                    "|---|---|---|---|---|---|---|")
            for connections in rows:
                worst = {}
                for name, cores in servers:
                    rates, p99s = [], []
                    port = free_port()
                    binary = args.baseline if name == "turbo-baseline" else turbo
                    argv = peers.command(name, app, port, binary, cores=cores)
                    with Server(argv, port, cpus=None, env=env, log_dir=args.tmp):
                        # One answered request: the server serves (its port
                        # accepts into the backlog before it does); then a
                        # warm-up.
                        harness.probe(port)
                        load(port, 1, connections, lua_args, keep_alive)
                        for r in range(rounds):
                            # What the last round left in flight has ended, so
                            # each round starts from a server at rest.
                            settle(port)
                            result = load(port, args.duration, connections, lua_args, keep_alive)
                            rates.append(result["rate"])
                            p99s.append(result["p99"])
                            print(f"  {scenario} {mode} c{connections} {name} x{cores} round {r + 1}: "
                                  f"{result['rate']:.1f} req/s, p99 {result['p99']:.1f} ms", file=sys.stderr)
                    worst[name, cores] = min(rates)
                    ratio = ""
                    if name.startswith("turbo") and cores == 2:
                        # Against the same mode's one core (the default build's for a baseline).
                        one = worst.get((name, 1)) or worst.get((servers[0][0], 1))
                        ratio = f"{min(rates) / one:.2f}x" if one else ""
                    out.add(f"| {connections} | {name} | {cores} | {statistics.median(rates):.1f} | "
                            f"{min(rates):.1f} | {max(p99s):.1f} | {ratio} |")
            out.add("")
