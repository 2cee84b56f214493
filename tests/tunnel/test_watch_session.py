"""Watching a session on a tunnel node (`tsh join`): the join reaches the node through its reverse
tunnel like any session, and the watcher sees the session's screen and its live output."""

from __future__ import annotations

import sys
from pathlib import Path

import pexpect

from tests.conftest import tsh_env
from tests.tunnel.conftest import TunnelEnv

TSH = str(Path(sys.executable).parent / "tsh")


def test_join_a_session_on_a_tunnel_node(tunnel_env: TunnelEnv) -> None:
    env = tunnel_env
    proxy = env.start_proxy("proxy1")
    env.start_tunnel_node("tnode1", proxy.web)
    env.wait_registered("tnode1")
    env.login(roles="access,auditor")

    def spawn(*args: str) -> pexpect.spawn:
        return pexpect.spawn(TSH, list(args), env=tsh_env(env.home, TERM="xterm"), cwd=str(env.root),
                             dimensions=(30, 100), timeout=30, encoding="utf-8")

    shell = spawn("ssh", "root@tnode1")
    watcher = None
    try:
        shell.expect(r"[#$] ")
        shell.sendline("echo SID=$SSH_SESSION_ID tunnel-$((40+2))")
        shell.expect(r"SID=([0-9a-f-]{36}) tunnel-42")
        session_id = shell.match.group(1)
        watcher = spawn("join", session_id)
        watcher.expect("tunnel-42")
        shell.sendline("echo live-$((6*7))")
        watcher.expect("live-42")
        watcher.send("~.")
        watcher.expect(pexpect.EOF)
        shell.sendline("echo still-$((1+2))")
        shell.expect("still-3")  # leaving did not affect the session
    finally:
        for child in (shell, watcher):
            if child is not None and child.isalive():
                child.close(force=True)
