"""What ``tsh`` (and tctl) call on the auth API for recordings and sessions in progress.

Routes (see the module docs of :mod:`teleport_runtime.auth.recordings`):
``GET /v1/recordings[?since=ISO8601|DURATION]``, ``GET /v1/recordings/{id}`` (asciicast bytes, or
JSON with ``?encoding=base64``), ``GET /v1/sessions/active``.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

from teleport_runtime.errors import BadParameter
from teleport_runtime.recording.asciicast import check_session_id
from teleport_runtime.urlpath import api_path

if TYPE_CHECKING:
    from teleport_runtime.agent.client import AuthClient


async def list_recordings(client: AuthClient, since: str | None = None) -> list[dict[str, Any]]:
    """Recording metadata records, oldest first (``since``: ISO 8601 time or a duration like 24h)."""
    path = api_path("/v1/recordings", query={"since": since} if since else None)
    return list(await client.get(path) or [])


async def fetch_recording(client: AuthClient, session_id: str) -> bytes:
    """A recording's asciicast bytes: raw with ``client.call_raw``, else through the base64 JSON
    form of the same route."""
    check_session_id(session_id)
    call_raw = getattr(client, "call_raw", None)
    if call_raw is not None:
        data = await call_raw("GET", api_path("/v1/recordings/{session_id}", session_id=session_id), None, {})
        if isinstance(data, bytes | bytearray):
            return bytes(data)
        raise BadParameter(f"the auth service answered recording {session_id} with JSON, not asciicast")
    answer = await client.get(api_path("/v1/recordings/{id}", id=session_id, query={"encoding": "base64"}))
    return recording_data(answer, session_id, "the auth service")


def recording_data(answer: Any, session_id: str, sender: str) -> bytes:
    """The asciicast bytes of a ``{..., "data_b64": ...}`` answer; BadParameter naming ``sender``
    when it holds none."""
    try:
        return base64.b64decode(str(answer["data_b64"]), validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise BadParameter(f"{sender} sent no recording data for session {session_id}") from None


async def list_active_sessions(client: AuthClient) -> list[dict[str, Any]]:
    """Sessions in progress in the cluster, oldest first."""
    return list(await client.get("/v1/sessions/active") or [])
