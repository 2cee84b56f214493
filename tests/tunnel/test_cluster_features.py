"""Tunnel nodes behave as standard nodes for labels and RBAC, recording and CA rotation: a
denied label is refused, a PTY session is recorded, a host CA rotation is followed through the
tunnel (the node re-registers and serves its new certificate), and `tsh ssh` works after it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import run_tsh, sign_up_and_log_in, wait_for
from tests.tunnel.conftest import TunnelEnv

PROD_ONLY = {
    "kind": "role", "version": "v1", "metadata": {"name": "prod-only"},
    "spec": {"allow": {"logins": ["root"], "node_labels": {"env": "prod"}}},
}


def agent_phase(env: TunnelEnv, name: str) -> dict[str, Any]:
    records = env.cluster.tctl_json("nodes", "ls") + json.loads(
        env.cluster.tctl("get", "proxies", "--format=json").stdout)
    record = next((r for r in records if r["hostname"] == name), None)
    return (record or {}).get("rotation", {}).get("host", {})


def test_labels_recording_and_a_host_ca_rotation_through_the_tunnel(tunnel_env: TunnelEnv, tmp_path: Path) -> None:
    env = tunnel_env
    proxy = env.start_proxy("proxy1")
    env.start_tunnel_node("tnode1", proxy.web, labels={"env": "dev"})
    env.wait_registered("tnode1")
    env.login(roles="access,auditor")

    # recorded like any node's PTY session
    out = env.tsh("ssh", "-t", "root@tnode1", "echo", "recorded-through-the-tunnel")
    assert out.returncode == 0, out.stderr

    def recorded() -> list[dict[str, Any]]:
        listed = json.loads(env.tsh("recordings", "ls", "--format=json").stdout or "[]")
        return [r for r in listed if r.get("node") == "tnode1"]

    wait_for(recorded, 60, what="the tunnel node's recording uploaded through the tunnel")

    # a role that does not allow the node's labels is refused, as on any node
    role = tmp_path / "prod-only.yaml"
    role.write_text(yaml.safe_dump(PROD_ONLY))
    env.cluster.tctl("create", str(role))
    (tmp_path / "bob-password").write_text("another long password here\n")
    bob = tmp_path / "bob-home"
    sign_up_and_log_in(env.cluster, proxy.web, "bob", roles="prod-only", logins="root", home=bob,
                       password_file=tmp_path / "bob-password", otp_file=tmp_path / "bob-otp")
    denied = run_tsh(bob, "ssh", "root@tnode1", "echo", "no", cwd=tmp_path)
    assert denied.returncode != 0 and "no" not in denied.stdout.split(), denied.stdout
    assert "tnode1" not in run_tsh(bob, "ls", cwd=tmp_path).stdout

    # a host CA rotation, the tunnel node following through the proxy
    for phase in ("init", "update_clients", "update_servers", "standby"):
        env.cluster.tctl_json("auth", "rotate", "--type=host", "--manual", f"--phase={phase}")
        for agent in ("proxy1", "tnode1"):
            wait_for(lambda agent=agent, phase=phase: agent_phase(env, agent).get("phase") == phase, 90,
                     what=f"{agent} to apply {phase}")
        out = env.tsh("ssh", "root@tnode1", "echo", phase)  # tsh keeps its trust current by itself
        assert (out.returncode, out.stdout.strip()) == (0, phase), out.stderr
