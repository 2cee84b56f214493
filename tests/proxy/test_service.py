"""The proxy service as a whole: its heartbeat, the addresses it advertises, unreachable nodes."""

from __future__ import annotations

import asyncio
import socket

import asyncssh
import pytest

from teleport_runtime.config import Config, HostPort
from teleport_runtime.proxy import ProxyService
from tests.proxy.harness import LocalCluster, connect, loopback_ip


async def test_heartbeat_registers_the_proxy(local_cluster: LocalCluster) -> None:
    proxy = await local_cluster.start_proxy(name="proxy-a")
    await asyncio.wait_for(proxy.heartbeat.ok.wait(), 20)
    records = await local_cluster.auth.presence.list("Proxy")
    assert [r["hostname"] for r in records] == ["proxy-a"]
    ip = proxy.cfg.proxy.listen_addr.host
    assert records[0]["addr"] == records[0]["ssh_addr"] == f"{ip}:{proxy.ssh_port}"
    assert records[0]["web_addr"] == f"{ip}:{proxy.web_port}"


async def test_wildcard_listeners_advertise_the_host_the_client_used(local_cluster: LocalCluster) -> None:
    identity, _ = await local_cluster.join("proxy", "proxy-w")
    cfg = Config(nodename="proxy-w")
    cfg.proxy.listen_addr = HostPort("0.0.0.0", 3023)
    cfg.proxy.web_listen_addr = HostPort("0.0.0.0", 3080)
    proxy = ProxyService(cfg, identity, local_cluster.client(identity))
    assert proxy.ping_info("proxy.example.com:3080")["proxy"] == {
        "ssh_addr": "proxy.example.com:3023", "web_addr": "proxy.example.com:3080",
    }
    cfg.proxy.ssh_public_addr = HostPort("ssh.example.com", 443)
    assert proxy.ssh_addr("ignored:3080") == "ssh.example.com:443"


async def test_a_registered_node_that_is_down(local_cluster: LocalCluster) -> None:
    proxy = await local_cluster.start_proxy()
    ip = loopback_ip()
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind((ip, 0))
        port = sock.getsockname()[1]
    identity, _ = await local_cluster.join("node", "down1", [ip])
    await local_cluster.client(identity).request("POST", "/v1/heartbeat", {"hostname": "down1", "addr": f"{ip}:{port}"})
    keys = await local_cluster.user_keys("alice", ["root"], ["access"])
    async with await connect(proxy, keys, local_cluster) as conn:
        with pytest.raises(asyncssh.ChannelOpenError) as refused:
            await conn.open_connection("down1", 3022)
        assert f"registered at {ip}:{port} but cannot be reached from the proxy" in refused.value.reason
        result = await conn.run(subsystem="proxy:down1:3022@proxy.test", input="")
        assert result.exit_status == 1
        assert "cannot be reached from the proxy" in result.stderr


async def test_stop_closes_client_connections(local_cluster: LocalCluster) -> None:
    proxy = await local_cluster.start_proxy()
    await local_cluster.add_node("node1")
    keys = await local_cluster.user_keys("alice", ["root"], ["access"])
    conn = await connect(proxy, keys, local_cluster)
    await proxy.stop()
    local_cluster.proxies.remove(proxy)
    await asyncio.wait_for(conn.wait_closed(), 20)
