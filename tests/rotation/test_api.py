"""The auth API side of agents following a rotation, in process on loopback: the CA watch (a long
poll), re-registration with the caller's identity, joining mid-rotation with one or both pins,
and the rotation phases a heartbeat reports."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from teleport_runtime.agent.join import join_cluster
from teleport_runtime.agent.rotation import RotationSync
from teleport_runtime.ca import TLSIdentity, generate_ssh_keypair, generate_tls_keypair, parse_tls_identity
from teleport_runtime.errors import AccessDenied
from tests.proxy.harness import LocalCluster


async def test_watch_answers_when_a_ca_changes(local_cluster: LocalCluster) -> None:
    identity, _ = await local_cluster.join("node", "node1")
    client = local_cluster.client(identity)
    first = await client.request("GET", "/v1/authorities/watch")
    assert first["rotation"]["host"]["phase"] == "standby"
    waiting = asyncio.ensure_future(
        client.request("GET", f"/v1/authorities/watch?revision={first['revision']}&wait=30"))
    await asyncio.sleep(0.2)
    assert not waiting.done()  # nothing changed: the watch holds
    await local_cluster.auth.rotation.rotate("host", mode="manual", target_phase="init")
    changed = await asyncio.wait_for(waiting, 20)
    assert changed["revision"] != first["revision"]
    assert changed["rotation"]["host"]["phase"] == "init"
    assert len(changed["cas"]["host_ca_certs"]) == 2
    # a stale revision answers at once
    again = await client.request("GET", f"/v1/authorities/watch?revision={first['revision']}&wait=30", time_limit=5)
    assert again["revision"] == changed["revision"]


async def test_reregister_keeps_who_the_caller_is(local_cluster: LocalCluster) -> None:
    identity, host_uuid = await local_cluster.join("node", "node1", ["127.0.0.9"])
    client = local_cluster.client(identity)
    _, ssh_public = generate_ssh_keypair()
    _, tls_public = generate_tls_keypair()
    issued = await client.request("POST", "/v1/reregister",
                                  {"ssh_public_key": ssh_public, "tls_public_key": tls_public.decode()})
    tls = parse_tls_identity(issued["tls_cert"].encode())
    assert (tls.host_uuid, tls.nodename, tls.roles) == (host_uuid, "node1", ["Node"])
    # only node and proxy identities re-register; the service refuses anything else
    with pytest.raises(AccessDenied):
        await local_cluster.auth.reregister(
            TLSIdentity(name="admin", kind="admin", roles=["Admin"], cluster=local_cluster.cluster),
            ssh_public, tls_public, (),
        )


async def test_joining_mid_rotation_needs_both_pins(local_cluster: LocalCluster) -> None:
    old = await local_cluster.pins()
    await local_cluster.auth.rotation.rotate("host", mode="manual", target_phase="init")
    both = await local_cluster.pins()
    assert len(both) == 2 and old[0] in both
    token = await local_cluster.auth.tokens.create(["node"])
    args = dict(auth_servers=[local_cluster.addr], token=token.value, role="node", nodename="late", uuid="u-late",
                addresses=[])
    with pytest.raises(AccessDenied, match="pass --ca-pin once for each pin"):
        await join_cluster(ca_pins=old, **args)
    identity = await join_cluster(ca_pins=both, **args)
    assert len(identity.ca_certs) == 2


async def test_heartbeat_reports_the_applied_phases(local_cluster: LocalCluster, tmp_path: Path) -> None:
    identity, _ = await local_cluster.join("node", "node1")
    client = local_cluster.client(identity)
    sync = RotationSync(role="node", directory=tmp_path / "identity" / "node", identity=identity, client=client,
                        addresses=[])
    await local_cluster.auth.rotation.rotate("user", mode="manual", target_phase="init")
    await sync.sync()
    report = sync.report()
    rotation_id = (await local_cluster.auth.rotation.view("user"))["id"]
    assert report == {"host": {"phase": "standby", "id": ""}, "user": {"phase": "init", "id": rotation_id}}
    assert len(sync.identity.user_ca_keys or []) == 2  # both user CAs trusted in init
    await client.request("POST", "/v1/heartbeat", {"hostname": "node1", "addr": "127.0.0.1:3022", "rotation": report})
    [record] = await local_cluster.auth.presence.list("Node")
    assert record["rotation"] == report
    # a report of another shape is read as standby, never stored as sent
    await client.request("POST", "/v1/heartbeat", {"hostname": "node1", "addr": "127.0.0.1:3022", "rotation": "init"})
    [record] = await local_cluster.auth.presence.list("Node")
    assert record["rotation"] == {"host": {"phase": "standby", "id": ""}, "user": {"phase": "standby", "id": ""}}
    # restarted, the agent reports what it applied before
    again = RotationSync(role="node", directory=tmp_path / "identity" / "node", identity=identity, client=client,
                         addresses=[])
    assert again.report() == report
