"""A burst of I/O-bound requests: thousands of clients connect at once, each
sends one request to a view that sleeps (50 ms by default) and reads the
answer. Gunicorn's gthread workers and turbo's --threads in both isolation
modes, with the same workers and threads; the time until every request is
answered, and how many were not.

    .venv-bench/bin/python bench/burst.py --turbo .venv-bench/bin/turbo
        [--requests 3000] [--workers 2] [--threads 4] [--ms 50] [--rounds 3]

With W workers of T threads, the least time the burst can take is
requests / (W * T) * ms: the table gives each server's time and its
efficiency against that bound. Servers and the client are not pinned."""

import argparse
import asyncio
import os
import statistics
import sys
import time

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


def command(server, turbo, port, workers, threads):
    if server.startswith("turbo"):
        mode = server.partition("-")[2]
        return [turbo, "sleepms:app", "--cores", str(workers), "--threads", str(threads), "--backlog", "4096",
                "--isolation", mode, "--bind", f"127.0.0.1:{port}", "--log-level", "warning"]
    return [str(BIN / "gunicorn"), "sleepms:app", "-w", str(workers), "-k", "gthread", "--threads", str(threads),
            "--backlog", "4096", "-b", f"127.0.0.1:{port}", "--log-level", "warning"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turbo", required=True)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--ms", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--servers", default="turbo-process,turbo-subinterpreter,gunicorn")
    args = ap.parse_args()
    args.turbo = os.path.abspath(args.turbo)
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.requests + 256)), hard))
    bound = args.requests / (args.workers * args.threads) * args.ms / 1000
    servers = args.servers.split(",")
    times = {s: [] for s in servers}
    lost = {s: 0 for s in servers}
    for r in range(args.rounds):
        for server in servers if r % 2 == 0 else list(reversed(servers)):
            port = free_port()
            with Server(command(server, args.turbo, port, args.workers, args.threads), port, cpus=None):
                elapsed, failed = asyncio.run(burst(port, args.requests, f"/?ms={args.ms}", 10 * bound + 30))
            times[server].append(elapsed)
            lost[server] += failed
            print(f"  round {r + 1} {server}: {elapsed:.2f} s, {failed} unanswered", file=sys.stderr)
    print(f"{args.requests} requests of {args.ms} ms at once, {args.workers} workers x {args.threads} threads; "
          f"the bound is {bound:.2f} s. Medians of {args.rounds} rounds.\n")
    print("| server | time s | bound / time | unanswered (all rounds) |\n|---|---|---|---|")
    for s in servers:
        t = statistics.median(times[s])
        print(f"| {s} | {t:.2f} | {bound / t:.2f} | {lost[s]} |")


if __name__ == "__main__":
    main()
