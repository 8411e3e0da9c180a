"""HTTP/1.1 behaviour, over raw sockets and real clients."""

import http.client
import json
import socket
import time

import pytest

from conftest import read_response, recv_all


@pytest.fixture
def hello(turbo):
    return turbo("hello:app")


def test_get_with_date_and_server(hello):
    conn = http.client.HTTPConnection("127.0.0.1", hello.port, timeout=10)
    conn.request("GET", "/")
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.read() == b"Hello, World!"
    assert resp.getheader("Server") == "turbo"
    date = resp.getheader("Date")
    assert date and date.endswith(" GMT")
    time.strptime(date, "%a, %d %b %Y %H:%M:%S GMT")


def test_keep_alive_reuses_the_connection(hello):
    with hello.connect() as s:
        for _ in range(5):
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, body, _ = read_response(s)
            assert (status, body) == (200, b"Hello, World!")
            assert "connection" not in headers


def test_pipelined_requests_answered_in_order(turbo):
    srv = turbo("echo:environ_app")
    reqs = b"".join(f"GET /p{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for i in range(10))
    with srv.connect() as s:
        s.sendall(reqs)
        for i in range(10):
            status, _, body, _ = read_response(s)
            assert status == 200
            assert json.loads(body)["PATH_INFO"] == f"/p{i}"


def test_pipelined_responses_in_one_stream(hello):
    n = 20
    with hello.connect() as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * (n - 1) + b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = recv_all(s)
    assert data.count(b"HTTP/1.1 200 OK\r\n") == n
    assert data.count(b"Hello, World!") == n


def test_http10_closes_by_default(hello):
    with hello.connect() as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = recv_all(s)
    assert data.startswith(b"HTTP/1.0 200 OK\r\n")
    assert b"Connection: close\r\n" in data
    assert data.endswith(b"Hello, World!")


def test_http10_keep_alive(hello):
    with hello.connect() as s:
        for _ in range(3):
            s.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            status, headers, body, _ = read_response(s)
            assert status == 200 and body == b"Hello, World!"
            assert headers["connection"] == "keep-alive"


def test_connection_close_is_honoured(hello):
    with hello.connect() as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = recv_all(s)
    assert data.count(b"HTTP/1.1") == 1
    assert b"Connection: close\r\n" in data


def test_head_has_get_headers_and_no_body(turbo):
    srv = turbo("echo:head_info")
    with srv.connect() as s:
        s.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = recv_all(s)
    head_resp, get_resp = data.split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert b"Content-Length: 10\r\n" in head_resp
    assert head_resp.endswith(b"\r\n\r\n")
    assert get_resp.endswith(b"\r\n\r\n0123456789")


def test_head_of_streamed_response(turbo):
    srv = turbo("echo:generator")
    with srv.connect() as s:
        s.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = recv_all(s)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data.endswith(b"\r\n\r\n")
    assert b"hello" not in data


@pytest.mark.parametrize("code", ["204", "304"])
def test_bodyless_statuses(turbo, code):
    srv = turbo("echo:status")
    with srv.connect() as s:
        s.sendall(f"GET /?{code} HTTP/1.1\r\nHost: x\r\n\r\nGET /?200 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        s.settimeout(10)
        data = b""
        while b"body" not in data:
            data += s.recv(4096)
    first, _, second = data.partition(b"\r\n\r\n")
    assert first.startswith(f"HTTP/1.1 {code} Whatever\r\n".encode())
    assert b"Transfer-Encoding" not in first and b"Content-Length" not in first
    # Nothing between the bodyless response and the next one.
    assert second.startswith(b"HTTP/1.1 200 Whatever\r\n")


def test_chunked_response_without_length(turbo):
    srv = turbo("echo:generator")
    with srv.connect() as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body, _ = read_response(s)
    assert headers["transfer-encoding"] == "chunked"
    assert body == b"hello world"


def test_http10_response_is_close_delimited(turbo):
    srv = turbo("echo:generator")
    with srv.connect() as s:
        s.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        data = recv_all(s)
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding" not in head and b"Content-Length" not in head
    assert b"Connection: close" in head
    assert body == b"hello world"


def test_chunked_request_body_with_trailers(turbo):
    srv = turbo("echo:echo")
    with srv.connect() as s:
        s.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
        )
        status, _, body, _ = read_response(s)
        assert (status, body) == (200, b"hello world")
        # The connection still works after the trailers.
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        status, _, body, _ = read_response(s)
        assert (status, body) == (200, b"abc")


def test_request_split_into_tiny_writes(turbo):
    srv = turbo("echo:echo")
    req = b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    with srv.connect() as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(req)):
            s.sendall(req[i : i + 1])
        status, _, body, _ = read_response(s)
    assert (status, body) == (200, b"abcde")


def post_after_100_continue(srv):
    """Sends a head with `Expect: 100-continue`, waits for the interim
    response, then sends the body; the final response."""
    with srv.connect() as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        s.settimeout(10)
        interim = b""
        while b"\r\n\r\n" not in interim:
            interim += s.recv(1)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"hello")
        return read_response(s)


def test_expect_100_continue_sent_when_app_reads(turbo):
    status, _, body, _ = post_after_100_continue(turbo("echo:echo"))
    assert (status, body) == (200, b"hello")


def test_with_one_thread_100_continue_comes_before_the_app_runs(turbo):
    # The body is read through the ring before the app runs (a slow upload
    # must not hold the shard), so, as Gunicorn does, turbo asks for it at once.
    assert post_after_100_continue(turbo("hello:app", "--threads", "1"))[0] == 200


def test_with_threads_no_100_continue_when_app_ignores_body(turbo):
    # With --threads, the body streams to the app on its Python thread, which
    # decides whether to read it.
    srv = turbo("hello:app", "--threads", "2")
    with srv.connect() as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        data = recv_all(s)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"100 Continue" not in data
    # The body was never read, so the connection cannot be reused.
    assert b"Connection: close" in data


def test_idle_keep_alive_timeout_closes(turbo):
    srv = turbo("hello:app", "--keep-alive", "1")
    with srv.connect() as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        read_response(s)
        start = time.monotonic()
        assert recv_all(s, timeout=10) == b""
        assert time.monotonic() - start < 5


def test_slow_headers_get_408(turbo):
    srv = turbo("hello:app", "--header-timeout", "1", "--keep-alive", "30")
    with srv.connect() as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        start = time.monotonic()
        data = recv_all(s, timeout=10)
        assert data.startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - start < 5
        # A trickle of bytes does not extend the deadline.
    with srv.connect() as s:
        s.sendall(b"GET / HTTP/1.1\r\n")
        deadline = time.monotonic() + 5
        got = b""
        s.settimeout(0.3)
        while time.monotonic() < deadline:
            try:
                s.sendall(b"X")
                got += s.recv(4096)
                if got:
                    break
            except socket.timeout:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        assert got.startswith(b"HTTP/1.1 408 ") or got == b""


def test_other_connections_unaffected_by_a_slow_client(turbo):
    srv = turbo("hello:app", "--header-timeout", "30")
    slow = srv.connect()
    slow.sendall(b"GET / HTTP/1.1\r\nHo")
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    for _ in range(3):
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"Hello, World!"
    slow.close()


def refused(srv, raw):
    with srv.connect() as s:
        s.sendall(raw)
        return recv_all(s)


@pytest.mark.parametrize(
    "raw",
    [
        b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nContent-Length: 5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nHost: other\r\n\r\n",
        b"GET / HTTP/1.1\nHost: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\nx\r\n0\r\n\r\n",
    ],
    ids=["star-not-options", "empty-te", "trailer-length", "trailer-host", "bare-lf-head", "bare-lf-chunk"],
)
def test_rfc_9112_edge_cases_are_400(turbo, raw):
    srv = turbo("echo:echo")
    assert refused(srv, raw).startswith(b"HTTP/1.1 400 ")


def test_options_star_and_double_slash_targets_reach_the_app(turbo):
    srv = turbo("echo:environ_app")
    with srv.connect() as s:
        s.sendall(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s)[0] == 200
        s.sendall(b"PURGE //a//b?c=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body, _ = read_response(s)
    environ = json.loads(body)
    assert (status, environ["REQUEST_METHOD"], environ["PATH_INFO"]) == (200, "PURGE", "//a//b")


def test_a_1xx_final_status_is_an_error(turbo):
    srv = turbo("echo:status")
    with srv.connect() as s:
        s.sendall(b"GET /?103 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s)[0] == 500
    asgi = turbo("asgi_values:app")
    with asgi.connect() as s:
        s.sendall(b"GET /early HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s)[0] == 500


def test_a_websocket_upgrade_needs_get_and_connection_upgrade(turbo):
    srv = turbo("ws_app:app")
    key = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    for raw in (
        b"POST / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" + key + b"Content-Length: 0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n" + key + b"\r\n",
    ):
        with srv.connect() as s:
            s.sendall(raw)
            status, _, body, _ = read_response(s)
        # An ordinary HTTP request, which the app answers as one.
        assert (status, body) == (200, b"plain http")


def test_a_pathsend_file_shorter_than_its_content_length_closes_the_connection(turbo, tmp_path):
    path = tmp_path / "short"
    path.write_bytes(b"x" * 1000)
    srv = turbo("asgi_values:app")
    with srv.connect() as s:
        s.sendall(f"GET /short-file?{path},5000 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        got = recv_all(s)
    assert got.endswith(b"x" * 1000) and b"content-length: 5000" in got.lower()
    srv.wait_for("4000 bytes fewer than its Content-Length")


@pytest.mark.parametrize("threads", ["1", "2"])
def test_100_continue_never_overtakes_an_earlier_response(turbo, threads):
    # A GET and a POST that waits for 100 Continue, pipelined: the GET's
    # response goes out first, whoever sends the interim response.
    srv = turbo("echo:echo", "--threads", threads)
    with srv.connect() as s:
        s.sendall(
            b"GET /?first HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        s.settimeout(10)
        got = b""
        while b"100 Continue\r\n\r\n" not in got:
            data = s.recv(65536)
            assert data, got
            got += data
        assert got.startswith(b"HTTP/1.1 200 ")
        assert got.index(b"HTTP/1.1 100 Continue") > got.index(b"\r\n\r\n")
        s.sendall(b"hello")
        rest = got[got.index(b"100 Continue\r\n\r\n") + len(b"100 Continue\r\n\r\n"):]
        while b"hello" not in rest:
            data = s.recv(65536)
            assert data, rest
            rest += data
        assert rest.startswith(b"HTTP/1.1 200 ")
