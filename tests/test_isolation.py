"""--isolation auto decides before any worker serves, from every compiled
module the app could import: its virtualenv's and its own folders'. Each
server here runs with no --isolation flag, as a user starts it."""

import os
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest

from conftest import APPS, BIN

OWN_GIL = sys.version_info >= (3, 12)
needs_own_gil = pytest.mark.skipif(not OWN_GIL, reason="no per-interpreter GIL before Python 3.12")
SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")
# Frameworks whose compiled modules (markupsafe's) all support sub-interpreters.
PURE = ("flask", "starlette", "django")

LAZY_APP = """\
def app(environ, start_response):
    # Imported at the first request, as Django imports views and backends.
    import {module}
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"served"]
"""


def stdlib_extension(name):
    """The file of one of the standard library's test extension modules."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin.endswith(SUFFIX):
        pytest.skip(f"this Python has no {name} extension module to copy")
    return spec.origin


def get(srv, path="/"):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def isolation_line(srv):
    return srv.wait_for(r"\] Isolation: ")


def lazy_app(tmp_path, module):
    """The app folder of an app that imports `module` at its first request."""
    app = tmp_path / "app"
    app.mkdir(exist_ok=True)
    (app / "lazy.py").write_text(LAZY_APP.format(module=module))
    return app


def check_config(command, app, cache):
    """`turbo lazy:app --check-config`'s output, from `app`, with verdicts cached in `cache`."""
    r = subprocess.run([*command, "lazy:app", "--check-config"], cwd=app, capture_output=True, text=True,
                       timeout=60, env={**os.environ, "XDG_CACHE_HOME": str(cache)})
    assert r.returncode == 0, r.stderr
    return r.stdout


@needs_own_gil
def test_flask_starlette_and_django_keep_subinterpreters(turbo, venv_with, tmp_path):
    python = venv_with(*PURE)
    srv = turbo("flaskapp:app", "--cores", "2", command=python, default_isolation=True,
                env={"XDG_CACHE_HOME": str(tmp_path)})
    line = isolation_line(srv)
    assert "one sub-interpreter per shard: all" in line
    assert srv.log.count("(own sub-interpreter)") == 2
    assert get(srv) == (200, b"Hello from Flask")
    for app in ("starlette_app:app", "djangoapp.wsgi:application"):
        srv = turbo(app, command=python, default_isolation=True, env={"XDG_CACHE_HOME": str(tmp_path)})
        assert "one sub-interpreter per shard" in isolation_line(srv)
        assert get(srv)[0] == 200


@needs_own_gil
def test_a_refusing_module_in_the_virtualenv_gives_processes_before_the_first_request(turbo):
    # The suite's virtualenv holds pydantic-core, PyYAML, orjson, Pillow...;
    # hello imports none of them.
    srv = turbo("hello:app", "--cores", "2", default_isolation=True)
    line = isolation_line(srv)
    match = re.search(r"one worker process per shard: (\d+) of (\d+) compiled modules the app could import "
                      r"refuse sub-interpreters \((\S+), (\S+), (\S+) and (\d+) more; ", line)
    assert match and int(match[1]) >= 5 and int(match[6]) == int(match[1]) - 3, line
    assert "--isolation subinterpreter or --isolation process pins a mode" in line
    assert srv.log.count("(main interpreter)") == 2
    assert "(own sub-interpreter)" not in srv.log
    assert get(srv)[0] == 200


@needs_own_gil
def test_a_lazy_import_of_a_refusing_module_costs_no_request(turbo, venv_with, tmp_path):
    app = lazy_app(tmp_path, "_testsinglephase")
    shutil.copy(stdlib_extension("_testsinglephase"), app)
    srv = turbo("lazy:app", "--cores", "2", cwd=app, command=venv_with(*PURE),
                default_isolation=True, env={"XDG_CACHE_HOME": str(tmp_path)})
    line = isolation_line(srv)
    assert "1 of" in line and "(_testsinglephase;" in line
    for _ in range(4):
        assert get(srv) == (200, b"served")
    assert "Error handling request" not in srv.log


@needs_own_gil
def test_a_package_in_the_apps_folder_is_probed_by_its_dotted_name(turbo, venv_with, tmp_path):
    app = lazy_app(tmp_path, "vendor.fast._testmultiphase")
    package = app / "vendor" / "fast"
    package.mkdir(parents=True)
    shutil.copy(stdlib_extension("_testmultiphase"), package)
    srv = turbo("lazy:app", cwd=app, command=venv_with(*PURE),
                default_isolation=True, env={"XDG_CACHE_HOME": str(tmp_path)})
    # _testmultiphase declares support for own-GIL interpreters.
    assert "one sub-interpreter per shard" in isolation_line(srv)
    assert get(srv) == (200, b"served")
    shutil.copy(stdlib_extension("_testsinglephase"), package)
    check = check_config(venv_with(*PURE), app, tmp_path)
    assert re.search(r"shard: 1 of \d+ compiled modules", check)
    assert "  vendor.fast._testsinglephase: module _testsinglephase does not support" in check


# An extension that says it supports own-GIL interpreters, and misbehaves
# (MISBEHAVES: C statements) when it loads in any but the main one.
MISBEHAVING = r"""
#include <Python.h>
#include <signal.h>
#include <unistd.h>

static int exec_module(PyObject *module) {
    if (PyInterpreterState_Get() != PyInterpreterState_Main()) {
        MISBEHAVES;
    }
    return 0;
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, exec_module},
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
    {0, NULL},
};

static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "NAME", NULL, 0, NULL, slots};

PyMODINIT_FUNC PyInit_NAME(void) { return PyModuleDef_Init(&def); }
"""


def misbehaving_app(tmp_path, name, misbehaves):
    """The folder of an app that imports extension `name` at its first
    request, with _testmultiphase beside it; the extension runs the C
    statements `misbehaves` when loaded in a sub-interpreter."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the extension")
    app = lazy_app(tmp_path, name)
    source = tmp_path / f"{name}.c"
    source.write_text(MISBEHAVING.replace("NAME", name).replace("MISBEHAVES", misbehaves))
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(app / f"{name}{SUFFIX}"),
                    f"-I{sysconfig.get_path('include')}", str(source)], check=True)
    shutil.copy(stdlib_extension("_testmultiphase"), app)
    return app


@needs_own_gil
def test_an_extension_that_crashes_the_probe_counts_as_refusing(turbo, venv_with, tmp_path):
    app = misbehaving_app(tmp_path, "crashes", "raise(SIGSEGV)")
    srv = turbo("lazy:app", "--cores", "2", cwd=app, command=venv_with(*PURE),
                default_isolation=True, env={"XDG_CACHE_HOME": str(tmp_path)})
    line = isolation_line(srv)
    assert "one worker process per shard: 1 of" in line and "(crashes;" in line
    assert get(srv) == (200, b"served")
    check = check_config(venv_with(*PURE), app, tmp_path / "cold")
    assert "  crashes: the probe process died of signal 11 while loading crashes" in check


@needs_own_gil
def test_an_extension_that_hangs_the_probe_counts_as_refusing_once(venv_with, tmp_path):
    """The probe gives a module 30 s; one that takes longer refuses, its
    child is killed, and the verdict is cached like any other."""
    # As an extension stuck on a lock it takes at import.
    app = misbehaving_app(tmp_path, "hangs", "for (;;) pause()")
    command = venv_with(*PURE)
    cold = check_config(command, app, tmp_path / "cache")
    assert "Isolation: one worker process per shard: 1 of" in cold
    assert "  hangs: no answer in 30 s while loading hangs" in cold
    # The module that shared the killed child's run still has its own verdict.
    assert "_testmultiphase" not in cold
    warm = check_config(command, app, tmp_path / "cache")
    assert "1 of" in warm and "  hangs: no answer in 30 s while loading hangs" in warm
    assert re.search(r"0 probed, \d+ cached", warm), warm


@needs_own_gil
def test_verdicts_are_cached_by_file_identity(venv_with, tmp_path):
    app = lazy_app(tmp_path, "_testsinglephase")
    module = app / os.path.basename(stdlib_extension("_testsinglephase"))
    shutil.copy(stdlib_extension("_testsinglephase"), module)

    def check():
        return re.search(r"(\d+) probed, (\d+) cached", check_config(venv_with(*PURE), app, tmp_path)).groups()

    probed, cached = check()
    assert int(probed) >= 2 and cached == "0"
    assert check() == ("0", probed)
    os.utime(module, ns=(0, 10**9))
    assert check() == ("1", str(int(probed) - 1))


def test_check_config_says_which_mode_auto_takes():
    r = subprocess.run([BIN, "hello:app", "--check-config"], cwd=APPS, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    if not OWN_GIL:
        assert r.stdout == (f"Isolation: one worker process per shard: Python "
                            f"{sys.version_info[0]}.{sys.version_info[1]} has no per-interpreter GIL\n")
        return
    assert r.stdout.startswith("Isolation: one worker process per shard: ")
    assert "\n  pydantic_core._pydantic_core: module pydantic_core._pydantic_core does not support" in r.stdout
    pinned = subprocess.run([BIN, "hello:app", "--check-config", "--isolation", "process"], cwd=APPS,
                            capture_output=True, text=True, timeout=60)
    assert pinned.stdout == "Isolation: one worker process per shard (--isolation process)\n"


@needs_own_gil
def test_a_refusal_at_run_time_costs_one_request_under_auto(turbo, venv_with, tmp_path):
    from conftest import free_port, scrape, total

    ops = free_port()
    srv = turbo("plugin:app", "--cores", "2", "--metrics-bind", f"127.0.0.1:{ops}", command=venv_with(),
                default_isolation=True,
                env={"XDG_CACHE_HOME": str(tmp_path), "TURBO_TEST_PLUGIN": stdlib_extension("_testsinglephase")})
    assert "one sub-interpreter per shard" in isolation_line(srv)
    first = get(srv)
    assert first[0] == 500
    srv.wait_for(r"A request imported a module that refuses sub-interpreters \(module _testsinglephase")
    # Every later request is answered, by the new process workers: those that
    # arrive during the swap wait in the backlog.
    pids = set()
    for _ in range(30):
        status, body = get(srv)
        assert status == 200, body
        pids.add(int(body))
    srv.wait_for_count(r"\(main interpreter\)", 2, timeout=30)
    assert srv.log.count("A request imported a module that refuses") == 1
    assert srv.log.count("Error handling request") == 1
    assert "--isolation process serves it" in srv.log
    assert total(scrape(ops), "turbo_worker_restarts_total", reason="isolation") == 1
    assert total(scrape(ops), "turbo_workers") == 2


@needs_own_gil
def test_a_refusal_at_run_time_under_explicit_subinterpreters_is_a_500_naming_the_flag(turbo, tmp_path):
    srv = turbo("plugin:app", "--isolation", "subinterpreter",
                env={"TURBO_TEST_PLUGIN": stdlib_extension("_testsinglephase")})
    for _ in range(3):
        assert get(srv)[0] == 500
    srv.wait_for_count(r"refuses sub-interpreters \(module _testsinglephase does not support loading in "
                       r"subinterpreters\); --isolation process serves it", 3)
    assert "replacing the workers" not in srv.log
    assert get(srv)[0] == 500


@needs_own_gil
def test_hup_decides_the_isolation_again(turbo, venv_with, tmp_path):
    import signal

    app = lazy_app(tmp_path, "json")
    srv = turbo("lazy:app", cwd=app, command=venv_with(*PURE), default_isolation=True,
                env={"XDG_CACHE_HOME": str(tmp_path)})
    assert "one sub-interpreter per shard" in isolation_line(srv)
    # A deploy adds a package that refuses sub-interpreters, then reloads.
    shutil.copy(stdlib_extension("_testsinglephase"), app)
    srv.proc.send_signal(signal.SIGHUP)
    line = srv.wait_for(r"Isolation: one worker process per shard: 1 of")
    assert "(_testsinglephase;" in line
    srv.wait_for(r"\(main interpreter\)", timeout=30)
    srv.wait_for_count("Ready:", 2, timeout=30)
    assert get(srv) == (200, b"served")


@needs_own_gil
def test_hup_after_a_refusal_at_run_time_keeps_processes(turbo, venv_with, tmp_path):
    import signal

    srv = turbo("plugin:app", command=venv_with(), default_isolation=True,
                env={"XDG_CACHE_HOME": str(tmp_path), "TURBO_TEST_PLUGIN": stdlib_extension("_testsinglephase")})
    assert get(srv)[0] == 500
    srv.wait_for(r"\(main interpreter\)", timeout=30)
    srv.proc.send_signal(signal.SIGHUP)
    srv.wait_for("a request met a module that refuses sub-interpreters")
    srv.wait_for_count(r"\(main interpreter\)", 2, timeout=30)
    for _ in range(5):
        assert get(srv)[0] == 200
    assert srv.log.count("Error handling request") == 1
