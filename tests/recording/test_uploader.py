"""The uploader: resumes a previous spool, retries with backoff, uploads each recording once,
never uploads a live ``.part``, keeps what the auth service refuses."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from teleport_runtime.auth.recordings import FileRecordingStore, recording_meta
from teleport_runtime.errors import AlreadyExists, BadParameter, ConnectionProblem
from teleport_runtime.recording.spool import SessionRecorder
from teleport_runtime.recording.uploader import Uploader

from .conftest import META, Ticker, age, kill_writer, write_session

WAIT = 10.0  # bound for waits on the uploader (it normally finishes in milliseconds)


class FakeAuth:
    """An upload function over a real FileRecordingStore, with scripted failures."""

    def __init__(self, root: Path, fail_first: int = 0, lose_answers: int = 0) -> None:
        self.store = FileRecordingStore(root)
        self.fail_first = fail_first
        self.lose_answers = lose_answers
        self.calls: list[str] = []
        self.results: list[dict] = []

    async def upload(self, manifest: dict, path: Path) -> None:
        self.calls.append(manifest["session_id"])
        if self.fail_first > 0:
            self.fail_first -= 1
            raise ConnectionProblem("cannot reach the auth server")
        data = await asyncio.to_thread(path.read_bytes)
        meta = {**recording_meta(data, manifest), "size": manifest["size"]}
        result = await self.store.put(manifest["session_id"], data, manifest["sha256"], meta)
        self.results.append(result)
        if self.lose_answers > 0:  # stored, but the node never hears back
            self.lose_answers -= 1
            raise ConnectionProblem("connection reset before the answer")


def fast(spool: Path, upload, **kw) -> Uploader:
    kw.setdefault("salvage_grace", 10.0)
    return Uploader(spool, upload, min_backoff=0.001, max_backoff=0.01, **kw)


def spool_files(spool: Path) -> list[str]:
    return sorted(p.name for p in spool.iterdir() if p.is_file())


async def test_resumes_uploads_left_by_a_previous_instance(spool, tmp_path):
    ticker = Ticker()
    for i in range(3):
        ticker.advance(1)
        await write_session(spool, f"old-{i}", f"session {i}\r\n", ticker)
    sent = (spool / "old-1.cast").read_bytes()
    auth = FakeAuth(tmp_path / "auth")
    uploader = fast(spool, auth.upload)
    assert uploader.pending() == ["old-0", "old-1", "old-2"]
    uploader.start()
    try:
        await asyncio.wait_for(uploader.wait_idle(), WAIT)
    finally:
        await uploader.stop()
    assert sorted(uploader.uploaded) == ["old-0", "old-1", "old-2"]
    assert spool_files(spool) == []
    stored = await auth.store.list()
    assert [r["session_id"] for r in stored] == ["old-0", "old-1", "old-2"]
    assert stored[0]["user"] == "alice" and stored[0]["exit_status"] == 0
    assert await auth.store.get("old-1") == sent


async def test_retries_while_failing_then_uploads_exactly_once(spool, tmp_path):
    await write_session(spool, "flaky")
    auth = FakeAuth(tmp_path / "auth", fail_first=4)
    uploader = fast(spool, auth.upload)
    uploader.start()
    try:
        await asyncio.wait_for(uploader.wait_idle(), WAIT)
    finally:
        await uploader.stop()
    assert auth.calls == ["flaky"] * 5
    assert len(auth.results) == 1 and auth.results[0]["duplicate"] is False
    assert uploader.uploaded == ["flaky"]
    assert uploader.failures == 0
    assert spool_files(spool) == []


async def test_the_spool_keeps_recordings_while_the_auth_is_unreachable(spool, tmp_path):
    await write_session(spool, "kept")
    auth = FakeAuth(tmp_path / "auth", fail_first=10**6)
    uploader = fast(spool, auth.upload)
    uploader.start()
    try:
        for _ in range(1000):
            if len(auth.calls) >= 3:
                break
            await asyncio.sleep(0.005)
    finally:
        await uploader.stop()
    assert len(auth.calls) >= 3
    assert uploader.failures >= 3 and "cannot reach" in (uploader.last_error or "")
    assert spool_files(spool) == ["kept.cast", "kept.json"]
    # a new instance (a node restart) finds it and uploads it once the auth is back
    auth.fail_first = 0
    uploader = fast(spool, auth.upload)
    assert await uploader.run_once() == 1
    assert spool_files(spool) == []


async def test_an_answer_lost_after_the_auth_stored_it_is_not_a_second_recording(spool, tmp_path):
    manifest = await write_session(spool, "lost-answer")
    auth = FakeAuth(tmp_path / "auth", lose_answers=1)
    uploader = fast(spool, auth.upload)
    with pytest.raises(ConnectionProblem):
        await uploader.run_once()
    assert spool_files(spool) == ["lost-answer.cast", "lost-answer.json"]  # still ours to send
    assert await uploader.run_once() == 1
    assert [r["duplicate"] for r in auth.results] == [False, True]
    stored = await auth.store.list()
    assert len(stored) == 1 and stored[0]["sha256"] == manifest["sha256"]
    assert spool_files(spool) == []


async def test_a_crash_between_the_two_deletes_reuploads_idempotently(spool, tmp_path):
    await write_session(spool, "half-deleted")
    auth = FakeAuth(tmp_path / "auth")
    assert await fast(spool, auth.upload).run_once() == 1
    # Put the .cast back as if the node died after deleting only the manifest.
    data = await auth.store.get("half-deleted")
    (spool / "half-deleted.cast").write_bytes(data)
    uploader = fast(spool, auth.upload)
    assert await uploader.run_once() == 1
    assert [r["duplicate"] for r in auth.results] == [False, True]
    assert len(await auth.store.list()) == 1
    assert spool_files(spool) == []


async def test_a_part_is_never_uploaded(spool, tmp_path):
    await write_session(spool, "done")
    live = SessionRecorder(spool, "live", META, False)
    live.output(b"still typing\r\n")
    age(live.part_path)  # old but locked: its writer is alive
    spool.joinpath("fresh.cast.part").write_bytes(b'{"version": 2, "width": 80, "height": 24}\n')
    auth = FakeAuth(tmp_path / "auth")
    uploader = fast(spool, auth.upload, salvage_grace=3600)
    assert await uploader.run_once() == 1
    assert auth.calls == ["done"]
    assert spool_files(spool) == ["fresh.cast.part", "live.cast.part"]
    live.close(0)
    await live.wait_closed()
    assert await uploader.run_once() == 1
    assert auth.calls == ["done", "live"]
    assert spool_files(spool) == ["fresh.cast.part"]


async def test_an_interrupted_session_is_salvaged_and_uploaded(spool, tmp_path):
    rec = SessionRecorder(spool, "node-crash", META, False)
    rec.output(b"work in progress\r\n")
    kill_writer(rec)
    age(rec.part_path)
    auth = FakeAuth(tmp_path / "auth")
    assert await fast(spool, auth.upload).run_once() == 1
    record = await auth.store.stat("node-crash")
    assert record["interrupted"] is True and record["exit_status"] is None
    assert b"work in progress" in await auth.store.get("node-crash")


async def test_a_restart_completes_a_session_cut_short_at_once(spool, tmp_path):
    rec = SessionRecorder(spool, "killed-now", META, False)
    rec.output(b"typed before the kill\r\n")
    kill_writer(rec)  # just now: a rescan would wait out the idle grace
    live = SessionRecorder(spool, "still-live", META, False)  # a writer that holds its lock
    auth = FakeAuth(tmp_path / "auth")
    uploader = fast(spool, auth.upload, salvage_grace=3600)
    assert await uploader.run_once() == 0  # the ordinary pass leaves the fresh .part alone
    salvaged = await uploader.recover()
    assert [m["session_id"] for m in salvaged] == ["killed-now"]
    assert salvaged[0]["complete"] is False and salvaged[0]["interrupted"] is True
    assert await uploader.run_once() == 1
    record = await auth.store.stat("killed-now")
    assert record["complete"] is False and record["exit_status"] is None
    assert b"typed before the kill" in await auth.store.get("killed-now")
    assert await uploader.recover() == [] and await uploader.run_once() == 0  # once
    assert spool_files(spool) == ["still-live.cast.part"]
    live.close(0)
    await live.wait_closed()
    assert await uploader.run_once() == 1
    assert (await auth.store.stat("still-live"))["complete"] is True


async def test_refused_recordings_are_kept_aside_and_do_not_block_others(spool, tmp_path):
    ticker = Ticker()
    await write_session(spool, "a-refused", ticker=ticker)
    ticker.advance(1)
    await write_session(spool, "b-fine", ticker=ticker)
    calls = []

    async def upload(manifest: dict, path: Path) -> None:
        calls.append(manifest["session_id"])
        if manifest["session_id"] == "a-refused":
            raise AlreadyExists("session a-refused already has a different recording")

    uploader = fast(spool, upload)
    assert await uploader.run_once() == 1
    assert sorted(calls) == ["a-refused", "b-fine"]
    rejected = spool / "rejected"
    assert sorted(p.name for p in rejected.iterdir()) == [
        "a-refused.cast", "a-refused.cast.reason", "a-refused.json", "a-refused.json.reason",
    ]
    assert "different recording" in (rejected / "a-refused.json.reason").read_text()
    assert spool_files(spool) == []
    assert await uploader.run_once() == 0  # not retried


async def test_a_corrupted_local_file_is_refused_before_sending(spool, tmp_path):
    from teleport_runtime.recording.uploader import make_upload

    class Client:
        sent = 0

        async def upload_recording(self, session_id, body, headers):
            Client.sent += 1

    manifest = await write_session(spool, "corrupt")
    cast = spool / "corrupt.cast"
    cast.write_bytes(cast.read_bytes().replace(b"hello", b"HELLO"))
    with pytest.raises(BadParameter, match="changed after it was completed"):
        await make_upload(Client())(manifest, cast)
    assert Client.sent == 0
    assert await fast(spool, make_upload(Client())).run_once() == 0
    assert (spool / "rejected" / "corrupt.cast").exists()


async def test_notify_uploads_a_session_that_just_ended(spool, tmp_path):
    auth = FakeAuth(tmp_path / "auth")
    uploader = fast(spool, auth.upload, rescan_interval=3600)
    uploader.start()
    try:
        await asyncio.wait_for(uploader.wait_idle(), WAIT)
        rec = SessionRecorder(spool, "fresh", META, False, on_close=uploader.notify)
        rec.output(b"bye\r\n")
        rec.close(0)
        await rec.wait_closed()
        await asyncio.wait_for(uploader.wait_idle(), WAIT)
    finally:
        await uploader.stop()
    assert uploader.uploaded == ["fresh"]
    assert spool_files(spool) == []


async def test_broken_manifests_are_set_aside(spool):
    await write_session(spool, "good")
    (spool / "junk.json").write_text("{not json")
    (spool / "nocast.json").write_text(json.dumps({"session_id": "nocast", "size": 1, "sha256": "0" * 64}))
    uploader = fast(spool, lambda m, p: asyncio.sleep(0))
    assert uploader.pending() == ["good"]
    assert sorted(p.name for p in (spool / "rejected").glob("*.json")) == ["junk.json", "nocast.json"]


def test_backoff_is_exponential_and_capped(spool):
    uploader = Uploader(spool, lambda m, p: asyncio.sleep(0), min_backoff=1, max_backoff=30)
    delays = [uploader.backoff.delay(failures) for failures in range(1, 9)]
    bounds = [min(30, 2 ** (n - 1)) for n in range(1, 9)]
    assert all(0.8 * b <= d <= b for d, b in zip(delays, bounds, strict=True))
    with pytest.raises(BadParameter):
        Uploader(spool, lambda m, p: asyncio.sleep(0), min_backoff=0)
