"""The benchmark's apps: what each serves, through which interface, under what load,
and which servers sit out (with the reason, which the report prints)."""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class App:
    name: str
    target: str  # MODULE:CALLABLE under bench/apps/
    interface: str  # "wsgi" or "asgi"
    about: str
    load: str = "get"  # "get", "post" (wrk with bench/post.lua) or "ws" (bench/wsload.py)
    post_bytes: int | None = None
    expect_bytes: int | None = None  # response body length the probe checks
    threads: int | None = None  # WSGI threads per worker, for apps that block
    bare: bool = False  # also run the bare Rust hello server
    sends_file: bool = False  # also run turbo --no-sendfile, to show what sendfile gives
    skip: dict = field(default_factory=dict)  # server -> why it sits out

    @property
    def unit(self):
        return "msg" if self.load == "ws" else "req"


BJOERN_BLOCKS = "bjoern is single-threaded: one 10 ms request at a time"

SUITE = [
    App("hello", "hello:app", "wsgi", "WSGI hello world", bare=True, expect_bytes=13),
    App("asgihello", "asgihello:app", "asgi", "ASGI hello world", bare=True, expect_bytes=13),
    App("body10k", "body10k:wsgi", "wsgi", "WSGI, 10 KB response body", expect_bytes=10240),
    App("asgibody10k", "body10k:asgi", "asgi", "ASGI, 10 KB response body", expect_bytes=10240),
    App("body1m", "body1m:wsgi", "wsgi", "WSGI, 1 MiB response body from memory", expect_bytes=1 << 20),
    App("asgibody1m", "body1m:asgi", "asgi", "ASGI, 1 MiB response body from memory", expect_bytes=1 << 20),
    App("echo1k", "echo:wsgi", "wsgi", "WSGI POST echo, 1 KB body", load="post", post_bytes=1024,
        expect_bytes=1024),
    App("echo100k", "echo:wsgi", "wsgi", "WSGI POST echo, 100 KB body", load="post", post_bytes=102400,
        expect_bytes=102400),
    App("asgiecho1k", "echo:asgi", "asgi", "ASGI POST echo, 1 KB body", load="post", post_bytes=1024,
        expect_bytes=1024),
    App("asgiecho100k", "echo:asgi", "asgi", "ASGI POST echo, 100 KB body", load="post", post_bytes=102400,
        expect_bytes=102400),
    App("flask", "flaskhello:app", "wsgi", "Flask hello world", expect_bytes=13),
    App("fastapi", "fastapihello:app", "asgi", "FastAPI hello world (JSON)"),
    App("sleep", "sleep10ms:wsgi", "wsgi", "WSGI, time.sleep(0.01) per request, 32 threads", threads=32,
        expect_bytes=13, skip={"bjoern": BJOERN_BLOCKS}),
    App("asgisleep", "sleep10ms:asgi", "asgi", "ASGI, await asyncio.sleep(0.01) per request", expect_bytes=13),
    App("file1m", "bigfile:wsgi", "wsgi", "WSGI, 1 MiB file through wsgi.file_wrapper", expect_bytes=1 << 20,
        sends_file=True),
    App("asgifile1m", "bigfile:asgi", "asgi", "ASGI, 1 MiB file by http.response.pathsend, else streamed",
        expect_bytes=1 << 20, sends_file=True),
    App("websocket", "wsecho:app", "asgi", "ASGI WebSocket echo, 64-byte text messages", load="ws"),
]

BY_NAME = {a.name: a for a in SUITE}


def select(spec):
    """Apps named in a comma-separated list, by name or by MODULE:CALLABLE target
    (so the older `--apps hello:app,asgihello:app` still works); "all" is every app."""
    if spec == "all":
        return list(SUITE)
    chosen = []
    for item in spec.split(","):
        item = item.strip()
        app = BY_NAME.get(item) or next((a for a in SUITE if a.target == item), None)
        if app is None:
            raise SystemExit(f"unknown app {item!r}; known: {', '.join(BY_NAME)}")
        chosen.append(app)
    return chosen
