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


def start_with_dead_log(app, *args):
    """Starts turbo with standard output and error on a pipe whose reader is
    already gone, as under `turbo app:app 2>&1 | head -1` once head exits."""
    import os
    import subprocess
    import sys

    from conftest import APPS, BIN, free_port

    read_end, write_end = os.pipe()
    os.close(read_end)
    port = free_port()
    env = dict(os.environ, VIRTUAL_ENV=sys.prefix)
    try:
        proc = subprocess.Popen(
            [BIN, app, "--bind", f"127.0.0.1:{port}", "--cores", "1", *args],
            cwd=APPS,
            env=env,
            stdout=write_end,
            stderr=write_end,
        )
    finally:
        os.close(write_end)
    return proc, port


def test_a_failed_boot_with_a_dead_log_pipe_exits_with_code_4():
    # The worker used to panic writing the traceback (SIGABRT) instead of
    # exiting with 4, so the supervisor never halted: a fork loop.
    proc, _ = start_with_dead_log("broken:app")
    try:
        assert proc.wait(30) == 4
    finally:
        proc.kill()
        proc.wait()


def test_a_dead_log_pipe_costs_log_lines_not_requests():
    import subprocess

    from conftest import wait_port

    proc, port = start_with_dead_log("hostile:wsgi", "--access-logfile", "-", "--log-level", "debug")
    try:
        wait_port(port)

        class At:
            pass

        server = At()
        server.port = port
        before = pid(server)
        for _ in range(200):
            assert pid(server) == before
        assert proc.poll() is None
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_log_pipe_nobody_reads_never_blocks_a_shard(turbo, tmp_path):
    # The access log goes to a pipe that is never read: once the pipe's
    # buffer (64 KiB) is full, writing a line would block. Lines are dropped
    # instead, and every request is still answered at once.
    import os

    read_end, write_end = os.pipe()
    try:
        server = turbo(
            "hostile:wsgi",
            "--access-logfile",
            f"/dev/fd/{write_end}",
            pass_fds=(write_end,),
        )
        before = pid(server)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        for _ in range(3000):
            conn.request("GET", "/pid?" + "q" * 200)
            resp = conn.getresponse()
            assert resp.status == 200
            assert int(resp.read().split()[0]) == before
        conn.close()
    finally:
        os.close(read_end)
        os.close(write_end)
