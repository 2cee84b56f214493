"""A tunnel that drops mid-session: the session ends cleanly (its recording up to then is kept
and uploaded), the node dials the proxy again by itself, and new sessions work."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from tests.conftest import TELEPORT, TSH, tsh_env, wait_for
from tests.tunnel.conftest import TunnelEnv


def test_a_session_ends_cleanly_when_the_tunnel_drops_and_the_node_reconnects(tunnel_env: TunnelEnv) -> None:
    env = tunnel_env
    proxy = env.start_proxy("proxy1")
    node = env.start_tunnel_node("tnode1", proxy.web)
    env.wait_registered("tnode1")
    env.login(roles="access,auditor")

    session = subprocess.Popen(
        [TSH, "ssh", "-t", "root@tnode1", "echo before-the-drop; sleep 120"], env=tsh_env(env.home),
        cwd=env.root, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: json.loads(env.tsh("sessions", "ls", "--format=json").stdout or "[]"), 30,
                 what="the session to start")
        proxy.node.kill()  # the tunnel, and the session's channel in it, are gone
        session.wait(60)  # the session ended; it did not hang
        assert session.returncode != 0
    finally:
        session.kill()

    proxy.node.restart([TELEPORT, "start", "--roles=proxy", f"--auth-server={env.cluster.addr}"])
    wait_for(lambda: node.log().count("is up (") >= 2, 60, what="the node to dial the proxy again")

    def recorded() -> list[dict[str, Any]]:
        listed = json.loads(env.tsh("recordings", "ls", "--format=json").stdout or "[]")
        return [r for r in listed if r.get("node") == "tnode1"]

    records = wait_for(recorded, 60, what="the interrupted session's recording")
    assert records[0]["size"] > 0
    out = env.tsh("ssh", "root@tnode1", "echo", "again")
    assert (out.returncode, out.stdout.strip()) == (0, "again"), out.stderr
