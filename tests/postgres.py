"""A real PostgreSQL server from Debian's package, for the tests
(tests/conftest.py's `postgres` fixture) and the database benchmark
(bench/techempower.py): its own temporary folder, its own port, stopped
by its owner even when what used it failed."""

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time


class Postgres:
    """A PostgreSQL server on 127.0.0.1, its server processes pinned to
    `cpus` if given, taking up to `max_connections` clients; libpq's PG*
    variables (`env`) reach it."""

    def __init__(self, cpus=None, max_connections=200):
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
        assert found, "no PostgreSQL server: tests/run installs Debian's postgresql package"
        bindir = os.path.dirname(found[-1])
        # initdb refuses to run as root; the package made a postgres user.
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.root = tempfile.mkdtemp(prefix="turbo-pg-")
        if self.as_user:
            shutil.chown(self.root, "postgres")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.env = {"PGHOST": "127.0.0.1", "PGPORT": str(self.port), "PGUSER": "turbo", "PGDATABASE": "postgres"}
        data = os.path.join(self.root, "data")
        subprocess.run([*self.as_user, f"{bindir}/initdb", "-D", data, "-U", "turbo", "--auth=trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
        self.log = open(os.path.join(self.root, "server.log"), "wb")
        pin = ["taskset", "-c", cpus] if cpus else []
        self.proc = subprocess.Popen(
            [*pin, *self.as_user, f"{bindir}/postgres", "-D", data, "-p", str(self.port), "-k", self.root,
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", f"max_connections={max_connections}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while self.sql("postgres", "SELECT 1", check=False).returncode != 0:
                assert self.proc.poll() is None, "PostgreSQL exited:\n" + self.server_log()
                assert time.monotonic() < deadline, "PostgreSQL did not start:\n" + self.server_log()
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise

    def sql(self, database, statement, check=True):
        """Runs SQL with psql, as the turbo superuser."""
        return subprocess.run(
            ["psql", "-v", "ON_ERROR_STOP=1", "-qAt", "-d", database, "-c", statement],
            env={**os.environ, **self.env}, capture_output=True, text=True, check=check,
        )

    def database(self, name):
        """The PG* variables of a new, empty database `name`."""
        self.sql("postgres", f'CREATE DATABASE "{name}"')
        return {**self.env, "PGDATABASE": name}

    def server_log(self):
        with open(os.path.join(self.root, "server.log"), errors="replace") as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)
