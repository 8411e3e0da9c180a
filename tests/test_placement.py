"""New connections go where there is capacity: the kernel's placement
program sends each to the shard with the fewest connections, then the fewest
requests in flight (src/placement.rs). Asserted without a clock: which shard
served each request, over fresh connections."""

import os
import re
import signal
import socket
import sys
import time

import pytest

from conftest import read_response, wait_for_file

APPS = ["placement:wsgi", "placement:asgi"]
# Connections move between the shards of one worker, and between worker
# processes.
ISOLATIONS = ["subinterpreter", "process"]


def ask(sock, path):
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    status, _, body, _ = read_response(sock, timeout=40)
    assert status == 200
    return body.decode()


def close(server, *socks):
    """Closes connections and waits until the server has: it counts a
    connection until it closes its end."""
    for s in socks:
        s.shutdown(socket.SHUT_WR)
        s.settimeout(10)
        while s.recv(65536):
            pass
        s.close()


def start(turbo, app, tmp_path, *args):
    server = turbo(app, "--cores", "2", *args, env={"TURBO_HOLD_DIR": str(tmp_path)})
    if "placed at random" in server.log:
        pytest.skip("this kernel refuses eBPF: connections are placed at random")
    assert "go to the least loaded of 2 shards" in server.log, server.log
    return server


@pytest.mark.parametrize("app", APPS)
def test_fresh_connections_spread_and_avoid_a_busy_shard(turbo, tmp_path, app):
    server = start(turbo, app, tmp_path, "--log-level", "debug")
    misses = []
    for n in range(8):
        # Two fresh connections: one on each shard, whatever the hash says
        # (by chance, both on one shard in a round in two). A round that
        # places a connection by a stale count is a miss; one in 8 passes.
        a = server.connect()
        b = server.connect()
        shard_a, shard_b = ask(a, "/where"), ask(b, "/where")
        if shard_a == shard_b:
            # Counts of one moment: the port probe that found the server up
            # may still count where it landed.
            misses.append(n)
            close(server, a, b)
            continue
        # A's shard is busy in a handler: a new connection goes to B's,
        # though each shard holds as many connections. Its accept shows in
        # the log at once; on the busy shard it would wait for the handler.
        a.sendall(f"GET /hold?r{n} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        wait_for_file(tmp_path / f"r{n}.started")
        c = server.connect()
        accepted = rf"accepted a connection from 127\.0\.0\.1:{c.getsockname()[1]};"
        try:
            server.wait_for(accepted, timeout=10)
        except AssertionError:
            # Placed on the busy shard: counts of one moment (see
            # docs/architecture.md, "Placement").
            misses.append(n)
            (tmp_path / f"r{n}").touch()
            assert ask(c, "/where") == shard_a
            assert read_response(a, timeout=40)[0] == 200
            close(server, a, b, c)
            continue
        assert ask(c, "/where") == shard_b, f"round {n}: placed on the busy shard"
        # Connections come first: the next goes to A's shard, which now holds
        # fewer, busy or not, so a burst of keep-alive connections never
        # piles onto the shard that happened to be idle.
        d = server.connect()
        d.sendall(b"GET /where HTTP/1.1\r\nHost: t\r\n\r\n")
        (tmp_path / f"r{n}").touch()
        status, _, body, _ = read_response(a, timeout=40)
        assert (status, body.decode()) == (200, shard_a)
        status, _, body, _ = read_response(d, timeout=40)
        assert (status, body.decode()) == (200, shard_a), f"round {n}: connections piled on shard {shard_b}"
        close(server, a, b, c, d)
    assert len(misses) <= 1, f"rounds {misses}: connections placed by stale counts"


def pair_on_one_shard(server):
    """Two keep-alive connections served by one shard, the other shard with
    none: of three connections, two share a shard; the third closes."""
    socks = [server.connect() for _ in range(3)]
    shards = [ask(s, "/where") for s in socks]
    for odd in range(3):
        rest = [n for n in range(3) if n != odd]
        if shards[rest[0]] == shards[rest[1]]:
            close(server, socks[odd])
            return socks[rest[0]], socks[rest[1]], shards[rest[0]]
    raise AssertionError(f"three connections on three of two shards: {shards}")


def group_on_one_shard(server, n):
    """`n` keep-alive connections served by one shard: of 2n - 1
    connections to 2 shards, n share one; the others close."""
    socks = [server.connect() for _ in range(2 * n - 1)]
    shards = [ask(s, "/where") for s in socks]
    home = max(set(shards), key=shards.count)
    close(server, *(s for s, where in zip(socks, shards) if where != home))
    return [s for s, where in zip(socks, shards) if where == home][:n], home


def start_for_moves(turbo, app, tmp_path, isolation, *args):
    """A server of 2 shards, in one worker (sub-interpreters, where this
    Python has them) or in two worker processes, whose shards hand each
    other connections through their mailboxes."""
    if isolation == "subinterpreter" and sys.version_info < (3, 12):
        pytest.skip("sub-interpreters need Python 3.12")
    server = start(turbo, app, tmp_path, "--isolation", isolation, "--log-level", "debug", *args)
    return server


def take_turns(a, b, tmp_path, rounds):
    """A's handler holds its shard's CPU (20 ms at least) while B's request
    arrives, in each of `rounds`: B must be served on the other shard."""
    for n in range(rounds):
        a.sendall(f"GET /hold?r{n}&20 HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        wait_for_file(tmp_path / f"r{n}.started")
        b.sendall(b"GET /where HTTP/1.1\r\nHost: t\r\n\r\n")
        (tmp_path / f"r{n}").touch()
        status, _, served_a, _ = read_response(a, timeout=40)
        assert status == 200
        status, _, served_b, _ = read_response(b, timeout=40)
        assert status == 200
        assert served_a != served_b, f"round {n}: B waited for A's shard and stayed there"


@pytest.mark.parametrize("isolation", ISOLATIONS)
@pytest.mark.parametrize("app", APPS)
def test_a_request_waiting_behind_a_busy_shard_moves_to_an_idle_one(turbo, tmp_path, app, isolation):
    server = start_for_moves(turbo, app, tmp_path, isolation)
    a, b, home = pair_on_one_shard(server)
    # A's handler holds the shard's CPU (20 ms at least), and B's request
    # arrives meanwhile: it waits, and then goes to the idle shard with its
    # connection. From then on the two take turns on two shards; should a
    # stall of this host move one onto the other's shard again, its next
    # wait moves it off.
    take_turns(a, b, tmp_path, rounds=4)
    server.wait_for("its connection moves to idle shard")
    close(server, a, b)


@pytest.mark.parametrize("isolation", ISOLATIONS)
@pytest.mark.parametrize("app", APPS)
def test_a_moved_connection_keeps_its_client_and_its_unread_bytes(turbo, tmp_path, app, isolation):
    """What the old shard read and learnt goes with the connection: the
    client that a PROXY header named, a body that arrived with the head, and
    a request pipelined behind it."""
    server = start_for_moves(turbo, app, tmp_path, isolation, "--proxy-protocol")
    port = server.port
    clients = iter(f"10.9.8.{n}" for n in range(1, 100))

    def connect():
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(f"PROXY TCP4 {next(clients)} 10.0.0.1 5000 80\r\n".encode())
        return s

    server.connect = connect
    a, b, home = pair_on_one_shard(server)
    b.sendall(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
    status, _, body, _ = read_response(b, timeout=40)
    who = body.decode().split("\n")[1]
    assert who.startswith("10.9.8."), body
    a.sendall(b"GET /hold?held&20 HTTP/1.1\r\nHost: t\r\n\r\n")
    wait_for_file(tmp_path / "held.started")
    payload = b"x" * 3000
    b.sendall(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)
        + b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    (tmp_path / "held").touch()
    status, _, body, _ = read_response(a, timeout=40)
    assert (status, body.decode()) == (200, home)
    answers = []
    for _ in range(2):
        status, _, body, _ = read_response(b, timeout=40)
        assert status == 200
        answers.append(body.split(b"\n", 2))
    assert answers[0] == [answers[0][0], who.encode(), payload]
    assert answers[1] == [answers[0][0], who.encode(), b""]
    assert answers[0][0].decode() != home, "the request that waited stayed on the busy shard"
    server.wait_for("its connection moves to idle shard")
    close(server, a, b)


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_connections_still_move_after_a_reload(turbo, tmp_path, isolation):
    """A reload's new workers take the shards' lines over from the old ones
    while both serve; the old ones' exit leaves the new ones' lines alone."""
    server = start_for_moves(turbo, "placement:wsgi", tmp_path, isolation)
    before = set(re.findall(r"Booting worker with pid: (\d+)", server.log))
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for("Hang up: Master")
    server.wait_for_count("Ready:", 2, timeout=30)
    for pid in before:
        server.wait_for(re.escape(f"Worker (pid:{pid}) exited"), timeout=30)
    a, b, home = pair_on_one_shard(server)
    take_turns(a, b, tmp_path, rounds=2)
    close(server, a, b)


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_keep_alive_clients_under_load_lose_nothing_while_connections_move(turbo, tmp_path, isolation):
    """Four keep-alive clients send CPU-bound and quick requests, some
    pipelined, with a few milliseconds between them (so a shard is idle now
    and then), to two shards: connections move back and forth between them
    (between processes in process mode), and every request is answered, in
    order, on a connection that stays usable."""
    import threading

    server = start_for_moves(turbo, "placement:wsgi", tmp_path, isolation)
    (tmp_path / "go").touch()  # /hold?go&5 spins 5 ms, then answers
    failures = []

    def client(n):
        try:
            with server.connect() as s:
                for i in range(40):
                    if i % 5 == 4:
                        s.sendall(b"GET /where HTTP/1.1\r\nHost: t\r\n\r\n" * 2)
                        for _ in range(2):
                            assert read_response(s, timeout=40)[0] == 200
                        continue
                    path = "/where" if i % 7 == 6 else "/hold?go&5"
                    s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                    status, _, body, _ = read_response(s, timeout=40)
                    assert status == 200 and body.strip().isdigit(), (status, body)
                    # The clients' think time: the load's shape, not a wait
                    # for the server.
                    time.sleep((n * 7 + i * 3) % 5 / 1000)
        except Exception as e:  # reported below, with the client's number
            failures.append(f"client {n}: {e!r}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a client never finished"
    assert not failures, failures
    assert "Error" not in server.log, server.log
    # Connections moved 3 to 7 times per run here, in both modes, but how
    # often depends on timing (a run with none was seen): the tests above
    # make a move happen; this one asks that moving loses nothing.


def wait_asleep(pid, thread, timeout=10):
    """Waits until thread `thread` of process `pid` sleeps in the kernel,
    where a shard's thread sleeps only in its wait for I/O, for 10 s at
    most."""
    tasks = f"/proc/{pid}/task"
    (tid,) = [t for t in os.listdir(tasks) if open(f"{tasks}/{t}/comm").read().strip() == thread]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"{tasks}/{tid}/stat") as f:
            if f.read().rpartition(")")[2].split()[0] == "S":
                return
    raise AssertionError(f"{thread} of {pid} never slept")


@pytest.mark.worker_deaths
@pytest.mark.parametrize("app", APPS)
def test_a_connection_sent_to_a_worker_that_dies_is_served_by_its_successor(turbo, tmp_path, app):
    """Between worker processes a connection travels through the receiving
    shard's mailbox, which the supervisor holds: if that worker dies before
    it takes the connection, the shard's next worker serves it."""
    server = start_for_moves(turbo, app, tmp_path, "process")
    a, b, home = pair_on_one_shard(server)
    booted = re.findall(r"\[(\d+)\] \[INFO\] Booting shard (\d+) on CPU (\d+)", server.log)
    ((other, shard, other_cpu),) = [(int(pid), s, cpu) for pid, s, cpu in booted if cpu != home]
    # Stopped while it waits idle: the roster still says so, and the
    # connection is sent, but nobody takes it until the successor.
    wait_asleep(other, f"turbo-shard-{shard}")
    os.kill(other, signal.SIGSTOP)
    try:
        a.sendall(b"GET /hold?held&20 HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_for_file(tmp_path / "held.started")
        b.sendall(b"GET /where HTTP/1.1\r\nHost: t\r\n\r\n")
        (tmp_path / "held").touch()
        status, _, body, _ = read_response(a, timeout=40)
        assert (status, body.decode()) == (200, home)
        server.wait_for("its connection moves to idle shard")
    finally:
        os.kill(other, signal.SIGKILL)
    server.wait_for(re.escape(f"Worker (pid:{other}) was sent SIGKILL!"))
    status, _, body, _ = read_response(b, timeout=40)
    assert (status, body.decode()) == (200, other_cpu)
    assert ask(b, "/where") == other_cpu
    close(server, a, b)


@pytest.mark.parametrize("isolation", ISOLATIONS)
@pytest.mark.parametrize("app", APPS)
@pytest.mark.parametrize("leaves", ["half-close", "reset"])
def test_a_client_that_leaves_while_its_request_waits_to_move(turbo, tmp_path, app, leaves, isolation):
    server = start_for_moves(turbo, app, tmp_path, isolation)
    a, b, home = pair_on_one_shard(server)
    a.sendall(b"GET /hold?held&20 HTTP/1.1\r\nHost: t\r\n\r\n")
    wait_for_file(tmp_path / "held.started")
    b.sendall(b"GET /where HTTP/1.1\r\nHost: t\r\n\r\n")
    if leaves == "half-close":
        # It will read no more requests' worth of bytes, but still reads.
        b.shutdown(socket.SHUT_WR)
    else:
        b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        b.close()
    (tmp_path / "held").touch()
    status, _, body, _ = read_response(a, timeout=40)
    assert (status, body.decode()) == (200, home)
    if leaves == "half-close":
        # The request that waited is answered wherever it went, then the
        # connection ends.
        status, _, _, _ = read_response(b, timeout=40)
        assert status == 200
        b.settimeout(10)
        assert b.recv(100) == b""
    # Both shards go on serving. After the half-close, whose end the client
    # saw, B counts nowhere: a fresh connection goes to the shard without A.
    # (A reset ends B on the server at a moment the client cannot see.)
    assert ask(a, "/where") == home
    c = server.connect()
    served = ask(c, "/where")
    if leaves == "half-close":
        assert served != home
    close(server, a, c)


@pytest.mark.parametrize("app", APPS)
def test_a_response_goes_out_while_a_later_view_of_the_same_pass_computes(turbo, tmp_path, app):
    """With io_uring a written response waits in the ring until the shard's
    thread next enters the kernel. Once the app has been slow, the thread
    sends it before it goes into the app for the next request of the same
    pass (docs/architecture.md, "Responses during a long pass"): a quick
    response does not wait for a long view that happened to run after it."""
    if app.endswith("asgi") and sys.version_info < (3, 12):
        pytest.skip("before 3.12 asyncio starts no task eagerly: the views of one loop turn run before turbo writes")
    server = turbo(app, "--cores", "1", env={"TURBO_HOLD_DIR": str(tmp_path)})
    x, a, b = (server.connect() for _ in range(3))
    for s in (x, a, b):
        ask(s, "/where")
    # X's view holds the one shard (5 ms at least: a slow view) while A's
    # quick request and B's long one arrive, in that order. Both wait, and
    # the shard takes them up in one pass after X.
    x.sendall(b"GET /hold?x&5 HTTP/1.1\r\nHost: t\r\n\r\n")
    wait_for_file(tmp_path / "x.started")
    a.sendall(b"GET /where HTTP/1.1\r\nHost: t\r\n\r\n")
    b.sendall(b"GET /hold?b HTTP/1.1\r\nHost: t\r\n\r\n")
    (tmp_path / "x").touch()
    assert read_response(x, timeout=40)[0] == 200
    wait_for_file(tmp_path / "b.started")
    # B's view holds the thread until the test lets it go; A's answer is out.
    status, _, _, _ = read_response(a, timeout=10)
    assert status == 200
    assert not (tmp_path / "b.ended").exists()
    (tmp_path / "b").touch()
    assert read_response(b, timeout=40)[0] == 200
    close(server, x, a, b)


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_a_request_waiting_behind_busy_python_threads_moves(turbo, tmp_path, isolation):
    """With --threads the shard's own thread never waits for the app: a
    request that arrives while every Python thread of its shard has a view
    running waits behind them, and goes to the idle shard instead."""
    server = start_for_moves(turbo, "placement:wsgi", tmp_path, isolation, "--threads", "2")
    (a1, a2, b), home = group_on_one_shard(server, 3)
    for name, s in (("h1", a1), ("h2", a2)):
        s.sendall(f"GET /hold?{name}&20 HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    wait_for_file(tmp_path / "h1.started")
    wait_for_file(tmp_path / "h2.started")
    b.sendall(b"GET /where HTTP/1.1\r\nHost: t\r\n\r\n")
    status, _, served_b, _ = read_response(b, timeout=40)
    (tmp_path / "h1").touch()
    (tmp_path / "h2").touch()
    for s in (a1, a2):
        status, _, served, _ = read_response(s, timeout=40)
        assert (status, served.decode()) == (200, home)
    assert served_b.decode() != home, "B waited for the busy threads and stayed"
    server.wait_for("its connection moves to idle shard")
    close(server, a1, a2, b)


def wait_for_unsent(server_port, client_port, timeout=10):
    """Waits until the server's end of the connection to `client_port` has
    bytes it cannot send (the send queue in /proc/net/tcp), for 10 s at
    most."""
    ends = f":{server_port:04X} 0100007F:{client_port:04X}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open("/proc/net/tcp") as f:
            for line in f:
                fields = line.split()
                if f"{fields[1][-5:]} {fields[2]}" == ends and int(fields[4].split(":")[0], 16) > 0:
                    return
    raise AssertionError("the server never had answers it could not send")


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_a_moved_client_that_stops_reading_holds_up_nobody(turbo, tmp_path, isolation):
    """A client with a tiny receive window pipelines a thousand requests and
    reads none of the answers. Its first request waited behind a busy shard,
    so the connection moves, with the rest of its pipeline, to the idle one,
    which soon cannot write to it. Both shards go on serving everyone else."""
    server = start_for_moves(turbo, "placement:wsgi", tmp_path, isolation)
    a, b, home = pair_on_one_shard(server)
    # Set once connected: the buffer shrinks, the window follows.
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        a.sendall(b"GET /hold?held&20 HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_for_file(tmp_path / "held.started")
        b.sendall(b"GET /where HTTP/1.1\r\nHost: t\r\n\r\n" * 1000)
        (tmp_path / "held").touch()
        status, _, body, _ = read_response(a, timeout=40)
        assert (status, body.decode()) == (200, home)
        server.wait_for("its connection moves to idle shard")
        wait_for_unsent(server.port, b.getsockname()[1])
        for _ in range(3):
            c = server.connect()
            for _ in range(5):
                ask(c, "/where")
            close(server, c)
        assert ask(a, "/where") == home
    finally:
        b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        b.close()
    close(server, a)
