"""The node SSH service with an asyncssh client: sessions, refusals, forwarding, identity."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncssh
import pytest

from teleport_runtime.ca import (
    CAType,
    generate_host_ssh_cert,
    generate_ssh_keypair,
    new_cert_authority,
)
from teleport_runtime.errors import BadParameter
from teleport_runtime.node.ssh_server import NodeSSHServer
from tests.conftest import async_wait_for

from .conftest import CLUSTER, HOST_UUID, NODENAME, WAIT, FakeRecorder, access_role, make_role


async def run(conn: asyncssh.SSHClientConnection, command: str, **kwargs) -> asyncssh.SSHCompletedProcess:
    return await asyncio.wait_for(conn.run(command, **kwargs), WAIT)


async def read_until(stream: asyncssh.SSHReader, needle: str, seen: list[str]) -> str:
    """Read ``stream`` until the text read so far (kept in ``seen``) contains ``needle``."""

    async def loop() -> str:
        while needle not in "".join(seen):
            chunk = await stream.read(4096)
            if not chunk:
                raise AssertionError(f"EOF before {needle!r}; got {''.join(seen)!r}")
            seen.append(chunk)
        text = "".join(seen)
        seen.clear()
        return text

    return await asyncio.wait_for(loop(), WAIT)


# ---------------------------------------------------------------------------- exec


async def test_exec_output_and_exit_status(node, issue, os_login):
    key = issue([os_login])
    async with await node.connect(os_login, key) as conn:
        result = await run(conn, "echo ok")
        assert result.stdout == "ok\n"
        assert result.exit_status == 0
        result = await run(conn, "exit 3")
        assert result.exit_status == 3
        result = await run(conn, "echo oops >&2; exit 1")
        assert (result.stdout, result.stderr, result.exit_status) == ("", "oops\n", 1)


async def test_exec_runs_as_the_os_login(node, issue, os_login, os_user):
    key = issue([os_login])
    async with await node.connect(os_login, key) as conn:
        result = await run(conn, 'id -un; id -u; id -g; pwd; echo "$HOME|$USER|$LOGNAME|$SHELL"')
        lines = result.stdout.splitlines()
        assert lines[0] == os_login
        assert lines[1:3] == [str(os_user.pw_uid), str(os_user.pw_gid)]
        assert lines[3] == os_user.pw_dir
        assert lines[4] == f"{os_user.pw_dir}|{os_login}|{os_login}|/bin/bash"
        groups = await run(conn, "id -G")
        expected = sorted(os.getgrouplist(os_login, os_user.pw_gid))
        assert sorted(int(g) for g in groups.stdout.split()) == expected
        teleport_env = await run(conn, 'echo "$SSH_TELEPORT_USER $SSH_TELEPORT_CLUSTER_NAME"')
        assert teleport_env.stdout == f"alice {CLUSTER}\n"


async def test_env_requests_are_filtered(node, issue, os_login):
    key = issue([os_login])
    async with await node.connect(os_login, key) as conn:
        result = await run(
            conn,
            'echo "$LANG|$LC_TIME|$LD_PRELOAD|$PATH"',
            env={"LANG": "C.UTF-8", "LC_TIME": "C", "LD_PRELOAD": "/tmp/x.so", "PATH": "/evil"},
        )
        assert result.stdout.startswith("C.UTF-8|C||")
        assert "/evil" not in result.stdout


async def test_stdin_and_large_transfers(node, issue, os_login):
    key = issue([os_login])
    data = os.urandom(4 * 1024 * 1024)
    async with await node.connect(os_login, key) as conn:
        echoed = await run(conn, "cat", input=data, encoding=None)
        assert echoed.stdout == data
        counted = await run(conn, "wc -c", input=data, encoding=None)
        assert int(counted.stdout) == len(data)
        produced = await run(conn, "head -c 8000000 /dev/zero", encoding=None)
        assert len(produced.stdout) == 8000000


async def test_signal_from_client(node, issue, os_login):
    key = issue([os_login])
    async with await node.connect(os_login, key) as conn:
        proc = await conn.create_process("echo started; exec sleep 60")
        assert (await asyncio.wait_for(proc.stdout.readline(), WAIT)) == "started\n"
        proc.send_signal("TERM")
        result = await asyncio.wait_for(proc.wait(), WAIT)
        assert result.exit_signal[0] == "TERM"
    event = await node.wait_event("exec", command="echo started; exec sleep 60")
    assert event["signal"] == "TERM"
    assert event["exit_status"] is None


async def test_session_audit_events(node, issue, os_login):
    key = issue([os_login])
    async with await node.connect(os_login, key) as conn:
        await run(conn, "exit 4")
    end = await node.wait_event("session.end", command="exit 4")
    start = node.find("session.start", session_id=end["session_id"])[0]
    exec_event = node.find("exec", session_id=end["session_id"])[0]
    assert exec_event["exit_status"] == 4
    for event in (start, end, exec_event):
        assert event["user"] == "alice"
        assert event["login"] == os_login
        assert event["remote_addr"].startswith("127.0.0.1:")
        assert event["server_id"] == HOST_UUID
        assert event["cluster_name"] == CLUSTER
    assert start["kind"] == "exec"


# ---------------------------------------------------------------------------- PTY


async def wait_until_running(conn: asyncssh.SSHClientConnection, login: str, cmdline: str) -> None:
    """Poll (over a second session) until ``login`` runs a process with ``cmdline``."""

    async def poll() -> None:
        while True:
            if (await run(conn, f"pgrep -u {login} -fx '{cmdline}'")).exit_status == 0:
                return
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), WAIT)


async def test_interactive_shell_on_a_pty(node, issue, os_login):
    key = issue([os_login])
    seen: list[str] = []
    async with await node.connect(os_login, key) as conn:
        proc = await conn.create_process(term_type="xterm-256color", term_size=(80, 24))
        proc.stdin.write("echo marker-$((40+2))\n")
        await read_until(proc.stdout, "marker-42", seen)
        proc.stdin.write('stty size; echo "term=$TERM"; ps -o tty= -p $$; echo done-$((1+1))\n')
        text = await read_until(proc.stdout, "done-2", seen)
        assert "24 80" in text
        assert "term=xterm-256color" in text
        assert "pts/" in text  # the PTY is the shell's controlling terminal
        proc.change_terminal_size(100, 40)
        proc.stdin.write("stty size; echo resized-$((2+2))\n")
        assert "40 100" in await read_until(proc.stdout, "resized-4", seen)
        # Job control works: once sleep runs (in the terminal's foreground process group),
        # ^C interrupts it through the terminal.
        proc.stdin.write("sleep 61\n")
        await wait_until_running(conn, os_login, "sleep 61")
        proc.stdin.write("\x03")
        proc.stdin.write("echo after-$((3+3))\n")
        await read_until(proc.stdout, "after-6", seen)
        proc.stdin.write("exit 5\n")
        result = await asyncio.wait_for(proc.wait(), WAIT)
        assert result.exit_status == 5
    end = await node.wait_event("session.end", kind="shell")
    assert end["exit_status"] == 5
    assert end["tty"] == {"term": "xterm-256color", "cols": 80, "rows": 24}


async def test_pty_session_is_recorded(node, issue, os_login):
    key = issue([os_login])
    seen: list[str] = []
    async with await node.connect(os_login, key) as conn:
        proc = await conn.create_process(term_type="xterm", term_size=(80, 24))
        proc.stdin.write("echo rec-$((6*7))\n")
        await read_until(proc.stdout, "rec-42", seen)
        proc.change_terminal_size(120, 30)
        proc.stdin.write("exit\n")
        await asyncio.wait_for(proc.wait(), WAIT)
    start = await node.wait_event("session.start", kind="shell")
    await async_wait_for(lambda: node.recorders and node.recorders[0].closed, what="recorder close")
    recorder = node.recorders[0]
    assert recorder.info["session_id"] == start["session_id"]
    assert recorder.info["login"] == os_login
    assert b"rec-42" in recorder.output_data
    assert b"echo rec-$((6*7))" in recorder.input_data
    assert (120, 30) in recorder.resizes
    assert recorder.closed == [0]


async def test_exec_without_pty_is_not_recorded(node, issue, os_login):
    key = issue([os_login])
    async with await node.connect(os_login, key) as conn:
        await run(conn, "true")
    await node.wait_event("session.end")
    assert node.recorders == []


# ---------------------------------------------------------------------------- refusals


async def expect_refused(node, login, key, reason: str) -> dict:
    with pytest.raises(asyncssh.PermissionDenied):
        await node.connect(login, key)
    event = await node.wait_event("auth.rejected")
    assert reason in event["reason"], event
    assert event["login"] == login
    return event


async def test_refuses_expired_certificate(node, issue, os_login):
    past = datetime.now(UTC) - timedelta(hours=3)
    key = issue([os_login], now=past, ttl=timedelta(hours=1))
    event = await expect_refused(node, os_login, key, "certificate expired at")
    assert event["user"] == "alice"


async def test_refuses_certificate_from_another_ca(node, issue, os_login, other_user_ca):
    key = issue([os_login], ca=other_user_ca)
    await expect_refused(node, os_login, key, "unknown certificate authority (SHA256:")


async def test_refuses_login_not_in_principals(node, issue, os_login):
    key = issue(["someone-else"])
    await expect_refused(node, os_login, key, "is not among the certificate's principals")


async def test_refuses_when_a_role_denies_the_node_labels(node, issue, os_login):
    node.roles["no-test"] = make_role("no-test", deny={"node_labels": {"env": "test"}})
    key = issue([os_login], roles=["access", "no-test"])
    await expect_refused(node, os_login, key, "denied by role 'no-test'")


async def test_refuses_when_no_role_matches_the_node_labels(node, issue, os_login):
    node.roles["prod-only"] = make_role(
        "prod-only", allow={"logins": ["{{internal.logins}}"], "node_labels": {"env": "prod"}}
    )
    key = issue([os_login], roles=["prod-only"])
    await expect_refused(node, os_login, key, "node_labels do not match")


async def test_refuses_unknown_os_login(node, issue):
    key = issue(["no-such-user-x"])
    await expect_refused(node, "no-such-user-x", key, "unknown OS login 'no-such-user-x'")


async def test_refuses_unknown_role(node, issue, os_login):
    key = issue([os_login], roles=["ghost"])
    await expect_refused(node, os_login, key, "unknown role(s) ghost")


async def test_refuses_plain_keys(node, os_login):
    private, _ = generate_ssh_keypair()
    with pytest.raises(asyncssh.PermissionDenied):
        await node.connect(os_login, client_keys=[asyncssh.import_private_key(private)])
    event = await node.wait_event("auth.rejected")
    assert "no certificate offered (1 plain key(s) refused)" in event["reason"]
    assert event["login"] == os_login


async def test_plain_agent_keys_tried_first_are_not_audited(node, issue, os_login, ssh_agent):
    key = issue([os_login])
    async with await node.connect(os_login, key, agent_path=ssh_agent) as conn:
        await run(conn, "true")
    await node.wait_event("session.end")
    assert node.find("auth.rejected") == []


async def test_no_password_or_keyboard_interactive(node, os_login):
    with pytest.raises(asyncssh.PermissionDenied):
        await node.connect(os_login, password="secret", client_keys=None)
    event = await node.wait_event("auth.rejected")
    assert "no certificate offered: only certificate authentication" in event["reason"]


async def test_trusted_user_ca_is_read_per_connection(node, issue, os_login, other_user_ca):
    key = issue([os_login], ca=other_user_ca)
    node.trusted.append(other_user_ca.active.ssh_public_key)
    async with await node.connect(os_login, key) as conn:
        assert (await run(conn, "echo rotated")).stdout == "rotated\n"
    node.trusted.remove(other_user_ca.active.ssh_public_key)
    await expect_refused(node, os_login, key, "unknown certificate authority")


# ---------------------------------------------------------------------------- forwarding


@pytest.fixture
async def echo_server():
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_local_port_forwarding_allowed(node, issue, os_login, echo_server):
    key = issue([os_login])
    async with await node.connect(os_login, key) as conn:
        reader, writer = await conn.open_connection("127.0.0.1", echo_server, encoding=None)
        writer.write(b"ping\n")
        assert await asyncio.wait_for(reader.readline(), WAIT) == b"ping\n"
        writer.close()
    event = await node.wait_event("port")
    assert event["dest"] == f"127.0.0.1:{echo_server}"


async def test_port_forwarding_denied_by_role(node, issue, os_login, echo_server):
    node.roles["access"] = access_role(port_forwarding=False)
    key = issue([os_login])
    async with await node.connect(os_login, key) as conn:
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.open_connection("127.0.0.1", echo_server)
    event = await node.wait_event("port.rejected")
    assert "not permitted by the user's roles" in event["reason"]


async def test_port_forwarding_denied_by_certificate(node, issue, os_login, echo_server):
    key = issue([os_login], permit_port_forwarding=False)
    async with await node.connect(os_login, key) as conn:
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.open_connection("127.0.0.1", echo_server)
    event = await node.wait_event("port.rejected")
    assert "permit-port-forwarding" in event["reason"]


async def test_remote_port_forwarding_refused(node, issue, os_login):
    key = issue([os_login])
    async with await node.connect(os_login, key) as conn:
        with pytest.raises(asyncssh.ChannelListenError):
            await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", 9)
    event = await node.wait_event("port.rejected")
    assert "remote port forwarding" in event["reason"]


@pytest.fixture
def ssh_agent(tmp_path):
    """A real ssh-agent holding one key; yields its socket path."""
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + WAIT
        while not sock.exists():
            assert agent.poll() is None, "ssh-agent exited"
            assert time.monotonic() < deadline, "ssh-agent did not create its socket"
            time.sleep(0.05)
        private, _ = generate_ssh_keypair()
        key_file = tmp_path / "agent_key"
        key_file.write_bytes(private)
        key_file.chmod(0o600)
        subprocess.run(
            ["ssh-add", "-q", str(key_file)],
            env={**os.environ, "SSH_AUTH_SOCK": str(sock)},
            check=True,
            timeout=WAIT,
        )
        yield str(sock)
    finally:
        agent.kill()
        agent.wait()


async def test_agent_forwarding_allowed(node, issue, os_login, ssh_agent):
    key = issue([os_login])
    async with await node.connect(os_login, key, agent_path=ssh_agent, agent_forwarding=True) as conn:
        result = await run(conn, 'test -n "$SSH_AUTH_SOCK" && ssh-add -l')
        assert result.exit_status == 0, result.stderr
        assert "ED25519" in result.stdout


async def test_agent_forwarding_denied_by_role(node, issue, os_login, ssh_agent):
    node.roles["access"] = access_role(forward_agent=False)
    key = issue([os_login])
    async with await node.connect(os_login, key, agent_path=ssh_agent, agent_forwarding=True) as conn:
        result = await run(conn, 'echo "[$SSH_AUTH_SOCK]"')
        assert result.stdout == "[]\n"
    event = await node.wait_event("agent.rejected")
    assert "forward_agent" in event["reason"]


# ---------------------------------------------------------------------------- host identity


async def test_update_identity_serves_the_new_host_cert(node, issue, os_login):
    new_host_ca = new_cert_authority(CAType.HOST, CLUSTER)
    private, public = generate_ssh_keypair()
    cert = generate_host_ssh_cert(
        new_host_ca.active,
        public,
        host_uuid=HOST_UUID,
        nodename=NODENAME,
        cluster_name=CLUSTER,
        role="Node",
    )
    old_host_ca = node.host_ca
    node.server.update_identity(private, cert)
    node.host_ca = new_host_ca
    key = issue([os_login])
    async with await node.connect(os_login, key) as conn:
        assert (await run(conn, "echo new")).stdout == "new\n"
    node.host_ca = old_host_ca
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        await node.connect(os_login, key)


def server_with_host_identity(host_key: bytes, host_cert: str) -> NodeSSHServer:
    """A node SSH server built with this host key and certificate (and nothing else of note)."""
    return NodeSSHServer(
        host_key=host_key,
        host_cert=host_cert,
        trusted_user_ca_keys=list,
        node_labels=dict,
        role_lookup=None,  # type: ignore[arg-type]
        cluster_name=CLUSTER,
        nodename=NODENAME,
        host_uuid=HOST_UUID,
    )


def test_rejects_mismatched_host_identity(host_identity):
    other_private, _ = generate_ssh_keypair()
    with pytest.raises(BadParameter, match="does not belong"):
        server_with_host_identity(other_private, host_identity[1])


async def test_role_lookup_failure_refuses(node, issue, os_login):
    async def broken(names):
        raise RuntimeError("auth unreachable and no cache")

    node.server._role_lookup = broken
    key = issue([os_login])
    await expect_refused(node, os_login, key, "cannot load roles access")


def test_rejects_a_user_certificate_as_host_identity(issue):
    key = issue(["root"])
    with pytest.raises(BadParameter, match="invalid node host certificate"):
        server_with_host_identity(key.private_pem, key.cert)


async def test_close_ends_running_sessions(node, issue, os_login):
    key = issue([os_login])
    conn = await node.connect(os_login, key)
    proc = await conn.create_process("exec sleep 63", term_type="xterm")
    await wait_until_running(conn, os_login, "sleep 63")
    await asyncio.wait_for(node.server.stop(), WAIT)
    await asyncio.wait_for(proc.wait_closed(), WAIT)
    conn.close()

    def gone() -> bool:
        return subprocess.run(["pgrep", "-u", os_login, "-fx", "sleep 63"], check=False).returncode == 1

    await async_wait_for(gone, what="the session's process to end")


class RequiredRecorder(FakeRecorder):
    """A recorder the session must not run without (mode node-sync): it can end the session."""

    required = True

    def __init__(self, info: dict[str, Any], fail_output: bool = False) -> None:
        super().__init__(info)
        self.abort: Any = None
        self.fail_output = fail_output

    def bind_session(self, abort: Any) -> None:
        self.abort = abort

    def output(self, data: bytes) -> None:
        if self.fail_output and b"boom-" in bytes(self.output_data) + data:
            raise OSError("No space left on device")
        super().output(data)


@pytest.mark.parametrize("how", ["abort", "failing recorder"])
async def test_a_required_recording_that_fails_ends_the_session(node, issue, os_login, how):
    recorders: list[RequiredRecorder] = []

    def factory(info: dict[str, Any]) -> RequiredRecorder:
        recorders.append(RequiredRecorder(info, fail_output=how == "failing recorder"))
        return recorders[-1]

    node.server._recorder_factory = factory
    key = issue([os_login])
    seen: list[str] = []
    async with await node.connect(os_login, key) as conn:
        proc = await conn.create_process(term_type="xterm", term_size=(80, 24))
        proc.stdin.write("echo up-$((1+1))\n")
        await read_until(proc.stdout, "up-2", seen)
        if how == "abort":
            recorders[0].abort("session recording cannot reach the auth service (refused)")
        else:
            proc.stdin.write("echo boom-$((2+2))\n")
        await read_until(proc.stdout, "so the session ends", seen)
        result = await asyncio.wait_for(proc.wait(), WAIT)
    assert result.exit_signal is not None and result.exit_signal[0] == "HUP"
    failed = await node.wait_event("session.recording_failed")
    assert failed["session_id"] == recorders[0].info["session_id"]
    assert ("auth service" if how == "abort" else "No space left") in failed["reason"]
    end = await node.wait_event("session.end", kind="shell")
    assert end["signal"] == "HUP"
