"""The recording and session routes of the auth API, in process over real mutual TLS: who may
upload, stream, list and read; the proxy's forwarded user certificate; the mode in heartbeat
answers; and that every refusal to a user is audited."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from teleport_runtime.api.client import AuthClient
from teleport_runtime.api.names import HEADER_FORWARDED_USER
from teleport_runtime.ca import CAType, new_cert_authority
from teleport_runtime.errors import AccessDenied, AlreadyExists, BadParameter
from teleport_runtime.identity import Identity
from teleport_runtime.recording.client import fetch_recording, list_active_sessions, list_recordings
from teleport_runtime.recording.uploader import make_upload, upload_headers
from tests.proxy.harness import CLUSTER, LocalCluster

from .conftest import write_session

SID = "7d3e0c1a-0000-4000-8000-00000000abcd"


@pytest.fixture
def cluster(in_process: LocalCluster) -> LocalCluster:
    """The in-process cluster (tests/recording/conftest.py), under the name these tests use."""
    return in_process


async def _user_client(cluster: LocalCluster, name: str, roles: list[str], ca: object = None) -> AuthClient:
    keys = await cluster.user_keys(name, ["root"], roles, ca=ca)
    host_ca = await cluster.auth.get_ca(CAType.HOST)
    return cluster.client(Identity(tls_key=keys.tls_key, tls_cert=keys.tls_cert,
                                   ca_certs=host_ca.trusted_tls_certs()))


async def _node_client(cluster: LocalCluster, name: str = "node1") -> AuthClient:
    identity, _ = await cluster.join("node", name)
    return cluster.client(identity)


async def test_a_node_uploads_once_and_readers_need_the_role(cluster, tmp_path):
    node = await _node_client(cluster)
    manifest = await write_session(tmp_path / "spool", SID, "uploaded\r\n")
    upload = make_upload(node)
    await upload(manifest, tmp_path / "spool" / f"{SID}.cast")
    await upload(manifest, tmp_path / "spool" / f"{SID}.cast")  # a retry: a no-op
    assert len([e for e in await cluster.audit_events("session.upload") if e["session_id"] == SID]) == 1

    auditor = await _user_client(cluster, "alice", ["access", "auditor"])
    assert [r["session_id"] for r in await list_recordings(auditor)] == [SID]
    assert b"uploaded" in await fetch_recording(auditor, SID)
    assert await list_active_sessions(auditor) == []

    plain = await _user_client(cluster, "bob", ["access"])
    with pytest.raises(AccessDenied, match=r"user bob may not list session recordings.*auditor"):
        await list_recordings(plain)
    with pytest.raises(AccessDenied, match="may not read"):
        await fetch_recording(plain, SID)
    denied = await cluster.audit_events("access.denied")
    assert [(e["user"], e["verb"]) for e in denied] == [("bob", "list"), ("bob", "read")]

    with pytest.raises(AccessDenied):  # nodes upload; they do not read
        await list_recordings(node)
    with pytest.raises(AccessDenied):  # users do not upload
        await plain.request("POST", f"/v1/recordings/{SID}", data=b"x",
                            headers={"Content-Type": "application/x-asciicast"})


async def test_an_upload_that_does_not_match_its_hash_is_refused(cluster, tmp_path):
    node = await _node_client(cluster)
    manifest = await write_session(tmp_path / "spool", SID)
    data = (tmp_path / "spool" / f"{SID}.cast").read_bytes()
    bad = {**manifest, "sha256": "0" * 64}
    with pytest.raises(BadParameter, match="sha256 mismatch"):
        await node.request("POST", f"/v1/recordings/{SID}", data=data, headers=upload_headers(bad))
    with pytest.raises(BadParameter, match="size mismatch"):
        await node.request("POST", f"/v1/recordings/{SID}", data=data[:-1], headers=upload_headers(manifest))
    assert await cluster.auth.recordings.list() == []


async def test_the_proxy_must_forward_a_valid_user_certificate(cluster):
    proxy_identity, _ = await cluster.join("proxy", "proxy1")
    proxy = cluster.client(proxy_identity)
    with pytest.raises(AccessDenied, match="must forward the user's certificate"):
        await proxy.request("GET", "/v1/recordings")

    async def as_user(cert_pem: bytes) -> object:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        der = x509.load_pem_x509_certificate(cert_pem).public_bytes(Encoding.DER)
        headers = {HEADER_FORWARDED_USER: base64.b64encode(der).decode()}
        return await proxy.request("GET", "/v1/recordings", headers=headers)

    auditor = await cluster.user_keys("alice", ["root"], ["auditor"])
    assert await as_user(auditor.tls_cert) == []
    stranger_ca = new_cert_authority(CAType.USER, CLUSTER).active
    forged = await cluster.user_keys("mallory", ["root"], ["auditor"], ca=stranger_ca)
    with pytest.raises(AccessDenied, match="not a user certificate of this cluster"):
        await as_user(forged.tls_cert)
    host_identity, _ = await cluster.join("node", "node9")
    with pytest.raises(AccessDenied):  # a host certificate is not a user's
        await as_user(host_identity.tls_cert)


async def test_streams_sessions_and_the_mode_in_heartbeats(cluster):
    node = await _node_client(cluster, "node1")
    other = await _node_client(cluster, "node2")
    answer = await node.request("POST", "/v1/heartbeat", {"hostname": "node1", "addr": "127.0.0.1:3022"})
    assert answer["session_recording"] == "node"

    headers = {"Content-Type": "application/x-asciicast"}
    appended = await node.request("POST", f"/v1/recordings/{SID}/stream?offset=0", data=b"abc", headers=headers)
    assert appended["size"] == 3
    with pytest.raises(AccessDenied):  # another node cannot write into it
        await other.request("POST", f"/v1/recordings/{SID}/stream?offset=3", data=b"d", headers=headers)
    with pytest.raises(BadParameter, match="offset"):
        await node.request("POST", f"/v1/recordings/{SID}/stream", data=b"d", headers=headers)

    await node.request("POST", "/v1/sessions/active", {"id": SID, "user": "alice", "login": "root", "node": "node1"})
    auditor = await _user_client(cluster, "alice", ["auditor"])
    [active] = await list_active_sessions(auditor)
    assert (active["id"], active["user"], active["node"]) == (SID, "alice", "node1")
    with pytest.raises(AccessDenied):  # only the node that runs it ends it
        await other.request("DELETE", f"/v1/sessions/active/{SID}")
    await node.request("POST", f"/v1/sessions/active/{SID}/keepalive", {})
    await node.request("DELETE", f"/v1/sessions/active/{SID}")
    assert await list_active_sessions(auditor) == []


async def test_refusals_by_system_role_are_audited_and_node_events_are_stored_once(cluster):
    plain = await _user_client(cluster, "bob", ["access"])
    with pytest.raises(AccessDenied, match="not allowed for role"):
        await plain.request("GET", "/v1/tokens")  # an admin route
    [denied] = [e for e in await cluster.audit_events("access.denied") if e["resource"] == "/v1/tokens"]
    assert (denied["user"], denied["verb"], denied["code"]) == ("bob", "GET", "T1007W")
    assert denied["remote_addr"] and denied["time"] and "not allowed" in denied["reason"]

    node = await _node_client(cluster, "node1")
    event = {"event": "exec", "id": "ab" * 16, "time": datetime.now(UTC).isoformat(), "command": "true",
             "exit_status": 0, "nodename": "node1"}
    first = await node.request("POST", "/v1/audit", event)
    again = await node.request("POST", "/v1/audit", event)  # the node's resend after a crash
    assert first.get("duplicate") is None and again["duplicate"] is True
    stored = [e for e in await cluster.audit_events("exec") if e["id"] == event["id"]]
    assert len(stored) == 1 and stored[0]["node"] == "node1" and stored[0]["code"] == "T3002I"
    other = await _node_client(cluster, "node2")
    with pytest.raises(AlreadyExists, match="another server"):
        await other.request("POST", "/v1/audit", event)
