"""What ``tsh`` (and tctl) call on the auth API for recordings and sessions in progress, in
their JSON form (the records are open documents: the session fields of each recording)."""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

from teleport_runtime.errors import BadParameter
from teleport_runtime.recording.asciicast import check_session_id

if TYPE_CHECKING:
    from teleport_runtime.api.client import AuthClient


async def list_recordings(client: AuthClient, since: str | None = None) -> list[dict[str, Any]]:
    """Recording metadata records, oldest first (``since``: ISO 8601 time or a duration like 24h)."""
    return [record.to_json() for record in await client.recordings(since)]


async def fetch_recording(client: AuthClient, session_id: str) -> bytes:
    """A recording's asciicast bytes."""
    return await client.recording(check_session_id(session_id))


def recording_data(answer: Any, session_id: str, sender: str) -> bytes:
    """The asciicast bytes of a ``{..., "data_b64": ...}`` answer; BadParameter naming ``sender``
    when it holds none."""
    try:
        return base64.b64decode(str(answer["data_b64"]), validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise BadParameter(f"{sender} sent no recording data for session {session_id}") from None


async def list_active_sessions(client: AuthClient) -> list[dict[str, Any]]:
    """Sessions in progress in the cluster, oldest first."""
    return [session.to_json() for session in await client.active_sessions()]
