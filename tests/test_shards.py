"""Shards run in separate interpreters, in parallel."""

import concurrent.futures
import http.client
import sys
import time

import pytest

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


def test_shared_main_fallback_when_no_own_gil(turbo):
    srv = turbo("cpu:app", "--cores", "2")
    if OWN_GIL:
        assert "own sub-interpreter" in srv.log
    else:
        assert "all shards share the main interpreter" in srv.log
        assert len({mods for _, mods in hammer(srv, 8, 2, 10)}) == 1


@pytest.mark.skipif(not OWN_GIL, reason="the per-interpreter GIL needs Python 3.12+")
def test_cpu_bound_scales_with_cores(turbo):
    """A CPU-bound handler runs about 2x faster on two shards than on one. The
    machine is shared, so runs alternate and the best of five counts."""
    n = 300_000
    servers = {cores: turbo("cpu:app", "--cores", str(cores)) for cores in (1, 2)}
    best = {1: float("inf"), 2: float("inf")}
    for srv in servers.values():
        hammer(srv, 4, 2, n)  # warm up every shard
    for _ in range(5):
        for cores, srv in servers.items():
            start = time.monotonic()
            hammer(srv, 8, 4, n)
            best[cores] = min(best[cores], time.monotonic() - start)
    speedup = best[1] / best[2]
    print(f"1 core: {best[1]:.2f}s, 2 cores: {best[2]:.2f}s, speedup {speedup:.2f}x")
    assert speedup > 1.5, best


@pytest.mark.skipif(not OWN_GIL, reason="the per-interpreter GIL needs Python 3.12+")
def test_app_refusing_subinterpreters_falls_back_to_main(turbo):
    srv = turbo("refuses:app", "--cores", "2")
    assert srv.log.count("cannot load in a sub-interpreter") == 1
    assert "_testsinglephase" in srv.log
    assert srv.log.count("(main interpreter)") == 2
    r = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    r.request("GET", "/")
    assert r.getresponse().read() == b"served from the main interpreter"
