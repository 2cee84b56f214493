"""Session recording: asciicast v2 spool at the node, upload to the auth service, playback.

- :mod:`.asciicast`: the file format and the names shared by node and auth;
- :mod:`.spool`: :class:`SessionRecorder` (writes a session as it happens) and crash recovery;
- :mod:`.uploader`: :class:`Uploader` (spool -> auth, retried with backoff) and
  :func:`make_upload`;
- :mod:`.player`: reading and playing recordings back (``tsh play``);
- :mod:`.client`: the auth API calls of ``tsh recordings ls`` / ``tsh play``;
- :mod:`.active`: the node reporting its sessions in progress;
- :mod:`.stream`: mode ``node-sync``, each session streamed to the auth service as it happens;
- :mod:`.node`: :class:`NodeRecording`, all of the above wired for a node, and the remembered
  cluster mode (:class:`~teleport_runtime.recording.node.ModeCache`).

The auth side (storage, idempotent uploads, active sessions) is
:mod:`teleport_runtime.auth.recordings`.
"""

from __future__ import annotations

from teleport_runtime.recording.asciicast import Cast, CastEvent, check_session_id, read_cast
from teleport_runtime.recording.node import MODES, NodeRecording, spool_dir
from teleport_runtime.recording.player import events, parse_speed, play, play_async, to_json
from teleport_runtime.recording.spool import SessionRecorder, recorder_factory, session_meta
from teleport_runtime.recording.uploader import Uploader, make_upload

__all__ = [
    "MODES",
    "Cast",
    "CastEvent",
    "NodeRecording",
    "SessionRecorder",
    "Uploader",
    "check_session_id",
    "events",
    "make_upload",
    "parse_speed",
    "play",
    "play_async",
    "read_cast",
    "recorder_factory",
    "session_meta",
    "spool_dir",
    "to_json",
]
