"""Session recordings on the auth service, and the sessions in progress.

- :class:`RecordingStore` is the storage interface (an object store can implement it later);
  :class:`FileRecordingStore` keeps recordings under ``<data_dir>/recordings/`` as
  ``<session_id>.cast`` (asciicast v2) with ``<session_id>.json`` (metadata), written atomically.
  Uploads are checked (size and sha256) before they are accepted, and idempotent: the same
  session ID with the same hash again is a success that changes nothing; with a different hash
  it is a conflict (AlreadyExists, HTTP 409).
- :class:`ActiveSessions` tracks interactive sessions in progress in the backend under
  ``/sessions/active/<id>`` with an expiry the node renews.
- :func:`read_upload` and :func:`download` are the request/response halves of the
  ``/v1/recordings/...`` routes, so the API handlers stay thin.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from teleport_runtime.backend import Backend, Item, prefix_end
from teleport_runtime.durable import fsync_dir, write_private
from teleport_runtime.durations import parse_duration
from teleport_runtime.errors import AccessDenied, AlreadyExists, BadParameter, NotFound
from teleport_runtime.recording.asciicast import (
    CONTENT_TYPE,
    HEADER_MANIFEST,
    HEADER_SHA256,
    HEADER_SIZE,
    check_session_id,
    header_session,
    parse_header,
)

#: Largest recording accepted in one upload (bytes).
MAX_RECORDING_SIZE = 1024 * 1024 * 1024
#: Largest metadata object kept with a recording (bytes of JSON).
MAX_META_SIZE = 64 * 1024
#: Bytes of an upload held in memory at a time: it is written to disk in pieces of this size.
RECEIVE_CHUNK = 1024 * 1024

#: Live streams of ``node-sync`` sessions, under the store's root.
STREAMS_DIR = "streams"

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_STORE_FIELDS = ("session_id", "size", "sha256", "stored_at")


def recordings_dir(data_dir: Path) -> Path:
    """Where the auth service keeps recordings by default: ``<data_dir>/recordings``."""
    return Path(data_dir) / "recordings"


def _check_sha256(value: object) -> str:
    if not isinstance(value, str) or not _SHA256_RE.fullmatch(value.lower()):
        raise BadParameter(f"bad sha256 {value!r}: expected 64 hex digits")
    return value.lower()


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def parse_since(value: str | None, now: datetime | None = None) -> datetime | None:
    """``?since=`` of ``GET /v1/recordings``: empty -> None, an ISO 8601 time, or a duration
    back from now (``24h``). BadParameter otherwise."""
    if not value:
        return None
    when = _parse_time(value)
    if when is not None:
        return when
    try:
        return (now or datetime.now(UTC)) - parse_duration(value)
    except BadParameter:
        raise BadParameter(f"bad since {value!r}: expected an ISO 8601 time or a duration such as 24h") from None


def verify_recording(session_id: str, data: bytes, sha256: str, size: int | None = None) -> None:
    """BadParameter naming expected vs received unless ``data`` has ``size`` bytes and ``sha256``."""
    if size is not None and len(data) != size:
        raise BadParameter(
            f"recording {session_id}: size mismatch: expected {size} bytes, received {len(data)}"
        )
    received = hashlib.sha256(data).hexdigest()
    if received != sha256:
        raise BadParameter(
            f"recording {session_id}: sha256 mismatch: expected {sha256}, received {received} "
            f"(over {len(data)} bytes)"
        )


#: Temp files uploads are being received into (by every store of this process): a put's clean-up
#: of the temp files a killed put left behind must not take them.
_RECEIVING: set[Path] = set()


@dataclass(frozen=True)
class StagedRecording:
    """An upload received into a temp file (``.<id>.cast.<random>.tmp``, fsynced, mode 0600),
    never read as a recording: :meth:`RecordingStore.put` renames it into place or drops it.
    ``size`` and ``sha256`` are what was received; ``head`` is its first line (the asciicast
    header), or its first bytes when that line is longer than :data:`MAX_META_SIZE`."""

    path: Path
    size: int
    sha256: str
    head: bytes

    def discard(self) -> None:
        """Remove the temp file (nothing when it was already renamed or removed)."""
        _forget(self.path)


async def receive_recording(
    content: Any, session_id: str, size: int, directory: Path | None = None
) -> StagedRecording:
    """Read an upload's body (an aiohttp ``StreamReader``) into a temp file in ``directory``
    (the system's temp directory when None), hashing it on the way and holding at most
    :data:`RECEIVE_CHUNK` bytes in memory. More than ``size`` bytes is BadParameter as soon as
    they arrive; on any failure the temp file is removed."""
    check_session_id(session_id)
    target = Path(directory) if directory is not None else Path(tempfile.gettempdir())
    await asyncio.to_thread(target.mkdir, parents=True, exist_ok=True, mode=0o700)
    fd, name = tempfile.mkstemp(dir=target, prefix=f".{session_id}.cast.", suffix=".tmp")
    path = Path(name)
    _RECEIVING.add(path)
    digest = hashlib.sha256()
    head = b""
    received = 0
    try:
        with os.fdopen(fd, "wb") as fh:

            def write(piece: bytes) -> None:
                fh.write(piece)
                digest.update(piece)

            pending: list[bytes] = []
            buffered = 0
            while chunk := await content.read(RECEIVE_CHUNK):
                received += len(chunk)
                if received > size:
                    raise BadParameter(
                        f"recording {session_id}: size mismatch: expected {size} bytes, received more"
                    )
                if len(head) <= MAX_META_SIZE and b"\n" not in head:
                    head += chunk[: MAX_META_SIZE + 1]
                pending.append(chunk)
                buffered += len(chunk)
                if buffered >= RECEIVE_CHUNK:
                    await asyncio.to_thread(write, b"".join(pending))
                    pending, buffered = [], 0
            await asyncio.to_thread(write, b"".join(pending))
            await asyncio.to_thread(fh.flush)
            await asyncio.to_thread(os.fsync, fh.fileno())
    except BaseException:
        _forget(path)
        raise
    first, _, _ = head.partition(b"\n")
    return StagedRecording(path, received, digest.hexdigest(), first[: MAX_META_SIZE + 1])


def _forget(path: Path) -> None:
    """Remove a temp file an upload was being received into."""
    path.unlink(missing_ok=True)
    _RECEIVING.discard(path)


def _check_staged(session_id: str, staged: StagedRecording, sha256: str, size: int | None) -> None:
    """As :func:`verify_recording`, for what :func:`receive_recording` received."""
    if size is not None and staged.size != size:
        raise BadParameter(
            f"recording {session_id}: size mismatch: expected {size} bytes, received {staged.size}"
        )
    if staged.sha256 != sha256:
        raise BadParameter(
            f"recording {session_id}: sha256 mismatch: expected {sha256}, received {staged.sha256} "
            f"(over {staged.size} bytes)"
        )


def _install(staged: Path, path: Path) -> None:
    """Rename a received (fsynced) temp file over ``path`` durably, mode 0600; one from another
    directory (maybe another file system) is copied into a temp file next to ``path`` first."""
    source = staged
    try:
        if staged.parent != path.parent:
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            source = Path(name)
            with open(staged, "rb") as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst, RECEIVE_CHUNK)
                dst.flush()
                os.fsync(dst.fileno())
        os.chmod(source, 0o600)
        os.replace(source, path)
    except BaseException:
        if source != staged:
            source.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


class RecordingStore(abc.ABC):
    """Where the auth service keeps session recordings (asciicast v2 bytes plus metadata).

    Implementations must make :meth:`put` idempotent by session ID and hash, verify size and
    hash before accepting, and never expose a partly written recording.
    """

    @abc.abstractmethod
    async def put(
        self, session_id: str, data: bytes | StagedRecording, sha256: str, meta: dict[str, Any]
    ) -> dict[str, Any]:
        """Store a recording; return its metadata record.

        ``data`` is the bytes, or an upload :func:`receive_recording` received into a temp file
        (which this takes over: renamed into place or removed). ``meta`` is kept with it;
        ``meta["size"]``, if present, is checked too. BadParameter if the size or hash does not
        match the data; AlreadyExists if the session already has a recording with a different
        hash. The same hash again returns the stored record (with ``"duplicate": True``) and
        changes nothing.
        """

    def staging_dir(self) -> Path | None:
        """Where uploads are received before :meth:`put` (None: the system's temp directory)."""
        return None

    @abc.abstractmethod
    async def get(self, session_id: str) -> bytes:
        """The recording's bytes; NotFound if there is none."""

    async def local_path(self, session_id: str) -> Path | None:
        """The recording's file, for answers sent from disk rather than memory; None when the
        store keeps none; NotFound if there is no recording."""
        await self.stat(session_id)
        return None

    @abc.abstractmethod
    async def stat(self, session_id: str) -> dict[str, Any]:
        """The recording's metadata record; NotFound if there is none."""

    @abc.abstractmethod
    async def list(self, since: datetime | None = None) -> list[dict[str, Any]]:
        """Metadata records of recordings whose session started at or after ``since`` (all when
        None), oldest first."""

    @abc.abstractmethod
    async def append_stream(self, session_id: str, offset: int, data: bytes, owner: str) -> int:
        """Append ``data`` at ``offset`` to the live stream of a session (mode ``node-sync``);
        return the stream's size. The first append (offset 0) makes ``owner`` (the node's host
        UUID) the stream's owner; only the owner may append. A repeat of bytes already held is
        accepted (a retried append); a gap or different bytes is BadParameter naming the size
        held. The stream is dropped once the complete recording is :meth:`put`."""

    @abc.abstractmethod
    async def stream_size(self, session_id: str) -> int | None:
        """Bytes held of a session's live stream; None when there is no stream."""


class _KeyLock:
    """A per-session-ID lock with a count of its users, dropped when nobody uses it."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class FileRecordingStore(RecordingStore):
    """Recordings as files under ``root`` (``<data_dir>/recordings/`` by default).

    Each recording is ``<id>.cast`` plus ``<id>.json``; both are written to a temp file, fsynced
    and renamed, the data first, and only after the size and hash were checked: a recording
    exists once its metadata file does, and no reader ever sees a truncated one. File work runs
    in worker threads; puts of the same ID are serialised.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._locks: dict[str, _KeyLock] = {}

    @contextlib.asynccontextmanager
    async def _locked(self, session_id: str) -> AsyncIterator[None]:
        """Hold the lock of ``session_id`` (dropped once nobody uses it)."""
        entry = self._locks.setdefault(session_id, _KeyLock())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[session_id]

    def _paths(self, session_id: str) -> tuple[Path, Path]:
        check_session_id(session_id)
        return self.root / f"{session_id}.cast", self.root / f"{session_id}.json"

    def staging_dir(self) -> Path:
        return self.root

    async def put(
        self, session_id: str, data: bytes | StagedRecording, sha256: str, meta: dict[str, Any]
    ) -> dict[str, Any]:
        try:
            return await self._put_checked(session_id, data, sha256, meta)
        finally:
            if isinstance(data, StagedRecording):
                data.discard()  # refused, a duplicate, or already renamed into place

    async def _put_checked(
        self, session_id: str, data: bytes | StagedRecording, sha256: str, meta: dict[str, Any]
    ) -> dict[str, Any]:
        check_session_id(session_id)
        sha256 = _check_sha256(sha256)
        if not isinstance(data, bytes | StagedRecording):
            raise BadParameter(f"recording {session_id}: data must be bytes")
        length = data.size if isinstance(data, StagedRecording) else len(data)
        if length > MAX_RECORDING_SIZE:
            raise BadParameter(
                f"recording {session_id} is {length} bytes; the limit is {MAX_RECORDING_SIZE}"
            )
        size = meta.get("size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool)):
            raise BadParameter(f"recording {session_id}: size must be an integer, got {size!r}")
        try:
            encoded_meta = json.dumps(meta, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise BadParameter(f"recording {session_id}: metadata is not JSON ({exc})") from None
        if len(encoded_meta) > MAX_META_SIZE:
            raise BadParameter(f"recording {session_id}: metadata over {MAX_META_SIZE} bytes")
        if isinstance(data, StagedRecording):
            _check_staged(session_id, data, sha256, size)
        else:
            await asyncio.to_thread(verify_recording, session_id, data, sha256, size)
        async with self._locked(session_id):
            return await asyncio.to_thread(self._put, session_id, data, length, sha256, meta)

    def _put(
        self, session_id: str, data: bytes | StagedRecording, length: int, sha256: str, meta: dict[str, Any]
    ) -> dict[str, Any]:
        cast_path, meta_path = self._paths(session_id)
        if meta_path.exists():
            stored = json.loads(meta_path.read_text(encoding="utf-8"))
            if stored.get("sha256") == sha256 and stored.get("size") == length:
                return {**stored, "duplicate": True}
            raise AlreadyExists(
                f"session {session_id} already has a recording ({stored.get('size')} bytes, sha256 "
                f"{stored.get('sha256')}); this upload ({length} bytes, sha256 {sha256}) differs"
            )
        # A .cast without metadata is a put that never completed (never acknowledged): replace.
        # Temp files of a put killed mid-write are never read (their names start with "."):
        # the retry of that put, which the node makes, removes them (not those of uploads
        # still being received).
        for stale in self.root.glob(f".{session_id}.*.tmp"):
            if stale not in _RECEIVING:
                stale.unlink(missing_ok=True)
        record = {
            **{k: v for k, v in meta.items() if k not in _STORE_FIELDS and k != "duplicate"},
            "session_id": session_id,
            "size": length,
            "sha256": sha256,
            "stored_at": datetime.now(UTC).isoformat(),
        }
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        if isinstance(data, StagedRecording):
            _install(data.path, cast_path)
        else:
            write_private(cast_path, data)
        write_private(meta_path, json.dumps(record, sort_keys=True))
        for path in self._stream_paths(session_id):
            path.unlink(missing_ok=True)  # the complete recording replaces the live stream
        return {**record, "duplicate": False}

    # ------------------------------------------------------------------ live streams (node-sync)

    def _stream_paths(self, session_id: str) -> tuple[Path, Path]:
        check_session_id(session_id)
        directory = self.root / STREAMS_DIR
        return directory / f"{session_id}.cast.part", directory / f"{session_id}.owner"

    async def append_stream(self, session_id: str, offset: int, data: bytes, owner: str) -> int:
        check_session_id(session_id)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise BadParameter(f"recording stream {session_id}: bad offset {offset!r}")
        if offset + len(data) > MAX_RECORDING_SIZE:
            raise BadParameter(f"recording stream {session_id} would exceed {MAX_RECORDING_SIZE} bytes")
        async with self._locked(session_id):
            return await asyncio.to_thread(self._append, session_id, offset, data, owner)

    def _append(self, session_id: str, offset: int, data: bytes, owner: str) -> int:
        part, owner_path = self._stream_paths(session_id)
        if (self.root / f"{session_id}.json").exists():
            raise AlreadyExists(f"session {session_id} is already recorded completely; no more stream data")
        part.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        held = part.stat().st_size if part.exists() else None
        if held is None:
            if offset != 0:
                raise BadParameter(
                    f"recording stream {session_id}: no stream yet, so the first append must be at "
                    f"offset 0, not {offset}"
                )
            owner_path.write_text(owner, encoding="utf-8")
            held = 0
        elif owner_path.read_text(encoding="utf-8") != owner:
            raise AccessDenied(f"the recording stream of session {session_id} belongs to another server")
        with part.open("ab" if held else "wb") as fh:
            if offset > held:
                raise BadParameter(
                    f"recording stream {session_id}: append at offset {offset} would leave a gap; "
                    f"the auth service holds {held} bytes"
                )
            if offset < held:  # a retried append: the overlap must be the same bytes
                overlap = min(held - offset, len(data))
                with part.open("rb") as existing:
                    existing.seek(offset)
                    if existing.read(overlap) != data[:overlap]:
                        raise BadParameter(
                            f"recording stream {session_id}: bytes at offset {offset} differ from "
                            f"those held ({held} bytes)"
                        )
                data = data[overlap:]
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
            return held + len(data)

    async def stream_size(self, session_id: str) -> int | None:
        part, _ = self._stream_paths(session_id)

        def size() -> int | None:
            try:
                return part.stat().st_size
            except FileNotFoundError:
                return None

        return await asyncio.to_thread(size)

    async def get(self, session_id: str) -> bytes:
        cast_path, meta_path = self._paths(session_id)

        def read() -> bytes:
            if not meta_path.exists():
                raise NotFound(f"no recording of session {session_id}")
            return cast_path.read_bytes()

        return await asyncio.to_thread(read)

    async def local_path(self, session_id: str) -> Path:
        cast_path, meta_path = self._paths(session_id)
        if not await asyncio.to_thread(meta_path.exists):
            raise NotFound(f"no recording of session {session_id}")
        return cast_path

    async def stat(self, session_id: str) -> dict[str, Any]:
        _, meta_path = self._paths(session_id)

        def read() -> dict[str, Any]:
            try:
                meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
                return meta
            except FileNotFoundError:
                raise NotFound(f"no recording of session {session_id}") from None

        return await asyncio.to_thread(read)

    async def list(self, since: datetime | None = None) -> list[dict[str, Any]]:
        def scan() -> list[dict[str, Any]]:
            records: list[dict[str, Any]] = []
            if not self.root.is_dir():
                return records
            for path in self.root.glob("*.json"):
                if path.name.startswith("."):
                    continue
                with contextlib.suppress(OSError, ValueError):
                    records.append(json.loads(path.read_text(encoding="utf-8")))
            return records

        records = await asyncio.to_thread(scan)
        if since is not None:
            floor = since if since.tzinfo else since.replace(tzinfo=UTC)
            records = [r for r in records if (_record_time(r) or floor) >= floor]
        records.sort(key=lambda r: (_record_time(r) or datetime.min.replace(tzinfo=UTC), r["session_id"]))
        return records


def _record_time(record: dict[str, Any]) -> datetime | None:
    return _parse_time(record.get("started")) or _parse_time(record.get("stored_at"))


# ---------------------------------------------------------------------- the API's halves

#: Manifest fields the auth service keeps from an upload (the rest comes from the cast header).
_MANIFEST_FIELDS = (
    "started", "ended", "duration", "exit_status", "interrupted", "complete", "recovered", "format",
)


@dataclass(frozen=True)
class RecordingUpload:
    """A parsed upload: the data (bytes, or the received temp file), the claimed size and hash,
    and the metadata to keep."""

    session_id: str
    data: bytes | StagedRecording
    sha256: str
    size: int
    meta: dict[str, Any]

    def discard(self) -> None:
        """Drop what was received, if :meth:`RecordingStore.put` did not take it."""
        if isinstance(self.data, StagedRecording):
            self.data.discard()


def recording_meta(data: bytes, manifest: dict[str, Any], uploaded_by: str = "") -> dict[str, Any]:
    """The metadata kept with a recording: the session fields from the cast's own header
    (``"x-session"``: user, login, node, server_id, cluster, term, cols, rows...), the end fields
    of the node's manifest (``complete`` is false for a session cut short by a node crash or
    kill), and ``uploaded_by`` (the uploading node's host UUID, from its cert).

    BadParameter if the data does not start with an asciicast v2 header.
    """
    first, _, _ = data.partition(b"\n")
    header = parse_header(first)
    meta = header_session(header)
    meta.setdefault("cols", header.get("width"))
    meta.setdefault("rows", header.get("height"))
    for key in _MANIFEST_FIELDS:
        if key in manifest:
            meta[key] = manifest[key]
    meta.setdefault("format", "asciicast-v2")
    # ``complete`` false: the node was killed during the session (salvaged from its spool).
    meta["complete"] = meta.get("complete") is not False and not meta.get("interrupted")
    if uploaded_by:
        meta["uploaded_by"] = uploaded_by
    return meta


def _decode_manifest_header(value: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        manifest = json.loads(raw)
    except (ValueError, binascii.Error):
        raise BadParameter(f"header {HEADER_MANIFEST} is not base64url JSON") from None
    if not isinstance(manifest, dict):
        raise BadParameter(f"header {HEADER_MANIFEST} must hold a JSON object")
    return manifest


async def read_upload(
    request: web.Request, uploaded_by: str = "", store: RecordingStore | None = None
) -> RecordingUpload:
    """Parse ``POST /v1/recordings/{session_id}``.

    Two forms: a raw asciicast body (``Content-Type: application/x-asciicast`` or
    ``application/octet-stream``) with the ``X-Teleport-Recording-Size``/``-Sha256``/
    ``-Manifest`` headers, streamed into a temp file in ``store``'s :meth:`staging_dir
    <RecordingStore.staging_dir>` (not subject to the API's JSON size limit, never whole in
    memory, refused as soon as it exceeds its stated size, itself at most
    :data:`MAX_RECORDING_SIZE`); or a JSON body ``{"manifest": {...}, "data_b64": "..."}``.
    The size and hash are only read here; :meth:`RecordingStore.put` verifies them. A caller
    that does not :meth:`~RecordingStore.put` the upload must :meth:`~RecordingUpload.discard` it.
    """
    session_id = check_session_id(request.match_info.get("session_id", ""))
    data: bytes | StagedRecording
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except ValueError:
            raise BadParameter("request body is not JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("manifest"), dict):
            raise BadParameter("a JSON recording upload is {\"manifest\": {...}, \"data_b64\": \"...\"}")
        manifest = body["manifest"]
        try:
            data = base64.b64decode(str(body.get("data_b64") or ""), validate=True)
        except (ValueError, binascii.Error):
            raise BadParameter("data_b64 is not base64") from None
        sha256, size = manifest.get("sha256"), manifest.get("size")
        _check_manifest(session_id, manifest, size)
        head = data
    else:
        manifest = _decode_manifest_header(request.headers.get(HEADER_MANIFEST, "")) if (
            request.headers.get(HEADER_MANIFEST)
        ) else {}
        sha256 = _check_sha256(request.headers.get(HEADER_SHA256))
        try:
            size = int(request.headers.get(HEADER_SIZE, ""))
        except ValueError:
            raise BadParameter(f"a raw recording upload needs the {HEADER_SIZE} header (bytes)") from None
        if size < 0 or size > MAX_RECORDING_SIZE:
            raise BadParameter(f"recording size {size} is out of range (limit {MAX_RECORDING_SIZE})")
        _check_manifest(session_id, manifest, size)
        if request.content_length is not None and request.content_length > size:
            raise BadParameter(
                f"recording {session_id}: size mismatch: expected {size} bytes, the body has "
                f"{request.content_length}"
            )
        staging = store.staging_dir() if store is not None else None
        data = await receive_recording(request.content, session_id, size, staging)
        head = data.head
    try:
        meta = recording_meta(head, manifest, uploaded_by)
        meta["size"] = size
        return RecordingUpload(session_id, data, _check_sha256(sha256), size, meta)
    except BaseException:
        if isinstance(data, StagedRecording):
            data.discard()
        raise


def _check_manifest(session_id: str, manifest: dict[str, Any], size: object) -> None:
    if manifest.get("session_id") not in (None, session_id):
        raise BadParameter(
            f"upload for session {session_id} carries a manifest of session {manifest.get('session_id')}"
        )
    if not isinstance(size, int) or isinstance(size, bool):
        raise BadParameter("a recording upload must state its size in bytes")


async def download(store: RecordingStore, session_id: str, encoding: str = "") -> web.StreamResponse | dict[str, Any]:
    """``GET /v1/recordings/{session_id}``: the asciicast bytes, or with ``?encoding=base64``
    a JSON object ``{**metadata, "data_b64"}`` for clients that only speak JSON."""
    check_session_id(session_id)
    if encoding == "base64":
        data = await store.get(session_id)
        return {**await store.stat(session_id), "data_b64": base64.b64encode(data).decode("ascii")}
    if encoding:
        raise BadParameter(f"unknown encoding {encoding!r}: leave it out or use base64")
    headers = {"Content-Disposition": f'attachment; filename="{session_id}.cast"'}
    path = await store.local_path(session_id)
    if path is not None:  # sent from disk in pieces, not read whole into memory
        return web.FileResponse(path, headers={**headers, "Content-Type": CONTENT_TYPE})
    return web.Response(body=await store.get(session_id), content_type=CONTENT_TYPE, headers=headers)


# ---------------------------------------------------------------------- sessions in progress

ACTIVE_PREFIX = "/sessions/active/"
#: How long an active-session record lives without a keep-alive.
DEFAULT_ACTIVE_TTL = timedelta(minutes=2)


def keep_alive_interval(ttl: timedelta = DEFAULT_ACTIVE_TTL) -> float:
    """How often a node renews its active sessions: a third of the TTL (at least 1 s)."""
    return max(1.0, ttl.total_seconds() / 3)


class ActiveSessions:
    """Interactive sessions in progress, in the backend under ``/sessions/active/<id>``.

    A record expires ``ttl`` after its start or last :meth:`keep_alive`: a node that dies stops
    renewing and its sessions drop out. ``server_id`` arguments, when given (the caller's host
    UUID from its certificate), must match the record's owner.
    """

    def __init__(self, backend: Backend, ttl: timedelta = DEFAULT_ACTIVE_TTL) -> None:
        if ttl <= timedelta(0):
            raise BadParameter("active session TTL must be positive")
        self.backend = backend
        self.ttl = ttl

    @staticmethod
    def _key(session_id: str) -> str:
        return ACTIVE_PREFIX + check_session_id(session_id)

    async def _owned(self, session_id: str, server_id: str | None) -> Item:
        item = await self.backend.get(self._key(session_id))
        if server_id is not None:
            owner = json.loads(item.value).get("server_id")
            if owner and owner != server_id:
                raise AccessDenied(f"session {session_id} belongs to another server")
        return item

    async def start(self, session: dict[str, Any], server_id: str | None = None) -> dict[str, Any]:
        """Record a session in progress (``session["id"]`` or ``["session_id"]``); a repeat by
        the same server replaces it (a node re-announcing after an auth restart)."""
        session_id = check_session_id(session.get("id") or session.get("session_id"))
        with contextlib.suppress(NotFound):
            await self._owned(session_id, server_id)
        record = {k: v for k, v in session.items() if k not in ("session_id", "expires")}
        record["id"] = session_id
        if server_id is not None:
            record["server_id"] = server_id
        record.setdefault("started", self.backend.now().isoformat())
        try:
            value = json.dumps(record, sort_keys=True).encode()
        except (TypeError, ValueError) as exc:
            raise BadParameter(f"session {session_id}: record is not JSON ({exc})") from None
        item = await self.backend.put(
            Item(key=self._key(session_id), value=value, expires=self.backend.now() + self.ttl)
        )
        return _active_view(item)

    async def keep_alive(self, session_id: str, server_id: str | None = None) -> dict[str, Any]:
        """Extend a session's record by the TTL; NotFound if it expired (the node should
        :meth:`start` it again)."""
        await self._owned(session_id, server_id)
        item = await self.backend.keep_alive(self._key(session_id), self.backend.now() + self.ttl)
        return _active_view(item)

    async def end(self, session_id: str, server_id: str | None = None) -> None:
        """Remove a session that ended; a session already gone is fine."""
        try:
            await self._owned(session_id, server_id)
            await self.backend.delete(self._key(session_id))
        except NotFound:
            return

    async def get(self, session_id: str) -> dict[str, Any]:
        """One session in progress; NotFound if none."""
        return _active_view(await self.backend.get(self._key(session_id)))

    async def list(self) -> list[dict[str, Any]]:
        """Sessions in progress, oldest first."""
        items = await self.backend.get_range(ACTIVE_PREFIX, prefix_end(ACTIVE_PREFIX))
        return sorted((_active_view(i) for i in items), key=lambda s: (str(s.get("started")), s["id"]))


def _active_view(item: Item) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(item.value)
    record["expires"] = item.expires.isoformat() if item.expires else None
    return record
