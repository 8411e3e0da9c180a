"""Proxy headers: only peers in forwarded_allow_ips may set the scheme
through secure_scheme_headers, for WSGI and ASGI alike."""

import httpx

from conftest import read_response


def scheme(srv, headers, path="/"):
    r = httpx.get(srv.url(path), headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_trusted_peer_sets_https(turbo):
    srv = turbo("echo:environ_app")
    assert scheme(srv, {"X-Forwarded-Proto": "https"})["wsgi.url_scheme"] == "https"
    assert scheme(srv, {"X-Forwarded-Ssl": "on"})["wsgi.url_scheme"] == "https"
    assert scheme(srv, {"X-Forwarded-Proto": "http"})["wsgi.url_scheme"] == "http"
    assert scheme(srv, {})["wsgi.url_scheme"] == "http"


def test_untrusted_peer_is_ignored(turbo):
    srv = turbo("echo:environ_app", "--forwarded-allow-ips", "10.0.0.0/8")
    assert scheme(srv, {"X-Forwarded-Proto": "https"})["wsgi.url_scheme"] == "http"


def test_star_and_cidr_trust(turbo):
    for allowed in ["*", "127.0.0.0/8", "10.1.1.1, 127.0.0.1"]:
        srv = turbo("echo:environ_app", "--forwarded-allow-ips", allowed)
        assert scheme(srv, {"X-Forwarded-Proto": "https"})["wsgi.url_scheme"] == "https", allowed
        srv.stop()


def test_forwarded_allow_ips_environment_variable(turbo):
    srv = turbo("echo:environ_app", env={"FORWARDED_ALLOW_IPS": "192.0.2.1"})
    assert scheme(srv, {"X-Forwarded-Proto": "https"})["wsgi.url_scheme"] == "http"


def test_contradictory_scheme_headers_are_400(turbo):
    srv = turbo("echo:environ_app")
    with srv.connect() as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Ssl: off\r\n\r\n")
        assert read_response(s)[0] == 400


def test_custom_secure_scheme_headers_from_the_config_file(turbo, tmp_path):
    conf = tmp_path / "c.py"
    conf.write_text("secure_scheme_headers = {'X-SCHEME': 'secure'}\n")
    srv = turbo("echo:environ_app", "-c", str(conf))
    assert scheme(srv, {"X-Scheme": "secure"})["wsgi.url_scheme"] == "https"
    assert scheme(srv, {"X-Forwarded-Proto": "https"})["wsgi.url_scheme"] == "http"


def test_asgi_scheme(turbo):
    srv = turbo("asgi_app:app")
    r = httpx.get(srv.url("/scope"), headers={"X-Forwarded-Proto": "https"}, timeout=10)
    assert r.json()["scheme"] == "https"
    srv.stop()
    srv = turbo("asgi_app:app", "--forwarded-allow-ips", "10.0.0.1")
    r = httpx.get(srv.url("/scope"), headers={"X-Forwarded-Proto": "https"}, timeout=10)
    assert r.json()["scheme"] == "http"
