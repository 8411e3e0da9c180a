"""Where a request's latency goes, against a server already running
bench/apps/timed.py on this host: `wait` is from the client sending (or
connecting) to the handler starting, `delay` from the handler's end to the
client holding the whole response. A server that keeps written responses
back (in a ring it enters only between passes) shows in `delay`; one that
queues requests behind a busy shard shows in `wait`. The clocks agree
because client and server share the host.

    python bench/response_delay.py PORT [--clients 16] [--seconds 4]
        [--keep-alive] [--mixed]

`--mixed` asks for 1 ms in 90% of requests and 20 ms in the rest; else
every request asks for 20 ms. Prints percentiles of each part, in ms, the share
of requests over 30 ms (where p99 is a cliff: bench/queue_sim.py), and how
many requests each shard (or process) served."""

import argparse
import collections
import random
import socket
import threading
import time


def one_client(port, seconds, keep_alive, mixed, records):
    end = time.monotonic() + seconds
    sock = None
    while time.monotonic() < end:
        ms = 20 if not mixed or random.random() < 0.1 else 1
        sent = time.monotonic_ns()
        if sock is None:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        close = "" if keep_alive else "Connection: close\r\n"
        sock.sendall(f"GET /?ms={ms} HTTP/1.1\r\nHost: bench\r\n{close}\r\n".encode())
        data = b""
        head, body, length = b"", b"", None
        while length is None or len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if length is None and b"\r\n\r\n" in data:
                head, _, body = data.partition(b"\r\n\r\n")
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
            elif length is not None:
                body = data.partition(b"\r\n\r\n")[2]
        received = time.monotonic_ns()
        if not keep_alive or b"connection: close" in head.lower() or length is None:
            sock.close()
            sock = None
        if length is None or len(body) < length:
            continue
        where, began, ended = body.split()
        records.append((sent, int(began), int(ended), received, where.decode()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("port", type=int)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--keep-alive", action="store_true")
    ap.add_argument("--mixed", action="store_true")
    args = ap.parse_args()
    records = []
    threads = [threading.Thread(target=one_client, args=(args.port, args.seconds, args.keep_alive,
                                                          args.mixed, records))
               for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if not records:
        raise SystemExit("no complete response")

    def line(name, values):
        values = sorted(v / 1e6 for v in values)
        at = lambda q: values[min(len(values) - 1, int(q * len(values)))]
        return f"{name:8} p50 {at(0.5):7.1f}  p90 {at(0.9):7.1f}  p99 {at(0.99):7.1f}"

    latencies = [r[3] - r[0] for r in records]
    slow = 100 * sum(1 for v in latencies if v > 30e6) / len(latencies)
    print(f"{len(records)} requests, {len(records) / args.seconds:.0f}/s, {slow:.2f}% over 30 ms")
    print(line("latency", latencies))
    print(line("wait", [r[1] - r[0] for r in records]))
    print(line("delay", [r[3] - r[2] for r in records]))
    print("served by", dict(collections.Counter(r[4] for r in records)))


if __name__ == "__main__":
    main()
