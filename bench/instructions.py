"""Instructions per request of turbo builds, counted by callgrind: a measure
that the shared machine's noise does not move, for comparing two builds of
the server's own path (a change must not make hello world dearer).

Each build serves an app under `valgrind --tool=callgrind` (epoll engine:
valgrind does not know io_uring; one shard, no timeout), and a client sends
requests one at a time on 4 keep-alive connections. Each build runs twice,
with `--few` and `--many` requests; the worker's instructions per request are
the difference of the two totals over the difference of the counts, so the
interpreter's start-up cancels out.
Callgrind itself varies by about 1% from run to run (the event loop's wake-ups
depend on timing), so report differences beyond that.

    bench/instructions.py .venv-bench/bin/turbo /tmp/turbo-old-venv/bin/turbo --apps hello,asgihello

`--also FLAGS` runs each build a second time with those flags added, for
the cost of a feature in one build:

    bench/instructions.py .venv-bench/bin/turbo --also "--metrics-bind 127.0.0.1:0"
"""

import argparse
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time

APPS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "apps")
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, limit=120):
    deadline = time.monotonic() + limit
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"nothing listens on port {port} after {limit} s")
            time.sleep(0.2)


def response_end(buf):
    """The end of the first complete response in `buf` (Content-Length
    framed), or None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", buf[:end])
    if not length:
        raise SystemExit(f"a response without Content-Length: {buf[:end]!r}")
    total = end + 4 + int(length.group(1))
    return total if len(buf) >= total else None


def send_requests(port, count, connections=4):
    socks = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(connections)]
    pending = [b""] * connections
    done = 0
    while done < count:
        for s in socks:
            s.sendall(REQUEST)
        for i, s in enumerate(socks):
            while (end := response_end(pending[i])) is None:
                data = s.recv(65536)
                if not data:
                    raise SystemExit("the server closed a connection")
                pending[i] += data
            if not pending[i].startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"not a 200: {pending[i][:100]!r}")
            pending[i] = pending[i][end:]
        done += connections
    for s in socks:
        s.close()
    return done


def worker_instructions(turbo, app, count, tmp, flags=()):
    """The instructions of the busiest process (the worker) serving `count`
    requests."""
    port = free_port()
    log = os.path.join(tmp, "valgrind.log")
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/callgrind.%p", "--trace-children=yes",
            turbo, app, "--cores", "1", "--bind", f"127.0.0.1:{port}", "--log-level", "warning",
            "--io-engine", "epoll", "--timeout", "0", *flags]
    with open(log, "w") as out:
        server = subprocess.Popen(argv, cwd=APPS, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port)
        sent = send_requests(port, count)
    finally:
        server.terminate()
        server.wait(timeout=120)
    with open(log) as f:
        totals = [int(n.replace(",", "")) for n in re.findall(r"Collected : ([\d,]+)", f.read())]
    if not totals:
        raise SystemExit(f"callgrind reported nothing; see {log}")
    return max(totals), sent


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("turbo", nargs="+", help="turbo binaries to compare")
    ap.add_argument("--apps", default="hello,asgihello")
    ap.add_argument("--few", type=int, default=400)
    ap.add_argument("--many", type=int, default=4400)
    ap.add_argument("--also", help="run each build again with these flags added")
    args = ap.parse_args()
    targets = {"hello": "hello:app", "asgihello": "asgihello:app"}
    variants = [()] + ([tuple(shlex.split(args.also))] if args.also else [])
    print("| app | build | flags | instructions per request |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="turbo-callgrind-") as tmp:
        for app in args.apps.split(","):
            for turbo in args.turbo:
                for flags in variants:
                    path = os.path.abspath(turbo)
                    few, n_few = worker_instructions(path, targets[app], args.few, tmp, flags)
                    many, n_many = worker_instructions(path, targets[app], args.many, tmp, flags)
                    per = (many - few) / (n_many - n_few)
                    print(f"| {app} | {turbo} | {shlex.join(flags)} | {per:,.0f} |")
                    sys.stdout.flush()


if __name__ == "__main__":
    main()
