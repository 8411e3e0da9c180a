"""A burst of I/O-bound requests: thousands of clients connect at once, each
sends one request to a view that sleeps (50 ms by default) and reads the
answer. Gunicorn's gthread workers and turbo's --threads in both isolation
modes, with the same workers and threads; the time until every request is
answered, and how many were not. `--cpu N` makes each view compute N ms in
Python first, holding the GIL.

    .venv-bench/bin/python bench/burst.py --turbo .venv-bench/bin/turbo
        [--requests 3000] [--workers 2] [--threads 4] [--ms 50] [--cpu 0] [--rounds 3]

With W workers of T threads, the least time the burst can take is
requests / (W * T) * (ms + cpu): the table gives each server's time and its
efficiency against that bound. Servers and the client are not pinned.

For turbo it also gives how long the shards' threads waited to take the
GIL back from the views' Python threads after each wait for I/O: accepting,
reading heads and writing responses wait that long (`turbo_gil_wait_seconds`
from --metrics-bind, summed over the rounds). CPython's switch interval
(sys.getswitchinterval(), 5 ms) is what a thread running bytecode makes a
waiting one wait at most."""

import argparse
import asyncio
import os
import re
import statistics
import sys
import time
import urllib.request

from harness import BIN, Server, free_port


async def one(port, path, deadline):
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), deadline)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), deadline)
        writer.close()
        return data.startswith(b"HTTP/1.1 200")
    except (OSError, asyncio.TimeoutError):
        return False


async def burst(port, requests, path, deadline):
    started = time.monotonic()
    answers = await asyncio.gather(*(one(port, path, deadline) for _ in range(requests)))
    return time.monotonic() - started, requests - sum(answers)


def command(server, turbo, port, ops, workers, threads):
    if server.startswith("turbo"):
        mode = server.partition("-")[2]
        return [turbo, "sleepms:app", "--cores", str(workers), "--threads", str(threads), "--backlog", "4096",
                "--isolation", mode, "--bind", f"127.0.0.1:{port}", "--metrics-bind", f"127.0.0.1:{ops}",
                "--log-level", "warning"]
    return [str(BIN / "gunicorn"), "sleepms:app", "-w", str(workers), "-k", "gthread", "--threads", str(threads),
            "--backlog", "4096", "-b", f"127.0.0.1:{port}", "--log-level", "warning"]


GIL_BUCKET = re.compile(r'^turbo_gil_wait_seconds_bucket\{shard="\d+",le="([^"]+)"\} (\d+)$', re.M)


def gil_waits(ops):
    """turbo's GIL waits so far, as {upper bound in seconds: cumulative
    count}, summed over the shards."""
    with urllib.request.urlopen(f"http://127.0.0.1:{ops}/metrics", timeout=10) as response:
        text = response.read().decode()
    buckets = {}
    for le, n in GIL_BUCKET.findall(text):
        bound = float("inf") if le == "+Inf" else float(le)
        buckets[bound] = buckets.get(bound, 0) + int(n)
    return buckets


def describe_waits(buckets):
    """The count, the shares over the switch interval (5 ms) and over the
    interval with its hand-off (6 ms), and the bucket bounds that hold 99%
    and all of the waits."""
    count = buckets.get(float("inf"), 0)
    if not count:
        return "no waits counted"
    bounds = sorted(buckets)
    p99 = next(b for b in bounds if buckets[b] >= 0.99 * count)
    most = next(b for b in bounds if buckets[b] == count)
    over = lambda b: f"{1 - buckets.get(b, 0) / count:.2%}"
    shown = lambda b: "over 100 ms" if b == float("inf") else f"<= {b * 1000:g} ms"
    return (f"{count} waits, {over(0.005)} over 5 ms, {over(0.006)} over 6 ms, p99 {shown(p99)}, "
            f"all {shown(most)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turbo", required=True)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--ms", type=int, default=50)
    ap.add_argument("--cpu", type=int, default=0, help="ms of Python computing in each view, before its wait")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--servers", default="turbo-process,turbo-subinterpreter,gunicorn")
    args = ap.parse_args()
    args.turbo = os.path.abspath(args.turbo)
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.requests + 256)), hard))
    bound = args.requests / (args.workers * args.threads) * (args.ms + args.cpu) / 1000
    servers = args.servers.split(",")
    times = {s: [] for s in servers}
    lost = {s: 0 for s in servers}
    waits = {s: {} for s in servers}
    for r in range(args.rounds):
        for server in servers if r % 2 == 0 else list(reversed(servers)):
            port, ops = free_port(), free_port()
            path = f"/?ms={args.ms}&cpu={args.cpu}"
            with Server(command(server, args.turbo, port, ops, args.workers, args.threads), port, cpus=None):
                elapsed, failed = asyncio.run(burst(port, args.requests, path, 10 * bound + 30))
                if server.startswith("turbo"):
                    for b, n in gil_waits(ops).items():
                        waits[server][b] = waits[server].get(b, 0) + n
            times[server].append(elapsed)
            lost[server] += failed
            print(f"  round {r + 1} {server}: {elapsed:.2f} s, {failed} unanswered", file=sys.stderr)
    view = f"{args.cpu} ms of Python, then " if args.cpu else ""
    print(f"{args.requests} requests of {view}{args.ms} ms asleep at once, {args.workers} workers x "
          f"{args.threads} threads; the bound is {bound:.2f} s. Medians of {args.rounds} rounds.\n")
    print("| server | time s | bound / time | unanswered (all rounds) | shard threads' GIL waits (all rounds) |")
    print("|---|---|---|---|---|")
    for s in servers:
        t = statistics.median(times[s])
        gil = describe_waits(waits[s]) if s.startswith("turbo") else ""
        print(f"| {s} | {t:.2f} | {bound / t:.2f} | {lost[s]} | {gil} |")


if __name__ == "__main__":
    main()
