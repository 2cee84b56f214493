"""The proxy's SSH listener: who gets in, and where their channels go. Real listeners on
127.0.0.x; nodes are TCP echo servers registered with real heartbeats."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta

import asyncssh
import pytest

from teleport_runtime.ca import CAType, new_cert_authority
from tests.conftest import async_wait_for
from tests.proxy.harness import CLUSTER, LocalCluster, connect


async def echo_through(conn: asyncssh.SSHClientConnection, host: str, port: int) -> bytes:
    reader, writer = await conn.open_connection(host, port)
    greeting = await reader.readline()
    writer.write(b"ping\n")
    assert await reader.readline() == b"ping\n"
    writer.close()
    return greeting


@pytest.fixture
async def routed(local_cluster: LocalCluster):
    proxy = await local_cluster.start_proxy()
    node1, uuid1 = await local_cluster.add_node("node1", {"env": "prod"})
    node2, uuid2 = await local_cluster.add_node("node2", {"env": "dev"})
    keys = await local_cluster.user_keys("alice", ["root"], ["access"])
    return local_cluster, proxy, keys, (node1, uuid1), (node2, uuid2)


async def test_direct_tcpip_reaches_registered_nodes_by_every_name(routed) -> None:
    cluster, proxy, keys, (_, uuid1), (node2, uuid2) = routed
    async with await connect(proxy, keys, cluster, username="whoever") as conn:
        assert await echo_through(conn, "node1", 3022) == b"hello from node1\n"
        assert await echo_through(conn, f"node2.{CLUSTER}", 3022) == b"hello from node2\n"
        assert await echo_through(conn, uuid1, 22) == b"hello from node1\n"
        assert await echo_through(conn, f"{uuid2}.{CLUSTER}", 22) == b"hello from node2\n"
        assert await echo_through(conn, node2.ip, 3022) == b"hello from node2\n"
        # whatever port the client names, the proxy dials the registered address
        assert await echo_through(conn, "node1", 1) == b"hello from node1\n"


async def test_unknown_node_is_refused_and_audited(routed) -> None:
    cluster, proxy, keys, *_ = routed
    async with await connect(proxy, keys, cluster) as conn:
        with pytest.raises(asyncssh.ChannelOpenError) as refused:
            await conn.open_connection("nosuch", 3022)
        assert f"node nosuch is not registered in cluster {CLUSTER}; see `tsh ls`" in refused.value.reason
        # an address that is not a registered node's is refused too: the proxy is no open relay
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.open_connection(str(cluster.addr.host), cluster.addr.port)

    async def audited():
        events = await cluster.audit_events("proxy.connect.rejected")
        return [e for e in events if e.get("target") == "nosuch:3022"]

    event = (await async_wait_for(audited, what="the audit event"))[0]
    assert event["user"] == "alice"
    assert event["login"] == "root"
    assert "not registered" in event["reason"]


async def test_subsystem_relays_to_the_node(routed) -> None:
    cluster, proxy, keys, *_ = routed
    async with await connect(proxy, keys, cluster) as conn:
        process = await conn.create_process(subsystem=f"proxy:node1:3022@{CLUSTER}", encoding=None)
        assert await process.stdout.readline() == b"hello from node1\n"
        payload = bytes(range(256)) * 4096  # 1 MiB, more than one SSH window
        process.stdin.write(payload)
        received = await process.stdout.readexactly(len(payload))
        assert received == payload
        process.stdin.write_eof()
        await process.wait_closed()


async def test_subsystem_unknown_node_or_cluster(routed) -> None:
    cluster, proxy, keys, *_ = routed
    async with await connect(proxy, keys, cluster) as conn:
        result = await conn.run(subsystem=f"proxy:ghost:3022@{CLUSTER}", input="")
        assert result.exit_status == 1
        assert f"node ghost is not registered in cluster {CLUSTER}" in result.stderr
        result = await conn.run(subsystem="proxy:node1:3022@elsewhere.com", input="")
        assert result.exit_status == 1
        assert "serves cluster proxy.test, not elsewhere.com" in result.stderr


async def test_shell_and_commands_on_the_proxy_are_refused(routed) -> None:
    cluster, proxy, keys, *_ = routed
    async with await connect(proxy, keys, cluster) as conn:
        result = await conn.run("id", input="")
        assert result.exit_status == 1
        assert "does not run command 'id'" in result.stderr
        assert "tsh ssh" in result.stderr


async def test_node_registered_after_start_is_found_on_a_miss(routed) -> None:
    cluster, proxy, keys, *_ = routed
    async with await connect(proxy, keys, cluster) as conn:
        await cluster.add_node("late")
        assert await echo_through(conn, "late", 3022) == b"hello from late\n"


async def test_jump_needs_no_port_forwarding_permission(routed) -> None:
    cluster, proxy, _, *_ = routed
    keys = await cluster.user_keys("bob", ["bob"], ["restricted"], port_forwarding=False)
    async with await connect(proxy, keys, cluster, username="bob") as conn:
        assert await echo_through(conn, "node1", 3022) == b"hello from node1\n"


async def test_untrusted_or_expired_certificates_are_refused(routed) -> None:
    cluster, proxy, _, *_ = routed
    foreign = new_cert_authority(CAType.USER, CLUSTER).active
    keys = await cluster.user_keys("mallory", ["root"], ["access"], ca=foreign)
    with pytest.raises(asyncssh.PermissionDenied):
        await connect(proxy, keys, cluster)
    old = datetime.now(UTC) - timedelta(hours=2)
    expired = await cluster.user_keys("alice", ["root"], ["access"], ttl=timedelta(hours=1), now=old)
    with pytest.raises(asyncssh.PermissionDenied):
        await connect(proxy, expired, cluster)


async def test_plain_keys_are_refused(routed) -> None:
    cluster, proxy, keys, *_ = routed
    host_ca = (await cluster.auth.get_ca(CAType.HOST)).trusted_ssh_public_keys()
    with pytest.raises(asyncssh.PermissionDenied):
        await asyncssh.connect(
            proxy.cfg.proxy.listen_addr.host, proxy.ssh_port, username="root",
            client_keys=[asyncssh.import_private_key(keys.ssh_key)],
            known_hosts=([], [asyncssh.import_public_key(k) for k in host_ca], []),
            config=[], agent_path=None,
        )


async def test_clients_verify_the_proxy_with_the_host_ca(routed) -> None:
    cluster, proxy, keys, *_ = routed
    other = new_cert_authority(CAType.HOST, CLUSTER)
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        await connect(proxy, keys, cluster, host_cas=other.trusted_ssh_public_keys())


async def test_user_ca_changes_reach_the_listener(routed) -> None:
    """Trust is read per connection: a CA the proxy learns later is honoured at once."""
    cluster, proxy, _, *_ = routed
    newer = new_cert_authority(CAType.USER, CLUSTER).active
    keys = await cluster.user_keys("carol", ["root"], ["access"], ca=newer)
    with pytest.raises(asyncssh.PermissionDenied):
        await connect(proxy, keys, cluster)
    proxy._cas = {**(proxy._cas or {}), "user_ca_keys": [*proxy.user_ca_keys(), newer.ssh_public_key]}
    async with await connect(proxy, keys, cluster) as conn:
        assert await echo_through(conn, "node1", 3022) == b"hello from node1\n"


async def test_the_proxy_logs_each_connection_with_its_context(routed, caplog: pytest.LogCaptureFixture) -> None:
    """As on the node: every line of a connection starts with ``[conn=N user=U login=L]``, and
    the target once the connection goes somewhere, so one connection can be followed."""
    cluster, proxy, keys, *_ = routed
    with caplog.at_level(logging.INFO, logger="teleport.proxy.ssh"):
        async with await connect(proxy, keys, cluster) as conn:
            assert await echo_through(conn, "node1", 3022) == b"hello from node1\n"
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.open_connection("nosuch", 3022)
    lines = [r.getMessage() for r in caplog.records if r.name == "teleport.proxy.ssh"]
    connected = next(line for line in lines if "authenticated" in line)
    conn_id = re.fullmatch(r"\[conn=(\d+) user=alice login=root\] authenticated, from 127\.0\.0\.1", connected)
    assert conn_id is not None, connected
    prefix = f"[conn={conn_id.group(1)} user=alice login=root target="
    assert any(line.startswith(prefix + "node1:3022] direct-tcpip to node node1") for line in lines), lines
    assert any(line.startswith(prefix + "nosuch:3022] refused direct-tcpip") for line in lines), lines
