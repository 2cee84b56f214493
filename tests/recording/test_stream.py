"""node-sync streaming (node side with a fake auth client, auth side with the file store), the
node's remembered recording mode, and the audit log's codes and type filter."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from teleport_runtime.api.types import StreamAppended
from teleport_runtime.auth.audit import AuditLog, event_code
from teleport_runtime.auth.recordings import FileRecordingStore
from teleport_runtime.backend.sqlite import SQLiteBackend
from teleport_runtime.errors import AccessDenied, AlreadyExists, BadParameter, ConnectionProblem
from teleport_runtime.recording.asciicast import read_cast
from teleport_runtime.recording.node import ModeCache, NodeRecording
from teleport_runtime.recording.stream import RecordingStream

from .conftest import META
from .test_node import until

SID = "3f0c8a8e-0000-4000-8000-000000000001"


class StreamClient:
    """Keeps what was appended, like the auth service; fails while ``down``."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.down = False
        self.calls = 0

    async def append_stream(self, session_id: str, offset: int, body: bytes, content_type: str) -> StreamAppended:
        self.calls += 1
        if self.down:
            raise ConnectionProblem("cannot reach the auth server")
        assert session_id == SID and offset == len(self.data)
        self.data += body or b""
        return StreamAppended(session_id=session_id, size=len(self.data))

    # Sessions in progress are reported too; nothing to keep.
    async def start_session(self, session: Any) -> Any:
        return session

    async def keep_alive_session(self, session_id: str) -> Any:
        return None

    async def end_session(self, session_id: str) -> Any:
        return None


async def test_lines_are_appended_in_order():
    client = StreamClient()
    stream = RecordingStream(client, SID, batch_interval=0.001)
    for n in range(50):
        stream.feed(f"line {n}\n".encode())
        if n % 10 == 0:
            await asyncio.sleep(0.005)
    stream.close()
    await stream.wait_closed()
    assert client.data == b"".join(f"line {n}\n".encode() for n in range(50))
    assert stream.offset == len(client.data) and stream.failure is None


async def test_an_unreachable_auth_ends_the_session_once():
    client = StreamClient()
    aborts: list[str] = []
    stream = RecordingStream(client, SID, batch_interval=0.001, attempts=2, retry_delay=0.001)
    stream.bind(aborts.append)
    stream.feed(b"header\n")
    await until(lambda: client.data == b"header\n")
    client.down = True
    stream.feed(b"more\n")
    await stream.wait_closed()
    assert len(aborts) == 1 and "cannot reach the auth service" in aborts[0]
    assert client.calls == 3  # one success, two attempts
    stream.feed(b"ignored\n")  # after a failure nothing more is queued
    late: list[str] = []
    stream.bind(late.append)  # bound after the failure: told at once
    await until(lambda: late)


async def test_node_sync_records_locally_and_streams(tmp_path):
    client = StreamClient()
    rec = NodeRecording(tmp_path / "spool", client, mode="node-sync", track_sessions=False)  # type: ignore[arg-type]
    session = rec.recorder_factory({"session_id": SID, **META})
    assert session.required and session.stream is not None
    session.output(b"hello\r\n")
    session.resize(100, 30)
    session.close(0)
    manifest = await session.inner.wait_closed()
    await session.stream.wait_closed()
    local = (tmp_path / "spool" / f"{SID}.cast").read_bytes()
    assert bytes(client.data) == local and manifest["size"] == len(local)
    assert [e.code for e in read_cast(local).events] == ["o", "r"]


async def test_node_sync_ends_a_session_it_cannot_record_locally(tmp_path):
    client = StreamClient()
    blocked = tmp_path / "spool"
    blocked.write_text("a file where the spool directory should be")
    rec = NodeRecording(blocked, client, mode="node-sync", track_sessions=False)  # type: ignore[arg-type]
    session = rec.recorder_factory({"session_id": SID, **META})
    aborts: list[str] = []
    session.bind_session(aborts.append)
    await until(lambda: aborts)
    assert "cannot record the session at the node" in aborts[0]
    session.close(None)


def test_mode_cache_remembers_the_last_mode(tmp_path):
    path = tmp_path / "cache" / "session_recording"
    cache = ModeCache(path)
    assert cache.mode == "node" and not path.exists()
    assert cache.update(None) == "node"
    assert cache.update("node-sync") == "node-sync"
    assert cache.update("proxy-of-the-future") == "node-sync"  # unknown: keep the last one
    assert ModeCache(path).mode == "node-sync"  # a restarted node records as told before
    path.write_text("garbage\n")
    assert ModeCache(path).mode == "node"


# ---------------------------------------------------------------------- the auth side


@pytest.fixture
def store(tmp_path: Path) -> FileRecordingStore:
    return FileRecordingStore(tmp_path / "recordings")


async def test_store_appends_a_stream_and_drops_it_for_the_upload(store):
    assert await store.stream_size(SID) is None
    with pytest.raises(BadParameter, match="offset 0"):
        await store.append_stream(SID, 5, b"x", "node-a")
    assert await store.append_stream(SID, 0, b"abc", "node-a") == 3
    assert await store.append_stream(SID, 3, b"def", "node-a") == 6
    assert await store.append_stream(SID, 3, b"defgh", "node-a") == 8  # a retry that overlaps
    with pytest.raises(BadParameter, match="differ"):
        await store.append_stream(SID, 0, b"zzz", "node-a")
    with pytest.raises(BadParameter, match="gap"):
        await store.append_stream(SID, 20, b"x", "node-a")
    with pytest.raises(AccessDenied):
        await store.append_stream(SID, 8, b"x", "node-b")
    assert await store.stream_size(SID) == 8
    data = b'{"version": 2}\n'
    await store.put(SID, data, hashlib.sha256(data).hexdigest(), {"size": len(data)})
    assert await store.stream_size(SID) is None
    with pytest.raises(AlreadyExists):
        await store.append_stream(SID, 0, b"late", "node-a")


# ---------------------------------------------------------------------- audit


def test_event_codes():
    assert event_code({"event": "user.login", "success": True}) == "T1000I"
    assert event_code({"event": "user.login", "success": False}) == "T1000W"
    assert event_code({"event": "exec", "exit_status": 0}) == "T3002I"
    assert event_code({"event": "exec", "exit_status": 2}) == "T3002E"
    assert event_code({"event": "exec", "exit_status": None, "signal": "KILL"}) == "T3002E"
    assert event_code({"event": "session.upload"}) == "T2005I"
    assert event_code({"event": "something.new"}) == "TCC00E"


async def test_audit_emit_fills_code_and_node_and_filters_by_type(tmp_path):
    backend = SQLiteBackend(tmp_path / "db.sqlite")
    try:
        audit = AuditLog(backend)
        since = datetime.now(UTC) - timedelta(seconds=1)
        start = await audit.emit({"event": "session.start", "nodename": "node1", "session_id": SID})
        await audit.emit({"event": "user.login", "success": True, "user": "alice"})
        await audit.emit({"event": "session.end", "nodename": "node1", "session_id": SID})
        assert (start["code"], start["node"]) == ("T2000I", "node1")
        assert [e["event"] for e in await audit.search(since)] == ["session.start", "user.login", "session.end"]
        assert [e["event"] for e in await audit.search(since, types=["session."])] == ["session.start", "session.end"]
        assert [e["event"] for e in await audit.search(since, types=["user.login"])] == ["user.login"]
    finally:
        await backend.close()


async def test_a_stream_overtaken_by_the_complete_upload_is_not_a_failure():
    class Uploaded(StreamClient):
        async def append_stream(self, session_id: str, offset: int, body: bytes, content_type: str) -> Any:
            raise AlreadyExists(f"session {SID} is already recorded completely")

    aborts: list[str] = []
    stream = RecordingStream(Uploaded(), SID, batch_interval=0.001)
    stream.bind(aborts.append)
    stream.feed(b"last line\n")
    stream.close()
    await stream.wait_closed()
    assert aborts == [] and stream.failure is None
