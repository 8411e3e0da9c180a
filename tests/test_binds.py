"""Binds beyond HOST:PORT: unix sockets, inherited descriptors (fd://N),
systemd socket activation (LISTEN_FDS), and reuse_port."""

import json
import os
import re
import signal
import socket
import subprocess
import sys

import httpx


def curl_unix(path, url="http://localhost/", *args):
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--unix-socket", str(path), *args, url],
        capture_output=True,
        check=True,
    )
    return out.stdout


def test_unix_socket_serves_wsgi_with_gunicorn_environ(turbo, tmp_path):
    path = tmp_path / "app.sock"
    srv = turbo("echo:environ_app", "--bind", f"unix:{path}", "--access-logfile", "-")
    srv.wait_for(re.escape(f"Listening at: unix:{path}"))
    assert path.is_socket()
    environ = json.loads(curl_unix(path, "http://localhost/x?y=1", "-H", "X-Forwarded-Proto: https"))
    # As Gunicorn: no client address on a unix socket, and the peer is trusted
    # as a proxy, since only this host can reach it.
    assert environ["REMOTE_ADDR"] == ""
    assert "REMOTE_PORT" not in environ
    assert environ["SERVER_NAME"] == str(path)
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["PATH_INFO"] == "/x" and environ["QUERY_STRING"] == "y=1"
    srv.wait_for(r'^ - - \[.*\] "GET /x\?y=1 HTTP/1.1" 200 ')
    # The TCP bind serves beside it.
    assert httpx.get(srv.url("/")).status_code == 200
    srv.stop()
    assert srv.proc.returncode == 0
    assert not path.exists(), "the socket file outlived the server"


def test_unix_socket_serves_asgi(turbo, tmp_path):
    path = tmp_path / "asgi.sock"
    srv = turbo("asgi_app:app", "--bind", f"unix:{path}")
    transport = httpx.HTTPTransport(uds=str(path))
    with httpx.Client(transport=transport, base_url="http://localhost") as client:
        scope = client.get("/scope").json()
        assert scope["client"] is None
        assert scope["server"] == [str(path), None]
        assert client.post("/echo", content=b"x" * 100_000).content == b"x" * 100_000


def test_a_stale_socket_file_is_replaced_and_other_files_are_not(turbo, tmp_path):
    stale = tmp_path / "stale.sock"
    old = socket.socket(socket.AF_UNIX)
    old.bind(str(stale))
    old.close()
    assert stale.is_socket()
    srv = turbo("hello:app", "--bind", f"unix:{stale}")
    assert curl_unix(stale) == b"Hello, World!"
    srv.stop()

    regular = tmp_path / "not-a-socket"
    regular.write_text("keep me")
    srv = turbo("hello:app", "--bind", f"unix:{regular}", wait=False)
    assert srv.wait_exit() == 1
    assert "Cannot listen at unix:" in srv.log
    assert regular.read_text() == "keep me"


def test_unix_socket_is_handed_over_by_usr2(turbo, tmp_path):
    path = tmp_path / "usr2.sock"
    srv = turbo("lifecycle:app", "--bind", f"unix:{path}")
    old = srv.proc.pid
    srv.proc.send_signal(signal.SIGUSR2)
    line = srv.wait_for(r"Started a new supervisor \(pid:\d+\)")
    new = int(re.search(r"pid:(\d+)", line).group(1))
    try:
        srv.wait_for_count("Ready:", 2, timeout=30)
        srv.proc.send_signal(signal.SIGTERM)
        srv.wait_for(re.escape(f"[{old}] [INFO] Shutting down: Master"))
        # The old supervisor left the socket file to its successor.
        assert path.is_socket()
        curl_unix(path)
    finally:
        os.kill(new, signal.SIGTERM)
    srv.wait_for(re.escape(f"[{new}] [INFO] Shutting down: Master"))
    assert not path.exists()


def test_fd_bind_serves_an_inherited_socket(turbo):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    fd = listener.fileno()
    srv = turbo("hello:app", "--bind", f"fd://{fd}", "--cores", "2", pass_fds=(fd,))
    listener.close()
    srv.wait_for(re.escape(f"Listening at: http://127.0.0.1:{port}"))
    for _ in range(20):
        assert httpx.get(f"http://127.0.0.1:{port}/").text == "Hello, World!"


def test_a_bad_fd_bind_is_an_error(turbo):
    srv = turbo("hello:app", "--bind", "fd://97", wait=False)
    assert srv.wait_exit() == 1
    assert "fd://97" in srv.log


# Sets what systemd sets for a socket-activated service: the sockets from fd 3
# on, LISTEN_FDS and LISTEN_PID (the pid of the process that will use them).
SYSTEMD_EXEC = """
import os, sys
os.dup2(int(sys.argv[1]), 3)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
"""


def test_systemd_socket_activation(turbo, tmp_path):
    path = tmp_path / "systemd.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(16)
    fd = listener.fileno()
    srv = turbo(
        "echo:osenv_app",
        prefix=(sys.executable, "-c", SYSTEMD_EXEC, str(fd)),
        pass_fds=(fd,),
    )
    listener.close()
    srv.wait_for("Using sockets passed by systemd")
    srv.wait_for(re.escape(f"Listening at: unix:{path}"))
    # The configured bind is not used.
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", srv.port)) != 0
    # The app does not see systemd's variables.
    assert curl_unix(path, "http://localhost/?LISTEN_FDS") == b"<unset>"
    assert curl_unix(path, "http://localhost/?LISTEN_PID") == b"<unset>"


def test_a_port_in_use_is_refused_unless_reuse_port(turbo):
    first = turbo("hello:app")
    refused = turbo("hello:app", port=first.port, wait=False)
    assert refused.wait_exit() == 1
    assert f"Connection in use: 127.0.0.1:{first.port}" in refused.log
    # With reuse_port, a second server shares the port, as Gunicorn's does.
    turbo("hello:app", "--reuse-port", port=first.port)
    assert httpx.get(first.url("/")).status_code == 200
