"""Imports a single-phase-init extension, which refuses to load in an isolated
sub-interpreter, as pydantic-core and numpy do."""

import _testsinglephase  # noqa: F401


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"served from the main interpreter"]
