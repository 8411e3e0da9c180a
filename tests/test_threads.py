"""--threads: a shard keeps serving while app calls block on I/O."""

import concurrent.futures
import time

import httpx

from conftest import read_response


def test_threads_keep_the_shard_responsive(turbo):
    srv = turbo("echo:sleeper", "--threads", "4")
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        slow = [pool.submit(httpx.get, srv.url("/?3"), timeout=30) for _ in range(3)]
        srv.wait_for_count("sleeping", 3, timeout=10)
        # Three calls are blocked in time.sleep; the fourth thread answers at once.
        start = time.monotonic()
        r = httpx.get(srv.url("/?0"), timeout=10)
        fast = time.monotonic() - start
        assert r.content == b"slept"
        assert fast < 1.5, fast
        assert all(f.result().content == b"slept" for f in slow)


def test_blocked_calls_run_concurrently(turbo):
    srv = turbo("echo:sleeper", "--threads", "4")
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: httpx.get(srv.url("/?1"), timeout=30).content, range(4)))
    elapsed = time.monotonic() - start
    assert results == [b"slept"] * 4
    assert elapsed < 3, elapsed


def test_shard_parses_while_threads_are_busy(turbo):
    # Bad input is answered by the shard itself even when every thread is busy.
    srv = turbo("echo:sleeper", "--threads", "2")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        slow = [pool.submit(httpx.get, srv.url("/?3"), timeout=30) for _ in range(2)]
        srv.wait_for_count("sleeping", 2, timeout=10)
        with srv.connect() as s:
            s.sendall(b"GET / HTTP/9.9\r\nHost: x\r\n\r\n")
            status = read_response(s)[0]
        assert status == 505
        assert all(f.result().status_code == 200 for f in slow)


def test_multithread_flag_is_true_with_threads(turbo):
    srv = turbo("echo:environ_app", "--threads", "2")
    assert httpx.get(srv.url(), timeout=10).json()["wsgi.multithread"] is True
