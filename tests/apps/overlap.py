"""Proves that shards run Python at the same moment, without timing anything.

A request to /spin marks its shard's byte in memory shared by every
interpreter, then keeps its interpreter's GIL (a huge switch interval) and
spins until another shard's byte is marked. With one GIL per shard the other
shard runs meanwhile and marks its byte; with one shared GIL it cannot, and
the spinner gives up at the deadline given in the query string."""

import mmap
import os
import sys
import threading
import time

with open(os.environ["TURBO_OVERLAP_FILE"], "r+b") as _f:
    SHARED = mmap.mmap(_f.fileno(), 0)

_cpu_of_thread = {}


def _others_marked(mine):
    return any(SHARED[i] for i in range(len(SHARED)) if i != mine)


def app(environ, start_response):
    tid = threading.get_ident()
    if tid not in _cpu_of_thread:
        # A shard thread is pinned to exactly one CPU; it names the byte.
        (_cpu_of_thread[tid],) = os.sched_getaffinity(0)
    mine = _cpu_of_thread[tid]
    deadline = time.monotonic() + float(environ.get("QUERY_STRING") or 10)
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1000)
    try:
        SHARED[mine] = 1
        while not _others_marked(mine) and time.monotonic() < deadline:
            pass
    finally:
        sys.setswitchinterval(previous)
    body = b"parallel" if _others_marked(mine) else b"alone"
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
