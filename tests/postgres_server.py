"""A real PostgreSQL server for tests: Debian's ``initdb`` and ``pg_ctl`` in a temporary
directory, as an unprivileged user, on a loopback port; one server per test session.

Use the fixtures from a ``conftest.py``::

    from tests.postgres_server import pg_database, pg_server  # noqa: F401

``pg_server`` is the session's server (stop, kill, start it; create databases and roles);
``pg_database`` is a fresh, empty database for one test, as a conn string.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

#: The unprivileged account the server runs as when the tests run as root (initdb refuses root):
#: Debian's postgresql package creates it.
SERVER_USER = "postgres"
#: Guards against a server that never comes up; never a performance assertion. Generous: after
#: a kill the server replays its WAL first, slow on a loaded test machine.
START_TIMEOUT = 300


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        pytest.fail("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin): run scripts/setup")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory, trust authentication on 127.0.0.1."""

    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="teleport-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = _free_port()
        self.superuser = "postgres"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            entry = pwd.getpwnam(SERVER_USER)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            self._as_user = ["runuser", "-u", SERVER_USER, "--"]
        else:
            self.superuser = pwd.getpwuid(os.geteuid()).pw_name

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._as_user, *args], capture_output=True, text=True, check=True, timeout=START_TIMEOUT + 30
        )

    def init(self, start: bool = True) -> None:
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-E", "UTF8",
            "--locale=C", "-U", self.superuser,
        )
        if start:
            self.start()

    def give(self, path: Path) -> None:
        """Hand a file to the server's account (its TLS key must be its own, mode 0600)."""
        if self._as_user:
            entry = pwd.getpwnam(SERVER_USER)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200 "
            "-c shared_buffers=16MB"
        )
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
                  "-t", str(START_TIMEOUT), "start")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def kill(self) -> None:
        """SIGKILL the postmaster and every server process: a crash, recovered at the next start."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGSTOP)  # it forks no new backend while its children are listed
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        for target in [*map(int, children), pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signal.SIGKILL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        # The postmaster's pid file stays behind after SIGKILL; pg_ctl start copes with it.

    def conn_string(self, database: str = "postgres", user: str | None = None, **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://{user or self.superuser}@127.0.0.1:{self.port}/{database}" + (
            f"?{query}" if query else ""
        )

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement as the superuser (psql); return its unaligned output."""
        done = subprocess.run(
            [str(self.bin / "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", statement,
             self.conn_string(database)],
            capture_output=True, text=True, check=True, timeout=START_TIMEOUT,
        )
        return done.stdout.strip()

    def create_database(self, owner: str | None = None) -> str:
        name = "t_" + uuid.uuid4().hex[:16]
        self.sql(f'CREATE DATABASE "{name}"' + (f' OWNER "{owner}"' if owner else ""))
        return name

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.init()
    except subprocess.CalledProcessError as exc:
        log = server.log.read_text() if server.log.exists() else ""
        server.destroy()
        pytest.fail(f"cannot start the test PostgreSQL server: {exc.stderr}{log}")
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pg_database(pg_server: PostgresServer) -> str:
    """The conn string of a new, empty database on the session's server."""
    return pg_server.conn_string(pg_server.create_database())
