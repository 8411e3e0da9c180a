"""WebSocket (RFC 6455) through ASGI, with the websockets library as client."""

import asyncio
import socket

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conftest import read_response


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def url(srv, path):
    return f"ws://127.0.0.1:{srv.port}{path}"


def test_text_binary_and_fragmented_messages_echo(turbo):
    srv = turbo("ws_app:app")

    async def go():
        async with connect(url(srv, "/echo")) as ws:
            await ws.send("héllo")
            assert await ws.recv() == "héllo"
            await ws.send(b"\x00\x01\xff")
            assert await ws.recv() == b"\x00\x01\xff"
            await ws.send(["frag", "men", "ted"])
            assert await ws.recv() == "fragmented"
            big = bytes(range(256)) * 1000
            await ws.send(big)
            assert await ws.recv() == big

    run(go())


def test_receive_given_up_on_loses_no_message(turbo):
    srv = turbo("ws_app:app")

    async def go():
        async with connect(url(srv, "/patient")) as ws:
            assert [await ws.recv(), await ws.recv()] == ["nothing yet"] * 2
            await ws.send("now")
            assert await ws.recv() == "now"

    run(go())
    assert "already being awaited" not in srv.log


def test_ping_is_answered(turbo):
    srv = turbo("ws_app:app")

    async def go():
        async with connect(url(srv, "/echo"), ping_interval=None) as ws:
            pong = await ws.ping(b"are you there")
            await asyncio.wait_for(pong, 10)

    run(go())


def test_subprotocol_and_accept_headers(turbo):
    srv = turbo("ws_app:app")

    async def go():
        async with connect(url(srv, "/scope?x=1"), subprotocols=["chat", "superchat"]) as ws:
            assert ws.subprotocol == "superchat"
            assert ws.response.headers["x-served-by"] == "turbo"
            scope = await ws.recv()
            assert "'scheme': 'ws'" in scope and "'path': '/scope'" in scope
            assert "'query_string': b'x=1'" in scope
            assert "'subprotocols': ['chat', 'superchat']" in scope

    run(go())


def test_close_from_the_app_carries_code_and_reason(turbo):
    srv = turbo("ws_app:app")

    async def go():
        async with connect(url(srv, "/close")) as ws:
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            return info.value.rcvd

    rcvd = run(go())
    assert (rcvd.code, rcvd.reason) == (4001, "go away")


def test_close_from_the_client_reaches_the_app(turbo):
    srv = turbo("ws_app:app")

    async def go():
        async with connect(url(srv, "/echo")) as ws:
            await ws.close(code=4002, reason="client leaving")

    run(go())
    srv.wait_for("disconnect 4002 'client leaving'")


def test_an_abrupt_disconnect_is_1006(turbo):
    srv = turbo("ws_app:app")

    async def go():
        ws = await connect(url(srv, "/echo"))
        ws.transport.abort()

    run(go())
    srv.wait_for("disconnect 1006")


def test_close_before_accept_is_403(turbo):
    srv = turbo("ws_app:app")

    async def go():
        with pytest.raises(InvalidStatus) as info:
            await connect(url(srv, "/refuse"))
        return info.value.response.status_code

    assert run(go()) == 403


def test_denial_with_an_http_response(turbo):
    srv = turbo("ws_app:app")

    async def go():
        with pytest.raises(InvalidStatus) as info:
            await connect(url(srv, "/deny"))
        return info.value.response

    response = run(go())
    assert response.status_code == 401
    assert response.headers["x-why"] == "token"
    assert response.body == b"no entry"


def test_app_crash_before_accept_is_500(turbo):
    srv = turbo("ws_app:app")

    async def go():
        with pytest.raises(InvalidStatus) as info:
            await connect(url(srv, "/crash"))
        return info.value.response.status_code

    assert run(go()) == 500
    srv.wait_for("RuntimeError: crash before accept")


def test_messages_over_ws_max_size_close_with_1009(turbo):
    srv = turbo("ws_app:app", "--ws-max-size", "1000")

    async def go():
        async with connect(url(srv, "/echo"), max_size=None) as ws:
            await ws.send("x" * 1000)
            assert await ws.recv() == "x" * 1000
            await ws.send("x" * 1001)
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            return info.value.rcvd.code

    assert run(go()) == 1009
    srv.wait_for("disconnect 1009")


def test_invalid_utf8_closes_with_1007(turbo):
    srv = turbo("ws_app:app")
    with srv.connect() as s:
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1000)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
        # A masked text frame holding invalid UTF-8.
        s.sendall(bytes([0x81, 0x82, 0, 0, 0, 0, 0xff, 0xfe]))
        frame = head.partition(b"\r\n\r\n")[2]
        s.settimeout(10)
        while len(frame) < 4:
            frame += s.recv(100)
    assert frame[0] == 0x88 and int.from_bytes(frame[2:4], "big") == 1007


def test_bad_handshake_is_400(turbo):
    srv = turbo("ws_app:app")
    with srv.connect() as s:
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Version: 8\r\n\r\n")
        assert read_response(s)[0] == 400


def test_plain_http_still_works_beside_websockets(turbo):
    srv = turbo("ws_app:app")
    with srv.connect() as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s)[2] == b"plain http"


def test_many_connections_at_once(turbo):
    srv = turbo("ws_app:app")

    async def one(i):
        async with connect(url(srv, "/echo")) as ws:
            await ws.send(f"message {i}")
            return await ws.recv()

    async def go():
        return await asyncio.gather(*(one(i) for i in range(200)))

    assert run(go()) == [f"message {i}" for i in range(200)]


def worker_rss_kib(srv):
    """The resident memory of the server's worker, in KiB."""
    with open(f"/proc/{srv.proc.pid}/task/{srv.proc.pid}/children") as f:
        worker = int(f.read().split()[0])
    with open(f"/proc/{worker}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_messages_the_app_has_not_received_are_bounded_by_bytes(turbo):
    # 100 messages of 1 MiB to an app that receives nothing for 3 s: turbo
    # stops reading once about 1 MiB waits, so the client's sends wait in
    # the socket, and every message still arrives once the app reads.
    srv = turbo("ws_app:app")
    before = worker_rss_kib(srv)

    async def go():
        async with connect(url(srv, "/late"), max_size=None, write_limit=1 << 20) as ws:
            chunk = b"m" * (1 << 20)

            async def flood():
                for _ in range(100):
                    await ws.send(chunk)

            sender = asyncio.ensure_future(flood())
            await asyncio.sleep(1.5)  # inside the app's 3 s of not reading
            assert not sender.done()
            assert worker_rss_kib(srv) - before < 40 * 1024
            await sender
            assert await ws.recv() == str(100 << 20)

    run(go())
