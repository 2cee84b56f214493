"""The SQLite backend: the conformance suite, persistence, and a real kill -9 durability test."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from teleport_runtime.backend import EventType, Item, open_backend, prefix_end
from teleport_runtime.backend import sqlite as sqlite_module
from teleport_runtime.backend.sqlite import SQLiteBackend
from teleport_runtime.errors import ConfigError, NotFound

from .conformance import BackendConformance, FakeClock, new_watcher, next_events

REPO_ROOT = Path(__file__).resolve().parents[2]


class TestSQLiteConformance(BackendConformance):
    async def open_backend(self, clock, tmp_path):
        return SQLiteBackend(tmp_path / "backend" / "sqlite.db", clock=clock, sweep_interval=0.01)


# -- SQLite specifics ----------------------------------------------------------------------------


async def test_pragmas_and_file_modes(tmp_path):
    path = tmp_path / "data" / "backend" / "sqlite.db"
    backend = SQLiteBackend(path)
    try:
        assert backend._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert backend._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    finally:
        await backend.close()


async def test_reopen_keeps_items_and_revision_counter(tmp_path):
    path = tmp_path / "sqlite.db"
    clock = FakeClock()
    backend = SQLiteBackend(path, clock=clock)
    kept = await backend.put(Item("/a", b"1", clock() + timedelta(hours=1)))
    await backend.put(Item("/b", b"2"))
    await backend.delete("/b")
    last = (await backend.put(Item("/c", b"3"))).revision
    await backend.close()

    backend = SQLiteBackend(path, clock=clock)
    try:
        assert await backend.get("/a") == kept
        with pytest.raises(NotFound):
            await backend.get("/b")
        assert (await backend.put(Item("/d", b"4"))).revision == last + 1
    finally:
        await backend.close()


async def test_two_connections_share_one_revision_counter(tmp_path):
    path = tmp_path / "sqlite.db"
    one, two = SQLiteBackend(path), SQLiteBackend(path)
    try:
        revisions = []
        for i in range(10):
            backend = one if i % 2 else two
            revisions.append((await backend.put(Item(f"/k/{i}", b"x"))).revision)
        assert revisions == sorted(set(revisions))
        assert len(await one.get_range("/k/", prefix_end("/k/"))) == 10
    finally:
        await one.close()
        await two.close()


async def test_sweep_in_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_module, "SWEEP_BATCH", 10)
    clock = FakeClock()
    backend = SQLiteBackend(tmp_path / "sqlite.db", clock=clock, sweep_interval=None)
    try:
        for i in range(35):
            await backend.put(Item(f"/s/{i:02d}", b"x", clock() + timedelta(seconds=1)))
        await backend.put(Item("/s/live", b"x"))
        watcher = await new_watcher(backend, ["/s/"])
        clock.advance(timedelta(seconds=1))
        assert await backend.sweep() == 35
        events = await next_events(watcher, 35)
        assert all(e.type is EventType.DELETE for e in events)
        assert {e.item.key for e in events} == {f"/s/{i:02d}" for i in range(35)}
        assert [i.key for i in await backend.get_range("/s/", "/s0")] == ["/s/live"]
        watcher.close()
    finally:
        await backend.close()


async def test_expired_rows_left_by_a_previous_run_are_swept(tmp_path):
    path = tmp_path / "sqlite.db"
    clock = FakeClock()
    backend = SQLiteBackend(path, clock=clock, sweep_interval=None)
    await backend.put(Item("/old", b"x", clock() + timedelta(seconds=1)))
    await backend.close()
    clock.advance(timedelta(minutes=1))
    backend = SQLiteBackend(path, clock=clock, sweep_interval=None)
    try:
        watcher = await new_watcher(backend, ["/"])
        assert await backend.sweep() == 1
        [event] = await next_events(watcher, 1)
        assert (event.type, event.item.key) == (EventType.DELETE, "/old")
    finally:
        await backend.close()


async def test_sweeper_starts_lazily_and_stops_on_close(tmp_path):
    backend = SQLiteBackend(tmp_path / "sqlite.db", sweep_interval=0.01)
    assert backend._sweeper is None
    await backend.put(Item("/a", b"x"))
    task = backend._sweeper
    assert task is not None and not task.done()
    await backend.close()
    assert task.done()


def test_memory_database_for_throwaway_use():
    async def main():
        backend = SQLiteBackend(":memory:", sweep_interval=None)
        await backend.put(Item("/a", b"x"))
        assert (await backend.get("/a")).value == b"x"
        await backend.close()

    asyncio.run(main())


# -- open_backend --------------------------------------------------------------------------------


async def test_open_backend_default_path(tmp_path):
    backend = open_backend({"type": "sqlite"}, str(tmp_path))
    try:
        assert isinstance(backend, SQLiteBackend)
        assert backend.path == str(tmp_path / "backend" / "sqlite.db")
        assert (tmp_path / "backend" / "sqlite.db").exists()
    finally:
        await backend.close()
    backend = open_backend({}, str(tmp_path))
    assert backend.path == str(tmp_path / "backend" / "sqlite.db")
    await backend.close()


async def test_open_backend_explicit_path_and_directory(tmp_path):
    backend = open_backend({"type": "sqlite", "path": str(tmp_path / "x.db")}, "/nonexistent")
    assert backend.path == str(tmp_path / "x.db")
    await backend.close()
    (tmp_path / "dir").mkdir()
    backend = open_backend({"type": "dir", "path": str(tmp_path / "dir")}, "/nonexistent")
    assert backend.path == str(tmp_path / "dir" / "sqlite.db")
    await backend.close()


def test_open_backend_unknown_type_names_the_key(tmp_path):
    with pytest.raises(ConfigError) as info:
        open_backend({"type": "etcd"}, str(tmp_path))
    message = str(info.value)
    assert "teleport.storage.type" in message
    assert "etcd" in message
    assert "sqlite" in message


def test_open_backend_bad_path_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"teleport\.storage\.path"):
        open_backend({"type": "sqlite", "path": 42}, str(tmp_path))


# -- kill -9 -------------------------------------------------------------------------------------

# Op i of the writer: every 4th op (i % 4 == 3) deletes the key put by op i - 2, the others put a
# new key. The writer prints "<i> <revision>" only after the op's method has returned.
WRITER = r"""
import asyncio, sys
from teleport_runtime.backend import Item
from teleport_runtime.backend.sqlite import SQLiteBackend

def value(i):
    return (f"value-{i}-" * 60).encode()

async def main(path, prefix):
    backend = SQLiteBackend(path, sweep_interval=None)
    i = 0
    while True:
        if i % 4 == 3:
            await backend.delete(f"{prefix}{i - 2:06d}")
            print(i, 0, flush=True)
        else:
            item = await backend.put(Item(f"{prefix}{i:06d}", value(i)))
            print(i, item.revision, flush=True)
        i += 1

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def _value(i: int) -> bytes:
    return (f"value-{i}-" * 60).encode()


def _run_writer_and_kill(path: Path, prefix: str, min_ops: int) -> dict[int, int]:
    """Start the writer, SIGKILL it while it writes; return {op: revision} it reported."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), prefix],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    guard = threading.Timer(300, proc.kill)  # only against a hang
    guard.start()
    reported: dict[int, int] = {}
    try:
        assert proc.stdout is not None
        while len(reported) < min_ops:
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"writer exited early: {proc.wait()} {proc.stderr.read()}")
            op, revision = line.split()
            reported[int(op)] = int(revision)
        time.sleep(random.uniform(0, 0.005))  # vary where in its next write the kill lands
        os.kill(proc.pid, signal.SIGKILL)  # mid-loop: the writer never stops on its own
        rest = proc.stdout.read()  # lines written before it died
        proc.wait()
    finally:
        guard.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    for line in rest.splitlines(keepends=True):
        if line.endswith("\n"):
            op, revision = line.split()
            reported[int(op)] = int(revision)
    assert sorted(reported) == list(range(len(reported)))  # no gaps
    return reported


async def test_committed_writes_survive_kill_9(tmp_path):
    path = tmp_path / "backend" / "sqlite.db"
    rounds = []
    for round_no in range(3):
        prefix = f"/kill/{round_no}/"
        rounds.append((prefix, _run_writer_and_kill(path, prefix, min_ops=200 + 97 * round_no)))

    conn = sqlite3.connect(path)  # recovers the WAL like any later open
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()

    backend = SQLiteBackend(path, sweep_interval=None)
    try:
        max_revision = 0
        for prefix, reported in rounds:
            done = len(reported)  # ops 0 .. done-1 returned; op `done` may or may not have
            deleted = {i - 2 for i in range(done) if i % 4 == 3}
            for i, revision in reported.items():
                if i % 4 == 3:
                    continue
                key = f"{prefix}{i:06d}"
                in_flight_delete = done % 4 == 3 and i == done - 2
                if i in deleted:
                    with pytest.raises(NotFound):
                        await backend.get(key)
                elif in_flight_delete:
                    try:
                        item = await backend.get(key)
                    except NotFound:
                        continue
                    assert (item.value, item.revision) == (_value(i), revision)
                else:
                    item = await backend.get(key)
                    assert (item.value, item.revision) == (_value(i), revision)
                max_revision = max(max_revision, revision)
            stored = await backend.get_range(prefix, prefix_end(prefix))
            allowed = {f"{prefix}{i:06d}" for i in range(done + 1) if i % 4 != 3} - {
                f"{prefix}{i:06d}" for i in deleted
            }
            assert {item.key for item in stored} <= allowed
            for item in stored:  # the in-flight put, if it landed, is whole
                assert item.value == _value(int(item.key.rsplit("/", 1)[1]))
        # the revision counter survived too: nothing is ever reused
        assert (await backend.put(Item("/after", b"x"))).revision > max_revision
    finally:
        await backend.close()


async def test_writing_in_a_loop_does_not_starve_watchers(tmp_path):
    backend = SQLiteBackend(tmp_path / "sqlite.db", watcher_capacity=4, sweep_interval=None)
    try:
        watcher = await new_watcher(backend, ["/"])
        seen = []

        async def consume():
            async for event in watcher:
                seen.append(event.item.key)

        consumer = asyncio.ensure_future(consume())
        for i in range(100):
            await backend.put(Item(f"/{i:03d}", b"x"))
        for i in range(100):
            await backend.delete(f"/{i:03d}")
        await backend.put(Item("/end", b"x"))
        await asyncio.sleep(0)
        assert not watcher.closed
        watcher.close()
        await consumer
        assert seen[:100] == [f"/{i:03d}" for i in range(100)]
        assert len(seen) == 201
    finally:
        await backend.close()


async def test_cancelled_write_did_not_happen(tmp_path):
    backend = SQLiteBackend(tmp_path / "sqlite.db", sweep_interval=None)
    try:
        task = asyncio.ensure_future(backend.put(Item("/a", b"x")))
        await asyncio.sleep(0)  # the put is now suspended before its transaction
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(NotFound):
            await backend.get("/a")
    finally:
        await backend.close()
