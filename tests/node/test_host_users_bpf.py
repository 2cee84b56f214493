"""Host users from roles and BPF enhanced recording, end to end with the real daemons.

An auth service, a proxy and a node (`teleport start`) on loopback; users made with
`tctl users add` sign up and log in with `tsh`. The node runs in a private mount namespace
(`unshare --mount`) with a copy of /etc bind-mounted over /etc and tmpfs on /home, /var/mail
and /run/sudo, so the accounts, groups and sudoers files it creates never touch this machine's
own (the test checks that the real /etc/passwd is unchanged). Commands inside the node's
namespace run through `nsenter --mount`.

The enhanced recording tests need the real kernel (root, BTF, BPF): they are skipped with the
node's own reason where it cannot load the program. No timing assertions.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Cluster, Node, next_loopback_ip, require_binary, sign_up_and_log_in, wait_for

TSH = str(Path(sys.executable).parent / "tsh")
PASSWORD = "correct horse battery staple"
CLUSTER = "hostusers.test"

#: Runs the node with private copies of what host users change (see the module docstring).
NAMESPACE_SETUP = r"""
set -eu
root=$1; shift
mount --make-rprivate /
cp -a /etc "$root/etc"
mount --bind "$root/etc" /etc
mount -t tmpfs tmpfs /home
mount -t tmpfs tmpfs /var/mail
mkdir -p /run/sudo && mount -t tmpfs tmpfs /run/sudo
exec "$@"
"""

ONCALL_ROLE = {
    "kind": "role",
    "version": "v1",
    "metadata": {"name": "oncall", "description": "sudo on prod nodes, accounts made at login"},
    "spec": {
        "allow": {
            "logins": ["{{internal.logins}}"],
            "node_labels": {"env": "prod"},
            "host_groups": ["oncall"],
            "host_sudoers": ["ALL=(ALL) NOPASSWD: ALL"],
        },
        "options": {"create_host_user_mode": "keep", "enhanced_recording": ["command", "network", "disk"]},
    },
}
DROP_ROLE = {
    "kind": "role",
    "version": "v1",
    "metadata": {"name": "visitor"},
    "spec": {
        "allow": {"logins": ["{{internal.logins}}"], "node_labels": {"env": "prod"}},
        "options": {"create_host_user_mode": "insecure-drop", "enhanced_recording": ["command"]},
    },
}
BAD_SUDOERS_ROLE = {
    "kind": "role",
    "version": "v1",
    "metadata": {"name": "badsudo"},
    "spec": {
        "allow": {
            "logins": ["{{internal.logins}}"],
            "node_labels": {"env": "prod"},
            "host_sudoers": ["ALL=(ALL NOPASSWD: ALL"],  # one line, but not sudoers syntax
        },
        "options": {"create_host_user_mode": "keep"},
    },
}


@dataclass
class Env:
    root: Path
    cluster: Cluster
    web: str
    node: Node
    burst: Node
    homes: dict[str, Path] = field(default_factory=dict)

    def tsh(self, user: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TELEPORT")}
        env["TELEPORT_HOME"] = str(self.homes[user])
        return subprocess.run([TSH, *args], env=env, cwd=self.root, capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)

    def add_user(self, name: str, roles: str, logins: str) -> None:
        home = self.homes[name] = self.root / f"tsh-{name}"
        sign_up_and_log_in(self.cluster, self.web, name, roles=roles, logins=logins, home=home,
                           password_file=self.root / "password", otp_file=self.root / f"otp-{name}")

    def in_node(self, *argv: str, node: Node | None = None) -> subprocess.CompletedProcess[str]:
        """``argv`` in the node's mount namespace (its /etc, /home)."""
        daemon = (node or self.node).daemon
        assert daemon is not None
        return subprocess.run(["nsenter", "-t", str(daemon.pid), "--mount", "--", *argv],
                              capture_output=True, text=True, timeout=60)

    def audit(self, *args: str) -> list[dict[str, Any]]:
        return self.cluster.tctl_json("audit", "ls", "--since=1h", *args)

    def bpf_off_reason(self, node: Node | None = None) -> str | None:
        for line in (node or self.node).log().splitlines():
            if "enhanced session recording is off" in line:
                return line.split("enhanced session recording is off:", 1)[1].strip()
        return None


def _login() -> str:
    return "tp" + secrets.token_hex(4)


def _start_node(cluster: Cluster, name: str, token: str, pin: str, *, command_buffer_size: int) -> Node:
    """A node labelled env=prod with enhanced recording on, in its own private mount namespace."""
    node = Node(cluster, name, next_loopback_ip(), {"ssh_service": {
        "labels": {"env": "prod"},
        "enhanced_recording": {"enabled": True, "command_buffer_size": command_buffer_size,
                               "disk_buffer_size": 256, "network_buffer_size": 8},
    }})
    ns_root = cluster.root / f"{name}-ns"
    ns_root.mkdir()
    node.start(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", NAMESPACE_SETUP, "sh",
                str(ns_root), *cluster.node_argv(name, token=token, pins=(pin,))])
    return node


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    if os.geteuid() != 0:
        pytest.skip("host users need root (useradd) and a private mount namespace")
    for binary in ("unshare", "nsenter", "useradd", "visudo", "sudo"):
        require_binary(binary)
    root = tmp_path_factory.mktemp("hostusers")
    (root / "password").write_text(PASSWORD + "\n")
    cluster = Cluster(root, CLUSTER, {"presence_ttl": "10s"})
    try:
        cluster.start()
        token = cluster.add_token(roles="node,proxy", ttl="10m")["token"]
        pin = cluster.pin()
        _, web = cluster.start_proxy(token)
        node = _start_node(cluster, "prod1", token, pin, command_buffer_size=64)
        # one page of command events (two events): a burst of processes overflows it
        burst = _start_node(cluster, "burst1", token, pin, command_buffer_size=1)
        for doc in (ONCALL_ROLE, DROP_ROLE, BAD_SUDOERS_ROLE):
            path = root / f"{doc['metadata']['name']}.yaml"
            path.write_text(yaml.safe_dump(doc))
            cluster.tctl("create", str(path))
        e = Env(root, cluster, web, node, burst)

        def listed() -> bool:
            return {"prod1", "burst1"} <= {n["hostname"] for n in cluster.nodes()}

        wait_for(listed, what="the node to join")
        yield e
    finally:
        cluster.kill_all()


def _real_passwd() -> str:
    return Path("/etc/passwd").read_text()


def test_keep_creates_the_account_with_sudo_and_records_its_commands(env: Env) -> None:
    login = _login()
    env.add_user("alice", "oncall,auditor", login)
    assert env.in_node("getent", "passwd", login).returncode == 2  # not there before

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    accepted = threading.Thread(target=lambda: listener.accept()[0].close(), daemon=True)
    accepted.start()
    marker = "outsider-" + secrets.token_hex(4)
    command = (f"sudo -n true && echo SUDO-OK; id -nG; cat /etc/hostname; ls /; "
               f"exec 3<>/dev/tcp/127.0.0.1/{port}; echo SID=$SSH_SESSION_ID")
    result = env.tsh("alice", "ssh", f"{login}@prod1", command)
    # a process of the host, not of the session, at the same time
    subprocess.run(["ls", f"/tmp/{marker}"], capture_output=True, check=False)
    listener.close()
    assert result.returncode == 0, result.stderr
    assert "SUDO-OK" in result.stdout
    assert "oncall" in result.stdout.split() and "teleport-system" in result.stdout.split()
    sid = result.stdout.split("SID=")[1].split()[0]

    # the account exists in the node's namespace only, with its checked sudoers file
    assert env.in_node("getent", "passwd", login).returncode == 0
    sudoers = env.in_node("cat", f"/etc/sudoers.d/teleport-{login}")
    assert sudoers.stdout == f"{login} ALL=(ALL) NOPASSWD: ALL\n"
    # (other tests may add their own accounts to the real file meanwhile: look for this one)
    assert f"\n{login}:" not in "\n" + _real_passwd()
    assert not Path(f"/etc/sudoers.d/teleport-{login}").exists()

    created = wait_for(lambda: [e for e in env.audit("--type=host_user.create") if e.get("login") == login],
                       what="host_user.create in the audit log")
    assert created[0]["user"] == "alice" and created[0]["groups"] == ["oncall"]
    assert created[0]["sudoers"] == ["ALL=(ALL) NOPASSWD: ALL"] and created[0]["mode"] == "keep"

    # a second login of the same account changes nothing (and creates nothing)
    assert env.tsh("alice", "ssh", f"{login}@prod1", "true").returncode == 0
    assert len([e for e in env.audit("--type=host_user.") if e.get("login") == login]) == 1

    reason = env.bpf_off_reason()
    if reason is not None:
        pytest.skip(f"enhanced recording cannot run here: {reason}")

    def commands() -> list[dict[str, Any]]:
        found = [e for e in env.audit("--type=session.command") if e.get("session_id") == sid]
        return found if {"sudo", "cat", "ls"} <= {Path(e["path"]).name for e in found} else []

    found = wait_for(commands, what="the session's commands in tctl audit ls --type=session.command")
    by_name = {Path(e["path"]).name: e for e in found}
    assert by_name["cat"]["argv"] == ["cat", "/etc/hostname"] and by_name["cat"]["return_code"] == 0
    assert by_name["ls"]["argv"] == ["ls", "/"]
    assert all(e["user"] == "alice" and e["login"] == login for e in found)
    assert all(e["pid"] > 0 and e["ppid"] > 0 for e in found)
    everything = env.audit("--type=session.")
    assert not [e for e in everything if marker in json.dumps(e)]  # nothing from other processes
    network = [e for e in everything if e["event"] == "session.network" and e.get("session_id") == sid]
    assert [(e["dst_addr"], e["dst_port"], e["version"]) for e in network] == [("127.0.0.1", port, 4)]
    disk = [e for e in everything if e["event"] == "session.disk" and e.get("session_id") == sid]
    assert "/etc/hostname" in {e["path"] for e in disk}

    # the text listing filters on the type too
    text = env.cluster.tctl("audit", "ls", "--since=1h", "--type=session.command").stdout
    assert sid in text and "session.disk" not in text


def test_an_existing_account_the_node_did_not_create_is_refused_untouched(env: Env) -> None:
    env.add_user("mallory", "oncall", "daemon")
    before = env.in_node("getent", "group").stdout, env.in_node("getent", "passwd", "daemon").stdout
    result = env.tsh("mallory", "ssh", "daemon@prod1", "true")
    assert result.returncode != 0  # tsh says access denied; the reason is in the audit log
    assert (env.in_node("getent", "group").stdout, env.in_node("getent", "passwd", "daemon").stdout) == before
    assert not env.in_node("test", "-e", "/etc/sudoers.d/teleport-daemon").returncode == 0
    refused = wait_for(lambda: [e for e in env.audit("--type=host_user.rejected") if e.get("login") == "daemon"],
                       what="host_user.rejected in the audit log")
    assert "existing account the node did not create" in refused[0]["reason"]
    assert "teleport-system" in refused[0]["reason"] and refused[0]["user"] == "mallory"


def test_sudoers_that_visudo_rejects_refuses_the_login_and_writes_nothing(env: Env) -> None:
    login = _login()
    env.add_user("bob", "badsudo", login)
    result = env.tsh("bob", "ssh", f"{login}@prod1", "true")
    assert result.returncode != 0
    assert env.in_node("getent", "passwd", login).returncode == 2  # no account left behind
    listing = env.in_node("ls", "-a", "/etc/sudoers.d").stdout.split()
    assert not [name for name in listing if login in name]  # neither the file nor its temporary
    refused = wait_for(lambda: [e for e in env.audit("--type=host_user.rejected") if e.get("login") == login],
                       what="host_user.rejected in the audit log")
    assert "rejected by visudo" in refused[0]["reason"]


def test_insecure_drop_removes_the_account_when_its_last_session_ends(env: Env) -> None:
    login = _login()
    env.add_user("carol", "visitor", login)
    result = env.tsh("carol", "ssh", f"{login}@prod1", "id -un")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == login
    wait_for(lambda: env.in_node("getent", "passwd", login).returncode == 2, what="the account to be removed")
    events = wait_for(
        lambda: (found if len(found := [e["event"] for e in env.audit("--type=host_user.")
                                        if e.get("login") == login]) == 2 else None),
        what="host_user.create and host_user.delete")
    assert events == ["host_user.create", "host_user.delete"]
    assert f"\n{login}:" not in "\n" + _real_passwd()


def test_concurrent_first_logins_create_the_account_once(env: Env) -> None:
    login = _login()
    env.add_user("dave", "oncall", login)
    results: list[subprocess.CompletedProcess[str]] = []
    threads = [threading.Thread(target=lambda: results.append(env.tsh("dave", "ssh", f"{login}@prod1", "id -un")))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.stdout.strip() for r in results] == [login] * 4, [r.stderr for r in results]
    created = [e for e in env.audit("--type=host_user.create") if e.get("login") == login]
    assert len(created) == 1
    assert env.in_node("grep", "-c", f"^{login}:", "/etc/passwd").stdout.strip() == "1"


def test_a_burst_beyond_the_buffers_is_counted_as_lost(env: Env) -> None:
    reason = env.bpf_off_reason(env.burst)
    if reason is not None:
        pytest.skip(f"enhanced recording cannot run here: {reason}")
    login = _login()
    env.add_user("erin", "visitor", login)  # command events only
    # 3000 short processes, 4 at a time, against a ring buffer of one page (two events)
    burst = "seq 3000 | xargs -P 4 -n 50 sh -c 'for i; do /bin/true; done' sh; echo SID=$SSH_SESSION_ID"
    result = env.tsh("erin", "ssh", f"{login}@burst1", burst)
    assert result.returncode == 0, result.stderr  # the session neither stalled nor failed
    sid = result.stdout.split("SID=")[1].split()[0]
    lost = wait_for(lambda: [e for e in env.audit("--type=session.enhanced_lost") if e.get("session_id") == sid],
                    timeout=120, what="session.enhanced_lost for the burst")
    recorded = [e for e in env.audit("--type=session.command") if e.get("session_id") == sid]
    assert lost[0]["command"] + lost[0]["queue"] > 0
    # every process is accounted for: recorded or counted as lost
    trues = [e for e in recorded if e["path"] == "/bin/true"]
    assert len(trues) + lost[0]["command"] + lost[0]["queue"] >= 3000
    assert env.burst.daemon is not None and env.burst.daemon.alive()
    # and the node still records the next session
    after = env.tsh("erin", "ssh", f"{login}@burst1", "echo SID=$SSH_SESSION_ID")
    assert after.returncode == 0, after.stderr
    next_sid = after.stdout.split("SID=")[1].split()[0]
    wait_for(lambda: [e for e in env.audit("--type=session.command") if e.get("session_id") == next_sid],
             timeout=120, what="the next session's commands")


def test_tsh_play_shows_the_enhanced_events_beside_the_recording(env: Env) -> None:
    reason = env.bpf_off_reason()
    if reason is not None:
        pytest.skip(f"enhanced recording cannot run here: {reason}")
    login = _login()
    env.add_user("frank", "oncall,auditor", login)
    result = env.tsh("frank", "ssh", "-t", f"{login}@prod1", "cat /etc/hostname; echo SID=$SSH_SESSION_ID")
    assert result.returncode == 0, result.stderr
    sid = result.stdout.split("SID=")[1].split()[0]

    def recorded() -> dict[str, Any] | None:
        played = env.tsh("frank", "play", sid, "--format=json")
        return json.loads(played.stdout) if played.returncode == 0 else None

    recording = wait_for(recorded, timeout=60, what="the recording to reach the auth service")
    enhanced = [e["event"] for e in recording["events"] if e["type"] == "enhanced"]
    cats = [e for e in enhanced if e["event"] == "session.command" and e["argv"] == ["cat", "/etc/hostname"]]
    assert cats and cats[0]["session_id"] == sid
    played = env.tsh("frank", "play", sid, "--speed=50x", "--skip-idle-time")
    assert played.returncode == 0, played.stderr
    assert "[command]" in played.stderr and "cat /etc/hostname" in played.stderr
    assert "[command]" not in played.stdout  # the terminal replay stays as it was


def test_an_account_the_node_made_follows_its_roles(env: Env) -> None:
    login = _login()
    role = {**ONCALL_ROLE, "metadata": {"name": "oncall-follow"}}
    role["spec"] = {**ONCALL_ROLE["spec"], "allow": {**ONCALL_ROLE["spec"]["allow"], "host_groups": ["oncall"]}}
    path = env.root / "oncall-follow.yaml"
    path.write_text(yaml.safe_dump(role))
    env.cluster.tctl("create", "--force", str(path))
    env.add_user("grace", "oncall-follow", login)
    assert env.tsh("grace", "ssh", f"{login}@prod1", "true").returncode == 0
    # the role changes: another group, no sudo
    role["spec"]["allow"] = {**role["spec"]["allow"], "host_groups": ["oncall", "ops"], "host_sudoers": []}
    path.write_text(yaml.safe_dump(role))
    env.cluster.tctl("create", "--force", str(path))

    def groups() -> list[str] | None:
        result = env.tsh("grace", "ssh", f"{login}@prod1", "id -nG")
        return result.stdout.split() if result.returncode == 0 and "ops" in result.stdout.split() else None

    # the node's role cache follows the cluster's roles within its refresh period
    found = wait_for(groups, timeout=60, what="the account to get the new group")
    assert {"oncall", "ops", "teleport-system"} <= set(found)
    assert env.in_node("test", "-e", f"/etc/sudoers.d/teleport-{login}").returncode == 1  # sudo taken away
    updates = [e for e in env.audit("--type=host_user.update") if e.get("login") == login]
    assert updates and set(updates[-1]["changed"]) == {"groups", "sudoers"}
