"""Recording at the node: each interactive session written to a local spool file as it happens.

:class:`SessionRecorder` implements the node SSH server's ``SessionRecorder`` protocol
(``output``, ``input``, ``resize``, ``close``). It writes asciicast v2 (see
:mod:`teleport_runtime.recording.asciicast`) to ``<spool_dir>/<session_id>.cast.part`` through a
buffered file that is flushed to the OS at most ``flush_interval`` seconds after each event (no
fsync per event: the event loop is never held for a disk sync while a session runs). When the
session ends, :meth:`SessionRecorder.close` fsyncs the file, renames it atomically to
``<session_id>.cast`` and writes the ``<session_id>.json`` manifest (size, sha256, metadata)
that marks it ready for the uploader; that final step runs in a worker thread when an event loop
is running.

Crash safety: a live ``.part`` is held under an exclusive ``flock`` by its writer. After a node
crash, :func:`salvage_part` turns an unlocked, idle ``.part`` into a recording ready to upload
(cut at the last whole event line, manifest marked ``interrupted`` and ``"complete": false``),
and :func:`recover_cast` writes the manifest for a ``.cast`` whose manifest was never written,
so nothing recorded is lost.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from teleport_runtime.durable import fsync_dir, write_private
from teleport_runtime.errors import AlreadyExists, BadParameter
from teleport_runtime.recording.asciicast import (
    CAST_SUFFIX,
    MANIFEST_SUFFIX,
    MANIFEST_VERSION,
    PART_SUFFIX,
    SESSION_KEY,
    check_session_id,
    encode_line,
    header_session,
    parse_event,
    parse_header,
)

log = logging.getLogger("teleport.recording")

#: Seconds after an event before buffered output is handed to the OS.
DEFAULT_FLUSH_INTERVAL = 0.5
#: Size of the write buffer of a spool file.
DEFAULT_BUFFER_SIZE = 64 * 1024
#: A ``.part`` untouched for this many seconds and not locked is from a dead writer.
DEFAULT_SALVAGE_GRACE = 10.0
#: Where recordings that cannot be used or uploaded are moved (kept, never deleted).
REJECTED_DIR = "rejected"

ManifestCallback = Callable[[dict[str, Any]], None]

# What the node's session info calls some of our metadata fields.
_ALIASES = {"nodename": "node", "host_uuid": "server_id", "cluster_name": "cluster"}


def session_meta(info: dict[str, Any]) -> dict[str, Any]:
    """Normalise the node SSH server's session info into recording metadata.

    Accepts the server's names (``nodename``, ``host_uuid``, ``cluster_name``) as well as ours
    (``node``, ``server_id``, ``cluster``); other keys (``user``, ``login``, ``cols``, ``rows``,
    ``term``, ``started``, ``remote_addr``, ``kind``, ``command``, ``shell``...) pass through.
    ``session_id`` is dropped: it is kept separately.
    """
    meta: dict[str, Any] = {}
    for key, value in info.items():
        if key == "session_id":
            continue
        name = _ALIASES.get(key, key)
        if name in meta and key in _ALIASES:
            continue  # our own name wins over the alias
        meta[name] = value
    return meta


def _utc_iso(when: datetime | None = None) -> str:
    return (when or datetime.now(UTC)).astimezone(UTC).isoformat()


def read_manifest(path: Path) -> dict[str, Any]:
    """Read a spool manifest; BadParameter if it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise BadParameter(f"{path}: not a recording manifest ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("session_id"), str):
        raise BadParameter(f"{path}: not a recording manifest (no session_id)")
    check_session_id(data["session_id"])
    for key, kind in (("size", int), ("sha256", str)):
        if not isinstance(data.get(key), kind):
            raise BadParameter(f"{path}: recording manifest has no valid {key!r}")
    return data


def spool_paths(spool_dir: Path, session_id: str) -> tuple[Path, Path, Path]:
    """``(part, cast, manifest)`` paths of a session in the spool."""
    return (
        spool_dir / f"{session_id}{PART_SUFFIX}",
        spool_dir / f"{session_id}{CAST_SUFFIX}",
        spool_dir / f"{session_id}{MANIFEST_SUFFIX}",
    )


def _manifest(
    session_id: str,
    *,
    size: int,
    sha256: str,
    meta: dict[str, Any],
    ended: str,
    duration: float,
    exit_status: int | None,
    interrupted: bool = False,
    recovered: bool = False,
) -> dict[str, Any]:
    return {
        "version": MANIFEST_VERSION,
        "session_id": session_id,
        "file": f"{session_id}{CAST_SUFFIX}",
        "format": "asciicast-v2",
        "size": size,
        "sha256": sha256,
        "meta": meta,
        "started": meta.get("started"),
        "ended": ended,
        "duration": duration,
        "exit_status": exit_status,
        "interrupted": interrupted,
        "complete": not interrupted,
        "recovered": recovered,
    }


class SessionRecorder:
    """Writes one interactive session as asciicast v2 to the spool, as it happens.

    Args:
        spool_dir: the node's spool directory (created, mode 0700, if missing).
        session_id: the session's ID (a UUID); the file names derive from it.
        meta: session metadata (``user``, ``login``, ``node``, ``server_id``, ``cluster``,
            ``cols``, ``rows``, ``term``, ``started``...; the node server's names are accepted,
            see :func:`session_meta`). Stored in the header under ``"x-session"``.
        record_input: record what the user types (``"i"`` events); otherwise input is dropped.
        on_close: called on the event loop (or inline without one) with the manifest once the
            recording is complete and ready for upload (wire it to ``Uploader.notify``).
        on_line: called with every line written (header included), for a streaming consumer.
        flush_interval: seconds after an event before the buffer is handed to the OS.
        clock: monotonic seconds, for event times (inject one in tests).

    Raises AlreadyExists if the spool already holds a recording with this session ID, and
    OSError if the spool file cannot be created.
    """

    def __init__(
        self,
        spool_dir: Path,
        session_id: str,
        meta: dict[str, Any],
        record_input: bool = False,
        *,
        on_close: ManifestCallback | None = None,
        on_line: Callable[[bytes], None] | None = None,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session_id = check_session_id(session_id)
        self.spool_dir = Path(spool_dir)
        self.record_input = record_input
        # JSON-safe copy: odd values (datetimes...) become strings once, here.
        self.meta = json.loads(json.dumps({**session_meta(meta), "record_input": record_input}, default=str))
        self.meta.setdefault("started", _utc_iso())
        self._on_close = on_close
        self._on_line = on_line
        self._flush_interval = flush_interval
        self._clock = clock
        self.part_path, self.cast_path, self.manifest_path = spool_paths(self.spool_dir, session_id)
        self.spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.cast_path.exists() or self.manifest_path.exists():
            raise AlreadyExists(f"the spool already holds a recording of session {session_id}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.part_path, flags, 0o600)
        except FileExistsError:
            raise AlreadyExists(f"session {session_id} is already being recorded") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._file = os.fdopen(fd, "wb", buffering=buffer_size)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self.part_path)
            raise
        self._hash = hashlib.sha256()
        self._size = 0
        self._last_time = 0.0
        self._out_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._in_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._flush_handle: asyncio.TimerHandle | None = None
        self._closed = False
        self._finalized: asyncio.Future[dict[str, Any]] | None = None
        self.manifest: dict[str, Any] | None = None
        self._t0 = clock()
        self._write(self._header())

    # ------------------------------------------------------------------ the recorder protocol

    def output(self, data: bytes) -> None:
        """Record terminal output (decoded as UTF-8 across chunk boundaries)."""
        if self._closed or not data:
            return
        text = self._out_decoder.decode(data)
        if text:
            self._event("o", text)

    def input(self, data: bytes) -> None:
        """Record keyboard input, if this recording records input."""
        if self._closed or not data or not self.record_input:
            return
        text = self._in_decoder.decode(data)
        if text:
            self._event("i", text)

    def resize(self, cols: int, rows: int) -> None:
        """Record a terminal resize as ``"COLSxROWS"``."""
        if self._closed:
            return
        if not isinstance(cols, int) or not isinstance(rows, int) or cols <= 0 or rows <= 0:
            raise BadParameter(f"bad terminal size {cols!r}x{rows!r}")
        self._event("r", f"{cols}x{rows}")

    def enhanced(self, event: dict[str, Any]) -> None:
        """Record a BPF enhanced recording event (``session.command`` ...) as a marker whose
        label is the event's JSON, beside the terminal's output."""
        if self._closed:
            return
        self._event("m", json.dumps(event, separators=(",", ":"), default=str))

    def close(self, exit_status: int | None) -> None:
        """End the recording: write what is pending, then fsync, rename to ``.cast`` and write
        the manifest (in a worker thread when an event loop runs). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        tail = self._out_decoder.decode(b"", final=True)
        if tail:
            self._event("o", tail)
        tail = self._in_decoder.decode(b"", final=True)
        if tail and self.record_input:
            self._event("i", tail)
        self.manifest = _manifest(
            self.session_id,
            size=self._size,
            sha256=self._hash.hexdigest(),
            meta=dict(self.meta),
            ended=_utc_iso(),
            duration=self._last_time,
            exit_status=exit_status,
        )
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._finalize()
            if self._on_close is not None:
                self._on_close(self.manifest)
            return
        self._finalized = loop.create_future()
        task = loop.run_in_executor(None, self._finalize)
        task.add_done_callback(self._finalize_done)

    # ------------------------------------------------------------------ extras

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    @property
    def size(self) -> int:
        """Bytes written so far (header included)."""
        return self._size

    async def wait_closed(self) -> dict[str, Any]:
        """Wait until the recording is complete on disk; return its manifest.

        Raises whatever the final fsync/rename/manifest write raised.
        """
        if not self._closed:
            raise BadParameter(f"recording of session {self.session_id} is not closed")
        if self._finalized is None:
            assert self.manifest is not None
            return self.manifest
        return await asyncio.shield(self._finalized)

    # ------------------------------------------------------------------ internals

    def _header(self) -> dict[str, Any]:
        meta = self.meta
        env = {"TERM": str(meta.get("term") or "xterm")}
        if meta.get("shell"):
            env["SHELL"] = str(meta["shell"])
        user, login, node = meta.get("user") or "", meta.get("login") or "", meta.get("node") or ""
        return {
            "version": 2,
            "width": _positive(meta.get("cols"), 80),
            "height": _positive(meta.get("rows"), 24),
            "timestamp": int(time.time()),
            "env": env,
            "title": f"{user} as {login}@{node}" if node else f"session {self.session_id}",
            SESSION_KEY: {"id": self.session_id, **meta},
        }

    def _event(self, code: str, text: str) -> None:
        now = round(max(self._clock() - self._t0, self._last_time), 6)
        self._last_time = now
        self._write([now, code, text])

    def _write(self, obj: object) -> None:
        line = encode_line(obj)
        self._file.write(line)
        self._hash.update(line)
        self._size += len(line)
        if self._on_line is not None:
            self._on_line(line)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flush_handle is not None or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._file.flush()
            return
        self._flush_handle = loop.call_later(self._flush_interval, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        if self._closed:
            return
        try:
            self._file.flush()
        except OSError:
            log.exception("session %s: cannot write the recording", self.session_id)

    def _finalize(self) -> None:
        """fsync, rename ``.part`` -> ``.cast`` while still holding the lock, write the manifest."""
        assert self.manifest is not None
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            os.replace(self.part_path, self.cast_path)
            fsync_dir(self.spool_dir)
            write_private(self.manifest_path, json.dumps(self.manifest, sort_keys=True))
        finally:
            self._file.close()  # releases the flock

    def _finalize_done(self, task: asyncio.Future[None]) -> None:
        assert self._finalized is not None
        exc = task.exception()
        if exc is not None:
            log.error(
                "session %s: could not complete the recording (%s); it stays in %s and is "
                "recovered by the uploader", self.session_id, exc, self.spool_dir,
            )
            self._finalized.set_exception(exc)
            self._finalized.exception()  # retrieved: wait_closed() re-raises it
            return
        assert self.manifest is not None
        self._finalized.set_result(self.manifest)
        if self._on_close is not None:
            try:
                self._on_close(self.manifest)
            except Exception:
                log.exception("session %s: on_close callback failed", self.session_id)


def _positive(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def recorder_factory(
    spool_dir: Path,
    *,
    record_input: bool = False,
    on_close: ManifestCallback | None = None,
) -> Callable[[dict[str, Any]], SessionRecorder]:
    """A ``recorder_factory`` for the node SSH server: ``factory(info)`` starts a
    :class:`SessionRecorder` for ``info["session_id"]`` with the rest of ``info`` as metadata."""

    def factory(info: dict[str, Any]) -> SessionRecorder:
        return SessionRecorder(
            spool_dir, str(info.get("session_id")), info, record_input, on_close=on_close
        )

    return factory


# ---------------------------------------------------------------------- crash recovery


def _sha256_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def reject(path: Path, reason: str) -> Path:
    """Move a spool file that cannot be used into ``<spool_dir>/rejected/`` (kept, not lost)."""
    target_dir = path.parent / REJECTED_DIR
    target_dir.mkdir(exist_ok=True, mode=0o700)
    target = target_dir / path.name
    os.replace(path, target)
    with contextlib.suppress(OSError):
        (target_dir / f"{path.name}.reason").write_text(reason + "\n", encoding="utf-8")
    log.error("recording spool: moved %s to %s: %s", path.name, target_dir, reason)
    return target


def _spooled_session_id(path: Path, suffix: str) -> str | None:
    """The session ID a spool file is named after; None (the file moved to ``rejected/``) when
    its name holds no valid one."""
    try:
        return check_session_id(path.name[: -len(suffix)])
    except BadParameter as exc:
        reject(path, exc.message)
        return None


def _valid_prefix(path: Path) -> tuple[int, dict[str, Any] | None, float]:
    """Length of the longest prefix of whole, valid asciicast lines; the header; last time."""
    length = 0
    header: dict[str, Any] | None = None
    last = 0.0
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.endswith(b"\n"):
                break
            try:
                if header is None:
                    header = parse_header(line)
                else:
                    last = max(last, parse_event(line, lineno).time)
            except BadParameter:
                break
            length += len(line)
    return length, header, last


def salvage_part(part: Path, grace: float = DEFAULT_SALVAGE_GRACE) -> dict[str, Any] | None:
    """Complete the ``.part`` of a session whose writer died (node crash or kill).

    Does nothing (returns None) while a writer holds the file's lock or it changed less than
    ``grace`` seconds ago (pass 0 when no writer of this process can exist yet, as at node start).
    Otherwise cuts the file after its last whole event line, renames it to ``.cast`` and writes a
    manifest marked ``interrupted`` and ``"complete": false`` (exit status unknown); returns the
    manifest. A file without a valid header is moved to ``rejected/``.
    """
    session_id = _spooled_session_id(part, PART_SUFFIX)
    if session_id is None:
        return None
    _, cast, manifest_path = spool_paths(part.parent, session_id)
    try:
        fd = os.open(part, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None  # finished meanwhile
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # a live session is writing it
        st = os.fstat(fd)
        if grace > 0 and time.time() - st.st_mtime < grace:
            return None
        if not part.exists():
            return None  # renamed by its writer just before we locked it
        length, header, last = _valid_prefix(part)
        if header is None:
            reject(part, "interrupted recording without a valid asciicast header")
            return None
        if length < st.st_size:
            log.warning(
                "recording %s: dropping %d bytes of a torn write at the end", session_id,
                st.st_size - length,
            )
            os.ftruncate(fd, length)
        os.fsync(fd)
        size, sha = _sha256_file(part)
        manifest = _manifest(
            session_id,
            size=size,
            sha256=sha,
            meta=header_session(header),
            ended=_utc_iso(datetime.fromtimestamp(st.st_mtime, UTC)),
            duration=last,
            exit_status=None,
            interrupted=True,
        )
        os.replace(part, cast)
        fsync_dir(part.parent)
        write_private(manifest_path, json.dumps(manifest, sort_keys=True))
        log.warning("recording %s: recovered an interrupted session recording", session_id)
        return manifest
    finally:
        os.close(fd)


def recover_cast(cast: Path) -> dict[str, Any] | None:
    """Write the missing manifest of a complete ``.cast`` (a crash between its rename and its
    manifest, or between an upload's two deletes); return it. An unreadable cast is moved to
    ``rejected/`` (returns None)."""
    session_id = _spooled_session_id(cast, CAST_SUFFIX)
    if session_id is None:
        return None
    length, header, last = _valid_prefix(cast)
    if header is None:
        reject(cast, "recording without a valid asciicast header")
        return None
    size, sha = _sha256_file(cast)
    if length != size:
        log.warning("recording %s: the file has malformed lines after byte %d", session_id, length)
    manifest = _manifest(
        session_id,
        size=size,
        sha256=sha,
        meta=header_session(header),
        ended=_utc_iso(datetime.fromtimestamp(cast.stat().st_mtime, UTC)),
        duration=last,
        exit_status=None,
        recovered=True,
    )
    write_private(cast.with_name(f"{session_id}{MANIFEST_SUFFIX}"), json.dumps(manifest, sort_keys=True))
    log.warning("recording %s: rebuilt its missing manifest", session_id)
    return manifest
