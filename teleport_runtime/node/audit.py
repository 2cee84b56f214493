"""The node's audit events, kept on disk until the auth service has them.

Every event the node emits is first written to its audit spool, ``<data_dir>/log/audit/``: one
file per event, ``<seq>.json`` (``seq`` a zero-padded counter), written to a temp file, fsynced
and renamed (the directory fsynced too), so an event survives a node crash from the moment it is
spooled. The spool gives each event an ``id`` (32 hex digits) and keeps its ``time``; the auth
service stores an event ID once (see :meth:`teleport_runtime.auth.audit.AuditLog.emit`), so a
resend after a crash between the auth service's answer and the delete here is harmless.

:class:`AuditSender` posts the spooled events to the auth service in order, one at a time, and
deletes each file once the auth service acknowledged it; while the auth service is unreachable
(or refuses the node for now, such as during a CA rotation) it retries with backoff.
An event the auth service refuses as malformed (BadParameter), as another server's
(AlreadyExists) or as one this node may not write (EventRefused: its type, a time outside the
accepted window, its size) is moved to ``rejected/``: logged, kept, never retried, so one refused
event does not hold up the ones behind it. Other refusals (AccessDenied of the node's certificate,
such as during a CA rotation) are retried.

The spool is bounded (``max_bytes``, each file counted as its size rounded up to 4 KiB): when a
new event does not fit, the oldest events are dropped, with an error log line, and counted in
``dropped.json``. The sender emits ``audit.dropped`` (``count``, ``first_time``, ``last_time``
of the dropped events) before the events that followed them, as soon as the auth service is
reachable; that record is sealed (``dropped-sending.json``, with its own ID and time) before it
is sent, so it too arrives once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from teleport_runtime.backoff import Backoff
from teleport_runtime.durable import fsync_dir, write_private
from teleport_runtime.errors import AlreadyExists, BadParameter, EventRefused, TeleportError

log = logging.getLogger("teleport.audit")

#: Default bound of the spool (bytes of disk, each file rounded up to :data:`BLOCK`).
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
#: What one small file takes on common filesystems.
BLOCK = 4096
REJECTED_DIR = "rejected"
DROPPED = "dropped.json"
DROPPED_SENDING = "dropped-sending.json"
_SEQ_DIGITS = 20

#: ``send(event)``: deliver one event to the auth service; raise to fail.
Send = Callable[[dict[str, Any]], Awaitable[Any]]


def audit_spool_dir(data_dir: Path) -> Path:
    """The node's audit spool: ``<data_dir>/log/audit``."""
    return Path(data_dir) / "log" / "audit"


def new_event_id() -> str:
    """A fresh audit event ID (128 random bits, hex)."""
    return secrets.token_hex(16)


def _disk_size(length: int) -> int:
    return max(BLOCK, -(-length // BLOCK) * BLOCK)


class AuditSpool:
    """A durable, bounded FIFO of audit events in a directory (thread-safe; its methods do file
    I/O, so async code calls them through ``asyncio.to_thread``)."""

    def __init__(self, directory: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < BLOCK:
            raise BadParameter(f"the audit spool needs at least {BLOCK} bytes, not {max_bytes}")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._pending: deque[tuple[int, int]] = deque()  # (seq, disk size), oldest first
        for path in self.directory.glob("*.json"):
            if path.stem.isdigit():
                self._pending.append((int(path.stem), _disk_size(path.stat().st_size)))
        self._pending = deque(sorted(self._pending))
        self._bytes = sum(size for _, size in self._pending)
        self._next = (self._pending[-1][0] + 1) if self._pending else 1
        self._in_flight: int | None = None
        for stale in self.directory.glob(".*.tmp"):
            stale.unlink(missing_ok=True)  # a write a crash cut short, never acknowledged to anyone

    # ------------------------------------------------------------------ writing

    def _path(self, seq: int) -> Path:
        return self.directory / f"{seq:0{_SEQ_DIGITS}d}.json"

    def append(self, event: dict[str, Any]) -> dict[str, Any]:
        """Write ``event`` durably (adding ``id`` and ``time`` when missing); return it.

        Drops the oldest events when the spool would exceed its bound (see the module doc).
        """
        event = {**event}
        event.setdefault("id", new_event_id())
        event.setdefault("time", datetime.now(UTC).isoformat())
        data = json.dumps(event, sort_keys=True, default=str).encode() + b"\n"
        size = _disk_size(len(data))
        with self._lock:
            if size > self.max_bytes:
                log.error("audit event %s is %d bytes, over the audit spool's bound of %d bytes: dropped",
                          event.get("event"), len(data), self.max_bytes)
                self._count_dropped([event.get("time")])
                return event
            self._make_room(size)
            seq = self._next
            self._next += 1
            write_private(self._path(seq), data)
            self._pending.append((seq, size))
            self._bytes += size
        return event

    def _make_room(self, size: int) -> None:
        """Drop the oldest events (not the one being sent) until ``size`` more bytes fit."""
        times: list[Any] = []
        index = 0
        while self._bytes + size > self.max_bytes and index < len(self._pending):
            seq, held = self._pending[index]
            if seq == self._in_flight:
                index += 1
                continue
            del self._pending[index]
            self._bytes -= held
            path = self._path(seq)
            with contextlib.suppress(OSError, ValueError):
                times.append(json.loads(path.read_bytes()).get("time"))
            path.unlink(missing_ok=True)
        if times:
            self._count_dropped(times)

    def _count_dropped(self, times: list[Any]) -> None:
        path = self.directory / DROPPED
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = {"count": 0}
        known = sorted(str(t) for t in times if t)
        record["count"] = int(record.get("count") or 0) + len(times)
        if known:
            record["first_time"] = min([known[0], *([record["first_time"]] if record.get("first_time") else [])])
            record["last_time"] = max([known[-1], *([record["last_time"]] if record.get("last_time") else [])])
        write_private(path, json.dumps(record, sort_keys=True))
        log.error(
            "audit spool full (%d bytes): dropped the %d oldest event(s) not yet delivered to the auth "
            "service (%d so far); the auth service is told with an audit.dropped event once it is reachable",
            self.max_bytes, len(times), record["count"],
        )

    # ------------------------------------------------------------------ reading (the sender)

    @property
    def size(self) -> int:
        """Bytes of disk the spooled events take (as counted against the bound)."""
        return self._bytes

    def pending(self) -> int:
        """How many events wait for the auth service."""
        return len(self._pending)

    def oldest(self) -> tuple[int, dict[str, Any]] | None:
        """The oldest spooled event and its sequence number (None when empty); it is marked in
        flight (never dropped to make room) until :meth:`acknowledge` or :meth:`reject`."""
        while True:
            with self._lock:
                if not self._pending:
                    self._in_flight = None
                    return None
                seq = self._pending[0][0]
                self._in_flight = seq
                path = self._path(seq)
                try:
                    event = json.loads(path.read_bytes())
                    if not isinstance(event, dict):
                        raise ValueError("not a JSON object")
                    return seq, event
                except (OSError, ValueError) as exc:
                    reason = f"unreadable spooled audit event: {exc}"
            self.reject(seq, reason)

    def acknowledge(self, seq: int) -> None:
        """The auth service has event ``seq``: forget it."""
        with self._lock:
            self._forget(seq)
            self._path(seq).unlink(missing_ok=True)

    def reject(self, seq: int, reason: str) -> None:
        """Move event ``seq`` to ``rejected/`` with the reason (kept, not sent again)."""
        with self._lock:
            self._forget(seq)
            path = self._path(seq)
            target = self.directory / REJECTED_DIR
            target.mkdir(exist_ok=True, mode=0o700)
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, target / path.name)
                (target / f"{path.name}.reason").write_text(reason + "\n", encoding="utf-8")
        log.error("audit event %s moved to %s: %s", path.name, target, reason)

    def _forget(self, seq: int) -> None:
        if self._in_flight == seq:
            self._in_flight = None
        for index, (held_seq, size) in enumerate(self._pending):
            if held_seq == seq:
                del self._pending[index]
                self._bytes -= size
                return

    def take_dropped(self) -> dict[str, Any] | None:
        """The ``audit.dropped`` event to send now, if events were dropped: sealed (given its ID
        and time, kept in ``dropped-sending.json``) so that a resend is the same event; drops
        after this count towards the next one."""
        sending = self.directory / DROPPED_SENDING
        with self._lock:
            if not sending.exists():
                counted = self.directory / DROPPED
                try:
                    record = json.loads(counted.read_text(encoding="utf-8"))
                except FileNotFoundError:
                    return None
                except (OSError, ValueError):
                    record = {"count": 0}
                event = {
                    "event": "audit.dropped", "id": new_event_id(), "time": datetime.now(UTC).isoformat(),
                    "count": int(record.get("count") or 0),
                    "first_time": record.get("first_time"), "last_time": record.get("last_time"),
                    "reason": f"the node's audit spool was full ({self.max_bytes} bytes) while the auth "
                              "service was unreachable",
                }
                write_private(sending, json.dumps(event, sort_keys=True))
                counted.unlink(missing_ok=True)
                fsync_dir(self.directory)
            try:
                pending: dict[str, Any] = json.loads(sending.read_text(encoding="utf-8"))
                return pending
            except (OSError, ValueError):
                sending.unlink(missing_ok=True)
                return None

    def acknowledge_dropped(self) -> None:
        """The auth service has the sealed ``audit.dropped`` event."""
        with self._lock:
            (self.directory / DROPPED_SENDING).unlink(missing_ok=True)


class AuditSender:
    """Sends the spool's events to the auth service in the background, in order, retrying with
    backoff (see :class:`~teleport_runtime.backoff.Backoff`; ``min_backoff`` and ``max_backoff``
    in seconds).

    ``common`` fields (the node's name and cluster) are added to the ``audit.dropped`` events
    the sender makes; spooled events carry their own.
    """

    #: Refusals that sending again cannot fix: the event goes to ``rejected/``.
    PERMANENT = (BadParameter, AlreadyExists, EventRefused)

    def __init__(
        self,
        spool: AuditSpool,
        send: Send,
        *,
        common: dict[str, Any] | None = None,
        min_backoff: float = 1.0,
        max_backoff: float = 15.0,
    ) -> None:
        self.backoff = Backoff(min_backoff, max_backoff)
        self.spool = spool
        self._send = send
        self.common = dict(common or {})
        self.failures = 0
        self.sent = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start sending (first what earlier runs of the node left in the spool)."""
        if self._task is not None and not self._task.done():
            return
        self._wake.set()
        self._idle.clear()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="audit-sender")

    def notify(self) -> None:
        """Something was spooled: send soon (after the backoff, while retrying)."""
        self._idle.clear()
        self._wake.set()

    async def stop(self) -> None:
        """Stop; the spool keeps what is not delivered yet (an event in flight is sent again,
        harmlessly, by the next start)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def wait_idle(self) -> None:
        """Until the spool is empty and nothing was notified since."""
        await self._idle.wait()

    async def drain(self) -> int:
        """Send everything spooled, in order; return how many events the auth service took.
        Raises the first failure worth retrying."""
        done = 0
        while True:
            # Drops are of events older than any still spooled: tell of them first.
            while (dropped := await asyncio.to_thread(self.spool.take_dropped)) is not None:
                await self._send({**self.common, **dropped})
                await asyncio.to_thread(self.spool.acknowledge_dropped)
                done += 1
            item = await asyncio.to_thread(self.spool.oldest)
            if item is None:
                return done
            seq, event = item
            try:
                await self._send(event)
            except self.PERMANENT as exc:
                reason = f"refused by the auth service: {getattr(exc, 'message', exc)}"
                await asyncio.to_thread(self.spool.reject, seq, reason)
                continue
            await asyncio.to_thread(self.spool.acknowledge, seq)
            self.sent += 1
            done += 1

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.drain()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                delay = self.backoff.delay(self.failures)
                message = exc.message if isinstance(exc, TeleportError) else repr(exc)
                log.warning("%d audit event(s) not delivered yet (%s); attempt %d, retrying in %.1fs",
                            self.spool.pending(), message, self.failures, delay)
                await asyncio.sleep(delay)
                continue
            if self.failures:
                log.info("audit events delivered again after %d failed attempt(s)", self.failures)
            self.failures = 0
            if not self._wake.is_set():
                self._idle.set()
            await self._wake.wait()
