"""The PROXY protocol (v1 text, v2 binary) before the first request: the
client's address comes from it, only peers in proxy_allow_ips may send it,
and a bad header gets a 4xx. The environ matches Gunicorn's."""

import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import APPS, BIN, free_port, read_response, wait_port

V1 = b"PROXY TCP4 203.0.113.7 198.51.100.1 40001 443\r\n"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(client, client_port, proxy, proxy_port):
    addresses = socket.inet_aton(client) + socket.inet_aton(proxy) + struct.pack(">HH", client_port, proxy_port)
    return V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack(">H", len(addresses)) + addresses


def request(port, prefix, path="/", requests=1):
    """Sends `prefix` then `requests` keep-alive GETs; returns the responses."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(prefix)
        out = []
        for _ in range(requests):
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            out.append(read_response(s))
        return out


PROXY_KEYS = ("REMOTE_ADDR", "REMOTE_PORT", "PROXY_PROTOCOL", "PROXY_ADDR", "PROXY_PORT")


def test_v1_sets_the_client_address(turbo):
    srv = turbo("echo:environ_app", "--proxy-protocol", "--access-logfile", "-")
    responses = request(srv.port, V1, "/a", requests=2)
    for status, _, body, _ in responses:
        assert status == 200
        environ = json.loads(body)
        assert {k: environ.get(k) for k in PROXY_KEYS} == {
            "REMOTE_ADDR": "203.0.113.7", "REMOTE_PORT": "40001", "PROXY_PROTOCOL": "TCP4",
            "PROXY_ADDR": "198.51.100.1", "PROXY_PORT": "443",
        }
    srv.wait_for(r'^203\.0\.113\.7 - - \[.*\] "GET /a HTTP/1.1" 200')


def test_v2_sets_the_asgi_client(turbo):
    srv = turbo("asgi_app:app", "--proxy-protocol", "v2")
    [(status, _, body, _)] = request(srv.port, v2("192.0.2.9", 5555, "10.0.0.1", 80), "/scope")
    assert status == 200
    assert json.loads(body)["client"] == ["192.0.2.9", 5555]


def test_a_connection_without_a_header_is_served(turbo):
    srv = turbo("echo:environ_app", "--proxy-protocol", "auto")
    [(status, _, body, _)] = request(srv.port, b"")
    assert status == 200 and json.loads(body)["REMOTE_ADDR"] == "127.0.0.1"


def test_a_peer_not_allowed_gets_403(turbo):
    srv = turbo("echo:environ_app", "--proxy-protocol", "--proxy-allow-from", "10.0.0.0/8")
    [(status, _, _, _)] = request(srv.port, V1)
    assert status == 403


@pytest.mark.parametrize("header", [
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
    b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
    V2_SIGNATURE + bytes([0x31, 0x11, 0, 0]),
])
def test_a_bad_header_gets_400_and_others_are_served(turbo, header):
    srv = turbo("echo:environ_app", "--proxy-protocol")
    [(status, _, _, _)] = request(srv.port, header)
    assert status == 400
    assert request(srv.port, V1)[0][0] == 200


def test_modes_only_accept_their_version(turbo):
    srv = turbo("echo:environ_app", "--proxy-protocol", "v2")
    # A v1 line is not a PROXY header here: it is a bad request line.
    [(status, _, _, _)] = request(srv.port, V1)
    assert status == 400


def test_environ_matches_gunicorn():
    env = dict(os.environ)
    env.pop("GUNICORN_CMD_ARGS", None)
    results = []
    for binary in (BIN, str(Path(sys.executable).parent / "gunicorn")):
        port = free_port()
        proc = subprocess.Popen(
            [binary, "echo:environ_app", "-b", f"127.0.0.1:{port}", "-w", "1", "--proxy-protocol"],
            cwd=APPS, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port)
            for prefix in (V1, v2("192.0.2.9", 5555, "10.0.0.1", 80)):
                [(status, _, body, _)] = request(port, prefix)
                environ = json.loads(body)
                results.append((binary, status, {k: environ.get(k) for k in PROXY_KEYS}))
        finally:
            proc.terminate()
            proc.wait(30)
    print(results)
    ours, theirs = [r[1:] for r in results[:2]], [r[1:] for r in results[2:]]
    assert ours == theirs


def test_v1_on_a_unix_socket_sets_the_client(turbo, tmp_path):
    path = tmp_path / "pp.sock"
    turbo("echo:environ_app", "--proxy-protocol", "--bind", f"unix:{path}")
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(V1 + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body, _ = read_response(s)
    assert status == 200
    environ = json.loads(body)
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("203.0.113.7", "40001")


def test_unknown_keeps_the_connection_address(turbo):
    srv = turbo("echo:environ_app", "--proxy-protocol")
    [(status, _, body, _)] = request(srv.port, b"PROXY UNKNOWN\r\n")
    assert status == 200
    environ = json.loads(body)
    assert environ["REMOTE_ADDR"] == "127.0.0.1" and environ["PROXY_PROTOCOL"] == "UNKNOWN"
