"""Real apps on the packages real projects use, against a real PostgreSQL,
each served in the default isolation (no --isolation flag) from a virtualenv
holding just what it depends on. Each must answer right from its very first
request, with no error in the log: the modules that refuse sub-interpreters
(psycopg2, orjson, SQLAlchemy's and psycopg's compiled parts, pydantic-core,
bcrypt, argon2-cffi, cryptography, Pillow) are found before serving, even
where the app imports them only at its first request.

tests/run runs this file in the --threads pass too."""

import hashlib
import io
import os
import re
import subprocess
import sys

import httpx
import pytest

from conftest import APPS

OWN_GIL = sys.version_info >= (3, 12)


def serve(turbo, app, command, env, cores=2):
    srv = turbo(app, "--cores", str(cores), command=command, default_isolation=True, env=env)
    line = srv.wait_for(r"\] Isolation: ")
    if OWN_GIL:
        assert re.search(r"one worker process per shard: \d+ of \d+ compiled modules", line), line
    else:
        assert "has no per-interpreter GIL" in line
    return srv, line


def assert_clean(srv):
    """No request failed and no worker died (the fixture checks deaths)."""
    for marker in ("Error handling request", "Traceback", "refuses sub-interpreters ("):
        assert marker not in srv.log, srv.log


def python_of(command):
    return command[0]


@pytest.fixture(scope="module")
def django_db(postgres, venv_with):
    command = venv_with("django", "psycopg2-binary", "orjson")
    env = {**os.environ, **postgres.database("django"), "DJANGO_SETTINGS_MODULE": "realdjango.settings"}
    manage = [python_of(command), "-m", "django"]
    subprocess.run([*manage, "migrate", "--noinput"], cwd=APPS, env=env, check=True, capture_output=True)
    subprocess.run([python_of(command), "-c", "import django; django.setup(); "
                    "from django.contrib.auth.models import User; "
                    "User.objects.create_superuser('admin', 'admin@example.com', 'turbo-admin-pass')"],
                   cwd=APPS, env=env, check=True, capture_output=True)
    return command, env


def test_django_on_psycopg2_with_orjson(turbo, django_db):
    command, env = django_db
    srv, line = serve(turbo, "realdjango.wsgi:application", command, env)
    if OWN_GIL:
        assert "orjson" in line and "psycopg2" in line, line
    base = srv.url("")
    with httpx.Client(base_url=base, timeout=15) as client:
        # The first request imports the URLconf, the views, orjson and the backend.
        first = client.get("/items")
        assert first.status_code == 200, first.text
        stock = {item["name"]: item for item in first.json()}
        assert {name: item["stock"] for name, item in stock.items()} == {"pen": 5, "ink": 1, "pad": 3}
        page = client.get("/page")
        assert page.status_code == 200 and "<li>ink: 1 left</li>" in page.text
        # An update in a transaction, then the conflict it leaves.
        ink = stock["ink"]["id"]
        assert client.post(f"/buy/{ink}").json() == {"id": ink, "stock": 0}
        assert client.post(f"/buy/{ink}").status_code == 409
        assert "<li>ink: 0 left</li>" in client.get("/page").text
        # A file upload.
        blob = os.urandom(300_000)
        r = client.post("/upload", files={"file": ("blob.bin", blob)}, data={"field": "x"})
        assert r.json() == {"name": "blob.bin", "size": len(blob), "sha256": hashlib.sha256(blob).hexdigest(),
                            "field": "x"}
        # The admin: its login form sets the CSRF cookie; a post without the token is refused.
        form = client.get("/admin/login/?next=/admin/")
        assert form.status_code == 200
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)[1]
        forged = httpx.post(base + "/admin/login/", data={"username": "admin", "password": "turbo-admin-pass"},
                            timeout=15)
        assert forged.status_code == 403
        login = client.post("/admin/login/?next=/admin/", data={
            "csrfmiddlewaretoken": token, "username": "admin", "password": "turbo-admin-pass", "next": "/admin/"})
        assert login.status_code == 302 and login.headers["location"] == "/admin/"
        home = client.get("/admin/")
        assert home.status_code == 200 and "Site administration" in home.text
        assert client.get("/admin/shop/item/").status_code == 200
    assert_clean(srv)


@pytest.fixture(scope="module")
def flask_db(postgres, venv_with):
    env = {**os.environ, **postgres.database("flask")}
    postgres.sql("flask", "CREATE TABLE notes (id serial PRIMARY KEY, text varchar(200) NOT NULL)")
    return venv_with("flask", "sqlalchemy", "psycopg[binary]"), env


def test_flask_with_sqlalchemy_on_psycopg3(turbo, flask_db):
    command, env = flask_db
    check = subprocess.run([python_of(command), "-c", "from sqlalchemy.util import has_compiled_ext; "
                            "import psycopg; print(has_compiled_ext(), psycopg.pq.__impl__)"],
                           capture_output=True, text=True, check=True)
    assert check.stdout.split() == ["True", "binary"]
    srv, line = serve(turbo, "realflask:app", command, env)
    with httpx.Client(base_url=srv.url(""), timeout=15) as client:
        first = client.post("/notes", json={"text": "first"})
        assert first.status_code == 201, first.text
        for i in range(20):
            assert client.post("/notes", json={"text": f"note {i}"}).status_code == 201
        assert client.post("/notes", json={"text": ""}).status_code == 422
        notes = client.get("/notes").json()
        assert [n["text"] for n in notes] == ["first", *(f"note {i}" for i in range(20))]
    assert_clean(srv)


@pytest.fixture(scope="module")
def fastapi_db(postgres, venv_with):
    env = {**os.environ, **postgres.database("fastapi")}
    postgres.sql("fastapi", "CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, price float8 NOT NULL)")
    return venv_with("fastapi", "asyncpg"), env


def test_fastapi_with_pydantic_on_asyncpg(turbo, fastapi_db):
    command, env = fastapi_db
    srv, line = serve(turbo, "realfastapi:app", command, env)
    if OWN_GIL:
        assert "pydantic_core" in line
    with httpx.Client(base_url=srv.url(""), timeout=15) as client:
        first = client.post("/items", json={"name": "pen", "price": 1.5})
        assert first.status_code == 201, first.text
        created = first.json()
        assert created["name"] == "pen" and created["price"] == 1.5
        assert client.get(f"/items/{created['id']}").json() == created
        assert client.get("/items/999999").status_code == 404
        bad = client.post("/items", json={"name": "", "price": -1})
        assert bad.status_code == 422 and len(bad.json()["detail"]) == 2
    assert_clean(srv)


def test_passwords_with_bcrypt_and_argon2_and_tokens_signed_by_cryptography(turbo, venv_with):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    command = venv_with("flask", "bcrypt", "argon2-cffi", "pyjwt[crypto]")
    srv, line = serve(turbo, "realauth:app", command, {"TURBO_TEST_SIGNING_KEY": key})
    if OWN_GIL:
        assert "bcrypt" in line or "argon2" in line or "cryptography" in line, line
    with httpx.Client(base_url=srv.url(""), timeout=15) as client:
        hashes = client.post("/hash", json={"password": "correct horse"})
        assert hashes.status_code == 200, hashes.text
        hashes = hashes.json()
        assert hashes["bcrypt"].startswith("$2b$04$") and hashes["argon2"].startswith("$argon2id$")
        login = client.post("/login", json={"user": "ada", "password": "correct horse", **hashes})
        assert login.status_code == 200, login.text
        token = login.json()["token"]
        # Any worker verifies what another signed.
        for _ in range(6):
            assert client.get("/me", headers={"Authorization": f"Bearer {token}"}).json() == {"user": "ada"}
        assert client.post("/login", json={"user": "ada", "password": "wrong", **hashes}).status_code == 401
        assert client.get("/me", headers={"Authorization": f"Bearer {token}x"}).status_code == 401
    assert_clean(srv)


def test_pillow_thumbnail_of_an_upload(turbo, venv_with):
    from PIL import Image

    picture = Image.new("RGB", (640, 480), (200, 30, 30))
    sent = io.BytesIO()
    picture.save(sent, "JPEG")
    srv, line = serve(turbo, "realthumb:app", venv_with("pillow"), {})
    if OWN_GIL:
        assert "PIL." in line
    first = httpx.post(srv.url("/"), content=sent.getvalue(), timeout=15)
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(first.content)) as thumb:
        assert thumb.format == "PNG" and thumb.size == (64, 48)
        assert thumb.getpixel((10, 10))[0] > 150
    assert httpx.post(srv.url("/"), content=b"not an image", timeout=15).status_code == 415
    assert_clean(srv)
