"""ASGI 3 under turbo: the scope, streamed bodies both ways, disconnects,
errors, invalid messages, lifespan, concurrency and interface selection."""

import concurrent.futures
import json
import os
import signal
import socket
import sys
import time

import httpx
import pytest

from conftest import read_response, recv_all


def get(srv, path, **kw):
    return httpx.get(srv.url(path), timeout=30, **kw)


def test_hello_and_detection(turbo):
    srv = turbo("asgi_app:app")
    r = get(srv, "/")
    assert (r.status_code, r.text) == (200, "Hello, ASGI!")
    assert r.headers["content-length"] == "12"


def test_work_left_to_the_loop_runs_without_another_request(turbo):
    srv = turbo("asgi_app:app")
    for n in range(3):
        assert get(srv, f"/background?{n}").text == "scheduled"
        srv.wait_for(f"background callback ran {n}$")
        srv.wait_for(f"background task ran {n}$")


def test_callable_object_is_asgi(turbo):
    srv = turbo("asgi_app:callable_app")
    assert get(srv, "/").text == "from a callable object"


def test_scope(turbo):
    srv = turbo("asgi_app:app")
    r = httpx.post(srv.url("/scope?a=1&b=%20x"), content=b"x", timeout=10,
                   headers=[("X-Twice", "one"), ("X-Twice", "two"), ("X-Upper", "V")])
    scope = r.json()
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "POST"
    assert scope["scheme"] == "http"
    assert scope["path"] == "/scope"
    assert scope["raw_path"] == "/scope"
    assert scope["query_string"] == "a=1&b=%20x"
    assert scope["root_path"] == ""
    assert scope["client"][0] == "127.0.0.1" and isinstance(scope["client"][1], int)
    assert scope["server"] == ["127.0.0.1", srv.port]
    assert scope["state"] == {"greeting": "hello from lifespan"}
    assert scope["types"]["raw_path"] == "bytes" and scope["types"]["query_string"] == "bytes"
    assert scope["header_types"] == ["bytes"]
    # Lower-case names, order and duplicates kept.
    headers = scope["headers"]
    assert ["x-twice", "one"] in headers and ["x-twice", "two"] in headers
    assert headers.index(["x-twice", "one"]) < headers.index(["x-twice", "two"])
    assert ["x-upper", "V"] in headers


def test_path_is_percent_decoded(turbo):
    srv = turbo("asgi_app:app")
    with srv.connect() as s:
        s.sendall(b"GET /scope/caf%C3%A9%20x?q HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body, _ = read_response(s)
    scope = json.loads(body)
    assert scope["path"] == "/scope/café x"
    assert scope["raw_path"] == "/scope/caf%C3%A9%20x"


def test_large_body_streams_in_several_messages(turbo):
    srv = turbo("asgi_app:app")
    data = os.urandom(3 * 1024 * 1024)
    r = httpx.post(srv.url("/echo"), content=data, timeout=30)
    assert r.content == data
    line = srv.wait_for(r"echo received \d+ bytes in \d+ messages")
    assert int(line.split(" in ")[1].split()[0]) > 1


def test_chunked_request_body(turbo):
    srv = turbo("asgi_app:app")

    def chunks():
        for i in range(10):
            yield f"chunk{i};".encode()

    r = httpx.post(srv.url("/echo"), content=chunks(), timeout=30)
    assert r.text == "".join(f"chunk{i};" for i in range(10))


def test_expect_continue_is_answered_when_the_app_reads(turbo):
    srv = turbo("asgi_app:app")
    with srv.connect() as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        s.settimeout(10)
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(b"hello")
        status, _, body, _ = read_response(s)
    assert (status, body) == (200, b"hello")


def test_response_without_length_is_chunked(turbo):
    srv = turbo("asgi_app:app")
    with srv.connect() as s:
        s.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body, _ = read_response(s)
    assert headers["transfer-encoding"] == "chunked"
    assert body == b"part0;part1;part2;"


def test_app_content_length_is_used(turbo):
    srv = turbo("asgi_app:app")
    r = get(srv, "/length")
    assert r.headers["content-length"] == "10" and r.text == "0123456789"


def test_pathsend_sends_the_file_without_python(turbo, tmp_path):
    srv = turbo("asgi_app:app")
    data = os.urandom(3 * 1024 * 1024 + 7)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    scope = get(srv, "/scope").json()
    assert scope["extensions"] == {"http.response.pathsend": {}}
    r = get(srv, f"/file?{path}")
    assert r.headers["content-length"] == str(len(data))
    assert r.content == data
    # The connection stays usable after the file.
    with srv.connect() as s:
        s.sendall(f"GET /file?{path} HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert read_response(s, timeout=30)[2] == data
        assert read_response(s)[2] == b"Hello, ASGI!"


def test_keep_alive_and_pipelining(turbo):
    srv = turbo("asgi_app:app")
    with srv.connect() as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
        for _ in range(3):
            assert read_response(s)[2] == b"Hello, ASGI!"


def test_head_has_no_body(turbo):
    srv = turbo("asgi_app:app")
    with srv.connect() as s:
        s.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = recv_all(s, timeout=3)
    assert data.count(b"HTTP/1.1 200") == 2
    assert data.count(b"Hello, ASGI!") == 1


def test_exception_before_response_is_500(turbo):
    srv = turbo("asgi_app:app")
    r = get(srv, "/raise")
    assert r.status_code == 500
    srv.wait_for("ValueError: boom before the response")
    assert get(srv, "/").status_code == 200


def test_app_returning_without_response_is_500(turbo):
    srv = turbo("asgi_app:app")
    assert get(srv, "/nothing").status_code == 500


def test_exception_after_head_aborts(turbo):
    srv = turbo("asgi_app:app")
    with srv.connect() as s:
        s.sendall(b"GET /raise-after HTTP/1.1\r\nHost: x\r\n\r\n")
        data = recv_all(s)
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert not data.endswith(b"0\r\n\r\n"), "a failed body must not look complete"
    srv.wait_for("ValueError: boom after the head")


def test_invalid_messages_raise_in_the_app(turbo):
    srv = turbo("asgi_app:app")
    assert get(srv, "/invalid").json() == ["RuntimeError"] * 4


def test_disconnect_reaches_the_app_and_send_raises(turbo):
    srv = turbo("asgi_app:app")
    s = srv.connect()
    s.sendall(b"GET /disconnect HTTP/1.1\r\nHost: x\r\n\r\n")
    srv.wait_for("waiting for disconnect")
    s.close()
    srv.wait_for("received http.disconnect")
    srv.wait_for(r"send raised ClientDisconnected \(an OSError\)")


def test_receive_given_up_on_can_be_called_again(turbo):
    srv = turbo("asgi_app:app")
    s = srv.connect()
    s.sendall(b"GET /poll-disconnect HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body, _ = read_response(s)
    assert (status, body) == (200, b"still connected")
    s.close()
    srv.wait_for("after the polls: http.disconnect")
    assert "already being awaited" not in srv.log


def test_a_thousand_sleeps_run_concurrently(turbo):
    srv = turbo("asgi_app:app")
    socks = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(1000)]
    start = time.monotonic()
    for s in socks:
        s.sendall(b"GET /sleep HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    bodies = [read_response(s, timeout=60)[2] for s in socks]
    elapsed = time.monotonic() - start
    for s in socks:
        s.close()
    print(f"1000 concurrent 1 s sleeps took {elapsed:.2f}s")
    assert bodies == [b"slept"] * 1000
    # Serially they would take 1000 s; concurrently about one.
    assert elapsed < 30


def test_lifespan_shutdown_runs_on_term(turbo):
    srv = turbo("asgi_app:app")
    assert "lifespan startup" in srv.log
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.wait_exit() == 0
    assert "lifespan shutdown" in srv.log


def test_requests_wait_for_lifespan_startup(turbo):
    srv = turbo("asgi_app:slow_startup", wait=False)
    srv.wait_for("Listening at")
    # The socket is bound already, so the connection waits in the backlog.
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s, timeout=30)[2] == b"after startup"
    # The log reaches the test through a reader thread: wait for the line.
    srv.wait_for("handled a request")
    log = srv.log
    assert log.index("startup finished") < log.index("handled a request")


@pytest.mark.worker_deaths
def test_lifespan_startup_failure_stops_the_server(turbo):
    srv = turbo("asgi_app:failing_startup", wait=False)
    assert srv.wait_exit() != 0
    assert "the database is down" in srv.log


def test_lifespan_auto_tolerates_an_app_without_it(turbo):
    srv = turbo("asgi_app:no_lifespan")
    assert "ASGI 'lifespan' protocol appears unsupported." in srv.log
    assert get(srv, "/").text == "no lifespan"


@pytest.mark.worker_deaths
def test_lifespan_on_requires_it(turbo):
    srv = turbo("asgi_app:no_lifespan", "--lifespan", "on", wait=False)
    assert srv.wait_exit() != 0


def test_lifespan_off_skips_it(turbo):
    srv = turbo("asgi_app:app", "--lifespan", "off")
    assert "lifespan startup" not in srv.log
    assert get(srv, "/").status_code == 200


@pytest.mark.parametrize("flags", [["--interface", "asgi"], ["-k", "uvicorn.workers.UvicornWorker"],
                                   ["-k", "uvicorn_worker.UvicornWorker"], ["-k", "asgi"]])
def test_interface_flags_select_asgi(turbo, flags):
    srv = turbo("asgi_app:app", *flags)
    assert get(srv, "/").text == "Hello, ASGI!"


def test_wsgi_worker_class_on_wsgi_app(turbo):
    srv = turbo("hello:app", "-k", "gthread")
    assert get(srv, "/").status_code == 200


def test_unknown_worker_class_is_an_error(turbo):
    srv = turbo("asgi_app:app", "-k", "eventlet", wait=False)
    assert srv.wait_exit() == 2
    assert "unsupported worker class 'eventlet'" in srv.log


def test_idle_server_uses_no_cpu(turbo):
    srv = turbo("asgi_app:app")
    assert get(srv, "/").status_code == 200
    pids = [int(p) for p in open(f"/proc/{srv.proc.pid}/task/{srv.proc.pid}/children").read().split()]

    def ticks():
        total = 0
        for pid in pids:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total

    before = ticks()
    srv.proc.send_signal(signal.SIGWINCH)  # a no-op that the log records, as a clock
    srv.wait_for("Handling signal: winch")
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline:
        time.sleep(0.1)
    # A busy-polling loop would burn about 100 ticks per second.
    assert ticks() - before <= 2


def test_starlette(turbo, tmp_path):
    data = os.urandom(200_000)
    (tmp_path / "f.bin").write_bytes(data)
    srv = turbo("starlette_app:app", env={"TURBO_TEST_FILE": str(tmp_path / "f.bin")})
    assert get(srv, "/download").content == data
    assert get(srv, "/").text == "Hello from Starlette"
    r = httpx.post(srv.url("/echo"), json={"a": [1, 2]}, timeout=10)
    assert r.json() == {"got": {"a": [1, 2]}, "started": True, "path": "/echo"}
    assert get(srv, "/numbers").text == "0\n1\n2\n3\n4\n"


@pytest.mark.skipif(sys.version_info < (3, 12), reason="on 3.11 every app runs in processes")
def test_fastapi_just_works_through_the_process_fallback(turbo, venv_with):
    srv = turbo("fastapi_app:app", "--cores", "2", command=venv_with("fastapi"), default_isolation=True)
    assert "pydantic_core" in srv.log and "one worker process per shard" in srv.log
    assert get(srv, "/").json() == {"message": "Hello from FastAPI"}
    r = httpx.post(srv.url("/items"), json={"name": "pen", "price": 1.5}, timeout=10)
    assert r.json() == {"name": "pen", "price": 1.5}
    assert httpx.post(srv.url("/items"), json={"name": "pen"}, timeout=10).status_code == 422


def test_django_asgi(turbo):
    srv = turbo("djangoapp.asgi")
    r = get(srv, "/")
    assert (r.status_code, r.text) == (200, "Hello from Django")


def test_asgi_under_load_on_two_shards(turbo):
    srv = turbo("asgi_app:app", "--cores", "2")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: get(srv, f"/echo", params={"i": i}).status_code, range(200)))
    assert results == [200] * 200


@pytest.mark.worker_deaths
def test_a_blocked_event_loop_is_killed_after_timeout(turbo):
    srv = turbo("asgi_app:app", "--timeout", "1")
    with pytest.raises(httpx.HTTPError):
        get(srv, "/block")
    srv.wait_for(r"WORKER TIMEOUT \(pid:\d+\)")
    srv.wait_for_count("Ready:", 2)
    assert get(srv, "/").status_code == 200
