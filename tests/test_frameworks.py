"""Real frameworks under turbo: Flask and Django, including multipart uploads."""

import os

import httpx
import pytest


@pytest.mark.parametrize("spec,text", [("flaskapp:app", "Hello from Flask"), ("djangoapp.wsgi", "Hello from Django")])
def test_hello(turbo, spec, text):
    srv = turbo(spec)
    r = httpx.get(srv.url("/"), timeout=10)
    assert (r.status_code, r.text) == (200, text)


@pytest.mark.parametrize("spec", ["flaskapp:app", "djangoapp.wsgi"])
@pytest.mark.parametrize("size", [1000, 3 * 1024 * 1024])
def test_multipart_upload(turbo, spec, size):
    srv = turbo(spec)
    data = os.urandom(size)
    r = httpx.post(
        srv.url("/upload"),
        files={"file": ("report.bin", data, "application/octet-stream")},
        data={"field": "value"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "report.bin", "size": size, "field": "value", "head": data[:16].hex()}


def test_flask_query_and_path(turbo):
    srv = turbo("flaskapp:app")
    r = httpx.get(srv.url("/json?a=1&b=two"), timeout=10)
    assert r.json() == {"args": {"a": "1", "b": "two"}, "path": "/json"}
