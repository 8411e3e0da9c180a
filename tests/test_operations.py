"""The operations port (--metrics-bind) and shutdown as Kubernetes needs it:
/metrics read with Prometheus' own parser, counts that match the requests
sent across shards and across a worker's death, /livez and /readyz, a
--shutdown-delay that keeps serving with readiness already failed, and
WebSockets closed with 1001 when the drain starts."""

import http.client
import os
import re
import signal
import socket
import time

import pytest
from conftest import free_port, ops_get, read_response, scrape, total


def request(srv, method, path, body=None):
    """One request on a new connection, so placement spreads them."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def start(turbo, app, *args):
    port = free_port()
    srv = turbo(app, "--metrics-bind", f"127.0.0.1:{port}", *args)
    srv.ops = port
    return srv


def send_mix(srv):
    """Requests of known methods and statuses; returns their count by
    (method, class)."""
    sent = {}
    for method, path, body, expected in [
        *[("GET", "/", None, 200)] * 12,
        *[("POST", "/echo", b"12345", 200)] * 3,
        *[("GET", "/status/404", None, 404)] * 2,
        ("DELETE", "/status/503", None, 503),
        ("PROPFIND", "/", None, 200),
    ]:
        status, _ = request(srv, method, path, body)
        assert status == expected
        key = (method if method != "PROPFIND" else "other", f"{expected // 100}xx")
        sent[key] = sent.get(key, 0) + 1
    return sent


def assert_counted(samples, sent, times):
    for (method, status), n in sent.items():
        assert total(samples, "turbo_requests_total", method=method, status=status) == n * times
    requests = sum(sent.values()) * times
    assert total(samples, "turbo_requests_total") == requests
    assert total(samples, "turbo_request_duration_seconds_count") == requests
    assert total(samples, "turbo_request_duration_seconds_bucket", le="+Inf") == requests


@pytest.mark.worker_deaths
def test_metrics_match_the_requests_across_shards_and_a_killed_worker(turbo):
    srv = start(turbo, "ops_app:app", "--cores", "2")
    sent = send_mix(srv)
    samples = scrape(srv.ops)
    assert_counted(samples, sent, 1)
    by_shard = {l["shard"]: v for l, v in samples["turbo_request_duration_seconds_count"]}
    assert sorted(by_shard) == ["0", "1"]
    assert all(n > 0 for n in by_shard.values()), f"every request on one shard: {by_shard}"
    # Head and body bytes both ways: at least the bodies.
    assert total(samples, "turbo_received_bytes_total") > 3 * 5
    assert total(samples, "turbo_sent_bytes_total") > 19 * 20
    assert total(samples, "turbo_worker_restarts_total") == 0
    assert total(samples, "turbo_workers") >= 1
    assert total(samples, "turbo_ready") == 1

    _, pid = request(srv, "GET", "/pid")
    os.kill(int(pid), signal.SIGKILL)
    srv.wait_for(re.escape(f"Worker (pid:{int(pid)}) was sent SIGKILL"))
    srv.wait_for_count("Ready:", 2, timeout=30)
    send_mix(srv)
    expected = {k: 2 * n for k, n in sent.items()}
    expected[("GET", "2xx")] += 1  # /pid
    samples = scrape(srv.ops)
    assert_counted(samples, expected, 1)
    assert total(samples, "turbo_worker_restarts_total", reason="crash") == 1
    assert total(samples, "turbo_worker_restarts_total", reason="reload") == 0


@pytest.mark.parametrize("hooks", [False, True])
def test_the_shard_threads_waits_for_the_gil_are_counted(turbo, tmp_path, hooks):
    """With --threads, a shard's thread reads and writes without the GIL: it
    takes it only to run Python itself, such as the request hooks. While a
    Python thread spins in a view, it then waits for the switch interval's
    hand-off. /metrics shows those waits as a histogram."""
    args = ["--threads", "4"]
    if hooks:
        conf = tmp_path / "c.py"
        conf.write_text("def pre_request(worker, req):\n    pass\n")
        args += ["-c", str(conf)]
    srv = start(turbo, "ops_app:app", *args)
    spinning = [srv.connect() for _ in range(2)]
    for s in spinning:
        s.sendall(b"GET /spin HTTP/1.1\r\nHost: x\r\n\r\n")
    # Quick requests meanwhile: each wakes the shard's thread, which with a
    # hook then waits for a spinning thread to let go of the GIL.
    for _ in range(10):
        assert request(srv, "GET", "/")[0] == 200
    for s in spinning:
        assert read_response(s, timeout=30)[0] == 200
        s.close()
    samples = scrape(srv.ops)
    waits = total(samples, "turbo_gil_wait_seconds_count")
    assert waits == total(samples, "turbo_gil_wait_seconds_bucket", le="+Inf")
    if not hooks:
        assert waits == 0, "the shard's thread took the GIL with nothing to run in Python"
        return
    assert waits > 0
    assert total(samples, "turbo_gil_wait_seconds_bucket", le="0.0001") < waits, "no wait behind the spinning view"
    assert total(samples, "turbo_gil_wait_seconds_sum") > 0


def test_requests_turbo_refuses_itself_are_counted_apart(turbo):
    srv = start(turbo, "ops_app:app", "--limit-request-body", "10")
    for raw in [b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world",
                b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n"]:
        with srv.connect() as s:
            s.sendall(raw)
            read_response(s)
    assert request(srv, "GET", "/")[0] == 200
    samples = scrape(srv.ops)
    refused = {l["status"]: v for l, v in samples["turbo_requests_refused_total"]}
    assert refused == {"400": 1, "413": 1, "414": 1}
    assert total(samples, "turbo_requests_total") == 1


def test_max_requests_and_reload_restarts_are_counted(turbo):
    srv = start(turbo, "ops_app:app", "--max-requests", "10", "--max-requests-jitter", "0")
    for _ in range(12):
        assert request(srv, "GET", "/")[0] == 200
    srv.wait_for("--max-requests", timeout=30)
    srv.wait_for(r"Worker \(pid:\d+\) exited", timeout=30)
    srv.proc.send_signal(signal.SIGHUP)
    srv.wait_for_count(r"Worker \(pid:\d+\) exited", 2, timeout=30)
    samples = scrape(srv.ops)
    assert total(samples, "turbo_worker_restarts_total", reason="max_requests") >= 1
    assert total(samples, "turbo_worker_restarts_total", reason="reload") >= 1
    assert total(samples, "turbo_worker_restarts_total", reason="crash") == 0
    # The exited workers' requests are still counted.
    assert total(samples, "turbo_requests_total") >= 12


def test_probes_answer_while_the_app_is_busy_and_hostile_clients_wait(turbo):
    srv = start(turbo, "lifecycle:app")
    assert ops_get(srv.ops, "/livez") == (200, "ok\n")
    assert ops_get(srv.ops, "/readyz?verbose=1") == (200, "ok\n")
    assert ops_get(srv.ops, "/readyz", method="HEAD")[0] == 200
    assert ops_get(srv.ops, "/nothing")[0] == 404
    assert ops_get(srv.ops, "/metrics", method="POST")[0] == 405
    # The only shard is stuck in a view; probes do not enter Python.
    with srv.connect(timeout=30) as busy:
        busy.sendall(b"GET /slow?2 HTTP/1.1\r\nHost: x\r\n\r\n")
        srv.wait_for("slow request started")
        assert ops_get(srv.ops, "/livez")[0] == 200
        samples = scrape(srv.ops)
        assert total(samples, "turbo_requests_in_flight") == 1
        assert total(samples, "turbo_connections") == 1
        # Silent clients, more than the port keeps, and one that trickles.
        silent = [socket.create_connection(("127.0.0.1", srv.ops), timeout=10) for _ in range(80)]
        trickle = socket.create_connection(("127.0.0.1", srv.ops), timeout=10)
        trickle.sendall(b"GET /li")
        try:
            assert ops_get(srv.ops, "/readyz")[0] == 200
            with socket.create_connection(("127.0.0.1", srv.ops), timeout=10) as bad:
                bad.sendall(b"\x00\x01 nonsense\r\n\r\n")
                assert read_response(bad)[0] == 400
        finally:
            for s in silent:
                s.close()
            trickle.close()
        status, _, body, _ = read_response(busy, timeout=30)
        assert status == 200 and body.isdigit()


def test_readiness_waits_for_lifespan_startup_while_liveness_answers(turbo, tmp_path):
    gate = tmp_path / "gate"
    port = free_port()
    srv = turbo("ops_app:asgi", "--metrics-bind", f"127.0.0.1:{port}", env={"OPS_GATE": str(gate)},
                wait=False)
    srv.wait_for("lifespan startup began", timeout=30)
    assert ops_get(port, "/livez")[0] == 200
    assert ops_get(port, "/readyz") == (503, "starting\n")
    assert total(scrape(port), "turbo_ready") == 0
    gate.touch()
    srv.wait_for("Ready:", timeout=30)
    assert ops_get(port, "/readyz")[0] == 200


def test_readiness_fails_on_sigterm_while_the_app_serves_for_the_delay(turbo):
    srv = start(turbo, "ops_app:app", "--shutdown-delay", "2")
    assert ops_get(srv.ops, "/readyz")[0] == 200
    srv.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    deadline = signalled + 10
    while ops_get(srv.ops, "/readyz")[0] != 503:
        assert time.monotonic() < deadline, "readiness never failed"
    # Within the delay: new connections are still accepted and served, and
    # the workers have not been told to drain.
    for _ in range(5):
        assert request(srv, "GET", "/")[0] == 200
    assert "Worker exiting" not in srv.log
    assert total(scrape(srv.ops), "turbo_ready") == 0
    assert ops_get(srv.ops, "/livez")[0] == 200
    srv.wait_for("Worker exiting", timeout=15)
    assert time.monotonic() - signalled >= 1.9
    assert srv.wait_exit() == 0
    assert "Shutting down: Master" in srv.log


def test_websockets_get_1001_when_the_drain_starts_and_lifespan_shutdown_runs(turbo):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    srv = start(turbo, "ops_app:asgi", "--graceful-timeout", "60")
    with connect(f"ws://127.0.0.1:{srv.port}/ws", open_timeout=10, close_timeout=10) as ws:
        ws.send("hi")
        assert ws.recv(timeout=10) == "hi"
        samples = scrape(srv.ops)
        assert total(samples, "turbo_websocket_connections") == 1
        assert total(samples, "turbo_websocket_connections_total") == 1
        srv.proc.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=15)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    srv.wait_for("websocket disconnect 1001")
    srv.wait_for("lifespan shutdown ran", timeout=15)
    # Long before the 60 s graceful timeout.
    assert srv.wait_exit(timeout=20) == 0


def test_a_handshake_pending_when_the_drain_starts_is_accepted_then_closed_with_1001(turbo):
    import threading

    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    srv = start(turbo, "ops_app:asgi", "--graceful-timeout", "60")
    codes = []

    def client():
        with connect(f"ws://127.0.0.1:{srv.port}/slow-accept", open_timeout=15, close_timeout=10) as ws:
            try:
                ws.recv(timeout=15)
            except ConnectionClosed as closed:
                codes.append(closed.rcvd.code if closed.rcvd else None)

    thread = threading.Thread(target=client)
    thread.start()
    srv.wait_for("accept pending")
    srv.proc.send_signal(signal.SIGTERM)
    thread.join(30)
    assert codes == [1001]
    srv.wait_for("websocket disconnect 1001")
    assert srv.wait_exit(timeout=20) == 0


def test_the_port_answers_half_closed_clients_and_unread_input(turbo):
    srv = start(turbo, "ops_app:app", "--cores", "2")
    with socket.create_connection(("127.0.0.1", srv.ops), timeout=10) as s:
        s.sendall(b"GET /livez HTTP/1.0\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        assert read_response(s)[0] == 200
    # A body and a pipelined request stay unread: the answer still arrives
    # whole, not cut by a reset.
    with socket.create_connection(("127.0.0.1", srv.ops), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" + b"GET /livez HTTP/1.1\r\n\r\n" * 2000)
        status, _, body, _ = read_response(s)
        assert status == 200 and b"turbo_shards 2" in body
