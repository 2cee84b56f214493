"""The auth API side of OpenSSH nodes, in process: who may register them and what is refused,
and how the proxy's certificates are scoped (a host certificate only for a registered node, a
session certificate only for an OpenSSH node, one login the user's certificate and roles allow,
from the proxy's addresses, minutes long). Attacks are replayed against the real API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import SSHCertificate, load_ssh_public_identity

from teleport_runtime.api.types import NodeUpsert, SessionCertRequest, TargetHostCertRequest
from teleport_runtime.ca import CAType, generate_ssh_keypair, new_cert_authority, parse_user_ssh_cert
from teleport_runtime.errors import AccessDenied, AlreadyExists, BadParameter, NotFound, TeleportError
from tests.proxy.harness import LocalCluster


def resource(name: str = "web1", addr: str = "127.0.0.1:2222", **labels: str) -> dict[str, Any]:
    return {"kind": "node", "sub_kind": "openssh", "version": "v2",
            "metadata": {"name": name, "labels": labels or {"env": "legacy"}},
            "spec": {"addr": addr, "hostname": name}}


async def test_admin_registers_lists_and_removes(local_cluster: LocalCluster) -> None:
    saved = await local_cluster.auth.upsert_openssh_node(resource(), force=False)
    assert (saved.name, saved.result) == ("web1", "created")
    again = await local_cluster.auth.upsert_openssh_node(resource(), force=False)
    assert again.result == "unchanged"
    with pytest.raises(AlreadyExists, match="tctl create -f"):
        await local_cluster.auth.upsert_openssh_node(resource(addr="127.0.0.1:2223"), force=False)
    updated = await local_cluster.auth.upsert_openssh_node(resource(addr="127.0.0.1:2223"), force=True)
    assert updated.result == "updated"
    nodes = {n.id: n for n in await local_cluster.auth.list_hosts("Node")}
    assert nodes["web1"].sub_kind == "openssh" and nodes["web1"].addr == "127.0.0.1:2223"
    assert nodes["web1"].labels == {"env": "legacy"} and nodes["web1"].expires == ""
    removed = await local_cluster.auth.remove_host("web1")
    assert removed.sub_kind == "openssh"
    assert "web1" not in {n.id for n in await local_cluster.auth.list_hosts("Node")}
    events = await local_cluster.audit_events("resource.upsert")
    assert {e["result"] for e in events} == {"created", "updated"}


@pytest.mark.parametrize(("doc", "words"), [
    (resource(name="-bad-"), "metadata.name"),
    (resource(addr="10.0.0.5"), "with a port"),
    (resource(addr="0.0.0.0:22"), "unspecified"),
    (resource(addr="169.254.169.254:80"), "link-local"),
    (resource(addr="[fe80::1]:22"), "link-local"),
    (resource(addr="224.0.0.1:22"), "multicast"),
    (resource(addr="bad host!:22"), "spec.addr"),
    ({**resource(), "sub_kind": "teleport"}, "sub_kind: openssh"),
    ({**resource(), "version": "v3"}, "version: v2"),
    ({**resource(), "spec": {"addr": "127.0.0.1:22", "hostname": "h", "command": "x"}}, "unknown spec"),
])
async def test_bad_resources_are_refused_naming_the_field(local_cluster: LocalCluster, doc: dict[str, Any],
                                                          words: str) -> None:
    with pytest.raises(BadParameter, match=words):
        await local_cluster.auth.upsert_openssh_node(doc, force=True)
    assert not [n for n in await local_cluster.auth.list_hosts("Node") if n.sub_kind == "openssh"]


async def test_a_node_may_not_register_where_the_auth_api_listens(local_cluster: LocalCluster) -> None:
    with pytest.raises(BadParameter, match="auth service or a proxy"):
        await local_cluster.auth.upsert_openssh_node(resource(addr=str(local_cluster.addr)), force=True)


async def test_only_admins_may_register_and_only_proxies_may_ask_for_certificates(
        local_cluster: LocalCluster) -> None:
    node_identity, _ = await local_cluster.join("node", "n1", ["127.0.0.1"])
    node = local_cluster.client(node_identity)
    with pytest.raises(AccessDenied):
        await node.upsert_node(NodeUpsert(resource=resource()))
    await local_cluster.auth.upsert_openssh_node(resource(), force=False)
    _, public = generate_ssh_keypair()
    with pytest.raises(AccessDenied):
        await node.sign_target_host(TargetHostCertRequest(node="web1", ssh_public_key=public))
    proxy = await local_cluster.start_proxy()
    cert = (await proxy.client.sign_target_host(TargetHostCertRequest(node="web1", ssh_public_key=public))).ssh_cert
    assert cert.startswith("ssh-ed25519-cert")
    with pytest.raises(NotFound):
        await proxy.client.sign_target_host(TargetHostCertRequest(node="nosuch", ssh_public_key=public))


async def test_session_certificates_are_scoped(local_cluster: LocalCluster) -> None:
    await local_cluster.auth.upsert_openssh_node(resource(), force=False)
    await local_cluster.auth.users.add_user("alice", ["access"], ["root"])
    proxy = await local_cluster.start_proxy()
    keys = await local_cluster.user_keys("alice", ["root"], ["access"])
    _, public = generate_ssh_keypair()

    answer = await proxy.client.sign_session(
        SessionCertRequest(user_ssh_cert=keys.ssh_cert, login="root", node="web1", ssh_public_key=public))
    info = parse_user_ssh_cert(answer.ssh_cert)
    assert info.logins == ["root"] and info.username == "alice"
    assert info.valid_before is not None and info.valid_before - datetime.now(UTC) <= timedelta(minutes=2)
    assert not info.permit_agent_forwarding
    cert = load_ssh_public_identity(answer.ssh_cert.encode())
    assert isinstance(cert, SSHCertificate)
    sources = cert.critical_options[b"source-address"].decode().split(",")
    assert sources == list(answer.source_addresses) and "127.0.0.1" in sources

    async def refused(**changes: str) -> str:
        fields = {"user_ssh_cert": keys.ssh_cert, "login": "root", "node": "web1", "ssh_public_key": public,
                  **changes}
        with pytest.raises(TeleportError) as exc:
            await proxy.client.sign_session(SessionCertRequest(**fields))
        return exc.value.message

    assert "login 'admin'" in await refused(login="admin")  # not in the user's certificate
    assert "not registered" in await refused(node="nosuch")
    other_ca = new_cert_authority(CAType.USER, local_cluster.cluster)
    foreign = await local_cluster.user_keys("alice", ["root"], ["access"], ca=other_ca.active)
    assert await refused(user_ssh_cert=foreign.ssh_cert)  # a certificate from another CA
    expired = await local_cluster.user_keys("alice", ["root"], ["access"], ttl=timedelta(minutes=1),
                                            now=datetime.now(UTC) - timedelta(hours=1))
    assert "not valid now" in await refused(user_ssh_cert=expired.ssh_cert)
    # the roles as stored now decide, not the ones the certificate names
    await local_cluster.auth.users.upsert_role({"kind": "role", "version": "v1", "metadata": {"name": "deny-legacy"},
                                                "spec": {"deny": {"node_labels": {"env": "legacy"}}}}, force=False)
    await local_cluster.auth.users.update_user("alice", ["access", "deny-legacy"], None)
    assert "deny-legacy" in await refused()
    denied = await local_cluster.audit_events("access.denied")
    assert any(e.get("resource") == "/v1/certs/proxy/session" for e in denied)
