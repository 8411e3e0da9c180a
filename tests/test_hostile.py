"""Hostile and careless clients against the real binary. Each case asserts that
other connections are served while it runs and that the worker survives it
(the same pid before and after; the turbo fixture also fails a test whose log
shows a worker's death)."""

import http.client
import socket
import time

import pytest

from conftest import recv_all

APPS = ["hostile:wsgi", "hostile:asgi"]


def get(server, path, timeout=5):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def pid(server, timeout=5):
    """The worker's pid, asked over a fresh connection that must be answered
    within `timeout` seconds."""
    status, body = get(server, "/pid", timeout)
    assert status == 200
    return int(body.split()[0])


def drain(sock, limit=20):
    """Reads until the server closes, for at most `limit` seconds; the bytes
    read."""
    deadline = time.monotonic() + limit
    total = 0
    sock.settimeout(1)
    while time.monotonic() < deadline:
        try:
            data = sock.recv(1 << 20)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return total
        if not data:
            return total
        total += len(data)
    raise AssertionError(f"the server kept the connection open past {limit} s")


@pytest.mark.parametrize("app", APPS)
def test_a_reader_that_stops_costs_only_its_connection(turbo, app):
    # A fresh 64 MiB body is lent to the kernel; the client takes 100 bytes
    # and stops. At the stall limit the write is cancelled and the lent object
    # released: that used to crash the worker (SIGSEGV, a decref with no
    # thread state attached).
    server = turbo(app, "--send-timeout", "2", "--log-level", "debug")
    before = pid(server)
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", server.port))
    slow.sendall(b"GET /big?mb=64 HTTP/1.1\r\nHost: x\r\n\r\n")
    slow.settimeout(10)
    assert slow.recv(100)
    for _ in range(3):
        assert pid(server, timeout=2) == before
    server.wait_for("took no bytes for 2 s", timeout=20)
    assert drain(slow) < 64 << 20
    slow.close()
    assert pid(server) == before
    # The same again: the worker is still whole.
    assert get(server, "/big?mb=1")[1] == b"x" * (1 << 20)
