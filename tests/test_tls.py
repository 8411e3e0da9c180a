"""HTTPS with Gunicorn's settings (certfile, keyfile, ca_certs, cert_reqs,
ciphers), tested with Python's ssl module: the scheme is https, bodies of
every size cross in both directions, client certificates are asked for as
cert_reqs says, and the ASGI tls extension describes the connection."""

import asyncio
import json
import shutil
import socket
import ssl
import subprocess

import pytest

from conftest import read_response

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=Test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
            "server.pem", "-days", "2", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", cwd=d)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr",
            "-subj", "/C=US/O=Acme, Inc./CN=alice", cwd=d)
    (d / "client.cnf").write_text("basicConstraints=critical,CA:FALSE\n"
                                  "keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n")
    openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "client.pem", "-days", "2", "-extfile", "client.cnf", cwd=d)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rogue.key", "-out",
            "rogue.pem", "-days", "2", "-subj", "/CN=mallory", cwd=d)
    openssl("rsa", "-in", "server.key", "-traditional", "-out", "server_pkcs1.key", cwd=d)
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ec.key", cwd=d)
    openssl("req", "-x509", "-key", "ec.key", "-out", "ec.pem", "-days", "2", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", cwd=d)
    return d


def client_context(certs, server="server.pem", cert=None):
    ctx = ssl.create_default_context(cafile=str(certs / server))
    if cert:
        ctx.load_cert_chain(str(certs / f"{cert}.pem"), str(certs / f"{cert}.key"))
    return ctx


def tls_flags(certs, *extra, cert="server.pem", key="server.key"):
    return ("--certfile", str(certs / cert), "--keyfile", str(certs / key), *extra)


def https(srv, ctx, raw):
    """Sends raw requests over one TLS connection; returns the responses and
    the connection's version and cipher."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as plain:
        with ctx.wrap_socket(plain, server_hostname="localhost") as s:
            s.sendall(raw)
            responses = []
            while raw.count(b"HTTP/1.1\r\n") > len(responses):
                responses.append(read_response(s))
            return responses, s.version(), s.cipher()


def get(path, extra=b""):
    return f"GET {path} HTTP/1.1\r\nHost: localhost\r\n".encode() + extra + b"\r\n"


def test_wsgi_over_tls(turbo, certs):
    srv = turbo("echo:environ_app", *tls_flags(certs), "--access-logfile", "-")
    responses, version, _ = https(srv, client_context(certs), get("/a?x=1") + get("/b"))
    assert [r[0] for r in responses] == [200, 200]
    environ = json.loads(responses[0][2])
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["PATH_INFO"] == "/a" and environ["QUERY_STRING"] == "x=1"
    assert version == "TLSv1.3"
    srv.wait_for(r'"GET /b HTTP/1.1" 200')


@pytest.mark.parametrize("size", [10, 300_000])
def test_wsgi_bodies_both_ways(turbo, certs, size):
    """A body above 64 KiB streams to the app through the session on the
    app's own reads; the echo comes back just as whole."""
    srv = turbo("echo:echo", *tls_flags(certs))
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    raw = f"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    [(status, _, echoed, _)], _, _ = https(srv, client_context(certs), raw)
    assert status == 200 and echoed == body


def test_expect_100_continue_is_encrypted(turbo, certs):
    srv = turbo("echo:echo", *tls_flags(certs))
    body = b"y" * 200_000
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as plain:
        with client_context(certs).wrap_socket(plain, server_hostname="localhost") as s:
            s.sendall(f"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\n"
                      "Expect: 100-continue\r\n\r\n".encode())
            interim = b""
            while b"\r\n\r\n" not in interim:
                interim += s.recv(1024)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            s.sendall(body)
            status, _, echoed, _ = read_response(s)
            assert status == 200 and echoed == body


def test_asgi_scope_and_tls_extension(turbo, certs):
    srv = turbo("asgi_app:app", *tls_flags(certs, "--ca-certs", str(certs / "ca.pem"), "--cert-reqs", "1"))
    [(status, _, body, _)], version, cipher = https(srv, client_context(certs, cert="client"), get("/scope"))
    assert status == 200
    scope = json.loads(body)
    assert scope["scheme"] == "https"
    tls = scope["extensions"]["tls"]
    assert tls["tls_version"] == 0x0304 and version == "TLSv1.3"
    assert tls["cipher_suite"] in (0x1301, 0x1302, 0x1303)
    assert tls["server_cert"] == (certs / "server.pem").read_text()
    assert tls["client_cert_chain"] == [(certs / "client.pem").read_text()]
    expected = subprocess.run(["openssl", "x509", "-in", str(certs / "client.pem"), "-noout",
                               "-subject", "-nameopt", "RFC2253"], capture_output=True, text=True)
    assert tls["client_cert_name"] == expected.stdout.strip().removeprefix("subject=")
    assert tls["client_cert_error"] is None
    assert "http.response.pathsend" in scope["extensions"]


def test_asgi_large_bodies(turbo, certs):
    srv = turbo("asgi_app:app", *tls_flags(certs))
    body = b"z" * 1_000_000
    raw = f"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    [(status, _, echoed, _)], _, _ = https(srv, client_context(certs), raw)
    assert status == 200 and echoed == body


def test_wss(turbo, certs):
    websockets = pytest.importorskip("websockets")
    from websockets.asyncio.client import connect

    srv = turbo("ws_app:app", *tls_flags(certs))

    async def talk():
        async with connect(f"wss://localhost:{srv.port}/echo", ssl=client_context(certs)) as ws:
            await ws.send("hello")
            return await asyncio.wait_for(ws.recv(), 10)

    assert asyncio.run(talk()) == "hello"


def test_required_client_certificates(turbo, certs):
    srv = turbo("hello:app", *tls_flags(certs, "--ca-certs", str(certs / "ca.pem"), "--cert-reqs", "2"))
    [(status, _, body, _)], _, _ = https(srv, client_context(certs, cert="client"), get("/"))
    assert status == 200 and body == b"Hello, World!"
    for cert in (None, "rogue"):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            https(srv, client_context(certs, cert=cert), get("/"))
    # The refusals cost nothing else.
    assert https(srv, client_context(certs, cert="client"), get("/"))[0][0][0] == 200


def test_optional_client_certificates(turbo, certs):
    srv = turbo("hello:app", *tls_flags(certs, "--ca-certs", str(certs / "ca.pem"), "--cert-reqs", "1"))
    assert https(srv, client_context(certs), get("/"))[0][0][0] == 200


def test_plain_http_to_the_tls_port_gets_400(turbo, certs):
    srv = turbo("hello:app", *tls_flags(certs))
    with srv.connect() as s:
        s.sendall(get("/"))
        status, _, body, _ = read_response(s)
    assert status == 400 and b"plain HTTP request was sent to HTTPS port" in body
    assert https(srv, client_context(certs), get("/"))[0][0][0] == 200


def test_ciphers_select_tls12_suites(turbo, certs):
    srv = turbo("hello:app", *tls_flags(certs, "--ciphers", "ECDHE-RSA-AES128-GCM-SHA256"))
    ctx = client_context(certs)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    [(status, _, _, _)], version, cipher = https(srv, ctx, get("/"))
    assert status == 200 and version == "TLSv1.2" and cipher[0] == "ECDHE-RSA-AES128-GCM-SHA256"


@pytest.mark.parametrize("cert,key", [("server.pem", "server_pkcs1.key"), ("ec.pem", "ec.key")])
def test_key_formats(turbo, certs, cert, key):
    srv = turbo("hello:app", *tls_flags(certs, cert=cert, key=key))
    assert https(srv, client_context(certs, server=cert), get("/"))[0][0][0] == 200


def test_bad_tls_settings_are_clear_errors(turbo, certs):
    for flags, message in [
        (("--certfile", str(certs / "missing.pem")), "missing.pem"),
        (("--certfile", str(certs / "server.pem"), "--keyfile", str(certs / "ec.key")), "key"),
        (tls_flags(certs, "--cert-reqs", "2"), "ca_certs"),
        (tls_flags(certs, "--ciphers", "AES128-SHA"), "selects no TLS 1.2 cipher"),
    ]:
        srv = turbo("hello:app", *flags, wait=False)
        assert srv.wait_exit() != 0
        assert message in srv.log, srv.log


def test_tls_on_a_unix_socket(turbo, certs, tmp_path):
    """Gunicorn wraps every listener in TLS, unix sockets included."""
    path = tmp_path / "tls.sock"
    srv = turbo("hello:app", *tls_flags(certs), "--bind", f"unix:{path}")
    srv.wait_for(r"Listening at: https://127\.0\.0\.1:")
    with socket.socket(socket.AF_UNIX) as plain:
        plain.settimeout(10)
        plain.connect(str(path))
        with client_context(certs).wrap_socket(plain, server_hostname="localhost") as s:
            s.sendall(get("/"))
            status, _, body, _ = read_response(s)
    assert status == 200 and body == b"Hello, World!"


def test_an_asgi_client_that_leaves_is_noticed_over_tls(turbo, certs):
    """The client's close_notify is TLS data, not a request: the app still
    learns that it left."""
    srv = turbo("asgi_app:app", *tls_flags(certs))
    plain = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    s = client_context(certs).wrap_socket(plain, server_hostname="localhost")
    s.sendall(get("/disconnect"))
    srv.wait_for("waiting for disconnect")
    s.close()
    srv.wait_for("received http.disconnect")
