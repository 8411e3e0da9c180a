"""Bad input gets a precise status and a closed connection, and nothing else
suffers: the server keeps answering other connections."""

import http.client

import pytest

from conftest import recv_all

CASES = [
    ("garbage request line", b"HELLO\r\n\r\n", 400),
    ("bad method token", b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("no Host in 1.1", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("NUL in header", b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", 400),
    ("CR in header", b"GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n", 400),
    ("LF in header name", b"GET / HTTP/1.1\r\nHost: x\r\nX\nY: a\r\n\r\n", 400),
    ("invalid header name", b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n", 400),
    ("colon-less header", b"GET / HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n  folded\r\n\r\n", 400),
    (
        "CL with TE",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    ("differing CLs", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    ("negative CL", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -3\r\n\r\n", 400),
    ("bad chunk size", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400),
    (
        "chunk without CRLF",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX0\r\n\r\n",
        400,
    ),
    ("bad target", b"GET nope HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("TE in 1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("gzip coding", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    ("chunked not last", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 501),
    ("HTTP/2.0", b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    ("HTTP/1.2", b"GET / HTTP/1.2\r\nHost: x\r\n\r\n", 505),
    ("long request line", b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    ("huge header", b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431),
    (
        "too many headers",
        b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n",
        431,
    ),
]


@pytest.mark.parametrize("name,raw,status", CASES, ids=[c[0] for c in CASES])
def test_bad_request_gets_precise_status_and_close(turbo, name, raw, status):
    srv = turbo("echo:echo")
    with srv.connect() as s:
        s.sendall(raw)
        data = recv_all(s)
    assert data.startswith(f"HTTP/1.1 {status} ".encode()), data[:200]
    assert b"Connection: close\r\n" in data
    # Exactly one response: nothing after the error was treated as a request.
    assert data.count(b"HTTP/1.1 ") == 1
    # The server is still there for everyone else.
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    conn.request("POST", "/", body=b"still fine")
    assert conn.getresponse().read() == b"still fine"
    assert srv.proc.poll() is None


def test_smuggled_request_after_conflicting_framing_is_not_served(turbo):
    srv = turbo("echo:environ_app")
    with srv.connect() as s:
        s.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        data = recv_all(s)
    assert data.startswith(b"HTTP/1.1 400 ")
    assert b"/smuggled" not in data


def test_client_disconnect_mid_body_keeps_server_up(turbo):
    srv = turbo("echo:echo")
    with srv.connect() as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + b"a" * 100000)
    with srv.connect() as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"a" * 10)
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    conn.request("POST", "/", body=b"ok")
    assert conn.getresponse().read() == b"ok"


def test_fuzzed_heads_never_crash(turbo):
    import random

    rng = random.Random(1234)
    srv = turbo("hello:app", "--keep-alive", "0", "--header-timeout", "1")
    base = b"GET /path?q=1 HTTP/1.1\r\nHost: example\r\nAccept: */*\r\nContent-Length: 0\r\n\r\n"
    for _ in range(200):
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        with srv.connect() as s:
            s.sendall(bytes(data))
            reply = recv_all(s, timeout=10)
        if reply:
            assert reply.startswith(b"HTTP/1.1 "), reply[:100]
            status = int(reply.split()[1])
            assert status in (200, 400, 408, 414, 431, 501, 505), reply[:200]
    assert srv.proc.poll() is None
