"""The spool writer: valid asciicast v2 as it happens, UTF-8 across chunks, manifest, crash
recovery of what a dead writer left behind."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from teleport_runtime.errors import AlreadyExists, BadParameter
from teleport_runtime.recording.asciicast import read_cast
from teleport_runtime.recording.spool import (
    SessionRecorder,
    read_manifest,
    recorder_factory,
    recover_cast,
    salvage_part,
    session_meta,
)

from .conftest import META, Ticker, age, kill_writer

ASCIINEMA = Path(sys.executable).parent / "asciinema"


def asciinema_cat(path: Path) -> bytes:
    exe = str(ASCIINEMA) if ASCIINEMA.exists() else shutil.which("asciinema")
    if exe is None:
        pytest.skip("asciinema is not installed (pip install asciinema)")
    proc = subprocess.run([exe, "cat", str(path)], capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def test_writes_asciicast_v2_that_asciinema_plays(spool, ticker):
    rec = SessionRecorder(spool, "s-1", META, True, clock=ticker)
    assert rec.part_path.exists() and not rec.cast_path.exists()
    ticker.advance(0.5)
    rec.output(b"$ ")
    ticker.advance(1.25)
    rec.input(b"echo hi\r")
    rec.output(b"echo hi\r\nhi\r\n")
    ticker.advance(0.25)
    rec.resize(132, 43)
    rec.output("caf\u00e9 \u2603\r\n".encode())
    rec.close(0)

    assert not rec.part_path.exists()
    cast = read_cast(rec.cast_path)
    assert cast.header["version"] == 2
    assert (cast.header["width"], cast.header["height"]) == (80, 24)
    assert cast.header["env"]["TERM"] == "xterm-256color"
    session = cast.session
    assert session["id"] == "s-1"
    assert (session["user"], session["login"], session["node"]) == ("alice", "root", "node1")
    assert (session["server_id"], session["cluster"]) == ("6f1c0c8e-host", "example.com")
    assert [(e.time, e.code, e.data) for e in cast.events] == [
        (0.5, "o", "$ "),
        (1.75, "i", "echo hi\r"),
        (1.75, "o", "echo hi\r\nhi\r\n"),
        (2.0, "r", "132x43"),
        (2.0, "o", "caf\u00e9 \u2603\r\n"),
    ]
    out = asciinema_cat(rec.cast_path)
    assert out == "$ echo hi\r\nhi\r\ncaf\u00e9 \u2603\r\n".encode()


def test_split_utf8_sequences_survive(spool, ticker):
    text = "h\u00e9 \u20ac \U0001f600 \u4e2d\u6587\r\n"
    raw = text.encode()
    rec = SessionRecorder(spool, "utf8", META, False, clock=ticker)
    for i in range(len(raw)):  # one byte per chunk: every multibyte sequence is split
        rec.output(raw[i : i + 1])
    rec.close(0)
    cast = read_cast(rec.cast_path)
    assert "".join(e.data for e in cast.events if e.code == "o") == text
    assert "\ufffd" not in cast.events[-1].data
    assert asciinema_cat(rec.cast_path) == raw


def test_invalid_bytes_are_replaced_and_truncated_tail_flushed(spool, ticker):
    rec = SessionRecorder(spool, "bad-bytes", META, False, clock=ticker)
    rec.output(b"ok \xff\xfe ok ")
    rec.output(b"\xe2\x82")  # a sequence the session never finished
    rec.close(None)
    text = "".join(e.data for e in read_cast(rec.cast_path).events)
    assert text == "ok \ufffd\ufffd ok \ufffd"


def test_input_is_dropped_unless_recorded(spool, ticker):
    rec = SessionRecorder(spool, "no-input", META, False, clock=ticker)
    rec.input(b"secret\r")
    rec.output(b"x")
    rec.close(0)
    cast = read_cast(rec.cast_path)
    assert [e.code for e in cast.events] == ["o"]
    assert cast.session["record_input"] is False


def test_manifest_matches_file(spool, ticker):
    rec = SessionRecorder(spool, "manifest", META, False, clock=ticker)
    rec.output(b"data\r\n")
    ticker.advance(3)
    rec.output(b"more\r\n")
    rec.close(7)
    manifest = read_manifest(rec.manifest_path)
    data = rec.cast_path.read_bytes()
    assert manifest["session_id"] == "manifest"
    assert manifest["size"] == len(data)
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["exit_status"] == 7
    assert manifest["duration"] == 3.0
    assert manifest["interrupted"] is False
    assert manifest["complete"] is True
    assert manifest["meta"]["user"] == "alice"
    rec.close(0)  # idempotent
    rec.output(b"after close")  # ignored
    assert rec.cast_path.read_bytes() == data


def test_output_reaches_the_file_while_the_session_runs(spool, ticker):
    # Without an event loop every event is flushed at once; the .part is readable mid-session.
    rec = SessionRecorder(spool, "live", META, False, clock=ticker)
    rec.output(b"visible\r\n")
    assert b"visible" in rec.part_path.read_bytes()
    rec.close(0)


async def test_flushes_soon_on_the_loop_and_finalises_in_a_thread(spool, ticker):
    closed = []
    rec = SessionRecorder(spool, "async", META, False, clock=ticker, on_close=closed.append, flush_interval=0.01)
    rec.output(b"buffered\r\n")
    for _ in range(200):
        if b"buffered" in rec.part_path.read_bytes():
            break
        await asyncio.sleep(0.01)
    assert b"buffered" in rec.part_path.read_bytes()
    rec.close(0)
    manifest = await rec.wait_closed()
    assert closed == [manifest]
    assert rec.cast_path.exists() and rec.manifest_path.exists()


def test_refuses_a_second_recording_of_the_same_session(spool, ticker):
    rec = SessionRecorder(spool, "dup", META, False, clock=ticker)
    with pytest.raises(AlreadyExists):
        SessionRecorder(spool, "dup", META, False, clock=ticker)
    rec.close(0)
    with pytest.raises(AlreadyExists):
        SessionRecorder(spool, "dup", META, False, clock=ticker)


@pytest.mark.parametrize("bad", ["", "../x", "a/b", ".hidden", "a..b", "x" * 129, None])
def test_refuses_unsafe_session_ids(spool, bad):
    with pytest.raises(BadParameter):
        SessionRecorder(spool, bad, META, False)


def test_bad_resize_raises(spool, ticker):
    rec = SessionRecorder(spool, "resize", META, False, clock=ticker)
    with pytest.raises(BadParameter):
        rec.resize(0, 24)
    rec.close(0)


def test_session_meta_maps_node_names():
    meta = session_meta({"session_id": "x", "nodename": "n", "host_uuid": "u", "cluster_name": "c", "kind": "shell"})
    assert meta == {"node": "n", "server_id": "u", "cluster": "c", "kind": "shell"}


def test_recorder_factory_uses_the_session_id(spool):
    factory = recorder_factory(spool, record_input=True)
    rec = factory({"session_id": "from-info", **META})
    assert rec.session_id == "from-info" and rec.record_input
    rec.close(0)


# -- crash recovery -------------------------------------------------------------------------------


def test_salvage_leaves_a_live_recording_alone(spool, ticker):
    rec = SessionRecorder(spool, "live", META, False, clock=ticker)
    rec.output(b"running\r\n")
    age(rec.part_path)
    assert salvage_part(rec.part_path, grace=0) is None  # locked by its writer
    assert rec.part_path.exists()
    rec.close(0)


def test_salvage_completes_a_dead_writers_part(spool, ticker):
    rec = SessionRecorder(spool, "crashed", META, False, clock=ticker)
    rec.output(b"before the crash\r\n")
    ticker.advance(2)
    rec.output(b"second line\r\n")
    part = rec.part_path
    # Simulate the process dying: the lock goes with its file descriptor, a torn line remains.
    kill_writer(rec)
    with part.open("ab") as fh:
        fh.write(b'[2.5, "o", "torn wri')

    assert salvage_part(part, grace=3600) is None  # too recent: maybe a writer about to lock it
    age(part)
    manifest = salvage_part(part, grace=10)
    assert manifest is not None and manifest["interrupted"] is True and manifest["exit_status"] is None
    assert manifest["complete"] is False
    cast_path = spool / "crashed.cast"
    assert not part.exists() and cast_path.exists()
    data = cast_path.read_bytes()
    assert data.endswith(b"second line\\r\\n\"]\n")
    assert manifest["size"] == len(data) and manifest["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["duration"] == 2.0
    assert manifest["meta"]["user"] == "alice"
    assert read_manifest(spool / "crashed.json") == manifest
    cast = read_cast(cast_path)
    assert [e.data for e in cast.events] == ["before the crash\r\n", "second line\r\n"]


def test_salvage_rejects_a_part_without_header(spool):
    spool.mkdir()
    part = spool / "empty.cast.part"
    part.write_bytes(b'{"version": 2, "wid')
    age(part)
    assert salvage_part(part, grace=0) is None
    assert (spool / "rejected" / "empty.cast.part").exists()
    assert not list(spool.glob("*.cast"))


def test_recover_cast_rebuilds_a_missing_manifest(spool, ticker):
    rec = SessionRecorder(spool, "orphan", META, False, clock=ticker)
    rec.output(b"x\r\n")
    rec.close(0)
    original = json.loads(rec.manifest_path.read_text())
    rec.manifest_path.unlink()
    manifest = recover_cast(rec.cast_path)
    assert manifest is not None and manifest["recovered"] is True
    assert (manifest["size"], manifest["sha256"]) == (original["size"], original["sha256"])
    assert rec.manifest_path.exists()


def test_cast_is_readable_from_text_and_bytes(spool, ticker):
    rec = SessionRecorder(spool, "forms", META, False, clock=ticker)
    rec.output(b"x")
    rec.close(0)
    data = rec.cast_path.read_bytes()
    assert read_cast(data) == read_cast(data.decode()) == read_cast(rec.cast_path)
    with pytest.raises(BadParameter):
        read_cast(b'{"version": 1}\n')
    with pytest.raises(BadParameter):
        read_cast(b"")


def test_ticker_is_monotonic_even_if_clock_steps_back(spool):
    ticker = Ticker()
    rec = SessionRecorder(spool, "mono", META, False, clock=ticker)
    ticker.advance(5)
    rec.output(b"a")
    ticker.advance(-3)
    rec.output(b"b")
    rec.close(0)
    times = [e.time for e in read_cast(rec.cast_path).events]
    assert times == sorted(times)


def test_metadata_values_that_are_not_json_become_strings(spool, ticker):
    from datetime import UTC, datetime

    when = datetime(2024, 5, 1, tzinfo=UTC)
    rec = SessionRecorder(spool, "odd-meta", {**META, "started": when}, False, clock=ticker)
    rec.close(0)
    assert read_cast(rec.cast_path).session["started"] == str(when)
    assert read_manifest(rec.manifest_path)["meta"]["started"] == str(when)
