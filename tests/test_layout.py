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


def test_the_interfaces_share_nothing_but_what_lies_below_them():
    """WSGI and ASGI each translate for the one driver; what both need lives
    under them (src/http/, src/python/, observe.rs), never in the other."""
    for interface, other in (("wsgi", "asgi"), ("asgi", "wsgi")):
        for path in sorted((SRC / interface).rglob("*.rs")):
            assert f"crate::{other}" not in path.read_text(), path
    for shared in ("observe.rs", "hooks.rs", "access_log.rs"):
        text = (SRC / shared).read_text()
        assert "crate::wsgi" not in text and "crate::asgi" not in text, shared
