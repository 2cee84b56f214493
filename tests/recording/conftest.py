"""Helpers for the recording tests: a fake monotonic clock and spool writers."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from teleport_runtime.recording.spool import SessionRecorder

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
