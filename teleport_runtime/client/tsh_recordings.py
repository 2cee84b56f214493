"""What ``tsh recordings ls``, ``tsh play`` and ``tsh sessions ls`` ask the proxy, and how they
print it. The proxy passes each request to the auth service with the user's certificate; the
auth service answers only users whose roles allow it (the preset ``auditor`` role does)."""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote

from teleport_runtime.client.output import table
from teleport_runtime.durations import format_duration
from teleport_runtime.errors import BadParameter
from teleport_runtime.urlpath import api_path

if TYPE_CHECKING:
    from teleport_runtime.client.tsh_web import ProxyWebClient

# teleport_runtime.recording is imported where it is used: the package brings the node's uploader
# (aiohttp), which tsh imports for every command otherwise.

#: ``tsh play --format``.
PLAY_FORMATS = ("pty", "json", "asciicast")


async def list_recordings(client: ProxyWebClient, since: str | None = None) -> list[dict[str, Any]]:
    """Recordings the cluster keeps, oldest first (``since``: ISO 8601 or a duration like 24h)."""
    path = "/webapi/recordings" + (f"?since={quote(since)}" if since else "")
    return list(await client.get(path) or [])


async def fetch_recording(client: ProxyWebClient, session_id: str) -> bytes:
    """A recording's asciicast v2 bytes."""
    from teleport_runtime.recording import check_session_id
    from teleport_runtime.recording.client import recording_data

    check_session_id(session_id)
    return recording_data(await client.get(api_path("/webapi/recordings/{session_id}", session_id=session_id)),
                          session_id, "the proxy")


async def list_sessions(client: ProxyWebClient) -> list[dict[str, Any]]:
    """Sessions in progress in the cluster."""
    return list(await client.get("/webapi/sessions/active") or [])


def _duration(seconds: object) -> str:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return ""
    return format_duration(timedelta(seconds=round(seconds)))


def recordings_table(records: list[dict[str, Any]]) -> str:
    rows = [
        [r.get("session_id", ""), r.get("user", ""), r.get("login", ""), r.get("node", ""),
         str(r.get("started") or "")[:19].replace("T", " "), _duration(r.get("duration")),
         "incomplete" if r.get("complete") is False or r.get("interrupted") else ""]
        for r in records
    ]
    return table(["Session ID", "User", "Login", "Node", "Started (UTC)", "Duration", "Note"], rows)


def sessions_table(sessions: list[dict[str, Any]]) -> str:
    rows = [
        [s.get("id", ""), s.get("user", ""), s.get("login", ""), s.get("node") or s.get("nodename", ""),
         str(s.get("started") or "")[:19].replace("T", " "), s.get("remote_addr", ""), s.get("recording", "")]
        for s in sessions
    ]
    return table(["Session ID", "User", "Login", "Node", "Started (UTC)", "From", "Recording"], rows)


async def play_recording(data: bytes, out: BinaryIO, fmt: str, speed: str, skip_idle: bool) -> None:
    """Write a recording to ``out``: replayed with its timing (``pty``), as one JSON document
    (``json``) or as the asciicast file itself (``asciicast``, for asciinema's players)."""
    from teleport_runtime.recording import parse_speed, play_async, read_cast, to_json

    if fmt not in PLAY_FORMATS:
        raise BadParameter(f"unknown format {fmt!r}: expected one of {', '.join(PLAY_FORMATS)}")
    factor = parse_speed(speed)
    cast = read_cast(data)  # a damaged recording fails here, naming the line
    if fmt == "asciicast":
        out.write(data)
    elif fmt == "json":
        out.write((json.dumps(to_json(cast), indent=2) + "\n").encode())
    else:
        # the session's enhanced recording events (commands, files, connections) on stderr
        await play_async(cast, out, factor, skip_idle, events_out=sys.stderr.buffer)
    out.flush()
