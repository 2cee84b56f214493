"""Two proxies behind one layer-4 round-robin balancer (a tiny forwarder on loopback): the tunnel
node ends up with a tunnel to each, so either proxy reaches it; killing one leaves new sessions
through the other working."""

from __future__ import annotations

import pytest

from teleport_runtime.api.names import TUNNEL_ADDR_LABEL
from tests.conftest import free_port, require_binary, wait_for
from tests.tunnel.conftest import HAProxy, RoundRobin, TunnelEnv


def test_a_tunnel_node_is_reachable_from_every_proxy_and_survives_one_stopping(tunnel_env: TunnelEnv) -> None:
    env = tunnel_env
    # the balancer's address is every proxy's tunnel_public_addr; it learns the backends below
    balancer = RoundRobin([])
    first = env.start_proxy("proxy1", tunnel_public=balancer.addr)
    second = env.start_proxy("proxy2", tunnel_public=balancer.addr)
    balancer.backends.extend([first.tunnel, second.tunnel])
    try:
        node = env.start_tunnel_node("tnode1", first.web)
        env.wait_registered("tnode1")
        wait_for(lambda: node.log().count("is up (") >= 2, 60, what="a tunnel to each proxy")
        env.login()

        for proxy in (first, second):
            env.login_through(proxy)
            out = env.tsh("ssh", "root@tnode1", "echo", "ok")
            assert (out.returncode, out.stdout.strip()) == (0, "ok"), out.stderr

        first.node.kill()
        out = env.tsh("ls")
        assert "tnode1" in out.stdout and TUNNEL_ADDR_LABEL in out.stdout, out.stdout + out.stderr
        for _ in range(3):  # new sessions, one after another, through the proxy left
            out = env.tsh("ssh", "root@tnode1", "echo", "still")
            assert (out.returncode, out.stdout.strip()) == (0, "still"), out.stderr
    finally:
        balancer.close()


@pytest.mark.parametrize("killed", [0, 1], ids=["first-killed", "second-killed"])
def test_clients_and_nodes_use_only_haproxy_and_either_proxy_may_stop(tunnel_env: TunnelEnv, killed: int) -> None:
    """The acceptance of several proxies: web, SSH and tunnel ports each behind HAProxy, the
    proxies announcing its addresses; tsh logs in and connects only through it; killing either
    proxy leaves new sessions to a tunnel node and a standard node working."""
    haproxy = require_binary("haproxy")
    env = tunnel_env
    # HAProxy listens on 127.0.0.1, the address every daemon here connects from (a proxy may
    # announce only an address of its own: its certificate's, or the one it connects from).
    ports = {name: free_port("127.0.0.1") for name in ("web", "ssh", "tunnel")}
    balancer = HAProxy(haproxy, env.root, ports)
    try:
        proxies = [
            env.start_proxy(f"proxy{i}", f"127.0.0.1:{ports['tunnel']}", public=f"127.0.0.1:{ports['web']}",
                            ssh_public=f"127.0.0.1:{ports['ssh']}")
            for i in (1, 2)
        ]
        balancer.start({"web": [p.web for p in proxies], "ssh": [p.ssh for p in proxies],
                        "tunnel": [p.tunnel for p in proxies]})
        tnode = env.start_tunnel_node("tnode1", f"127.0.0.1:{ports['web']}")
        token = env.cluster.add_token("node")["token"]
        env.cluster.start_node("node1", token=token, pins=(env.cluster.pin(),))
        env.wait_registered("tnode1")
        env.wait_registered("node1")
        wait_for(lambda: tnode.log().count("is up (") >= 2, 60, what="a tunnel to each proxy")
        env.login(web=f"127.0.0.1:{ports['web']}")

        def reach_both(word: str) -> None:
            for target in ("tnode1", "node1"):
                out = env.tsh("ssh", f"root@{target}", "echo", word)
                assert (out.returncode, out.stdout.strip()) == (0, word), f"{target}: {out.stderr}"

        for _ in range(2):  # round robin: both proxies serve
            reach_both("before")
        proxies[killed].node.kill()
        for _ in range(3):  # new sessions, one after another, through whichever proxy is left
            reach_both("after")
    finally:
        balancer.stop()
