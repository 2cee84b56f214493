"""Everything the node needs for session recording, behind one object.

:class:`NodeRecording` gives the node SSH server its ``recorder_factory``, runs the
:class:`~teleport_runtime.recording.uploader.Uploader` over the spool and (optionally) reports
sessions in progress. The recording mode is the cluster's (``auth_service.session_recording``):
pass it as a string or as a callable read at each session start (such as the last value the
auth service sent, see :class:`ModeCache`). In ``node-sync`` each session's recording is also
streamed to the auth service (:mod:`.stream`) and the session ends when that fails.

The proxy records with this same class (``at="proxy"``, :mod:`teleport_runtime.proxy.recording_proxy`)
the sessions it terminates: in ``proxy``/``proxy-sync`` every session (as ``node``/``node-sync``
record at the node), in the node modes those to OpenSSH nodes (they cannot record). A node
records nothing in the proxy modes: the proxy terminates every session then.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from teleport_runtime.errors import BadParameter
from teleport_runtime.recording.active import ActiveSessionReporter
from teleport_runtime.recording.spool import SessionRecorder, session_meta
from teleport_runtime.recording.stream import RecordingStream
from teleport_runtime.recording.uploader import Upload, Uploader, make_upload

if TYPE_CHECKING:
    from teleport_runtime.api.client import AuthClient

log = logging.getLogger("teleport.recording")

#: The cluster's recording modes.
MODES = ("node", "node-sync", "proxy", "proxy-sync", "off")
#: How each mode records, by where the session is terminated.
_EFFECTIVE = {"node": {"proxy": "off", "proxy-sync": "off"},
              "proxy": {"proxy": "node", "proxy-sync": "node-sync"}}


def spool_dir(data_dir: Path) -> Path:
    """The node's recording spool: ``<data_dir>/log/upload/sessions`` (the reference's place)."""
    return Path(data_dir) / "log" / "upload" / "sessions"


class ModeCache:
    """The cluster's recording mode as this node last heard it (from heartbeat answers), kept in
    a file so that a node restarted while the auth service is away still records as told."""

    def __init__(self, path: Path, default: str = "node") -> None:
        self.path = Path(path)
        try:
            stored = self.path.read_text(encoding="utf-8").strip()
        except OSError:
            stored = ""
        self.mode = stored if stored in MODES else default

    def update(self, mode: object) -> str:
        """Take ``mode`` (None or unknown: keep the last one); return the mode in force."""
        if isinstance(mode, str) and mode in MODES and mode != self.mode:
            log.info("session recording mode is now %s", mode)
            self.mode = mode
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                write_text_atomic(self.path, mode + "\n")
            except OSError as exc:
                log.warning("cannot keep the recording mode in %s: %s", self.path, exc)
        elif isinstance(mode, str) and mode not in MODES:
            log.warning("the auth service asks for recording mode %r, unknown here; keeping %s", mode, self.mode)
        return self.mode


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small text file atomically (temp file and rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class _Tracked:
    """A session's recorder (none in mode ``off``), its live stream (mode ``node-sync``), and
    the report of its end. In ``node-sync`` it is ``required``: the node ends the session when
    it cannot be recorded (see :meth:`bind_session`)."""

    def __init__(
        self,
        inner: SessionRecorder | None,
        on_end: Callable[[], None],
        stream: RecordingStream | None = None,
    ) -> None:
        self.inner = inner
        self.stream = stream
        self.required = stream is not None
        self._on_end = on_end

    def bind_session(self, abort: Callable[[str], None]) -> None:
        """The node session's "end me" callback, called when a required recording fails."""
        if self.stream is not None:
            self.stream.bind(abort)

    def output(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.output(data)

    def input(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.input(data)

    def resize(self, cols: int, rows: int) -> None:
        if self.inner is not None:
            self.inner.resize(cols, rows)

    def enhanced(self, event: dict[str, Any]) -> None:
        if self.inner is not None:
            self.inner.enhanced(event)

    def close(self, exit_status: int | None) -> None:
        try:
            if self.inner is not None:
                self.inner.close(exit_status)
        finally:
            if self.stream is not None:
                self.stream.close()
            self._on_end()


class NodeRecording:
    """Session recording on a node.

    Args:
        spool: the spool directory (see :func:`spool_dir`).
        client: the node's auth client (uploads, active sessions); or pass ``upload``.
        upload: the upload function (default ``make_upload(client)``).
        mode: ``node`` | ``node-sync`` | ``proxy`` | ``proxy-sync`` | ``off``, or a callable returning one.
        record_input: record keystrokes too.
        track_sessions: report sessions in progress (needs ``client``).
        at: ``node`` or ``proxy``: who terminates the sessions recorded here.
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
        at: str = "node",
        **uploader_options: Any,
    ) -> None:
        if upload is None:
            if client is None:
                raise BadParameter("NodeRecording needs an auth client or an upload function")
            upload = make_upload(client)
        self.spool = Path(spool)
        self._mode = mode
        self._effective = _EFFECTIVE[at]
        self.record_input = record_input
        self.uploader = Uploader(self.spool, upload, **uploader_options)
        self.client = client
        self.reporter = ActiveSessionReporter(client) if (track_sessions and client is not None) else None

    @property
    def mode(self) -> str:
        """The recording mode in force now (an unknown value counts as ``node``: record)."""
        mode = self._mode() if callable(self._mode) else self._mode
        if mode not in MODES:
            log.warning("unknown session recording mode %r; recording at the node", mode)
            return "node"
        return self._effective.get(mode, mode)

    async def start(self) -> list[dict[str, Any]]:
        """Start uploading (resuming what the spool holds) and reporting sessions.

        First completes, at once, the recordings of sessions a previous run was killed in (they
        upload marked ``"complete": false``) and drops their records of sessions in progress.
        Call it before the node accepts sessions. Returns the manifests of those recordings.
        """
        salvaged = await self.uploader.recover()
        self.uploader.start()
        if self.reporter is not None:
            self.reporter.start()
            for manifest in salvaged:
                self.reporter.gone(manifest["session_id"])
        return salvaged

    async def stop(self) -> None:
        """Stop the background tasks; the spool keeps whatever is not uploaded yet."""
        await self.uploader.stop()
        if self.reporter is not None:
            await self.reporter.stop()

    def recorder_factory(self, info: dict[str, Any]) -> _Tracked:
        """The node SSH server's ``recorder_factory``: records the session per the mode."""
        session_id = str(info.get("session_id"))
        mode = self.mode
        stream = None
        if mode == "node-sync":
            if self.client is None:
                raise BadParameter("session_recording node-sync needs the auth client")
            stream = RecordingStream(self.client, session_id)
        recorder = None
        if mode != "off":
            try:
                recorder = SessionRecorder(
                    self.spool, session_id, info, self.record_input, on_close=self.uploader.notify,
                    on_line=stream.feed if stream is not None else None,
                )
            except Exception as exc:
                if stream is None:
                    raise
                stream.fail(f"cannot record the session at the node ({exc})")
        if self.reporter is not None:
            self.reporter.started({**session_meta(info), "session_id": session_id, "recording": mode})
        reporter = self.reporter
        return _Tracked(
            recorder, (lambda: reporter.ended(session_id)) if reporter else (lambda: None), stream
        )
