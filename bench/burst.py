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

Meanwhile a probe client sends, every 20 ms on a new connection, a request
that no server hands to a view (HTTP/9.9): the time to its answer is what
accepting, parsing and writing wait for behind the views. For turbo the table
also gives how long the shards' threads waited for the GIL
(`turbo_gil_wait_seconds` from --metrics-bind, summed over the rounds).
CPython's switch interval (sys.getswitchinterval(), 5 ms) is what a thread
running bytecode makes a waiting one wait, or longer when several wait."""

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


# A request line no server runs the app for: turbo's shard thread answers it
# (505), Gunicorn's worker answers it from its Python parser (400).
BAD_VERSION = b"GET / HTTP/9.9\r\nHost: b\r\n\r\n"


async def probe(port, done, times):
    """Until `done`, every 20 ms: connects, sends BAD_VERSION and times the
    answer's first bytes. That is accept, parsing and a write, with no view."""
    while not done.is_set():
        started = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
            writer.write(BAD_VERSION)
            if await asyncio.wait_for(reader.read(12), 30):
                times.append(time.monotonic() - started)
            writer.close()
        except (OSError, asyncio.TimeoutError):
            pass
        await asyncio.sleep(0.02)


async def burst(port, requests, path, deadline):
    """The burst's time, its unanswered requests, and the probe's times."""
    done, times = asyncio.Event(), []
    prober = asyncio.create_task(probe(port, done, times))
    started = time.monotonic()
    answers = await asyncio.gather(*(one(port, path, deadline) for _ in range(requests)))
    elapsed = time.monotonic() - started
    done.set()
    await prober
    return elapsed, requests - sum(answers), times


def describe_probe(times):
    """Median, 99th percentile and most of the probe's answer times."""
    if not times:
        return "no answer"
    times = sorted(times)
    at = lambda q: times[min(len(times) - 1, int(q * len(times)))] * 1000
    return f"{len(times)} probes: median {at(0.5):.1f} ms, p99 {at(0.99):.1f} ms, max {times[-1] * 1000:.1f} ms"


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
    probes = {s: [] for s in servers}
    for r in range(args.rounds):
        for server in servers if r % 2 == 0 else list(reversed(servers)):
            port, ops = free_port(), free_port()
            path = f"/?ms={args.ms}&cpu={args.cpu}"
            with Server(command(server, args.turbo, port, ops, args.workers, args.threads), port, cpus=None):
                elapsed, failed, probed = asyncio.run(burst(port, args.requests, path, 10 * bound + 30))
                probes[server] += probed
                if server.startswith("turbo"):
                    for b, n in gil_waits(ops).items():
                        waits[server][b] = waits[server].get(b, 0) + n
            times[server].append(elapsed)
            lost[server] += failed
            print(f"  round {r + 1} {server}: {elapsed:.2f} s, {failed} unanswered", file=sys.stderr)
    view = f"{args.cpu} ms of Python, then " if args.cpu else ""
    print(f"{args.requests} requests of {view}{args.ms} ms asleep at once, {args.workers} workers x "
          f"{args.threads} threads; the bound is {bound:.2f} s. Medians of {args.rounds} rounds.\n")
    print("| server | time s | bound / time | unanswered (all rounds) | answers without a view (all rounds) "
          "| shard threads' GIL waits (all rounds) |")
    print("|---|---|---|---|---|---|")
    for s in servers:
        t = statistics.median(times[s])
        gil = describe_waits(waits[s]) if s.startswith("turbo") else ""
        print(f"| {s} | {t:.2f} | {bound / t:.2f} | {lost[s]} | {describe_probe(probes[s])} | {gil} |")


if __name__ == "__main__":
    main()
