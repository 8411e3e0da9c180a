"""Large response body chunks go out from the bytes object's own memory, small
ones are copied beside the head; these tests mix both, in every framing, with
pipelined requests whose responses share one write, and check every byte."""

import http.client
import socket

import pytest

from conftest import read_response, recv_all

SIZES = [
    [5],
    [1 << 20],
    [16383, 16384, 16385],
    [10, 70000, 3, 0, 200000, 1],
    [0, 0, 50000],
]


def expected(sizes):
    return b"".join(bytes([i % 251]) * n for i, n in enumerate(sizes))


def query(sizes, *options):
    return "/?sizes=" + ",".join(map(str, sizes)) + "".join(f"&{o}" for o in options)


@pytest.mark.parametrize("zerocopy", ["auto", "always"])
@pytest.mark.parametrize("app", ["bodies:wsgi", "bodies:asgi"])
@pytest.mark.parametrize("framing", ["list", "iter", "length"])
def test_pipelined_bodies_come_out_whole(turbo, app, framing, zerocopy):
    """`--send-zerocopy always` sends the large chunks by send_zc even on
    loopback (auto copies there), so both paths are checked."""
    if app.endswith("asgi") and framing == "list":
        pytest.skip("ASGI has no list bodies")
    srv = turbo(app, "--send-zerocopy", zerocopy)
    options = {"list": (), "iter": ("iter",), "length": ()}[framing]
    requests = []
    for sizes in SIZES:
        extra = (f"length={sum(sizes)}",) if framing == "length" else ()
        requests.append((sizes, query(sizes, *options, *extra)))
    with srv.connect(timeout=30) as s:
        s.sendall(b"".join(f"GET {q} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for _, q in requests))
        for sizes, _ in requests:
            status, headers, body, _ = read_response(s, timeout=30)
            assert status == 200
            assert body == expected(sizes), f"sizes {sizes}"
            if framing != "iter":
                assert headers["content-length"] == str(sum(sizes))


@pytest.mark.parametrize("app", ["bodies:wsgi", "bodies:asgi"])
def test_a_large_chunk_past_the_content_length_is_cut(turbo, app):
    srv = turbo(app, "--send-zerocopy", "always")
    with srv.connect(timeout=30) as s:
        s.sendall(f"GET {query([100, 70000], 'length=30000')} HTTP/1.1\r\nHost: x\r\n\r\n"
                  f"GET {query([20000])} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        status, headers, body, _ = read_response(s, timeout=30)
        assert headers["content-length"] == "30000"
        assert body == expected([100, 70000])[:30000]
        # The next response follows at once: nothing of the cut chunk leaked.
        assert read_response(s, timeout=30)[2] == expected([20000])


@pytest.mark.parametrize("app", ["bodies:wsgi", "bodies:asgi"])
def test_http10_and_head(turbo, app):
    srv = turbo(app)
    sizes = [300, 90000, 5]
    with srv.connect(timeout=30) as s:
        s.sendall(f"GET {query(sizes, 'iter')} HTTP/1.0\r\n\r\n".encode())
        raw = recv_all(s, timeout=30)
    assert raw.split(b"\r\n\r\n", 1)[1] == expected(sizes)
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    conn.request("HEAD", query(sizes, f"length={sum(sizes)}"))
    r = conn.getresponse()
    assert r.read() == b"" and r.headers["content-length"] == str(sum(sizes))
    conn.request("GET", query(sizes))
    assert conn.getresponse().read() == expected(sizes)


@pytest.mark.parametrize("zerocopy", ["auto", "always"])
def test_a_large_body_to_a_slow_reader(turbo, zerocopy):
    """The socket fills long before 16 MiB are out: the write (or each send_zc)
    waits while the shard serves another connection. (With a receive window
    far below one 64 KiB segment, send_zc on loopback crawls, at about 150 KB/s:
    the kernel then splits pinned segments. Real clients' windows are larger.)"""
    srv = turbo("bodies:wsgi", "--send-zerocopy", zerocopy)
    sizes = [16 << 20]
    slow = srv.connect(timeout=30)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 131072)
    slow.sendall(f"GET {query(sizes)} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert slow.recv(1).startswith(b"H")
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    conn.request("GET", query([10]))
    assert conn.getresponse().read() == expected([10])
    status, _, body, _ = read_response(slow, timeout=30)
    slow.close()
    assert status == 200 and len(body) == sizes[0] and body == expected(sizes)
