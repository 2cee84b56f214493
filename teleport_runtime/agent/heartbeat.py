"""Heartbeats: an agent's periodic report of itself (name, address, labels, rotation phase)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from teleport_runtime.api.client import AuthClient
from teleport_runtime.api.types import HeartbeatAnswer, HeartbeatReport
from teleport_runtime.errors import TeleportError

log = logging.getLogger("teleport.heartbeat")


class Heartbeat:
    """Sends ``report()`` to the auth service every interval the server asks for, and at once
    when :meth:`poke` is called (labels changed). Failures are logged and retried; the agent
    keeps serving with its stored identity while the auth service is away."""

    def __init__(self, client: AuthClient, report: Callable[[], dict[str, Any]]) -> None:
        self.client = client
        self.report = report
        self.interval = 5.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.sent = 0
        self.ok = asyncio.Event()
        #: The last answer: the interval and cluster settings such as ``session_recording``.
        self.answer = HeartbeatAnswer()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="heartbeat")

    def poke(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def beat(self) -> None:
        answer = await self.client.heartbeat(HeartbeatReport.from_json(self.report()))
        self.interval = answer.heartbeat_interval
        self.answer = answer
        self.sent += 1
        self.ok.set()

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self.beat()
                if failures:
                    log.info("heartbeat delivered again after %d failures", failures)
                failures = 0
                delay = self.interval
            except Exception as exc:  # any failure is retried, never fatal
                # Not only TeleportError: an unexpected answer or client error (say, the auth
                # server dying mid-response) must not end the loop, or the node would run on
                # while silently dropping out of presence.
                failures += 1
                delay = min(self.interval, 2.0 ** min(failures, 5))
                reason = exc.message if isinstance(exc, TeleportError) else repr(exc)
                log.warning("heartbeat failed (%s); retrying in %.0fs", reason, delay)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            except TimeoutError:
                pass
