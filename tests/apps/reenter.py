"""An app that calls the server's own entry point from a request: turbo
must refuse it, in a sub-interpreter (the module does not load there) and in
a worker's main interpreter (it already runs in that process)."""


def app(environ, start_response):
    try:
        from turbo import _turbo

        _turbo.main(["turbo", "--version"])
        outcome = b"ran"
    except Exception as err:
        outcome = type(err).__name__.encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [outcome]
