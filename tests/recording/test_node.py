"""NodeRecording (the node's wiring) and the active-session reporter, with fake auth clients."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from teleport_runtime.api.types import ActiveSession
from teleport_runtime.errors import BadParameter, ConnectionProblem, NotFound
from teleport_runtime.recording.active import ActiveSessionReporter
from teleport_runtime.recording.node import NodeRecording, spool_dir

from .conftest import META

WAIT = 10.0


class FakeClient:
    """Records the calls; ``/keepalive`` answers NotFound while ``forget`` is set."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.forget = False
        self.down = False

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        if self.down:
            raise ConnectionProblem("cannot reach the auth server")
        self.calls.append((method, path))
        if path.endswith("/keepalive") and self.forget:
            self.forget = False
            raise NotFound("no such session")
        return {}

    # The auth client's methods the session reporter calls, recorded as the requests they send.
    async def start_session(self, session: ActiveSession) -> Any:
        return await self.call("POST", "/v1/sessions/active", session.to_json())

    async def keep_alive_session(self, session_id: str) -> Any:
        return await self.call("POST", f"/v1/sessions/active/{session_id}/keepalive", {})

    async def end_session(self, session_id: str) -> Any:
        return await self.call("DELETE", f"/v1/sessions/active/{session_id}")


async def until(cond: Any) -> None:
    """Poll ``cond`` until true, failing after WAIT seconds."""
    for _ in range(int(WAIT / 0.005)):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met in time")


def test_spool_dir():
    assert spool_dir(Path("/var/lib/teleport")) == Path("/var/lib/teleport/log/upload/sessions")


async def test_records_uploads_and_reports_a_session(tmp_path):
    uploaded: list[str] = []

    async def upload(manifest: dict, path: Path) -> None:
        uploaded.append(manifest["session_id"])

    client = FakeClient()
    rec = NodeRecording(tmp_path / "spool", client, upload=upload, min_backoff=0.001, max_backoff=0.01)
    await rec.start()
    try:
        session = rec.recorder_factory({"session_id": "n1", **META})
        session.output(b"hello\r\n")
        await until(lambda: ("POST", "/v1/sessions/active") in client.calls)
        session.resize(100, 40)
        session.close(0)
        await until(lambda: rec.uploader.uploaded == ["n1"])
        await until(lambda: ("DELETE", "/v1/sessions/active/n1") in client.calls)
    finally:
        await rec.stop()
    assert client.calls[0] == ("POST", "/v1/sessions/active")
    assert uploaded == ["n1"]
    assert list((tmp_path / "spool").glob("*.cast*")) == []


async def test_a_session_over_before_it_was_announced_is_never_sent():
    client = FakeClient()
    reporter = ActiveSessionReporter(client, interval=3600)
    reporter.started({"session_id": "blink"})
    reporter.ended("blink")
    reporter.start()
    try:
        await asyncio.sleep(0.05)
    finally:
        await reporter.stop()
    assert client.calls == []


async def test_mode_off_records_nothing_but_still_tracks(tmp_path):
    mode = {"value": "off"}
    client = FakeClient()
    rec = NodeRecording(tmp_path / "spool", client, mode=lambda: mode["value"])
    session = rec.recorder_factory({"session_id": "quiet", **META})
    assert session.inner is None
    session.output(b"not recorded")
    session.close(0)
    assert list((tmp_path / "spool").glob("*")) == []
    assert rec.reporter is not None and rec.reporter.live == {}
    mode["value"] = "bogus"
    assert rec.mode == "node"


def test_needs_a_client_or_an_upload(tmp_path):
    with pytest.raises(BadParameter):
        NodeRecording(tmp_path)


async def test_reporter_renews_and_reannounces_a_forgotten_session():
    client = FakeClient()
    reporter = ActiveSessionReporter(client, interval=0.01)
    reporter.start()
    try:
        reporter.started({"session_id": "r1", "user": "alice"})
        await until(lambda: ("POST", "/v1/sessions/active/r1/keepalive") in client.calls)
        client.forget = True  # the auth lost it (restart, expiry during an outage)
        await until(lambda: client.calls.count(("POST", "/v1/sessions/active")) >= 2)
        reporter.ended("r1")
        await until(lambda: ("DELETE", "/v1/sessions/active/r1") in client.calls)
    finally:
        await reporter.stop()
    assert reporter.live == {}


async def test_reporter_survives_an_unreachable_auth():
    client = FakeClient()
    client.down = True
    reporter = ActiveSessionReporter(client, interval=0.01)
    reporter.start()
    try:
        reporter.started({"session_id": "r2"})
        await asyncio.sleep(0.05)
        client.down = False
        await until(lambda: ("POST", "/v1/sessions/active/r2/keepalive") in client.calls)
    finally:
        await reporter.stop()
