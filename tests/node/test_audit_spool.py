"""The node's audit spool: durable, ordered, bounded, delivered once (with the auth service's
idempotent emit). No timing assertions."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from teleport_runtime.auth.audit import AuditLog
from teleport_runtime.backend.sqlite import SQLiteBackend
from teleport_runtime.errors import AlreadyExists, BadParameter, ConnectionProblem
from teleport_runtime.node.audit import BLOCK, DROPPED, DROPPED_SENDING, AuditSender, AuditSpool


def _event(n: int, **extra) -> dict:
    return {"event": "exec", "command": f"cmd-{n}", "exit_status": 0, "time": f"2024-05-01T10:00:{n:02d}+00:00",
            **extra}


@pytest.fixture
async def audit_log(tmp_path: Path):
    backend = SQLiteBackend(tmp_path / "backend" / "sqlite.db", sweep_interval=None)
    try:
        yield AuditLog(backend)
    finally:
        await backend.close()


def test_events_are_on_disk_with_an_id_and_survive_a_restart(tmp_path: Path) -> None:
    spool = AuditSpool(tmp_path / "audit")
    first = spool.append(_event(1))
    spool.append({"event": "session.start", "session_id": "s1"})  # no time: the spool adds it
    assert len(first["id"]) == 32 and first["time"] == _event(1)["time"]
    (tmp_path / "audit" / ".00000000000000000009.json.x.tmp").write_text("{torn")  # a write a crash cut
    again = AuditSpool(tmp_path / "audit")  # the node restarted
    assert again.pending() == 2
    seq, event = again.oldest()
    assert event == first
    again.acknowledge(seq)
    _, second = again.oldest()
    assert second["event"] == "session.start" and second["time"] and second["id"] != first["id"]
    assert not list((tmp_path / "audit").glob(".*.tmp"))
    assert again.append(_event(3))["id"]  # numbering goes on after what the spool held
    assert sorted(p.name for p in (tmp_path / "audit").glob("*.json"))[-1] == "00000000000000000003.json"


async def test_the_sender_delivers_in_order_and_retries_while_auth_is_away(tmp_path: Path) -> None:
    spool = AuditSpool(tmp_path / "audit")
    for n in range(3):
        spool.append(_event(n))
    delivered: list[str] = []
    down = {"left": 2}

    async def send(event: dict) -> None:
        if down["left"]:
            down["left"] -= 1
            raise ConnectionProblem("auth unreachable")
        delivered.append(event["command"])

    sender = AuditSender(spool, send, min_backoff=0.01, max_backoff=0.02)
    sender.start()
    try:
        await asyncio.wait_for(sender.wait_idle(), 20)
        assert delivered == ["cmd-0", "cmd-1", "cmd-2"] and spool.pending() == 0
        assert not list((tmp_path / "audit").glob("*.json"))
        spool.append(_event(9))
        sender.notify()
        await asyncio.wait_for(sender.wait_idle(), 20)
        assert delivered[-1] == "cmd-9"
    finally:
        await sender.stop()


async def test_a_resend_after_a_crash_before_the_acknowledgement_is_stored_once(
    tmp_path: Path, audit_log: AuditLog
) -> None:
    spool = AuditSpool(tmp_path / "audit")
    spool.append(_event(1, session_id="s1"))

    async def send(event: dict) -> dict:
        return await audit_log.emit({**event, "server_id": "node-uuid"})  # as the auth API does

    _, event = spool.oldest()
    await send(event)  # delivered, then the node dies before acknowledging it
    restarted = AuditSpool(tmp_path / "audit")
    sender = AuditSender(restarted, send)
    assert await sender.drain() == 1 and restarted.pending() == 0
    stored = await audit_log.search(since=datetime(2024, 1, 1, tzinfo=UTC))
    assert [(e["command"], e["id"], e["code"]) for e in stored] == [("cmd-1", event["id"], "T3002I")]
    again = await audit_log.emit({**event, "server_id": "node-uuid"})
    assert again["duplicate"] is True
    with pytest.raises(AlreadyExists, match="another server"):
        await audit_log.emit({**event, "server_id": "some-other-node"})
    with pytest.raises(BadParameter, match="ISO 8601 time"):
        await audit_log.emit({"event": "exec", "id": "ab" * 16})
    with pytest.raises(BadParameter, match="hex digits"):
        await audit_log.emit({"event": "exec", "id": "../x", "time": event["time"]})


async def test_a_full_spool_drops_the_oldest_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = AuditSpool(tmp_path / "audit", max_bytes=3 * BLOCK)
    with caplog.at_level(logging.ERROR, logger="teleport.audit"):
        for n in range(5):
            spool.append(_event(n))
    assert spool.pending() == 3 and spool.size == 3 * BLOCK
    assert "audit spool full" in caplog.text and "dropped the 1 oldest event(s)" in caplog.text
    counted = json.loads((tmp_path / "audit" / DROPPED).read_text())
    assert counted["count"] == 2
    assert (counted["first_time"], counted["last_time"]) == (_event(0)["time"], _event(1)["time"])

    sent: list[dict] = []
    fail_dropped = {"once": True}

    async def send(event: dict) -> None:
        if event["event"] == "audit.dropped" and fail_dropped.pop("once", False):
            raise ConnectionProblem("auth unreachable")
        sent.append(event)

    sender = AuditSender(spool, send, common={"nodename": "node1"})
    with pytest.raises(ConnectionProblem):
        await sender.drain()
    sealed = json.loads((tmp_path / "audit" / DROPPED_SENDING).read_text())
    spool.append(_event(7))  # a drop after the seal counts towards the next audit.dropped
    assert json.loads((tmp_path / "audit" / DROPPED).read_text())["count"] == 1
    await sender.drain()
    kinds = [(e["event"], e.get("command"), e.get("count")) for e in sent]
    assert kinds == [("audit.dropped", None, 2), ("audit.dropped", None, 1),
                     ("exec", "cmd-3", None), ("exec", "cmd-4", None), ("exec", "cmd-7", None)]
    assert sent[0]["id"] == sealed["id"] and sent[0]["time"] == sealed["time"]  # the resend is the same event
    assert sent[0]["nodename"] == "node1" and "full" in sent[0]["reason"]
    assert not (tmp_path / "audit" / DROPPED).exists() and not (tmp_path / "audit" / DROPPED_SENDING).exists()


def test_the_event_being_sent_is_not_dropped(tmp_path: Path) -> None:
    spool = AuditSpool(tmp_path / "audit", max_bytes=2 * BLOCK)
    spool.append(_event(0))
    spool.append(_event(1))
    seq, in_flight = spool.oldest()
    spool.append(_event(2))  # no room: the oldest not in flight goes
    spool.acknowledge(seq)
    assert [spool.oldest()[1]["command"]] == ["cmd-2"]
    assert json.loads((tmp_path / "audit" / DROPPED).read_text())["count"] == 1
    assert in_flight["command"] == "cmd-0"


async def test_an_event_the_auth_service_refuses_is_kept_aside(tmp_path: Path) -> None:
    spool = AuditSpool(tmp_path / "audit")
    spool.append(_event(1))
    spool.append(_event(2))
    sent = []

    async def send(event: dict) -> None:
        if event["command"] == "cmd-1":
            raise BadParameter("an audit event needs an 'event' field")
        sent.append(event["command"])

    await AuditSender(spool, send).drain()
    assert sent == ["cmd-2"] and spool.pending() == 0
    rejected = tmp_path / "audit" / "rejected"
    assert json.loads((rejected / "00000000000000000001.json").read_text())["command"] == "cmd-1"
    assert "needs an 'event' field" in (rejected / "00000000000000000001.json.reason").read_text()


def test_an_unreadable_spooled_event_is_kept_aside(tmp_path: Path) -> None:
    spool = AuditSpool(tmp_path / "audit")
    spool.append(_event(1))
    spool.append(_event(2))
    (tmp_path / "audit" / "00000000000000000001.json").write_text("not json")
    assert spool.oldest()[1]["command"] == "cmd-2"
    assert (tmp_path / "audit" / "rejected" / "00000000000000000001.json").exists()


def test_a_bound_too_small_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadParameter, match="at least 4096 bytes"):
        AuditSpool(tmp_path / "audit", max_bytes=100)
