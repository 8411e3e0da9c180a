"""Files sent with sendfile(2): wsgi.file_wrapper over a regular file and ASGI
pathsend. The app's file object counts its Python reads (tests/apps/files.py),
which shows whether the bytes went around Python; the bytes themselves are
checked whole on every path."""

import os
import socket
import subprocess

import httpx
import pytest

from conftest import BIN, leftover, read_response, recv_all


def reads(srv):
    return int(httpx.get(srv.url("/reads"), timeout=10).text)


def blob(tmp_path, size, name="file.bin"):
    data = os.urandom(size)
    path = tmp_path / name
    path.write_bytes(data)
    return path, data


def test_file_wrapper_goes_around_python(turbo, tmp_path):
    path, data = blob(tmp_path, 3 * 1024 * 1024 + 11)
    srv = turbo("files:app")
    r = httpx.get(srv.url(f"/?{path}"), timeout=30)
    assert r.content == data
    # The file's size became the Content-Length, where the app gave none.
    assert r.headers["content-length"] == str(len(data))
    assert "transfer-encoding" not in r.headers
    assert reads(srv) == 0


def test_from_the_file_position_to_the_content_length(turbo, tmp_path):
    """As Gunicorn: the file goes out from where the app left it, and no
    further than the app's Content-Length. The connection stays usable."""
    path, data = blob(tmp_path, 200_000)
    srv = turbo("files:app")
    with srv.connect() as s:
        s.sendall(f"GET /?{path} HTTP/1.1\r\nHost: x\r\nX-Seek: 1000\r\nX-Length: 5000\r\n\r\n"
                  f"GET /?{path} HTTP/1.1\r\nHost: x\r\nX-Seek: 199990\r\n\r\n"
                  f"HEAD /?{path} HTTP/1.1\r\nHost: x\r\n\r\n"
                  "GET /reads HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        status, headers, body, _ = read_response(s)
        assert status == 200 and headers["content-length"] == "5000" and body == data[1000:6000]
        status, headers, body, _ = read_response(s)
        assert headers["content-length"] == "10" and body == data[199990:]
        s.settimeout(10)
        head = leftover(s)
        while b"\r\n\r\n" not in head:
            data = s.recv(4096)
            assert data, f"closed before the HEAD response: {head!r}"
            head += data
        head, _, rest = head.partition(b"\r\n\r\n")
        assert b"content-length: 200000" in head.lower()
        # The HEAD response had no body: the next bytes are the next response.
        status, _, body, _ = read_response_after(s, rest)
        assert status == 200 and body == b"0"


def read_response_after(s, already):
    """read_response for a socket of which `already` was read past a head."""
    while b"\r\n\r\n" not in already:
        data = s.recv(4096)
        assert data, "closed before a full head"
        already += data
    head, _, rest = already.partition(b"\r\n\r\n")
    length = int([line.split(b":")[1] for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:")][0])
    rest = bytearray(rest)
    while len(rest) < length:
        data = s.recv(1 << 20)
        assert data, "closed inside the body"
        rest += data
    return int(head.split()[1]), head, bytes(rest[:length]), bytes(rest[length:])


def test_a_file_shorter_than_its_content_length_closes_the_connection(turbo, tmp_path):
    path, data = blob(tmp_path, 1000)
    srv = turbo("files:app")
    with srv.connect() as s:
        s.sendall(f"GET /?{path} HTTP/1.1\r\nHost: x\r\nX-Length: 5000\r\n\r\n".encode())
        got = recv_all(s)
    assert got.endswith(data) and b"content-length: 5000" in got.lower()
    srv.wait_for("4000 bytes fewer than its Content-Length")


def test_without_a_descriptor_the_file_is_iterated(turbo, tmp_path):
    path, data = blob(tmp_path, 150_000)
    srv = turbo("files:app")
    r = httpx.get(srv.url(f"/nofileno?{path}"), timeout=10)
    assert r.content == data
    assert reads(srv) > 0


def test_no_sendfile_iterates_the_file(turbo, tmp_path):
    path, data = blob(tmp_path, 150_000)
    for args, env in [(("--no-sendfile",), None), ((), {"SENDFILE": "0"})]:
        srv = turbo("files:app", *args, env=env)
        assert httpx.get(srv.url(f"/?{path}"), timeout=10).content == data
        assert reads(srv) >= 3
        srv.stop()


def test_sendfile_in_print_config(tmp_path):
    def printed(*args, env=None):
        out = subprocess.run([BIN, "files:app", "--print-config", *args], capture_output=True,
                             text=True, env={**os.environ, **(env or {})}, cwd=tmp_path)
        return [line for line in out.stdout.splitlines() if line.startswith("sendfile ")]

    assert printed()[0].endswith("= None")
    assert printed("--no-sendfile")[0].endswith("= False")
    (tmp_path / "gunicorn.conf.py").write_text("sendfile = True\n")
    assert printed()[0].endswith("= True")


# (app, path of the file route, a request on another connection, its answer)
SLOW_READER_CASES = [
    ("files:app", "/", "/reads", "0"),
    ("asgi_app:app", "/file", "/", "Hello, ASGI!"),
]


@pytest.mark.parametrize("app,route,other,answer", SLOW_READER_CASES, ids=["file_wrapper", "pathsend"])
def test_a_slow_reader_holds_back_nobody(turbo, tmp_path, app, route, other, answer):
    """A client that reads nothing fills its socket: the rest of the file waits
    on a readiness poll while the shard serves other connections (without
    reading the file through Python, for the WSGI app), then goes out whole
    once the client reads."""
    path, data = blob(tmp_path, 16 * 1024 * 1024)
    srv = turbo(app)
    slow = srv.connect(timeout=30)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    slow.sendall(f"GET {route}?{path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    first = slow.recv(100)
    assert first.startswith(b"HTTP/1.1 200")
    for _ in range(3):
        assert httpx.get(srv.url(other), timeout=10).text == answer
    status, _, body, _ = read_response_after(slow, first)
    slow.close()
    assert status == 200 and body == data


def test_pathsend_of_a_directory_fails_the_request(turbo, tmp_path):
    srv = turbo("asgi_app:app")
    r = httpx.get(srv.url(f"/file?{tmp_path}"), timeout=10)
    assert r.status_code == 500
    srv.wait_for("is not a regular file")
