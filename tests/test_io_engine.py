"""The epoll engine: --io-engine epoll serves, and `auto` falls back to it,
with one warning, where io_uring is refused (here by a seccomp filter, as
Docker's default profile refuses it). tests/run runs the whole suite on epoll
too (TURBO_IO_ENGINE=epoll)."""

import platform
import subprocess
import sys

import httpx
import pytest

from conftest import BIN, IO_ENGINE

# Installs a seccomp filter that fails io_uring_setup with EPERM, then runs
# the rest of the command line.
NO_IO_URING = r"""
import ctypes, os, sys

class Instruction(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

class Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Instruction))]

ARCH_X86_64, IO_URING_SETUP = 0xC000003E, 425
code = [
    (0x20, 0, 0, 4),                    # A = arch
    (0x15, 0, 3, ARCH_X86_64),          # another arch: allow
    (0x20, 0, 0, 0),                    # A = syscall number
    (0x15, 0, 1, IO_URING_SETUP),       # not io_uring_setup: allow
    (0x06, 0, 0, 0x00050000 | 1),       # SECCOMP_RET_ERRNO | EPERM
    (0x06, 0, 0, 0x7FFF0000),           # SECCOMP_RET_ALLOW
]
libc = ctypes.CDLL(None, use_errno=True)
filters = (Instruction * len(code))(*code)
program = Program(len(code), filters)
assert libc.prctl(38, 1, 0, 0, 0) == 0                          # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.byref(program), 0, 0) == 0      # PR_SET_SECCOMP, filter
os.execv(sys.argv[1], sys.argv[1:])
"""

needs_x86 = pytest.mark.skipif(platform.machine() != "x86_64", reason="the filter names x86_64's syscall")


@pytest.mark.parametrize("app,path", [("hello:app", "/"), ("asgi_app:app", "/scope")])
def test_epoll_serves(turbo, app, path):
    srv = turbo(app, "--io-engine", "epoll", "--cores", "2")
    srv.wait_for(r"Ready: 2 shard\(s\).*, epoll")
    for _ in range(10):
        assert httpx.get(srv.url(path), timeout=10).status_code == 200


@needs_x86
def test_auto_falls_back_to_epoll_with_one_warning(turbo):
    srv = turbo("hello:app", "--io-engine", "auto", "--cores", "2",
                prefix=(sys.executable, "-c", NO_IO_URING))
    srv.wait_for(r"Ready: 2 shard\(s\).*, epoll")
    assert srv.log.count("io_uring is not available") == 1, srv.log
    assert httpx.get(srv.url("/"), timeout=10).text == "Hello, World!"


@needs_x86
def test_uring_when_refused_is_a_clear_error(turbo):
    srv = turbo("hello:app", "--io-engine", "uring",
                prefix=(sys.executable, "-c", NO_IO_URING), wait=False)
    assert srv.wait_exit() == 1
    assert "--io-engine uring: io_uring is not available" in srv.log


def run_check(prefix=()):
    out = subprocess.run([*prefix, BIN, "--check-system"], capture_output=True, text=True, timeout=60)
    return out.returncode, out.stdout


def test_check_system_reports_the_host():
    code, text = run_check()
    for topic in ("io_uring:", "CPUs:", "net.core.somaxconn", "open files:", "Python 3."):
        assert topic in text, text
    assert code == (1 if "[WARN]" in text else 0), text


@needs_x86
def test_check_system_names_a_refused_io_uring():
    code, text = run_check((sys.executable, "-c", NO_IO_URING))
    assert code == 1
    assert "[WARN] io_uring: refused" in text, text


@pytest.mark.skipif(IO_ENGINE == "epoll", reason="the epoll pass")
def test_the_io_uring_passes_serve_on_io_uring(turbo):
    # A host that refused io_uring would turn every other pass silently into
    # an epoll run: the worker must hold io_uring rings, and serve.
    import os

    srv = turbo("hello:app", "--cores", "2")
    assert "io_uring is not available" not in srv.log
    assert srv.wait_for("Ready:").rstrip().endswith("io_uring")
    assert httpx.get(srv.url(), timeout=10).status_code == 200
    # One ring per shard, in one worker or in one worker per shard (3.11).
    with open(f"/proc/{srv.proc.pid}/task/{srv.proc.pid}/children") as f:
        workers = [int(p) for p in f.read().split()]
    rings = 0
    for worker in workers:
        for fd in os.listdir(f"/proc/{worker}/fd"):
            try:
                rings += os.readlink(f"/proc/{worker}/fd/{fd}") == "anon_inode:[io_uring]"
            except OSError:
                pass
    assert rings >= 2
