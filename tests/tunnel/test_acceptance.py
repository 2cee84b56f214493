"""Acceptance, as a new user would on loopback: a proxy with a tunnel listener; a node started
with only the proxy's web address, a token and the CA pin joins through it, binds no TCP port,
is listed as ⟵ Tunnel and is reached by `tsh ssh` and OpenSSH (`ssh -J` style, `tsh config`)."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

from teleport_runtime.api.names import TUNNEL_ADDR_LABEL
from tests.conftest import require_binary, wait_for
from tests.tunnel.conftest import TunnelEnv, tcp_listeners

CLUSTER = "tunnel.test"


def test_a_node_joins_through_the_proxy_binds_no_port_and_is_reached(tunnel_env: TunnelEnv, tmp_path: Path) -> None:
    env = tunnel_env
    proxy = env.start_proxy("proxy1")
    node = env.start_tunnel_node("tnode1", proxy.web)
    record = env.wait_registered("tnode1")
    assert record["tunnel"] is True and record["addr"] == ""
    assert node.daemon is not None
    # nothing but the diagnostics endpoint the test harness asked for (--diag-addr)
    assert [a for a in tcp_listeners(node.daemon.pid) if f"{a.ip}:{a.port}" != node.daemon.diag] == []

    listed = env.cluster.tctl("nodes", "ls")
    assert TUNNEL_ADDR_LABEL in listed.stdout, listed.stdout

    env.login()
    # the proxy's node list follows the auth service's within its refresh interval
    out = wait_for(lambda: (o := env.tsh("ls")).returncode == 0 and "tnode1" in o.stdout and o, 30,
                   what="tsh ls to show tnode1")
    assert TUNNEL_ADDR_LABEL in out.stdout, out.stdout + out.stderr
    as_json = json.loads(env.tsh("ls", "--format=json").stdout)
    assert [n.get("tunnel") for n in as_json if n["hostname"] == "tnode1"] == [True]

    out = env.tsh("ssh", "root@tnode1", "echo", "through-the-tunnel")
    assert (out.returncode, out.stdout.strip()) == (0, "through-the-tunnel"), out.stderr

    config = tmp_path / "ssh_config"
    out = env.tsh("config")
    assert out.returncode == 0, out.stderr
    config.write_text(out.stdout)
    result = subprocess.run(
        [require_binary("ssh"), "-F", str(config), "-o", "BatchMode=yes", f"root@tnode1.{CLUSTER}", "hostname"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert (result.returncode, result.stdout.strip()) == (0, socket.gethostname()), result.stderr

    # `tctl nodes rm`: its certificate is locked, the proxies stop routing to it and close its tunnel
    env.cluster.tctl("nodes", "rm", "tnode1")
    wait_for(lambda: "closing the tunnel of node" in proxy.node.log(), 30, what="the proxy to drop the tunnel")
    out = env.tsh("ssh", "root@tnode1", "echo", "removed")
    assert out.returncode != 0 and "not registered" in out.stderr, out.stdout + out.stderr
