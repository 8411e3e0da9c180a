"""A 1 MiB response body made in memory (WSGI `wsgi`, ASGI `asgi`): what writing a
large bytes object costs, where a server copies it or sends it from the
object's own buffer."""

from body10k import apps

wsgi, asgi = apps(1 << 20)
