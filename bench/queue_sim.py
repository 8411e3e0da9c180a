"""What queueing alone does to the placement bench's mixed load: a closed
loop of N clients (each sends its next request as its last is answered)
over 2 cores, 90% of requests 1 ms and 10% 20 ms, simulated without any
server overhead. It compares where a request waits:

- `shard`: on the shard its keep-alive connection is on, clients spread
  evenly (turbo, when no request moves);
- `fifo`: in one queue for both cores (Gunicorn sync, whose workers take
  each request's new connection from one accept queue);
- `steal`: on its shard, but a core that frees up first takes a waiting
  request from the other shard if that shard has been in its call for
  1 ms or more, and the connection moves with it.

    python bench/queue_sim.py [--clients 2,4,16] [--requests 300000]

Prints, per policy, the latency percentiles in ms and the share of requests
over 30 ms (docs/architecture.md, "Moving connections")."""

import argparse
import heapq
import random

SHORT, LONG, LONG_SHARE = 1.0, 20.0, 0.1
CORES = 2
STEAL_AFTER = 1.0


def simulate(clients, policy, requests, seed=1):
    rng = random.Random(seed)
    owner = [c % CORES for c in range(clients)]
    queues = [[] for _ in range(CORES)]
    running = [None] * CORES  # when the core's current request began
    events = [(0.0, c, "send", c) for c in range(clients)]
    heapq.heapify(events)
    order = clients
    latencies = []

    def start(core, now, sent, client):
        nonlocal order
        cost = LONG if rng.random() < LONG_SHARE else SHORT
        running[core] = now
        heapq.heappush(events, (now + cost, order, "done", (core, client, sent)))
        order += 1

    def next_for(core, now):
        """The queue `core` serves next, or None."""
        mine = [(queues[core][0][0], core)] if queues[core] else []
        others = [(queues[o][0][0], o) for o in range(CORES) if o != core and queues[o]]
        if policy == "fifo":
            return min(mine + others)[1] if mine or others else None
        if policy == "steal":
            for _, o in others:
                if running[o] is not None and now - running[o] >= STEAL_AFTER:
                    return o
        return core if mine else None

    while len(latencies) < requests:
        now, _, kind, what = heapq.heappop(events)
        if kind == "send":
            client = what
            core = owner[client]
            if running[core] is None:
                start(core, now, now, client)
            elif policy != "shard" and None in running:
                free = running.index(None)
                owner[client] = free
                start(free, now, now, client)
            else:
                queues[core].append((now, client))
            continue
        core, client, sent = what
        latencies.append(now - sent)
        running[core] = None
        heapq.heappush(events, (now, order, "send", client))
        order += 1
        source = next_for(core, now)
        if source is not None:
            sent, waiting = queues[source].pop(0)
            owner[waiting] = core
            start(core, now, sent, waiting)
    latencies.sort()
    n = len(latencies)
    over = 100 * sum(1 for x in latencies if x > 30) / n
    return [latencies[int(n * p)] for p in (0.5, 0.9, 0.99, 0.999)], over


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", default="2,4,16")
    ap.add_argument("--requests", type=int, default=300_000)
    args = ap.parse_args()
    print("clients policy  p50   p90   p99  p99.9  >30ms")
    for clients in map(int, args.clients.split(",")):
        for policy in ("shard", "fifo", "steal"):
            (p50, p90, p99, p999), over = simulate(clients, policy, args.requests)
            print(f"{clients:7} {policy:6} {p50:4.0f} {p90:5.0f} {p99:5.0f} {p999:6.0f} {over:5.2f}%")


if __name__ == "__main__":
    main()
