"""Two proxies behind one layer-4 round-robin balancer (a tiny forwarder on loopback): the tunnel
node ends up with a tunnel to each, so either proxy reaches it; killing one leaves new sessions
through the other working."""

from __future__ import annotations

from teleport_runtime.api.names import TUNNEL_ADDR_LABEL
from tests.conftest import wait_for
from tests.tunnel.conftest import RoundRobin, TunnelEnv


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
