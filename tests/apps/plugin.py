"""Loads an extension module by path at each request, as a plugin system
does: auto isolation cannot see it before serving. TURBO_TEST_PLUGIN names
the file; it answers with the worker's pid."""

import importlib.util
import os


def app(environ, start_response):
    path = os.environ["TURBO_TEST_PLUGIN"]
    name = os.path.basename(path).split(".")[0]
    spec = importlib.util.spec_from_file_location(name, path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]
