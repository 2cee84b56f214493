"""OpenSSH nodes through the proxy, end to end on loopback: an auth service in proxy recording
mode, a proxy (`teleport start`), a real `sshd` started here that trusts the user CA
(`tctl auth export --type=user`) and serves a host certificate from `tctl auth sign --host`,
registered with `tctl create` of a `kind: node, sub_kind: openssh` resource. Users sign up and log
in with `tsh`; they reach the sshd with `tsh ssh` and with OpenSSH through `tsh config`; the proxy
terminates their SSH, logs in with a per-session certificate and records. A role that denies the
node's labels is refused before the proxy dials; an sshd whose host certificate is from another
CA is refused with a message naming it. The tests run in order on one cluster.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Cluster, free_port, require_binary, sign_up_and_log_in, wait_for

pytestmark = pytest.mark.interop

BIN = Path(sys.executable).parent
TSH = str(BIN / "tsh")
CLUSTER = "ossh.test"
PASSWORD = "correct horse battery staple"


@dataclass
class Env:
    root: Path
    cluster: Cluster
    web: str
    sshd: list[subprocess.Popen[str]]

    def home(self, user: str) -> Path:
        return self.root / f"tsh-{user}"

    def env(self, user: str) -> dict[str, str]:
        import os

        env = {k: v for k, v in os.environ.items() if not k.startswith("TELEPORT")}
        env["TELEPORT_HOME"] = str(self.home(user))
        return env

    def tsh(self, user: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([TSH, *args], env=self.env(user), cwd=self.root, capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)

    def add_user(self, name: str, roles: str) -> None:
        sign_up_and_log_in(self.cluster, self.web, name, roles=roles, logins="root", home=self.home(name),
                           password_file=self.root / "password", otp_file=self.root / f"otp-{name}")

    def create(self, resource: dict[str, Any], *flags: str) -> subprocess.CompletedProcess[str]:
        path = self.root / f"resource-{len(list(self.root.glob('resource-*')))}.yaml"
        path.write_text(yaml.safe_dump(resource))
        return self.cluster.tctl("create", *flags, str(path), check=False)


def node_resource(name: str, port: int, **labels: str) -> dict[str, Any]:
    return {"kind": "node", "sub_kind": "openssh", "version": "v2",
            "metadata": {"name": name, "labels": labels},
            "spec": {"addr": f"127.0.0.1:{port}", "hostname": name}}


def start_sshd(root: Path, name: str, host_key: Path, user_ca: Path) -> tuple[subprocess.Popen[str], int]:
    sshd = require_binary("/usr/sbin/sshd")
    port = free_port()
    config = root / f"sshd_config-{name}"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nHostCertificate {host_key}-cert.pub\n"
        f"TrustedUserCAKeys {user_ca}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "AuthorizedKeysFile none\nPermitRootLogin prohibit-password\nUsePAM no\nPidFile none\n"
        "AllowTcpForwarding yes\nSubsystem sftp internal-sftp\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    check = subprocess.run([sshd, "-t", "-f", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    server = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL, text=True)

    def listening() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_for(listening, what=f"sshd {name} to listen")
    return server, port


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    require_binary("/usr/sbin/sshd")
    root = tmp_path_factory.mktemp("openssh")
    cluster = Cluster(root, CLUSTER, {"presence_ttl": "10s", "session_recording": "proxy"})
    servers: list[subprocess.Popen[str]] = []
    try:
        cluster.start()
        token = cluster.add_token(roles="proxy", ttl="10m")["token"]
        _, web = cluster.start_proxy(token)
        env = Env(root, cluster, web, servers)
        (root / "password").write_text(PASSWORD + "\n")
        # the sshd trusts the cluster: the user CA, and a host certificate from the host CA
        user_ca = root / "user_ca.pub"
        user_ca.write_text(cluster.tctl("auth", "export", "--type=user").stdout)
        cluster.tctl("auth", "sign", "--host=sshd1,127.0.0.1", f"--out={root}/sshd1_key")
        server, port = start_sshd(root, "sshd1", root / "sshd1_key", user_ca)
        servers.append(server)
        made = env.create(node_resource("sshd1", port, env="legacy", team="ops"))
        assert made.returncode == 0, made.stderr
        assert "created" in made.stdout
        env.add_user("alice", "access,auditor")
        deny = {"kind": "role", "version": "v1", "metadata": {"name": "no-legacy"},
                "spec": {"deny": {"node_labels": {"env": "legacy"}}}}
        (root / "deny.yaml").write_text(yaml.safe_dump(deny))
        cluster.tctl("create", str(root / "deny.yaml"))
        env.add_user("bob", "access,no-legacy")

        def listed() -> bool:
            out = env.tsh("alice", "ls", "--format=json")
            return out.returncode == 0 and "sshd1" in {n["hostname"] for n in json.loads(out.stdout)}

        wait_for(listed, what="tsh ls to show sshd1")
        yield env
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=10)
        cluster.kill_all()


def test_the_openssh_node_is_listed_with_its_labels_and_kind(env: Env) -> None:
    nodes = {n["hostname"]: n for n in json.loads(env.tsh("alice", "ls", "--format=json").stdout)}
    assert nodes["sshd1"]["sub_kind"] == "openssh"
    assert nodes["sshd1"]["labels"] == {"env": "legacy", "team": "ops"}
    text = env.tsh("alice", "ls").stdout
    assert "openssh" in text and "env=legacy" in text
    listed = {n["id"]: n for n in env.cluster.tctl_json("nodes", "ls", "--format=json")}
    assert listed["sshd1"]["sub_kind"] == "openssh" and listed["sshd1"]["expires"] == ""
    # read back in the resource's own shape; the same file again changes nothing
    got = env.cluster.tctl_json("get", "node/sshd1", "--format=json")
    assert got[0]["spec"]["hostname"] == "sshd1" and got[0]["sub_kind"] == "openssh"
    again = env.create(got[0])
    assert again.returncode == 0 and "unchanged" in again.stdout


def test_tsh_ssh_and_openssh_reach_it_through_the_proxy(env: Env) -> None:
    result = env.tsh("alice", "ssh", "root@sshd1", "hostname")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == socket.gethostname()
    assert env.tsh("alice", "ssh", "root@sshd1", "exit 7").returncode == 7
    config = env.root / "ssh_config"
    config.write_text(env.tsh("alice", "config").stdout)
    ssh = subprocess.run(["ssh", "-F", str(config), "-o", "BatchMode=yes", f"root@sshd1.{CLUSTER}", "echo via-openssh"],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert ssh.returncode == 0, ssh.stderr
    assert ssh.stdout.strip() == "via-openssh"


def test_a_pty_session_is_recorded_by_the_proxy_and_plays(env: Env) -> None:
    result = env.tsh("alice", "ssh", "-t", "root@sshd1", "echo hello-from-openssh")
    assert result.returncode == 0, result.stderr

    def recorded() -> list[dict[str, Any]]:
        out = env.tsh("alice", "recordings", "ls", "--format=json")
        return [r for r in json.loads(out.stdout or "[]") if r.get("node") == "sshd1"] if out.returncode == 0 else []

    records = wait_for(recorded, what="the proxy's recording to be uploaded")
    record = records[-1]
    assert (record["user"], record["login"]) == ("alice", "root")
    played = env.tsh("alice", "play", record["session_id"], "--speed=50x", "--skip-idle-time")
    assert played.returncode == 0, played.stderr
    assert "hello-from-openssh" in played.stdout
    events = env.cluster.tctl_json("audit", "ls", "--since=1h", "--format=json")
    uploads = [e for e in events if e["event"] == "session.upload" and e.get("session_id") == record["session_id"]]
    assert uploads and uploads[0]["user"] == "alice"


def test_a_role_denying_its_labels_is_refused_before_the_proxy_dials(env: Env) -> None:
    result = env.tsh("bob", "ssh", "root@sshd1", "hostname")
    assert result.returncode != 0
    assert socket.gethostname() not in result.stdout
    assert "no-legacy" in result.stderr or "denied" in result.stderr.lower(), result.stderr
    denied = [e for e in env.cluster.tctl_json("audit", "ls", "--since=1h", "--format=json")
              if e["event"] == "auth.rejected" and e.get("user") == "bob"]
    assert denied and "no-legacy" in denied[-1]["reason"] and denied[-1]["target_node"] == "sshd1"


def test_a_host_certificate_from_another_ca_is_refused_naming_the_host(env: Env) -> None:
    root = env.root
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "rogue_ca")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "rogue_key")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-s", str(root / "rogue_ca"), "-h", "-I", "rogue", "-n", "rogue,127.0.0.1",
                    str(root / "rogue_key.pub")], check=True)
    server, port = start_sshd(root, "rogue", root / "rogue_key", root / "user_ca.pub")
    env.sshd.append(server)
    assert env.create(node_resource("rogue", port, env="dev")).returncode == 0
    wait_for(lambda: "rogue" in env.tsh("alice", "ls").stdout, what="tsh ls to show rogue")
    result = env.tsh("alice", "ssh", "root@rogue", "hostname")
    assert result.returncode != 0
    assert "rogue" in result.stderr and "host certificate" in result.stderr, result.stderr
    assert "tctl auth sign" in result.stderr  # the fix


def test_bad_resources_are_refused_and_store_nothing(env: Env) -> None:
    for resource, words in (
        (node_resource("bad name!", 22), "metadata.name"),
        ({**node_resource("meta", 22), "spec": {"addr": "169.254.169.254:80"}}, "link-local"),
        ({**node_resource("noport", 22), "spec": {"addr": "10.0.0.5"}}, "port"),
        ({**node_resource("auth", 22), "spec": {"addr": env.cluster.addr}}, "auth service"),
    ):
        result = env.create(resource)
        assert result.returncode != 0
        assert words in result.stderr, result.stderr
    names = {n["id"] for n in env.cluster.tctl_json("nodes", "ls", "--format=json")}
    assert not names & {"bad name!", "meta", "noport", "auth"}
    # an existing name is not overwritten without -f
    clash = env.create(node_resource("sshd1", 2222))
    assert clash.returncode != 0 and "tctl create -f" in clash.stderr


def test_removing_it_stops_routing(env: Env) -> None:
    removed = env.cluster.tctl("rm", "node/rogue")
    assert "rogue" in removed.stdout
    assert "rogue" not in {n["id"] for n in env.cluster.tctl_json("nodes", "ls", "--format=json")}

    def gone() -> bool:
        result = env.tsh("alice", "ssh", "root@rogue", "hostname")
        return result.returncode != 0 and "not registered" in result.stderr

    wait_for(gone, what="the proxy to stop routing to rogue")
