"""The asciicast v2 format as this runtime writes and reads it, and the names shared by the node
(spool, uploader) and the auth service (store) for one recording.

An asciicast v2 file is newline-delimited JSON: a header object, then one event array per line,
``[time, code, data]`` with ``time`` in seconds since the start of the session. The codes we
write are ``"o"`` (terminal output), ``"i"`` (keyboard input, only when the recording mode asks
for it) and ``"r"`` (the terminal was resized, data ``"COLSxROWS"``). Players of the asciinema
ecosystem open these files as they are. Our own session metadata rides in the header under the
extension key ``"x-session"`` (players ignore unknown header keys).

Spool file names (``<spool_dir>/`` on the node):

- ``<id>.cast.part``: being written by a live session (locked with ``flock`` by its writer);
- ``<id>.cast``: complete, fsynced, atomically renamed from ``.part`` when the session ended;
- ``<id>.json``: the manifest (size, sha256, metadata); its presence marks the recording ready
  for upload. It is written after the ``.cast`` and deleted before it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from teleport_runtime.errors import BadParameter

#: The header key holding our session metadata.
SESSION_KEY = "x-session"
#: Version of the manifest format (``<id>.json`` on the node, and the upload's metadata).
MANIFEST_VERSION = 1
#: Media type used for an asciicast body on the wire.
CONTENT_TYPE = "application/x-asciicast"
#: HTTP headers of a raw upload (``POST /v1/recordings/{session_id}`` with an asciicast body).
HEADER_SHA256 = "X-Teleport-Recording-Sha256"
HEADER_SIZE = "X-Teleport-Recording-Size"
#: The upload's manifest as base64url (no padding) of its JSON.
HEADER_MANIFEST = "X-Teleport-Recording-Manifest"

PART_SUFFIX = ".cast.part"
CAST_SUFFIX = ".cast"
MANIFEST_SUFFIX = ".json"

_SESSION_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_session_id(session_id: object) -> str:
    """Return ``session_id`` if it is safe as a file name and a URL path segment.

    Session IDs are UUIDs in practice; we accept 1-128 characters of ``[A-Za-z0-9._-]``
    starting with a letter or digit (so no ``..``, no ``/``, no hidden files). Raises
    BadParameter otherwise.
    """
    if not isinstance(session_id, str) or not _SESSION_ID_RE.fullmatch(session_id) or ".." in session_id:
        raise BadParameter(
            f"invalid session ID {session_id!r}: expected 1-128 characters of letters, digits, "
            "'.', '_' or '-', starting with a letter or digit"
        )
    return session_id


class CastEvent(NamedTuple):
    """One asciicast event: seconds since the start, the code (``o``/``i``/``r``/...), the text."""

    time: float
    code: str
    data: str


class Cast(NamedTuple):
    """A parsed asciicast v2 recording."""

    header: dict[str, Any]
    events: list[CastEvent]

    @property
    def session(self) -> dict[str, Any]:
        """Our session metadata from the header (empty for casts recorded elsewhere)."""
        meta = self.header.get(SESSION_KEY)
        return dict(meta) if isinstance(meta, dict) else {}


def header_session(header: dict[str, Any]) -> dict[str, Any]:
    """Our session metadata from a header without its ``id`` (the session ID is kept apart);
    empty for casts recorded elsewhere."""
    meta = header.get(SESSION_KEY)
    return {k: v for k, v in meta.items() if k != "id"} if isinstance(meta, dict) else {}


def encode_line(obj: object) -> bytes:
    """One asciicast line: JSON (UTF-8, not ASCII-escaped; odd values as strings) and a newline."""
    return (json.dumps(obj, ensure_ascii=False, separators=(", ", ": "), default=str) + "\n").encode("utf-8")


def parse_header(line: str | bytes) -> dict[str, Any]:
    """Parse and check an asciicast header line; BadParameter unless it is version 2."""
    try:
        header = json.loads(line)
    except ValueError as exc:
        raise BadParameter(f"not an asciicast recording: the header line is not JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("version") != 2:
        version = header.get("version") if isinstance(header, dict) else None
        raise BadParameter(f"not an asciicast v2 recording (header version {version!r})")
    return header


def parse_event(line: str | bytes, lineno: int) -> CastEvent:
    """Parse one event line; BadParameter naming the line for anything malformed."""
    try:
        raw = json.loads(line)
    except ValueError as exc:
        raise BadParameter(f"asciicast line {lineno} is not JSON ({exc})") from None
    if (
        not isinstance(raw, list)
        or len(raw) < 3
        or not isinstance(raw[0], int | float)
        or isinstance(raw[0], bool)
        or not isinstance(raw[1], str)
        or not isinstance(raw[2], str)
    ):
        raise BadParameter(f"asciicast line {lineno} is not an event [time, code, data]: {raw!r:.80}")
    return CastEvent(float(raw[0]), raw[1], raw[2])


def _lines(source: str | bytes | Path) -> Iterator[bytes]:
    if isinstance(source, Path):
        with source.open("rb") as fh:
            yield from fh
        return
    data = source.encode("utf-8") if isinstance(source, str) else source
    yield from data.splitlines(keepends=True)


def read_cast(source: str | bytes | Path) -> Cast:
    """Parse a whole asciicast v2 recording from a path, bytes or text.

    Raises BadParameter for a missing/unsupported header or a malformed event line (blank
    lines are skipped).
    """
    lines = _lines(source)
    header: dict[str, Any] | None = None
    events: list[CastEvent] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if header is None:
            header = parse_header(line)
        else:
            events.append(parse_event(line, lineno))
    if header is None:
        raise BadParameter("not an asciicast recording: it is empty")
    return Cast(header, events)


def parse_resize(data: str) -> tuple[int, int]:
    """``"COLSxROWS"`` -> ``(cols, rows)``; BadParameter if malformed."""
    cols, sep, rows = data.partition("x")
    if not sep or not cols.isdigit() or not rows.isdigit():
        raise BadParameter(f"bad resize event {data!r}: expected COLSxROWS such as 80x24")
    return int(cols), int(rows)
