"""Uploading completed recordings from the node's spool to the auth service.

The :class:`Uploader` runs as one background task on the node. Each pass it

1. completes what a crash left behind (:func:`~teleport_runtime.recording.spool.salvage_part`
   for unlocked, idle ``.part`` files, and at node start for every unlocked one, see
   :meth:`Uploader.recover`; :func:`~teleport_runtime.recording.spool.recover_cast`
   for a ``.cast`` without its manifest);
2. uploads every ready recording (a ``<id>.json`` manifest next to its ``<id>.cast``), oldest
   first, one at a time;
3. after each success deletes the manifest, then the ``.cast``.

While uploads fail it retries with exponential backoff (capped, with jitter); a node restart
resumes with whatever the spool holds. Nothing is uploaded twice in effect: the upload carries
the session ID, size and sha256, and the auth service accepts a repeat with the same hash as
success (so a crash between its answer and our delete is harmless) and refuses a different hash
as a conflict. Refusals that retrying cannot fix (BadParameter, AlreadyExists) move the
recording to ``<spool_dir>/rejected/`` with the reason: kept, not retried, not lost.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from teleport_runtime.backoff import Backoff
from teleport_runtime.durable import fsync_dir
from teleport_runtime.errors import AlreadyExists, BadParameter
from teleport_runtime.recording.asciicast import (
    CAST_SUFFIX,
    CONTENT_TYPE,
    HEADER_MANIFEST,
    HEADER_SHA256,
    HEADER_SIZE,
    MANIFEST_SUFFIX,
    PART_SUFFIX,
    check_session_id,
)
from teleport_runtime.recording.spool import (
    DEFAULT_SALVAGE_GRACE,
    read_manifest,
    recover_cast,
    reject,
    salvage_part,
    spool_paths,
)

if TYPE_CHECKING:
    from teleport_runtime.api.client import AuthClient

log = logging.getLogger("teleport.recording.upload")

#: ``upload(manifest, path)``: send one complete recording; raise to fail (retried unless the
#: error is one of :data:`PERMANENT_ERRORS`).
Upload = Callable[[dict[str, Any], Path], Awaitable[None]]

#: Refusals that retrying cannot fix: the recording goes to ``rejected/``.
PERMANENT_ERRORS: tuple[type[Exception], ...] = (BadParameter, AlreadyExists)



class _Retry(Exception):
    """An upload failed in a way worth retrying."""

    def __init__(self, session_id: str, cause: BaseException) -> None:
        super().__init__(f"{session_id}: {cause}")
        self.session_id = session_id
        self.cause = cause


class Uploader:
    """Uploads the spool's ready recordings in the background, retrying with backoff.

    Args:
        spool_dir: the node's recording spool.
        upload: sends one recording (see :func:`make_upload`).
        min_backoff, max_backoff: retry delays in seconds (see
            :class:`~teleport_runtime.backoff.Backoff`).
        rescan_interval: seconds between two passes when nothing calls :meth:`notify`.
        salvage_grace: see :func:`~teleport_runtime.recording.spool.salvage_part`.
    """

    def __init__(
        self,
        spool_dir: Path,
        upload: Upload,
        *,
        min_backoff: float = 1.0,
        max_backoff: float = 60.0,
        rescan_interval: float = 60.0,
        salvage_grace: float = DEFAULT_SALVAGE_GRACE,
    ) -> None:
        self.backoff = Backoff(min_backoff, max_backoff)
        self.spool_dir = Path(spool_dir)
        self._upload = upload
        self.rescan_interval = rescan_interval
        self.salvage_grace = salvage_grace
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Session IDs uploaded by this instance, in order.
        self.uploaded: list[str] = []
        #: Consecutive failed passes (0 when the last pass succeeded).
        self.failures = 0
        #: The last upload error, for diagnostics.
        self.last_error: str | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the background task; its first pass resumes whatever the spool holds."""
        if self._task is not None and not self._task.done():
            return
        self.spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._idle.clear()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="recording-uploader")

    async def recover(self) -> list[dict[str, Any]]:
        """Complete what a previous run of this node left in the spool, now: the ``.part`` of
        every session a crash or kill cut short (salvaged without waiting for the idle grace,
        marked ``"complete": false``) and every ``.cast`` without its manifest. Call it before
        the node records anything (a live writer's lock is still respected). Returns the
        manifests of the salvaged sessions."""
        self.spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return await asyncio.to_thread(self._complete_leftovers, 0.0)

    def notify(self, _manifest: dict[str, Any] | None = None) -> None:
        """A session ended (its recording is ready): upload soon. Usable as ``on_close``.

        While retrying after failures, the next attempt still waits for its backoff.
        """
        self._idle.clear()
        self._wake.set()

    async def stop(self) -> None:
        """Stop the background task (an upload in flight is abandoned; it is retried, safely,
        by the next start)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def wait_idle(self) -> None:
        """Wait until a pass has found nothing left to upload (and nothing was notified since)."""
        await self._idle.wait()

    def pending(self) -> list[str]:
        """Session IDs of the ready recordings in the spool, oldest first."""
        return [m["session_id"] for m in self._ready()]

    # ------------------------------------------------------------------ one pass

    async def run_once(self) -> int:
        """Salvage, then upload every ready recording; return how many were uploaded.

        Raises the cause of the first failure worth retrying (the rest wait for the next pass).
        """
        try:
            return await self._pass()
        except _Retry as exc:
            raise exc.cause from None

    async def _pass(self) -> int:
        ready = await asyncio.to_thread(self._scan)
        done = 0
        for manifest in ready:
            if await self._upload_one(manifest):
                done += 1
        return done

    def _scan(self) -> list[dict[str, Any]]:
        """Complete crash leftovers, then list the ready recordings (runs in a thread)."""
        self._complete_leftovers(self.salvage_grace)
        return self._ready()

    def _complete_leftovers(self, grace: float) -> list[dict[str, Any]]:
        salvaged = []
        for part in sorted(self.spool_dir.glob(f"*{PART_SUFFIX}")):
            try:
                manifest = salvage_part(part, grace)
            except Exception:
                log.exception("recording spool: could not salvage %s", part.name)
                continue
            if manifest is not None:
                salvaged.append(manifest)
        for cast in sorted(self.spool_dir.glob(f"*{CAST_SUFFIX}")):
            manifest_path = cast.with_name(cast.name[: -len(CAST_SUFFIX)] + MANIFEST_SUFFIX)
            if not manifest_path.exists():
                try:
                    recover_cast(cast)
                except Exception:
                    log.exception("recording spool: could not recover %s", cast.name)
        return salvaged

    def _ready(self) -> list[dict[str, Any]]:
        ready = []
        for path in self.spool_dir.glob(f"*{MANIFEST_SUFFIX}"):
            if path.name.startswith("."):
                continue
            try:
                manifest = read_manifest(path)
            except (BadParameter, OSError) as exc:
                with contextlib.suppress(OSError):
                    reject(path, str(exc))
                continue
            if path.name != f"{manifest['session_id']}{MANIFEST_SUFFIX}":
                with contextlib.suppress(OSError):
                    reject(path, f"manifest names session {manifest['session_id']}, not its file name")
                continue
            _, cast, _ = spool_paths(self.spool_dir, manifest["session_id"])
            if not cast.exists():
                with contextlib.suppress(OSError):
                    reject(path, "manifest without its recording")
                continue
            ready.append(manifest)
        ready.sort(key=lambda m: (str(m.get("ended") or ""), m["session_id"]))
        return ready

    async def _upload_one(self, manifest: dict[str, Any]) -> bool:
        session_id = manifest["session_id"]
        _, cast, manifest_path = spool_paths(self.spool_dir, session_id)
        try:
            await self._upload(manifest, cast)
        except PERMANENT_ERRORS as exc:
            reason = getattr(exc, "message", str(exc))
            log.error("recording %s refused by the auth service, kept in rejected/: %s", session_id, reason)
            await asyncio.to_thread(self._reject_pair, manifest_path, cast, reason)
            return False
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise _Retry(session_id, exc) from exc
        await asyncio.to_thread(self._delete_pair, manifest_path, cast)
        self.uploaded.append(session_id)
        log.info("recording %s uploaded (%d bytes)", session_id, manifest.get("size", 0))
        return True

    @staticmethod
    def _delete_pair(manifest_path: Path, cast: Path) -> None:
        # Manifest first: a crash in between leaves a .cast that recover_cast re-manifests and
        # that re-uploads as an idempotent repeat.
        manifest_path.unlink(missing_ok=True)
        cast.unlink(missing_ok=True)
        fsync_dir(cast.parent)

    @staticmethod
    def _reject_pair(manifest_path: Path, cast: Path, reason: str) -> None:
        for path in (manifest_path, cast):
            if path.exists():
                reject(path, reason)

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._pass()
            except _Retry as exc:
                self.failures += 1
                self.last_error = f"{exc.session_id}: {getattr(exc.cause, 'message', exc.cause)}"
                delay = self.backoff.delay(self.failures)
                log.warning(
                    "recording upload failed (%s); %d attempt(s) so far, retrying in %.1fs",
                    self.last_error, self.failures, delay,
                )
                await asyncio.sleep(delay)
                continue
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("recording upload pass failed")
                self.failures += 1
                await asyncio.sleep(self.backoff.delay(self.failures))
                continue
            if self.failures:
                log.info("recording uploads resumed after %d failed attempt(s)", self.failures)
            self.failures = 0
            self.last_error = None
            if not self._wake.is_set():
                self._idle.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.rescan_interval)


# ---------------------------------------------------------------------- the auth API side


def upload_headers(manifest: dict[str, Any]) -> dict[str, str]:
    """HTTP headers of a raw upload: size, sha256, and the manifest without its ``meta`` (the
    session metadata travels inside the recording's own header line)."""
    brief = {k: v for k, v in manifest.items() if k != "meta"}
    encoded = base64.urlsafe_b64encode(json.dumps(brief, sort_keys=True).encode()).decode().rstrip("=")
    return {
        "Content-Type": CONTENT_TYPE,
        HEADER_SIZE: str(manifest["size"]),
        HEADER_SHA256: str(manifest["sha256"]),
        HEADER_MANIFEST: encoded,
    }


#: Bytes of a spool file read at a time, to check it and to send it.
READ_CHUNK = 1024 * 1024


def _read_checked(path: Path, manifest: dict[str, Any]) -> None:
    """Check a spool file against its manifest (size and sha256), reading it in pieces."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(READ_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    if size != manifest["size"] or digest.hexdigest() != manifest["sha256"]:
        raise BadParameter(
            f"local recording {path.name} changed after it was completed: manifest says "
            f"{manifest['size']} bytes sha256 {manifest['sha256']}, file has {size} bytes "
            f"sha256 {digest.hexdigest()}"
        )


class SpoolFileBody(aiohttp.payload.Payload):
    """A spool file as a request body, read in pieces while it is sent. It is opened anew each
    time it is sent (the auth client sends it again to its next address when one fails)."""

    _autoclose = True  # nothing stays open between sends

    def __init__(self, path: Path) -> None:
        super().__init__(path, content_type=CONTENT_TYPE)
        self._path = path
        self._length = path.stat().st_size

    @property
    def size(self) -> int:
        """The file's size: the request's Content-Length."""
        return self._length

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return f"<recording {self._path.name}, {self._length} bytes>"

    async def write(self, writer: Any) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        left = self._length if content_length is None else min(self._length, content_length)
        fh = await asyncio.to_thread(self._path.open, "rb")
        try:
            while left > 0:
                chunk = await asyncio.to_thread(fh.read, min(READ_CHUNK, left))
                if not chunk:
                    break
                left -= len(chunk)
                await writer.write(chunk)
        finally:
            await asyncio.to_thread(fh.close)


def make_upload(client: AuthClient) -> Upload:
    """An ``upload`` function for :class:`Uploader` over the auth API.

    The body is the asciicast itself (``Content-Type: application/x-asciicast``), streamed from
    the spool file (:class:`SpoolFileBody`), with the size, sha256 and manifest in headers (see
    :func:`upload_headers`). The file is checked against its manifest before it is sent.
    """

    async def upload(manifest: dict[str, Any], path: Path) -> None:
        session_id = check_session_id(manifest["session_id"])
        await asyncio.to_thread(_read_checked, path, manifest)
        body = await asyncio.to_thread(SpoolFileBody, path)
        await client.upload_recording(session_id, body, upload_headers(manifest))

    return upload
