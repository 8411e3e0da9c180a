"""PEP 3333: the environ, wsgi.input, start_response, the iterable and errors."""

import http.client
import json
import os
import socket

import httpx
import pytest

from conftest import THREADS, read_response, recv_all, wait_for_file


def get_json(srv, path="/", **kw):
    r = httpx.request(kw.pop("method", "GET"), srv.url(path), timeout=10, **kw)
    assert r.status_code == 200, r.text
    return r.json()


def test_environ_has_every_required_key(turbo):
    srv = turbo("echo:environ_app")
    env = get_json(srv, "/a%20b/c%2Fd?x=1&y=%20", headers={"X-Thing": "v", "Content-Type": "text/x"},
                   method="POST", content=b"payload")
    assert env["REQUEST_METHOD"] == "POST"
    assert env["SCRIPT_NAME"] == ""
    assert env["PATH_INFO"] == "/a b/c/d"
    assert env["QUERY_STRING"] == "x=1&y=%20"
    assert env["RAW_URI"] == "/a%20b/c%2Fd?x=1&y=%20"
    assert env["REQUEST_URI"] == env["RAW_URI"]
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["SERVER_NAME"] == "127.0.0.1"
    assert env["SERVER_PORT"] == str(srv.port)
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert int(env["REMOTE_PORT"]) > 0
    assert env["CONTENT_TYPE"] == "text/x"
    assert env["CONTENT_LENGTH"] == "7"
    assert "HTTP_CONTENT_TYPE" not in env
    assert env["HTTP_X_THING"] == "v"
    assert env["HTTP_HOST"] == f"127.0.0.1:{srv.port}"
    assert env["wsgi.version"] == [1, 0]
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.input_terminated"] is True
    assert env["wsgi.multithread"] is (THREADS > 1)
    assert env["wsgi.multiprocess"] is False
    assert env["wsgi.run_once"] is False
    assert env["errors_has_write"] is True
    assert env["file_wrapper"] == "FileWrapper"
    assert env["body"] == "payload"


def test_environ_latin1_and_repeated_headers(turbo):
    srv = turbo("echo:environ_app")
    with srv.connect() as s:
        s.sendall(
            b"GET /caf%C3%A9/%e9 HTTP/1.1\r\nHost: x\r\nX-Multi: a\r\nX-Multi: b\r\n"
            b"X-Latin: \xe9t\xe9\r\nX_Under: dropped\r\n\r\n"
        )
        status, _, body, _ = read_response(s)
    env = json.loads(body)
    assert env["PATH_INFO"] == "/caf\u00c3\u00a9/\u00e9"
    assert env["HTTP_X_MULTI"] == "a,b"
    assert env["HTTP_X_LATIN"] == "\u00e9t\u00e9"
    assert "HTTP_X_UNDER" not in env


def test_script_name_from_environment(turbo):
    srv = turbo("echo:environ_app", env={"SCRIPT_NAME": "/prefix"})
    env = get_json(srv, "/prefix/page")
    assert env["SCRIPT_NAME"] == "/prefix"
    assert env["PATH_INFO"] == "/page"


def test_absolute_form_target(turbo):
    srv = turbo("echo:environ_app")
    with srv.connect() as s:
        s.sendall(b"GET http://example.com/abs?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n")
        _, _, body, _ = read_response(s)
    env = json.loads(body)
    assert (env["PATH_INFO"], env["QUERY_STRING"]) == ("/abs", "q=1")


@pytest.mark.parametrize("how", ["read", "readline", "readline-limited", "readlines", "iter", "chunks", "length"])
@pytest.mark.parametrize("size", [0, 10, 100_000])
def test_input_methods(turbo, how, size):
    srv = turbo("echo:echo")
    body = b"".join(b"line %d with some text\n" % i for i in range(size // 20 + 1))[:size]
    r = httpx.post(srv.url("/?" + how), content=body, timeout=20)
    assert r.status_code == 200
    assert r.content == body


def test_streamed_chunked_upload(turbo):
    srv = turbo("echo:echo")
    payload = os.urandom(300_000)

    def gen():
        for i in range(0, len(payload), 7000):
            yield payload[i : i + 7000]

    r = httpx.post(srv.url("/?chunks"), content=gen(), timeout=20)
    assert r.content == payload


def test_read_of_content_length_returns_the_whole_body(turbo):
    """A body that arrives in pieces is still one read(CONTENT_LENGTH) away,
    as with Gunicorn: apps read that way."""
    srv = turbo("echo:echo")
    payload = os.urandom(300_000)
    with srv.connect() as s:
        s.sendall(b"POST /?length HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(payload))
        for i in range(0, len(payload), 50_000):
            s.sendall(payload[i : i + 50_000])
        status, _, body, _ = read_response(s, timeout=20)
    assert status == 200 and body == payload


def test_large_bodies_back_to_back_on_one_connection(turbo):
    """After a streamed body, the connection's next request starts where the
    body ended."""
    srv = turbo("echo:echo")
    with srv.connect() as s:
        for i in range(3):
            payload = bytes([65 + i]) * 150_000
            s.sendall(b"POST /?length HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(payload)
                      + payload)
            status, headers, body, _ = read_response(s, timeout=20)
            assert (status, body == payload) == (200, True), (i, status, body[:60])
            assert headers.get("connection") != "close"


def test_unread_large_body_closes_connection_with_threads(turbo):
    # With --threads the body streams to the app; what it left unread cannot
    # be skipped safely, so the connection closes.
    srv = turbo("echo:echo", "--threads", "2")
    with srv.connect() as s:
        s.sendall(b"POST /?ignore HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n" + b"a" * 200000)
        data = recv_all(s)
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert b"Connection: close" in data


def test_unread_large_body_keeps_connection_with_one_thread(turbo):
    # With one thread the body was read whole before the app ran (spooled to
    # a file past 1 MiB), so the next request follows on the same connection.
    srv = turbo("echo:echo", "--threads", "1")
    with srv.connect() as s:
        for size in (200000, 3 << 20):
            s.sendall(b"POST /?ignore HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size + b"a" * size)
            status, headers, body, _ = read_response(s, timeout=20)
            assert (status, body) == (200, b"ignored")
            assert headers.get("connection") != "close"


def test_unread_small_body_keeps_connection(turbo):
    srv = turbo("echo:echo")
    with srv.connect() as s:
        s.sendall(b"POST /?ignore HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nabcde")
        status, headers, body, _ = read_response(s)
        assert (status, body) == (200, b"ignored")
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
        assert read_response(s)[2] == b"ok"


def test_write_callable(turbo):
    srv = turbo("echo:write_callable")
    r = httpx.get(srv.url(), timeout=10)
    assert r.content == b"written returned"


def test_lazy_start_response(turbo):
    srv = turbo("echo:lazy_start")
    r = httpx.get(srv.url(), timeout=10)
    assert (r.status_code, r.content) == (200, b"lazy")


def test_one_element_list_gets_content_length(turbo):
    srv = turbo("echo:head_info")
    r = httpx.get(srv.url(), timeout=10)
    assert r.headers["content-length"] == "10"


def test_app_exception_gives_500_and_traceback(turbo):
    srv = turbo("echo:raises")
    r = httpx.get(srv.url(), timeout=10)
    assert r.status_code == 500
    assert "boom" not in r.text
    srv.wait_for(r"RuntimeError: boom from the app")
    srv.wait_for(r"Traceback \(most recent call last\)")


def test_exception_after_head_aborts_connection(turbo):
    srv = turbo("echo:raises_after_start")
    with srv.connect() as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = recv_all(s)
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert b"partial" in data
    # The chunked body never gets its terminating chunk: the client sees truncation.
    assert not data.endswith(b"0\r\n\r\n")
    srv.wait_for("boom in the middle")


def test_exc_info_replaces_unsent_head(turbo):
    srv = turbo("echo:exc_info_before_head")
    r = httpx.get(srv.url(), timeout=10)
    assert (r.status_code, r.content) == (500, b"replaced")


def test_exc_info_after_head_reraises(turbo):
    srv = turbo("echo:exc_info_after_head")
    with srv.connect() as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = recv_all(s)
    assert b"first" in data and b"never" not in data
    srv.wait_for("ValueError: late")


def test_second_start_response_without_exc_info_is_an_error(turbo):
    srv = turbo("echo:second_start_response")
    assert httpx.get(srv.url(), timeout=10).status_code == 500


@pytest.mark.parametrize("app", ["not_bytes", "no_start_response"])
def test_garbage_from_app_gives_500(turbo, app):
    srv = turbo(f"echo:{app}")
    r = httpx.get(srv.url(), timeout=10)
    assert r.status_code == 500


def test_non_bytes_after_head_aborts(turbo):
    srv = turbo("echo:not_bytes_later")
    with srv.connect() as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = recv_all(s)
    assert data.startswith(b"HTTP/1.1 200 OK") and not data.endswith(b"0\r\n\r\n")


@pytest.mark.parametrize("kind", ["crlf", "nul", "name", "hop", "upgrade", "type", "status"])
def test_invalid_response_headers_never_reach_the_wire(turbo, kind):
    srv = turbo("echo:bad_header")
    with srv.connect() as s:
        s.sendall(f"GET /?{kind} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = recv_all(s)
    assert data.startswith(b"HTTP/1.1 500 ")
    assert b"Injected" not in data and b"must not be sent" not in data and b"X-Bad" not in data
    srv.wait_for("Invalid response from the application")


def test_app_connection_close_header_is_honoured(turbo):
    srv = turbo("echo:close_header")
    with srv.connect() as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = recv_all(s)
    assert data.count(b"Connection: close") == 1 and data.endswith(b"ok")


@pytest.mark.parametrize("app,path", [("tracked", "/"), ("tracked", "/?100000"), ("tracked_raises", "/")])
def test_close_is_called(turbo, tmp_path, app, path):
    srv = turbo(f"echo:{app}")
    marker = tmp_path / "closed"
    with srv.connect() as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Close-File: {marker}\r\nConnection: close\r\n\r\n".encode())
        recv_all(s)
    assert marker.read_text() == "closed\n"


def test_close_is_called_when_client_goes_away(turbo, tmp_path):
    srv = turbo("echo:tracked")
    marker = tmp_path / "closed"
    s = srv.connect()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(f"GET /?50000000 HTTP/1.1\r\nHost: x\r\nX-Close-File: {marker}\r\n\r\n".encode())
    s.recv(100)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()
    # The app's close() runs once the shard sees the reset; placement may
    # send another connection to another shard, so no request proves it.
    wait_for_file(marker, limit=40, text="closed\n")
    # And the server still answers.
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=40)
    conn.request("GET", "/", headers={"X-Close-File": str(tmp_path / "other")})
    assert conn.getresponse().status == 200


def test_file_wrapper(turbo, tmp_path):
    data = os.urandom(100_000)
    path = tmp_path / "file.bin"
    path.write_bytes(data)
    srv = turbo("echo:file_wrapper")
    r = httpx.get(srv.url(f"/?{path}"), timeout=10)
    assert r.content == data


def test_wsgi_errors_goes_to_error_log(turbo):
    srv = turbo("echo:errors_stream")
    assert httpx.get(srv.url(), timeout=10).content == b"logged"
    srv.wait_for("message to wsgi.errors")


def test_wsgiref_validator(turbo):
    srv = turbo("validated:app")
    assert httpx.get(srv.url("/v"), timeout=10).content == b"method=GET body="
    assert httpx.post(srv.url("/v"), content=b"xyz", timeout=10).content == b"method=POST body=xyz"
    assert httpx.head(srv.url("/v"), timeout=10).status_code == 200
    assert "AssertionError" not in srv.log and "Error handling request" not in srv.log


def test_factory_app(turbo):
    srv = turbo("echo:factory('howdy')")
    assert httpx.get(srv.url(), timeout=10).content == b"howdy"


def test_large_upload_and_download_integrity(turbo):
    srv = turbo("echo:echo")
    payload = os.urandom(10 * 1024 * 1024)
    r = httpx.post(srv.url("/"), content=payload, timeout=60)
    assert r.content == payload
    srv2 = turbo("echo:download")
    r = httpx.get(srv2.url(f"/?{10 * 1024 * 1024}"), timeout=60)
    block = bytes(range(256)) * 256
    assert len(r.content) == 10 * 1024 * 1024
    assert r.content == block * 160
