"""Everything the node needs for session recording, behind one object.

:class:`NodeRecording` gives the node SSH server its ``recorder_factory``, runs the
:class:`~teleport_runtime.recording.uploader.Uploader` over the spool and (optionally) reports
sessions in progress. The recording mode is the cluster's (``auth_service.session_recording``):
pass it as a string or as a callable read at each session start (such as the last value the
auth service sent).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from teleport_runtime.errors import BadParameter
from teleport_runtime.recording.active import ActiveSessionReporter
from teleport_runtime.recording.spool import SessionRecorder
from teleport_runtime.recording.uploader import Upload, Uploader, make_upload

if TYPE_CHECKING:
    from teleport_runtime.agent.client import AuthClient

log = logging.getLogger("teleport.recording")

#: The cluster's recording modes.
MODES = ("node", "node-sync", "off")


def spool_dir(data_dir: Path) -> Path:
    """The node's recording spool: ``<data_dir>/log/upload/sessions`` (the reference's place)."""
    return Path(data_dir) / "log" / "upload" / "sessions"


class _Tracked:
    """A recorder (or none, mode ``off``) that also reports the session's end."""

    def __init__(self, inner: SessionRecorder | None, on_end: Callable[[], None]) -> None:
        self.inner = inner
        self._on_end = on_end

    def output(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.output(data)

    def input(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.input(data)

    def resize(self, cols: int, rows: int) -> None:
        if self.inner is not None:
            self.inner.resize(cols, rows)

    def close(self, exit_status: int | None) -> None:
        try:
            if self.inner is not None:
                self.inner.close(exit_status)
        finally:
            self._on_end()


class NodeRecording:
    """Session recording on a node.

    Args:
        spool: the spool directory (see :func:`spool_dir`).
        client: the node's auth client (uploads, active sessions); or pass ``upload``.
        upload: the upload function (default ``make_upload(client)``).
        mode: ``node`` | ``node-sync`` | ``off``, or a callable returning one.
        record_input: record keystrokes too.
        track_sessions: report sessions in progress (needs ``client``).
        uploader_options: passed to :class:`Uploader` (backoff, rescan interval...).
    """

    def __init__(
        self,
        spool: Path,
        client: AuthClient | None = None,
        *,
        upload: Upload | None = None,
        mode: str | Callable[[], str] = "node",
        record_input: bool = False,
        track_sessions: bool = True,
        **uploader_options: Any,
    ) -> None:
        if upload is None:
            if client is None:
                raise BadParameter("NodeRecording needs an auth client or an upload function")
            upload = make_upload(client)
        self.spool = Path(spool)
        self._mode = mode
        self.record_input = record_input
        self.uploader = Uploader(self.spool, upload, **uploader_options)
        self.reporter = ActiveSessionReporter(client) if (track_sessions and client is not None) else None
        self._warned_sync = False

    @property
    def mode(self) -> str:
        """The recording mode in force now (an unknown value counts as ``node``: record)."""
        mode = self._mode() if callable(self._mode) else self._mode
        if mode not in MODES:
            log.warning("unknown session recording mode %r; recording at the node", mode)
            return "node"
        return mode

    async def start(self) -> None:
        """Start uploading (resuming what the spool holds) and reporting sessions."""
        self.uploader.start()
        if self.reporter is not None:
            self.reporter.start()

    async def stop(self) -> None:
        """Stop the background tasks; the spool keeps whatever is not uploaded yet."""
        await self.uploader.stop()
        if self.reporter is not None:
            await self.reporter.stop()

    def recorder_factory(self, info: dict[str, Any]) -> _Tracked:
        """The node SSH server's ``recorder_factory``: records the session per the mode."""
        session_id = str(info.get("session_id"))
        mode = self.mode
        if mode == "node-sync" and not self._warned_sync:
            self._warned_sync = True
            log.warning("session_recording node-sync is not streamed yet; recording at the node")
        recorder = None
        if mode != "off":
            recorder = SessionRecorder(
                self.spool, session_id, info, self.record_input, on_close=self.uploader.notify
            )
        if self.reporter is not None:
            self.reporter.started({**info, "recording": mode})
        reporter = self.reporter
        return _Tracked(recorder, (lambda: reporter.ended(session_id)) if reporter else (lambda: None))
