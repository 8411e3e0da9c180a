"""Shards run in separate interpreters, in parallel."""

import concurrent.futures
import http.client
import os
import socket
import sys

import pytest
from conftest import read_response

OWN_GIL = sys.version_info >= (3, 12)


def hammer(srv, clients, requests_each, n):
    def client(_):
        seen = set()
        # A new connection per request: the kernel spreads connections, not
        # requests, over the shards' sockets.
        # http.client keeps the client's own CPU use small next to the handler's.
        for _ in range(requests_each):
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
            conn.request("GET", f"/?{n}", headers={"Connection": "close"})
            r = conn.getresponse()
            assert r.status == 200
            seen.add(tuple(r.read().decode().split()[:2]))
            conn.close()
        return seen

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return set().union(*pool.map(client, range(clients)))


@pytest.mark.skipif(not OWN_GIL, reason="the per-interpreter GIL needs Python 3.12+")
def test_shards_use_separate_interpreters(turbo):
    srv = turbo("cpu:app", "--cores", "2")
    seen = set()
    for _ in range(20):
        seen |= hammer(srv, 8, 2, 10)
        if len({interp for interp, _ in seen}) >= 2:
            break
    interps = {interp for interp, _ in seen}
    modules = {mods for _, mods in seen}
    assert len(interps) == 2 and len(modules) == 2, seen
    assert srv.log.count("own sub-interpreter") == 2


def test_without_own_gil_each_shard_is_a_process(turbo):
    srv = turbo("cpu:app", "--cores", "2")
    if OWN_GIL:
        assert srv.log.count("own sub-interpreter") == 2
        assert srv.log.count("Booting worker with pid") == 1
    else:
        assert "one worker process per shard: Python 3.11 has no per-interpreter GIL" in srv.log
        assert srv.log.count("Booting worker with pid") == 2
        assert srv.log.count("(main interpreter)") == 2


def spin_everywhere(turbo, tmp_path, deadline, *flags):
    """Sends /spin on 16 connections at once to a two-shard server and returns
    the answers. The kernel spreads connections over the shards' sockets, so
    both shards get some (all 16 on one shard has a chance of 2**-15)."""
    shared = tmp_path / "overlap"
    shared.write_bytes(bytes(os.cpu_count() or 64))
    srv = turbo("overlap:app", "--cores", "2", *flags, env={"TURBO_OVERLAP_FILE": str(shared)})
    socks = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(16)]
    for s in socks:
        s.sendall(f"GET /spin?{deadline} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    answers = []
    for s in socks:
        status, _, body, _ = read_response(s, timeout=16 * deadline + 10)
        assert status == 200
        answers.append(body.decode())
        s.close()
    return answers


@pytest.mark.parametrize("isolation", ["subinterpreter", "process"])
def test_two_shards_run_python_at_the_same_time(turbo, tmp_path, isolation):
    """Each spinner holds its own GIL and still sees the other shard run; with
    one shared GIL the first spinner would run alone. (How throughput scales
    with cores is measured by bench/run.sh --scaling.)"""
    if isolation == "subinterpreter" and not OWN_GIL:
        pytest.skip("no per-interpreter GIL before Python 3.12")
    answers = spin_everywhere(turbo, tmp_path, 10, "--isolation", isolation)
    assert answers == ["parallel"] * 16, answers


