"""Joining a session in progress to watch it (`tsh join SESSION_ID`, observer mode), end to end:
real `teleport start` auth, proxy and node on loopback; alice's `tsh ssh` shell and the watchers'
`tsh join` run in pseudo-terminals under pexpect.

No timing assertions: waits are bounded polls or pexpect's bounded expects.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pexpect
import pytest

from tests.conftest import Cluster, sign_up_and_log_in, tsh_env, wait_for

TSH = str(Path(sys.executable).parent / "tsh")
PASSWORD = "correct horse battery staple"


@dataclass
class Env:
    root: Path
    cluster: Cluster

    def home(self, user: str) -> Path:
        return self.root / f"tsh-{user}"

    def spawn(self, user: str, *args: str) -> pexpect.spawn:
        return pexpect.spawn(TSH, list(args), env=tsh_env(self.home(user), TERM="xterm"), cwd=str(self.root),
                             dimensions=(30, 100), timeout=30, encoding="utf-8")

    def audit(self) -> list[dict[str, Any]]:
        return list(self.cluster.tctl_json("audit", "ls", "--since=1h"))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("join")
    cluster = Cluster(root, "join.test")
    try:
        cluster.start()
        token = cluster.add_token(roles="node,proxy", ttl="10m")["token"]
        _, web = cluster.start_proxy(token)
        cluster.start_node("node1", token=token, pins=(cluster.pin(),))
        password = root / "password"
        password.write_text(PASSWORD + "\n")
        env = Env(root, cluster)
        for user, roles in (("alice", "access"), ("bob", "access,auditor"), ("carol", "access")):
            sign_up_and_log_in(cluster, web, user, roles=roles, logins="root", home=env.home(user),
                               password_file=password, otp_file=root / f"otp-{user}")
        wait_for(lambda: "node1" in {n["hostname"] for n in cluster.nodes()}, what="node1 to join")
        yield env
    finally:
        cluster.kill_all()


class Shell:
    """alice's interactive shell on node1, with a prompt to wait for and its session ID."""

    def __init__(self, env: Env) -> None:
        self.child = env.spawn("alice", "ssh", "root@node1")
        self.child.expect(r"[#$] ")
        self.child.sendline("export PS1='READY''$ '")
        self.child.expect("READY\\$ ")
        self.run("echo SID=$SSH_SESSION_ID")
        match = re.search(r"SID=([0-9a-f-]{36})", str(self.child.before))
        assert match
        self.session_id = match.group(1)

    def run(self, command: str) -> str:
        self.child.sendline(command)
        self.child.expect("READY\\$ ")
        return str(self.child.before)


def test_an_auditor_watches_a_session_and_cannot_type_into_it(env: Env, tmp_path: Path) -> None:
    shell = Shell(env)
    watcher = None
    try:
        shell.run("echo before-$((40+2))-join")
        watcher = env.spawn("bob", "join", shell.session_id)
        watcher.expect("before-42-join")  # the recent screen, replayed on joining
        shell.run("echo live-$((6*7))-output")
        watcher.expect("live-42-output")  # then the live output
        # bob's keystrokes never reach alice's shell
        marker = tmp_path / "bob-was-here"
        watcher.send(f"touch {marker}\r")
        out = shell.run("echo after-$((1+1))")
        assert "after-2" in out and "bob-was-here" not in out
        watcher.expect("after-2")
        assert not marker.exists()
        # Ctrl-C leaves; alice's session goes on
        watcher.sendcontrol("c")
        watcher.expect(pexpect.EOF)
        watcher.close()
        assert watcher.exitstatus == 0
        assert "still-3" in shell.run("echo still-$((1+2))")

        # joined again, the watch ends with the session
        watcher = env.spawn("bob", "join", shell.session_id)
        watcher.expect("still-3")
        shell.child.sendline("exit")
        shell.child.expect(pexpect.EOF)
        watcher.expect("ended")
        watcher.expect(pexpect.EOF)
    finally:
        for child in (shell.child, watcher):
            if child is not None and child.isalive():
                child.close(force=True)

    def audited() -> bool:
        events = [e for e in env.audit() if e.get("session_id") == shell.session_id]
        joins = [e for e in events if e["event"] == "session.join"]
        leaves = [e for e in events if e["event"] == "session.leave"]
        return len(joins) == 2 and len(leaves) == 2 and all(e["user"] == "bob" for e in joins + leaves)

    wait_for(audited, what="two session.join and session.leave events by bob")


def test_a_user_without_the_right_is_refused_and_audited(env: Env) -> None:
    shell = Shell(env)
    try:
        # carol may not list sessions either: she names the node
        denied = env.spawn("carol", "join", "--node=node1", shell.session_id)
        denied.expect(pexpect.EOF)
        denied.close()
        assert denied.exitstatus != 0
        assert "may not join the session of alice" in str(denied.before)
        assert "auditor" in str(denied.before)
        assert "ok-5" in shell.run("echo ok-$((2+3))")
        # the session's own user may join it (she names the node: her roles may not list sessions)
        own = env.spawn("alice", "join", "--node=node1", shell.session_id)
        own.expect("ok-5")
        own.sendcontrol("c")
        own.expect(pexpect.EOF)
        # an ID that is not a session ID is refused before anything is asked
        bad = env.spawn("bob", "join", "../etc")
        bad.expect(pexpect.EOF)
        bad.close()
        assert bad.exitstatus != 0 and "session ID" in str(bad.before)
    finally:
        if shell.child.isalive():
            shell.child.close(force=True)

    def audited() -> bool:
        return any(e["event"] == "session.rejected" and e.get("kind") == "join" and e["user"] == "carol"
                   and e.get("session_id") == shell.session_id for e in env.audit())

    wait_for(audited, what="carol's refused join audited")
