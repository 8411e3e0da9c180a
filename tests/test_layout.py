"""The source's layering, as docs/architecture.md describes it: `src/http/`
is the protocol alone, under the WSGI and ASGI handlers, and never reaches
up into Python, the configuration or the shard."""

import pathlib
import re

SRC = pathlib.Path(__file__).resolve().parent.parent / "src"

# What a file under src/http/ may not name: the layers above it.
FORBIDDEN = re.compile(
    r"\b(pyo3|crate::(config|shard|wsgi|asgi|python|observe|hooks|access_log|scoreboard|supervisor|worker))\b"
)


def test_http_knows_nothing_above_it():
    files = sorted((SRC / "http").rglob("*.rs"))
    assert len(files) > 10, files
    found = []
    for path in files:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.lstrip().startswith("//"):
                continue
            if FORBIDDEN.search(line):
                found.append(f"{path.relative_to(SRC)}:{n}: {line.strip()}")
    assert not found, "\n".join(found)


def test_interfaces_do_not_import_each_other_handlers():
    """WSGI and ASGI each translate for the one driver; neither drives a
    connection through the other."""
    for interface, other in (("wsgi", "asgi"), ("asgi", "wsgi")):
        for path in sorted((SRC / interface).rglob("*.rs")):
            text = path.read_text()
            assert f"crate::{other}::handler" not in text, path
            assert f"crate::{other}::http" not in text, path
