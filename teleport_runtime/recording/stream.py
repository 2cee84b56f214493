"""Mode ``node-sync``: a session's recording streamed to the auth service as it happens.

The node still writes the spool file (see :mod:`.spool`) and uploads the complete recording when
the session ends, exactly as in mode ``node`` (that upload is the one the auth service checks by
size and hash and keeps). What ``node-sync`` adds is :class:`RecordingStream`: every line the
recorder writes is also appended, in order and within a fraction of a second, to the session's
live stream on the auth service (``POST /v1/recordings/{id}/stream?offset=N``, raw body). When an
append cannot be delivered after a few quick attempts, the session cannot be recorded as the
cluster requires, and the stream calls its ``abort`` callback: the node ends the session.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from teleport_runtime.errors import AlreadyExists, ConnectionProblem, TeleportError
from teleport_runtime.recording.asciicast import CONTENT_TYPE, check_session_id

if TYPE_CHECKING:
    from teleport_runtime.api.client import AuthClient

log = logging.getLogger("teleport.recording.stream")

#: Seconds lines are gathered before an append (so a busy terminal is not one call per line).
DEFAULT_BATCH_INTERVAL = 0.1
#: Largest append; the auth API refuses more than 1 MiB.
MAX_APPEND = 512 * 1024
#: Attempts per append before the session is ended, and the pause between them (seconds).
DEFAULT_ATTEMPTS = 3
DEFAULT_RETRY_DELAY = 0.5

Abort = Callable[[str], None]


class RecordingStream:
    """Appends one session's recording lines to its live stream on the auth service.

    Call :meth:`feed` with each line (the recorder's ``on_line``), :meth:`bind` with the
    session's abort callback, and :meth:`close` when the recording ends. Needs a running loop.
    """

    def __init__(
        self,
        client: AuthClient,
        session_id: str,
        *,
        batch_interval: float = DEFAULT_BATCH_INTERVAL,
        attempts: int = DEFAULT_ATTEMPTS,
        retry_delay: float = DEFAULT_RETRY_DELAY,
    ) -> None:
        self.client = client
        self.session_id = check_session_id(session_id)
        self.batch_interval = batch_interval
        self.attempts = max(1, attempts)
        self.retry_delay = retry_delay
        #: Bytes the auth service has acknowledged.
        self.offset = 0
        #: Why streaming stopped, once it failed.
        self.failure: str | None = None
        self._buffer = bytearray()
        self._ready = asyncio.Event()
        self._closed = False
        self._abort: Abort | None = None
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"recording-stream-{session_id}")

    def feed(self, line: bytes) -> None:
        """Queue bytes for the stream (never blocks)."""
        if self.failure is None:
            self._buffer += line
            self._ready.set()

    def bind(self, abort: Abort) -> None:
        """Call ``abort(reason)`` when the stream fails (at once if it already has)."""
        self._abort = abort
        if self.failure is not None:
            asyncio.get_running_loop().call_soon(abort, self.failure)

    def fail(self, reason: str) -> None:
        """Streaming cannot go on: stop, and end the session."""
        if self.failure is not None:
            return
        self.failure = reason
        self._buffer.clear()
        log.error("session %s: %s", self.session_id, reason)
        if self._abort is not None:
            self._abort(reason)

    def close(self) -> None:
        """The recording ended: send what is queued, then stop."""
        self._closed = True
        self._ready.set()

    async def wait_closed(self) -> None:
        """Until everything fed was appended, or streaming failed."""
        await asyncio.gather(self._task, return_exceptions=True)

    async def _append(self, chunk: bytes) -> None:
        last: ConnectionProblem | None = None
        for attempt in range(self.attempts):
            if attempt:
                await asyncio.sleep(self.retry_delay)
            try:
                answer = await self.client.append_stream(self.session_id, self.offset, chunk, CONTENT_TYPE)
            except ConnectionProblem as exc:  # retried; a refusal is final at once
                last = exc
                continue
            self.offset = answer.size
            return
        assert last is not None
        raise last

    async def _run(self) -> None:
        while self.failure is None:
            await self._ready.wait()
            self._ready.clear()
            if not self._closed:
                await asyncio.sleep(self.batch_interval)
            while self._buffer and self.failure is None:
                chunk = bytes(self._buffer[:MAX_APPEND])
                try:
                    await self._append(chunk)
                except AlreadyExists:
                    return  # the complete recording was uploaded first: nothing left to stream
                except TeleportError as exc:
                    self.fail(f"session recording cannot reach the auth service ({exc.message})")
                    return
                del self._buffer[: len(chunk)]
            if self._closed and not self._buffer:
                return
