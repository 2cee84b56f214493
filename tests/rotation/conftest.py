"""A cluster of real daemons for CA rotation tests: the auth service, a proxy and nodes started
with `teleport start` on loopback, a user who signed up and logged in with `tsh`, and helpers to
step a rotation with `tctl auth rotate` and wait (bounded polls) until the agents report it."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cluster, Node, require_binary, run_tsh, sign_up_and_log_in, wait_for

CLUSTER = "rotation.test"
PASSWORD = "correct horse battery staple"
CONVERGE = 60.0  # bound for agents to report a phase (the watch answers at once; the poll in 30s)


@dataclass
class RotationEnv:
    root: Path
    cluster: Cluster
    proxy: Node
    web: str
    nodes: dict[str, Node] = field(default_factory=dict)
    password_file: Path = Path()
    otp_file: Path = Path()

    # ------------------------------------------------------------------ cluster state

    def status(self) -> dict[str, Any]:
        return self.cluster.tctl_json("status")

    def ca(self, ca_type: str) -> dict[str, Any]:
        return next(ca for ca in self.status()["cas"] if ca["type"] == ca_type)

    def rotate(self, ca_type: str, phase: str) -> dict[str, Any]:
        return self.cluster.tctl_json("auth", "rotate", f"--type={ca_type}", "--manual", f"--phase={phase}")

    def agents(self) -> dict[str, dict[str, Any]]:
        """Every node and proxy record by hostname (`tctl nodes ls` and `tctl get proxies`)."""
        records = self.cluster.tctl_json("nodes", "ls") + json.loads(
            self.cluster.tctl("get", "proxies", "--format=json").stdout
        )
        return {r["hostname"]: r for r in records}

    def wait_reported(self, ca_type: str, names: list[str] | None = None) -> dict[str, Any]:
        """Until every named agent (default: the proxy and every running node) reports the CA's
        current phase and rotation id; returns the CA's rotation view."""
        rotation = self.ca(ca_type)["rotation"]
        wanted = {"phase": rotation["phase"], "id": rotation["id"]}
        names = names if names is not None else [self.proxy.name, *self.running_nodes()]

        def reported() -> bool:
            agents = self.agents()
            return all(n in agents and agents[n]["rotation"][ca_type] == wanted for n in names)

        wait_for(reported, CONVERGE, 0.5, what=f"{names} to report {ca_type} CA {wanted}")
        return rotation

    def step(self, ca_type: str, phase: str) -> dict[str, Any]:
        """One manual phase, then wait until the agents applied it."""
        self.rotate(ca_type, phase)
        return self.wait_reported(ca_type)

    def running_nodes(self) -> list[str]:
        return [name for name, node in self.nodes.items() if node.daemon is not None and node.daemon.alive()]

    def start_node(self, name: str, pins: tuple[str, ...] | None = None, **kwargs: Any) -> Node:
        token = self.cluster.add_token(roles="node")["token"]
        node = self.cluster.start_node(name, token=token, pins=pins or tuple(self.status()["ca_pins"]), **kwargs)
        self.nodes[name] = node
        return node

    # ------------------------------------------------------------------ users

    def tsh(self, *args: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
        return run_tsh(home or self.root / "tsh-home", *args, cwd=self.root)

    def login(self, home: Path | None = None, pin: str | None = None) -> None:
        extra = [f"--ca-pin={pin}"] if pin else []
        result = self.tsh("login", f"--proxy={self.web}", "--user=alice", f"--password-file={self.password_file}",
                          f"--otp-secret-file={self.otp_file}", *extra, home=home)
        assert result.returncode == 0, result.stderr

    def ssh(self, node: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
        return self.tsh("ssh", f"root@{node}", "echo ok", home=home)

    def openssh(self, node: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
        ssh = require_binary("ssh")
        config = self.root / "ssh_config"
        out = self.tsh("config", home=home)
        assert out.returncode == 0, out.stderr
        config.write_text(out.stdout)
        return subprocess.run([ssh, "-F", str(config), "-o", "BatchMode=yes", f"root@{node}.{CLUSTER}", "echo ok"],
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)

    def assert_access(self, *nodes: str, home: Path | None = None, openssh: bool = True) -> None:
        """tsh ssh (and OpenSSH with `tsh config`) through the proxy runs a command on each node."""
        for node in nodes or tuple(self.running_nodes()):
            result = self.ssh(node, home)
            assert (result.returncode, result.stdout) == (0, "ok\n"), f"tsh ssh {node}: {result.stderr}"
            if openssh:
                result = self.openssh(node, home)
                assert (result.returncode, result.stdout) == (0, "ok\n"), f"OpenSSH {node}: {result.stderr}"


def signing_ca(cert_path: Path) -> str:
    """The SHA256 fingerprint of the CA that signed an OpenSSH certificate (`ssh-keygen -L`)."""
    out = subprocess.run([require_binary("ssh-keygen"), "-L", "-f", str(cert_path)],
                         capture_output=True, text=True, check=True).stdout
    match = re.search(r"Signing CA: \S+ (SHA256:\S+)", out)
    assert match, out
    return match.group(1)


def fingerprint(public_key: str, tmp: Path) -> str:
    path = tmp / "key.pub"
    path.write_text(public_key.strip() + "\n")
    out = subprocess.run([require_binary("ssh-keygen"), "-l", "-f", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return out.split()[1]


@pytest.fixture
def rotation_env(tmp_path: Path) -> Iterator[Callable[..., RotationEnv]]:
    """A factory: the auth service, a proxy, the named nodes and a logged-in user ``alice``."""
    made: list[Cluster] = []

    def make(*node_names: str) -> RotationEnv:
        cluster = Cluster(tmp_path, CLUSTER, {"presence_ttl": "10s"})
        made.append(cluster)
        cluster.start()
        proxy, web = cluster.start_proxy(cluster.add_token(roles="proxy")["token"])
        env = RotationEnv(tmp_path, cluster, proxy, web,
                          password_file=tmp_path / "password", otp_file=tmp_path / "otp-secret")
        for name in node_names:
            env.start_node(name)
        env.password_file.write_text(PASSWORD + "\n")
        sign_up_and_log_in(cluster, web, "alice", roles="access", logins="root", home=tmp_path / "tsh-home",
                           password_file=env.password_file, otp_file=env.otp_file)

        def listed() -> bool:
            out = env.tsh("ls", "--format=json")
            return out.returncode == 0 and {n["hostname"] for n in json.loads(out.stdout)} >= set(node_names)

        wait_for(listed, what="tsh ls to show every node")
        return env

    try:
        yield make
    finally:
        for cluster in made:
            cluster.kill_all()
