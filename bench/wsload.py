"""WebSocket load generator: N connections, each sending a message and waiting for
its echo in a loop for the duration; prints one JSON line with messages per second
and round-trip percentiles.

wrk has no WebSocket mode, hence this. It is Python (the `websockets` library, on
uvloop when installed), so with a fast server it is the bottleneck: compare the
servers' CPU time per message as well as their rates. bench/run.py runs it pinned
to CPU 1, like wrk.

    python bench/wsload.py --port 8000 --connections 64 --duration 10 --size 64
"""

import argparse
import asyncio
import json
import time

from websockets.asyncio.client import connect


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(p / 100 * len(sorted_values)))]


async def client(uri, message, start, deadline, rtts, stats):
    """One connection: connect, wait for all the others, then echo until the deadline."""
    try:
        async with connect(uri, compression=None, ping_interval=None, max_size=None, open_timeout=10) as ws:
            stats["connected"] += 1
            await start.wait()
            while time.perf_counter() < deadline[0]:
                t0 = time.perf_counter()
                await ws.send(message)
                reply = await ws.recv()
                rtts.append(time.perf_counter() - t0)
                if reply != message:
                    stats["errors"] += 1
    except Exception as e:  # a refused or dropped connection counts, it doesn't stop the run
        stats["errors"] += 1
        stats.setdefault("first_error", repr(e))


async def run(args):
    uri = f"ws://{args.host}:{args.port}{args.path}"
    message = "x" * args.size
    start, deadline = asyncio.Event(), [float("inf")]
    rtts, stats = [], {"connected": 0, "errors": 0}
    tasks = [asyncio.create_task(client(uri, message, start, deadline, rtts, stats))
             for _ in range(args.connections)]
    # The clock starts once every connection is open (or has failed).
    while stats["connected"] + stats["errors"] < args.connections:
        await asyncio.sleep(0.01)
    t0 = time.perf_counter()
    deadline[0] = t0 + args.duration
    start.set()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    rtts.sort()
    return {
        "messages": len(rtts),
        "rate": len(rtts) / elapsed,
        "p50_ms": percentile(rtts, 50) * 1000,
        "p99_ms": percentile(rtts, 99) * 1000,
        **stats,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--size", type=int, default=64, help="bytes per text message")
    args = ap.parse_args()
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    print(json.dumps(runner(run(args))))


if __name__ == "__main__":
    main()
