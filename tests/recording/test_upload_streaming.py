"""A node's recording upload is streamed to disk by the auth service: a body over its stated size
is refused while it arrives and leaves no file, and a large upload does not grow the auth
process by its size (a resource bound measured on a real ``teleport start`` auth process)."""

from __future__ import annotations

import hashlib
import json
import uuid as uuidlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from teleport_runtime.agent.join import join_cluster
from teleport_runtime.api.client import AuthClient
from teleport_runtime.auth.recordings import MAX_RECORDING_SIZE
from teleport_runtime.config import HostPort
from teleport_runtime.errors import BadParameter, ConnectionProblem
from teleport_runtime.recording.asciicast import CONTENT_TYPE, HEADER_SHA256, HEADER_SIZE
from teleport_runtime.recording.uploader import make_upload
from tests.proxy.harness import LocalCluster

MiB = 1024 * 1024
SID = "5b0c4d6e-0000-4000-8000-00000000f00d"


def _leftovers(cluster: LocalCluster) -> list[str]:
    root = cluster.auth.recordings.root
    return sorted(p.name for p in root.iterdir() if p.is_file()) if root.exists() else []


async def test_a_body_over_its_stated_size_is_refused_while_streaming(in_process):
    identity, _ = await in_process.join("node", "node1")
    node = in_process.client(identity)
    sent = 0
    total = 64 * MiB
    chunk = b"x" * (64 * 1024)

    async def body() -> AsyncIterator[bytes]:  # chunked: no Content-Length to refuse up front
        nonlocal sent
        while sent < total:
            sent += len(chunk)
            yield chunk

    headers = {"Content-Type": CONTENT_TYPE, HEADER_SIZE: str(MiB), HEADER_SHA256: "0" * 64}
    with pytest.raises((BadParameter, ConnectionProblem)) as refused:
        await node.request("POST", f"/v1/recordings/{SID}", data=body(), headers=headers)  # type: ignore[arg-type]
    if isinstance(refused.value, BadParameter):
        assert "size mismatch: expected 1048576 bytes, received more" in refused.value.message
    assert sent < total, "the auth service read the whole body before refusing it"
    assert _leftovers(in_process) == []


async def test_a_stated_size_over_the_limit_is_refused_before_reading(in_process):
    identity, _ = await in_process.join("node", "node1")
    node = in_process.client(identity)
    headers = {"Content-Type": CONTENT_TYPE, HEADER_SIZE: str(MAX_RECORDING_SIZE + 1), HEADER_SHA256: "0" * 64}
    with pytest.raises(BadParameter, match="out of range"):
        await node.request("POST", f"/v1/recordings/{SID}", data=b"{}", headers=headers)
    assert _leftovers(in_process) == []


# ---------------------------------------------------------------------------- memory


def _write_recording(path: Path, size: int) -> dict:
    """An asciicast of about ``size`` bytes, written in pieces; its manifest."""
    header = {"version": 2, "width": 80, "height": 24,
              "x-session": {"id": SID, "user": "alice", "login": "root", "node": "node1"}}
    line = json.dumps([0.5, "o", "y" * (256 * 1024)]).encode() + b"\n"
    digest = hashlib.sha256()
    written = 0
    with path.open("wb") as fh:
        for piece in [json.dumps(header).encode() + b"\n"] + [line] * (size // len(line)):
            fh.write(piece)
            digest.update(piece)
            written += len(piece)
    return {"session_id": SID, "size": written, "sha256": digest.hexdigest(), "ended": "2024-05-01T10:00:00+00:00",
            "exit_status": 0}


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _reset_peak(pid: int) -> int:
    """Reset the process's peak RSS to its current RSS (Linux clear_refs 5); the baseline."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return _status(pid, "VmHWM")
    return _status(pid, "VmHWM")


async def test_a_large_upload_does_not_grow_the_auth_process_by_its_size(cluster, tmp_path):
    token = cluster.add_token("node")["token"]
    auth = HostPort("127.0.0.1", cluster.port)
    identity = await join_cluster(
        auth_servers=[auth], token=token, ca_pins=[cluster.pin()], role="node", nodename="node1",
        uuid=str(uuidlib.uuid4()), addresses=[], warn=lambda _msg: None,
    )
    manifest = _write_recording(tmp_path / f"{SID}.cast", 64 * MiB)
    assert cluster.auth is not None
    pid = cluster.auth.pid
    async with AuthClient.for_identity([auth], identity) as client:
        upload = make_upload(client)
        baseline = _reset_peak(pid)
        await upload(manifest, tmp_path / f"{SID}.cast")
        growth = _status(pid, "VmHWM") - baseline
    stored = cluster.data_dir / "recordings" / f"{SID}.cast"
    assert stored.stat().st_size == manifest["size"]
    assert growth < 32 * MiB, f"the auth process grew by {growth // MiB} MiB for a {manifest['size'] // MiB} MiB upload"


def test_a_session_id_with_a_trailing_newline_is_refused():
    from teleport_runtime.recording.asciicast import check_session_id

    assert check_session_id(SID) == SID
    with pytest.raises(BadParameter):
        check_session_id(SID + "\n")
