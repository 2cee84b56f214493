"""The node's side of "the cluster tracks sessions in progress".

:class:`ActiveSessionReporter` tells the auth service when an interactive session starts and
ends, and renews each live session's record before it expires. It never blocks a session: the
announcements go through a queue to one worker task, in order; failures are logged. A record
lost to an auth outage is re-announced by the next renewal (the auth answers NotFound), and the
record of a session whose end could not be announced expires by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from teleport_runtime.api.types import ActiveSession
from teleport_runtime.errors import NotFound, TeleportError
from teleport_runtime.recording.asciicast import check_session_id

if TYPE_CHECKING:
    from teleport_runtime.api.client import AuthClient

log = logging.getLogger("teleport.sessions")

#: Seconds between renewals; a third of the auth's default TTL (2 min).
DEFAULT_KEEP_ALIVE_INTERVAL = 40.0


class ActiveSessionReporter:
    """Announces this node's interactive sessions to the auth service.

    Routes: ``POST /v1/sessions/active`` (body: the session), ``POST
    /v1/sessions/active/{id}/keepalive``, ``DELETE /v1/sessions/active/{id}``.
    """

    def __init__(self, client: AuthClient, interval: float = DEFAULT_KEEP_ALIVE_INTERVAL) -> None:
        self.client = client
        self.interval = interval
        self.live: dict[str, dict[str, Any]] = {}
        self._queue: asyncio.Queue[tuple[str, str, dict[str, Any] | None]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._unannounced: set[str] = set()

    def start(self) -> None:
        """Start the worker and the renewal loop."""
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._work(), name="active-sessions"),
            loop.create_task(self._renew(), name="active-sessions-keepalive"),
        ]

    async def stop(self) -> None:
        """Stop both tasks (announcements still queued are dropped; their records expire)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def started(self, session: dict[str, Any]) -> None:
        """A session started: ``session`` has ``session_id`` (or ``id``) and its metadata."""
        session_id = check_session_id(session.get("session_id") or session.get("id"))
        record = {k: v for k, v in session.items() if k != "session_id"}
        record["id"] = session_id
        self.live[session_id] = record
        self._queue.put_nowait(("start", session_id, record))

    def ended(self, session_id: str) -> None:
        """A session ended."""
        if self.live.pop(session_id, None) is not None:
            self._queue.put_nowait(("end", session_id, None))

    def gone(self, session_id: str) -> None:
        """A session of an earlier run of this node (killed with it): drop its record now
        rather than when it expires."""
        self.live.pop(session_id, None)
        self._queue.put_nowait(("end", check_session_id(session_id), None))

    async def _send(self, op: str, session_id: str, record: dict[str, Any] | None) -> None:
        if op == "start":
            await self.client.start_session(ActiveSession(dict(record or {})))
        elif op == "end":
            with contextlib.suppress(NotFound):
                await self.client.end_session(session_id)
        else:
            try:
                await self.client.keep_alive_session(session_id)
            except NotFound:
                if session_id in self.live:
                    await self.client.start_session(ActiveSession(dict(self.live[session_id])))

    async def _work(self) -> None:
        while True:
            op, session_id, record = await self._queue.get()
            if op == "start" and session_id not in self.live:
                self._unannounced.add(session_id)  # ended before it was announced
                continue
            if op == "end" and session_id in self._unannounced:
                self._unannounced.discard(session_id)
                continue
            try:
                await self._send(op, session_id, record)
            except TeleportError as exc:
                log.warning("could not report session %s %s to the auth service: %s", session_id, op, exc.message)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            for session_id in list(self.live):
                self._queue.put_nowait(("keepalive", session_id, None))
