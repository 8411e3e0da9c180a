"""turbo as pip installs it: the `turbo` command in the virtualenv's bin,
hosted by the virtualenv's own Python, with nothing from the machine that
built the wheel."""

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import APPS, BIN, free_port, wait_port


def extension():
    """The installed extension module's file."""
    spec = importlib.util.find_spec("turbo._turbo")
    assert spec and spec.origin, "turbo is not installed in this virtualenv"
    return Path(spec.origin)


def test_the_command_runs_by_its_path_with_no_virtualenv_and_a_bare_environment():
    port = free_port()
    # No VIRTUAL_ENV, no activated PATH, no LD_LIBRARY_PATH: as a systemd unit
    # or a Dockerfile's ENTRYPOINT runs it.
    env = {"PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([BIN, "hello:app", "--bind", f"127.0.0.1:{port}", "--cores", "1"],
                            cwd=APPS, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port)
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).text == "Hello, World!"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()


def test_python_dash_m_turbo_is_the_same_command():
    ours = subprocess.run([BIN, "--version"], capture_output=True, text=True, timeout=30)
    module = subprocess.run([sys.executable, "-m", "turbo", "--version"],
                            capture_output=True, text=True, timeout=30)
    assert ours.returncode == module.returncode == 0
    assert module.stdout == ours.stdout and "turbo" in ours.stdout


def test_the_extension_needs_no_libpython_and_names_no_python_of_the_build():
    so = extension()
    dynamic = subprocess.run(["readelf", "-d", str(so)], capture_output=True, text=True, check=True).stdout
    assert "libpython" not in dynamic, dynamic
    assert "RPATH" not in dynamic and "RUNPATH" not in dynamic, dynamic
    data = so.read_bytes()
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    pythons = {Path(sys.base_prefix)} | (set(pyenv.iterdir()) if pyenv.is_dir() else set())
    for prefix in pythons:
        assert str(prefix).encode() not in data, f"{so.name} names {prefix}"


def fake_package(tmp_path, extension_name, content=b""):
    """A copy of the installed turbo package whose extension module is
    `extension_name`, holding `content`, in place of the real one."""
    package = tmp_path / "turbo"
    shutil.copytree(extension().parent, package,
                    ignore=shutil.ignore_patterns("_turbo.*", "__pycache__"))
    (package / extension_name).write_bytes(content)
    return subprocess.run(
        [sys.executable, "-c",
         "import sys; sys.path.insert(0, sys.argv[1]); from turbo.__main__ import main; sys.exit(main())",
         str(tmp_path), "hello:app"],
        cwd=APPS, capture_output=True, text=True, timeout=30)


def test_a_wheel_built_for_another_python_is_a_one_line_error(tmp_path):
    r = fake_package(tmp_path, "_turbo.cpython-39-x86_64-linux-gnu.so")
    assert r.returncode == 1
    running = f"Python {sys.version_info.major}.{sys.version_info.minor}"
    assert r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("turbo: error: this turbo was built for Python 3.9")
    assert running in r.stderr and "Traceback" not in r.stderr


def test_a_broken_extension_module_is_a_one_line_error(tmp_path):
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    r = fake_package(tmp_path, f"_turbo{suffix}", b"not an ELF file")
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("turbo: error: cannot load turbo's extension module")


@pytest.mark.parametrize("isolation", ["subinterpreter", "process"])
def test_an_app_that_calls_turbo_from_a_request_is_refused(turbo, isolation):
    if isolation == "subinterpreter" and sys.version_info < (3, 12):
        pytest.skip("no sub-interpreters before Python 3.12")
    srv = turbo("reenter:app", "--isolation", isolation)
    for _ in range(2):
        r = httpx.get(srv.url("/"), timeout=10)
        assert r.status_code == 200
        assert r.text == ("ImportError" if isolation == "subinterpreter" else "RuntimeError")
