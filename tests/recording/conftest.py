"""Helpers for the recording tests: a fake monotonic clock, spool writers, and a TCP relay that
holds a request in flight."""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from teleport_runtime.recording.spool import SessionRecorder
from tests.proxy.harness import LocalCluster

META = {
    "user": "alice",
    "login": "root",
    "nodename": "node1",
    "host_uuid": "6f1c0c8e-host",
    "cluster_name": "example.com",
    "cols": 80,
    "rows": 24,
    "term": "xterm-256color",
    "started": "2024-05-01T10:00:00+00:00",
}


class Ticker:
    """A monotonic clock that the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def ticker() -> Ticker:
    return Ticker()


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool"


async def write_session(spool: Path, session_id: str, text: str = "hello\r\n", ticker: Ticker | None = None) -> dict:
    """A complete recording in the spool (closed, and finalised)."""
    rec = SessionRecorder(spool, session_id, META, False, clock=ticker or Ticker())
    rec.output(text.encode())
    rec.close(0)
    return await rec.wait_closed()


def age(path: Path, seconds: float = 3600) -> None:
    """Make ``path`` look untouched for ``seconds``."""
    old = time.time() - seconds
    os.utime(path, (old, old))


def kill_writer(rec: SessionRecorder) -> None:
    """Simulate the recording process dying: what it wrote stays, its lock goes, no manifest."""
    if rec._flush_handle is not None:
        rec._flush_handle.cancel()
        rec._flush_handle = None
    rec._closed = True
    rec._file.close()


class Relay:
    """A TCP relay on loopback in front of a server (TLS passes through it untouched), so a test
    can catch a request in flight: once :meth:`arm`-ed with a byte count, the first connection
    that carries that many more bytes towards the server is held there (``held`` is set) until
    :meth:`release`; the test kills the server meanwhile. Every connection made later is relayed
    as usual (to a server that is down: closed at once)."""

    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.target = target
        self._listener = socket.create_server((host, 0))
        self.addr = f"{host}:{self._listener.getsockname()[1]}"
        self.held = threading.Event()
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._threshold: int | None = None
        self._counts: dict[int, int] = {}  # per connection: bytes towards the server since arm()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, threshold: int) -> None:
        with self._lock:
            self._counts = dict.fromkeys(self._counts, 0)
            self._threshold = threshold
            self.held.clear()
            self._release.clear()

    def release(self) -> None:
        with self._lock:
            self._threshold = None
        self._release.set()

    def close(self) -> None:
        self._closed = True
        self._release.set()
        self._listener.close()

    def _accept(self) -> None:
        ids = itertools.count()
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            conn_id = next(ids)
            with self._lock:
                self._counts[conn_id] = 0
            threading.Thread(target=self._pump, args=(client, server, conn_id), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, None), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, conn_id: int | None) -> None:
        try:
            while chunk := src.recv(65536):
                if conn_id is not None and self._over_threshold(conn_id, len(chunk)):
                    self.held.set()
                    self._release.wait()
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _over_threshold(self, conn_id: int, size: int) -> bool:
        with self._lock:
            self._counts[conn_id] = self._counts.get(conn_id, 0) + size
            return self._threshold is not None and self._counts[conn_id] >= self._threshold


@pytest.fixture
async def in_process(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """An auth service (and what the tests add to it) in this process, stopped after the test."""
    cluster = LocalCluster(tmp_path / "cluster")
    await cluster.start()
    try:
        yield cluster
    finally:
        await cluster.stop()
