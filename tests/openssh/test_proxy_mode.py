"""Proxy recording mode with a node service host, end to end on loopback: the auth service says
`session_recording: proxy`, so the proxy terminates every session, logs in to the node with the
user's forwarded agent (`tsh ssh -A` with the Teleport key in an ssh-agent) and records; the node
records nothing. Without an agent the session is refused with a message saying how to connect."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cluster, Node, require_binary, sign_up_and_log_in, wait_for

BIN = Path(sys.executable).parent
TSH = str(BIN / "tsh")
CLUSTER = "pmode.test"


@dataclass
class Env:
    root: Path
    cluster: Cluster
    node: Node
    agent: dict[str, str]

    def tsh(self, *args: str, agent: bool = False) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TELEPORT") and k != "SSH_AUTH_SOCK"}
        env["TELEPORT_HOME"] = str(self.root / "tsh-alice")
        if agent:
            env.update(self.agent)
        return subprocess.run([TSH, *args], env=env, cwd=self.root, capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    require_binary("/usr/bin/ssh-agent")
    root = tmp_path_factory.mktemp("proxymode")
    cluster = Cluster(root, CLUSTER, {"presence_ttl": "10s", "session_recording": "proxy"})
    agent_pid = ""
    try:
        cluster.start()
        token = cluster.add_token(roles="node,proxy", ttl="10m")["token"]
        _, web = cluster.start_proxy(token)
        node = cluster.start_node("node1", token=token, pins=(cluster.pin(),))
        (root / "password").write_text("correct horse battery staple\n")
        sign_up_and_log_in(cluster, web, "alice", roles="access,auditor", logins="root", home=root / "tsh-alice",
                           password_file=root / "password", otp_file=root / "otp-alice")
        out = subprocess.run(["ssh-agent", "-s", "-a", str(root / "agent.sock")], capture_output=True, text=True,
                             check=True).stdout
        agent = {"SSH_AUTH_SOCK": str(root / "agent.sock")}
        agent_pid = re.search(r"SSH_AGENT_PID=(\d+)", out).group(1)  # type: ignore[union-attr]
        cert = next((root / "tsh-alice" / "keys").rglob("*-cert.pub"))
        key = cert.with_name(cert.name.removesuffix("-cert.pub"))
        subprocess.run(["ssh-add", str(key)], env={**os.environ, **agent}, capture_output=True, check=True)
        env = Env(root, cluster, node, agent)

        def listed() -> bool:
            out = env.tsh("ls", "--format=json")
            return out.returncode == 0 and "node1" in {n["hostname"] for n in json.loads(out.stdout)}

        wait_for(listed, what="tsh ls to show node1")
        yield env
    finally:
        if agent_pid:
            subprocess.run(["kill", agent_pid], check=False)
        cluster.kill_all()


def test_without_a_forwarded_agent_the_session_is_refused_saying_how(env: Env) -> None:
    result = env.tsh("ssh", "root@node1", "echo should-not-run")
    assert result.returncode != 0
    assert "should-not-run" not in result.stdout
    assert "agent" in result.stderr and "-A" in result.stderr, result.stderr


def test_with_the_agent_the_proxy_logs_in_records_and_the_node_does_not(env: Env) -> None:
    result = env.tsh("ssh", "-A", "root@node1", "echo plain-exec", agent=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "plain-exec"
    result = env.tsh("ssh", "-A", "-t", "root@node1", "echo recorded-at-the-proxy", agent=True)
    assert result.returncode == 0, result.stderr

    def recorded() -> list[dict[str, Any]]:
        out = env.tsh("recordings", "ls", "--format=json")
        return [r for r in json.loads(out.stdout or "[]") if r.get("node") == "node1"] if out.returncode == 0 else []

    record = wait_for(recorded, what="the proxy's recording")[-1]
    played = env.tsh("play", record["session_id"], "--speed=50x", "--skip-idle-time")
    assert "recorded-at-the-proxy" in played.stdout
    assert len(recorded()) == 1  # the node recorded nothing
    spool = env.node.data_dir / "log" / "upload" / "sessions"
    assert not list(spool.glob("*.cast")) if spool.exists() else True
