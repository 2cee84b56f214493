"""Session recording and the audit log end to end, with the real daemons on loopback: an auth
service, a proxy and a node (`teleport start`), users made with `tctl users add` who sign up and
log in with `tsh`, interactive `tsh ssh` sessions under pexpect, and the fault cases: the auth
service killed during a session, the node killed with an upload pending, and `node-sync`
ending a session it cannot stream. The tests run in order on one cluster; each leaves it running.

No timing assertions: waits are bounded polls for a condition.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pexpect
import pytest
import yaml

from tests.conftest import Cluster, Node, free_port, require_binary, sign_up_and_log_in, wait_for

from .conftest import Relay

BIN = Path(sys.executable).parent
TSH = str(BIN / "tsh")
ASCIINEMA = str(BIN / "asciinema")
CLUSTER = "rec.test"
PASSWORD = "correct horse battery staple"
#: Bound for an upload after the auth service comes back (the node's retries back off to 15s).
UPLOAD_WAIT = 90.0


@dataclass
class User:
    name: str
    home: Path
    otp_file: Path


@dataclass
class Env:
    root: Path
    cluster: Cluster
    proxy: Node
    web: str
    node: Node
    password_file: Path
    users: dict[str, User] = field(default_factory=dict)

    def env(self, user: str, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TELEPORT")}
        env["TELEPORT_HOME"] = str(self.users[user].home)
        env.update(extra)
        return env

    def tsh(self, user: str, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [TSH, *args], env=self.env(user), cwd=self.root, capture_output=True, text=True, timeout=120,
            stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            pytest.fail(f"tsh {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result

    def tsh_bytes(self, user: str, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [TSH, *args], env=self.env(user), cwd=self.root, capture_output=True, timeout=120,
            stdin=subprocess.DEVNULL,
        )

    def recordings(self, user: str = "alice") -> list[dict[str, Any]]:
        return json.loads(self.tsh(user, "recordings", "ls", "--format=json", check=True).stdout)

    def recording_ids(self) -> list[str]:
        return [r["session_id"] for r in self.recordings()]

    def audit(self, *args: str) -> list[dict[str, Any]]:
        return self.cluster.tctl_json("audit", "ls", "--since=1h", *args)

    def spool(self) -> Path:
        return self.node.data_dir / "log" / "upload" / "sessions"

    def add_user(self, name: str, roles: str) -> None:
        home = self.root / f"tsh-{name}"
        user = self.users[name] = User(name, home, self.root / f"otp-{name}")
        sign_up_and_log_in(self.cluster, self.web, name, roles=roles, logins="root", home=home,
                           password_file=self.password_file, otp_file=user.otp_file)

    def restart_auth(self, **auth_service: Any) -> None:
        """Start the auth service again (its config updated with ``auth_service``)."""
        if auth_service:
            self.cluster.config["auth_service"].update(auth_service)
            self.cluster.config_path.write_text(yaml.safe_dump(self.cluster.config))
        if self.cluster.auth is not None:
            self.cluster.auth.kill()
        self.cluster.start()


class Shell:
    """An interactive `tsh ssh` session under pexpect, with a prompt we can wait for."""

    def __init__(self, env: Env, user: str = "alice", host: str = "node1") -> None:
        self.child = pexpect.spawn(TSH, ["ssh", f"root@{host}"], env=env.env(user, TERM="xterm-256color"),
                                   dimensions=(30, 100), timeout=30, encoding="utf-8")
        self.child.expect(r"[#$] ")  # the first prompt: the shell may drop what is typed before
        self.child.sendline("export PS1='READY''$ '")  # the echoed line does not match the prompt
        self.child.expect("READY\\$ ")
        self.run("echo SID=$SSH_SESSION_ID")
        self.session_id = re.search(r"SID=([0-9a-f-]{36})", self.child.before).group(1)

    def run(self, command: str, expect: str = "READY\\$ ") -> str:
        self.child.sendline(command)
        self.child.expect(expect)
        return self.child.before

    def exit(self, status: int = 0) -> int:
        self.child.sendline(f"exit {status}")
        self.child.expect(pexpect.EOF)
        self.child.close()
        return self.child.exitstatus

    def close(self) -> None:
        if self.child.isalive():
            self.child.close(force=True)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("recording")
    cluster = Cluster(root, CLUSTER, {"presence_ttl": "10s"})
    try:
        cluster.start()
        token = cluster.add_token(roles="node,proxy", ttl="10m")["token"]
        pin = cluster.pin()
        proxy, web = cluster.start_proxy(token)
        node = cluster.start_node("node1", token=token, pins=(pin,))
        env = Env(root, cluster, proxy, web, node, root / "password")
        env.password_file.write_text(PASSWORD + "\n")
        env.add_user("alice", "access,auditor")  # may read recordings and the audit log
        env.add_user("bob", "access")  # may not

        def listed() -> bool:
            out = env.tsh("alice", "ls", "--format=json")
            return out.returncode == 0 and "node1" in {n["hostname"] for n in json.loads(out.stdout)}

        wait_for(listed, what="tsh ls to show node1")
        yield env
    finally:
        cluster.kill_all()


def _events(events: list[dict[str, Any]], kind: str, session_id: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == kind and e.get("session_id") == session_id]


def test_a_session_is_recorded_listed_replayed_and_audited(env: Env, tmp_path: Path) -> None:
    shell = Shell(env)
    try:
        sid = shell.session_id
        # the cluster lists it while it runs
        wait_for(lambda: sid in env.tsh("alice", "sessions", "ls").stdout, what="tsh sessions ls to show it")
        active = json.loads(env.tsh("alice", "sessions", "ls", "--format=json", check=True).stdout)
        mine = next(s for s in active if s["id"] == sid)
        assert (mine["user"], mine["login"], mine["node"]) == ("alice", "root", "node1")
        assert "hello-recording" in shell.run("echo hello-$((1+0))-recording | tr -d 1-9 | tr -s -")
        shell.child.setwinsize(40, 120)  # the shell may redraw its prompt: wait for the output itself
        shell.run("stty size", expect="40 120")
        shell.child.expect("READY\\$ ")
        assert shell.exit(3) == 3
    finally:
        shell.close()

    wait_for(lambda: sid in env.recording_ids(), what="the recording to reach the auth service")
    record = next(r for r in env.recordings() if r["session_id"] == sid)
    assert (record["user"], record["login"], record["node"], record["exit_status"]) == ("alice", "root", "node1", 3)
    assert sid in env.tsh("alice", "recordings", "ls", check=True).stdout
    wait_for(lambda: not env.spool().joinpath(f"{sid}.cast").exists(), what="the spool to drop the upload")

    # replay in a terminal: the output with its resizes, as escapes
    played = env.tsh_bytes("alice", "play", sid, "--speed=50x", "--skip-idle-time")
    assert played.returncode == 0, played.stderr
    assert b"hello-recording" in played.stdout
    assert b"\x1b[8;40;120t" in played.stdout  # the resize, replayed
    events = json.loads(env.tsh("alice", "play", sid, "--format=json", check=True).stdout)["events"]
    assert {"cols": 120, "rows": 40} in [{"cols": e.get("cols"), "rows": e.get("rows")} for e in events
                                         if e["type"] == "resize"]

    # the asciicast opens in the real asciinema player
    cast = tmp_path / "session.cast"
    cast.write_bytes(env.tsh_bytes("alice", "play", sid, "--format=asciicast").stdout)
    shown = subprocess.run([ASCIINEMA, "cat", str(cast)], capture_output=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert b"hello-recording" in shown.stdout

    # the audit log: login, start, end, upload, with the common fields
    audit = wait_for(lambda: (a := env.audit("--format=json")) and _events(a, "session.end", sid) and a,
                     what="the node's session.end event")
    logins = [e for e in audit if e["event"] == "user.login" and e["user"] == "alice"]
    assert logins and logins[0]["code"] == "T1000I" and logins[0]["success"] is True
    start, end, upload = (_events(audit, kind, sid) for kind in ("session.start", "session.end", "session.upload"))
    assert len(start) == len(end) == len(upload) == 1
    for event, code in ((start[0], "T2000I"), (end[0], "T2004I"), (upload[0], "T2005I")):
        assert event["code"] == code
        assert (event["user"], event["login"], event["node"]) == ("alice", "root", "node1")
        assert event["time"] and event["remote_addr"]
    assert end[0]["exit_status"] == 3
    text = env.cluster.tctl("audit", "ls", "--since=1h", "--type=session.").stdout
    assert sid in text and "session.upload" in text and "user.login" not in text


def test_a_failed_login_and_an_exec_are_audited(env: Env) -> None:
    user = env.users["alice"]
    bad = env.root / "wrong-password"
    bad.write_text("not the password\n")
    refused = env.tsh("alice", "login", f"--proxy={env.web}", "--user=alice", f"--password-file={bad}",
                      f"--otp-secret-file={user.otp_file}")
    assert refused.returncode != 0
    assert env.tsh("alice", "ssh", "root@node1", "exit 4").returncode == 4
    audit = env.audit("--type=user.login,exec", "--format=json")
    failures = [e for e in audit if e["event"] == "user.login" and e["success"] is False]
    assert failures and failures[-1]["code"] == "T1000W" and failures[-1]["remote_addr"]
    execs = [e for e in audit if e["event"] == "exec" and e.get("command") == "exit 4"]
    assert execs and execs[-1]["exit_status"] == 4 and execs[-1]["code"] == "T3002E"
    assert execs[-1]["session_id"] and execs[-1]["node"] == "node1"


def test_a_user_without_the_role_cannot_list_or_play(env: Env) -> None:
    sid = env.recording_ids()[0]
    for args in (("recordings", "ls"), ("play", sid), ("play", sid, "--format=asciicast"), ("sessions", "ls")):
        result = env.tsh("bob", *args)
        assert result.returncode != 0, args
        assert result.stderr.startswith("ERROR: user bob may not"), result.stderr
        assert "auditor" in result.stderr and "hello" not in result.stdout
    # nor may he read the audit log through the auth API's user path; every refusal is audited
    denied = [e for e in env.audit("--type=access.denied", "--format=json") if e["user"] == "bob"]
    assert {(e["resource"], e["verb"]) for e in denied} == {("session", "list"), ("session", "read")}
    assert all(e["code"] == "T1007W" and e["remote_addr"] for e in denied)


def test_the_auth_service_killed_during_a_session(env: Env) -> None:
    shell = Shell(env)
    try:
        sid = shell.session_id
        wait_for(lambda: sid in env.tsh("alice", "sessions", "ls").stdout, what="the session to be announced")
        env.cluster.auth.kill()  # SIGKILL
        assert "during-the-outage" in shell.run("echo during-the-outage")
        assert shell.exit() == 0
    finally:
        shell.close()
    # the node keeps it while the auth service is away
    wait_for(lambda: env.spool().joinpath(f"{sid}.json").exists(), what="the recording to wait in the spool")
    env.restart_auth()
    wait_for(lambda: sid in env.recording_ids(), timeout=UPLOAD_WAIT, what="the recording to arrive")
    wait_for(lambda: not env.spool().joinpath(f"{sid}.cast").exists(), what="the spool to drop it")
    assert env.recording_ids().count(sid) == 1
    assert len(_events(env.audit("--type=session.upload", "--format=json"), "session.upload", sid)) == 1
    played = env.tsh_bytes("alice", "play", sid, "--skip-idle-time", "--speed=50x")
    assert b"during-the-outage" in played.stdout
    # the node's events of the outage arrive too
    wait_for(lambda: _events(env.audit("--format=json"), "session.end", sid), timeout=UPLOAD_WAIT,
             what="the session.end event sent during the outage")


def _spooled_events(node: Node) -> list[dict[str, Any]]:
    """The audit events the node holds on disk, not yet delivered."""
    events = []
    for path in sorted((node.data_dir / "log" / "audit").glob("*.json")):
        with contextlib.suppress(OSError, ValueError):
            events.append(json.loads(path.read_text()))
    return events


def test_the_node_killed_with_an_upload_pending(env: Env) -> None:
    shell = Shell(env)
    try:
        sid = shell.session_id
        env.cluster.auth.kill()
        shell.run("echo pending-upload")
        assert shell.exit() == 0
    finally:
        shell.close()
    wait_for(lambda: env.spool().joinpath(f"{sid}.json").exists(), what="the recording to wait in the spool")
    # the session's end, emitted while the auth service is away, is on the node's disk
    wait_for(lambda: _events(_spooled_events(env.node), "session.end", sid), what="session.end in the audit spool")
    env.node.kill()  # SIGKILL, with the upload and the audit events pending
    env.restart_auth()
    env.node.start(env.cluster.node_argv("node1"))  # rejoins with its stored identity
    wait_for(lambda: sid in env.recording_ids(), timeout=UPLOAD_WAIT, what="the recording to arrive")
    wait_for(lambda: not env.spool().joinpath(f"{sid}.cast").exists(), what="the spool to drop it")
    assert env.recording_ids().count(sid) == 1
    assert len(_events(env.audit("--type=session.upload", "--format=json"), "session.upload", sid)) == 1
    assert b"pending-upload" in env.tsh_bytes("alice", "play", sid, "--format=asciicast").stdout
    # the events of the outage survived the kill and arrive once each
    wait_for(lambda: not _spooled_events(env.node), timeout=UPLOAD_WAIT, what="the audit spool to empty")
    audit = env.audit("--format=json")
    assert len(_events(audit, "session.end", sid)) == 1
    assert len(_events(audit, "session.start", sid)) == 1
    assert _events(audit, "session.end", sid)[0]["node"] == "node1"


def test_the_node_killed_during_a_session(env: Env) -> None:
    shell = Shell(env)
    try:
        sid = shell.session_id
        assert "typed-before-42" in shell.run("echo typed-before-$((6*7))")
        part = env.spool() / f"{sid}.cast.part"
        wait_for(lambda: part.exists() and b"typed-before-42" in part.read_bytes(),
                 what="the output to reach the spool file")
        env.node.kill()  # SIGKILL during the session
        shell.child.expect(pexpect.EOF)
    finally:
        shell.close()
    assert part.exists()  # nobody completed it: the node is dead
    env.node.start(env.cluster.node_argv("node1"))
    # the restart completes and uploads it at once, marked incomplete
    wait_for(lambda: sid in env.recording_ids(), timeout=UPLOAD_WAIT, what="the partial recording to arrive")
    wait_for(lambda: not list(env.spool().glob(f"{sid}.*")), what="the spool to drop it")
    records = [r for r in env.recordings() if r["session_id"] == sid]
    assert len(records) == 1
    assert records[0]["complete"] is False and records[0]["exit_status"] is None
    assert (records[0]["user"], records[0]["login"], records[0]["node"]) == ("alice", "root", "node1")
    listed = next(line for line in env.tsh("alice", "recordings", "ls", check=True).stdout.splitlines() if sid in line)
    assert "incomplete" in listed
    played = env.tsh_bytes("alice", "play", sid, "--speed=50x", "--skip-idle-time")
    assert played.returncode == 0, played.stderr
    assert b"typed-before-42" in played.stdout
    # the session ends in the audit log (once), and is no longer listed as in progress
    ended = wait_for(lambda: _events(env.audit("--format=json"), "session.end", sid), timeout=UPLOAD_WAIT,
                     what="the session.end of the killed session")
    assert len(ended) == 1 and ended[0]["interrupted"] is True and "node stopped" in ended[0]["reason"]
    assert (ended[0]["user"], ended[0]["login"], ended[0]["node"]) == ("alice", "root", "node1")
    assert len(_events(env.audit("--type=session.upload", "--format=json"), "session.upload", sid)) == 1
    wait_for(lambda: sid not in env.tsh("alice", "sessions", "ls").stdout, what="the session to leave tsh sessions ls")


def test_the_auth_service_killed_during_a_large_upload(env: Env) -> None:
    relay = Relay((env.cluster.host, env.cluster.port))
    try:
        token = env.cluster.add_token(roles="node")["token"]
        node2 = env.cluster.start_node("node2", token=token, pins=(env.cluster.pin(),), auth_server=relay.addr)

        def listed() -> bool:
            out = env.tsh("alice", "ls", "--format=json")
            return out.returncode == 0 and "node2" in {n["hostname"] for n in json.loads(out.stdout)}

        wait_for(listed, what="tsh ls to show node2")
        spool = node2.data_dir / "log" / "upload" / "sessions"
        relay.arm(512 * 1024)  # hold the node's upload after its first 512 KiB
        big = subprocess.run(
            [TSH, "ssh", "-t", "root@node2", "seq 1 300000; echo END-$((40+2))"], env=env.env("alice"),
            cwd=env.root, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300,
        )
        assert big.returncode == 0, big.stderr
        wait_for(relay.held.is_set, what="the upload to be in flight")
        [manifest_path] = spool.glob("*.json")
        manifest = json.loads(manifest_path.read_text())
        sid = manifest["session_id"]
        assert manifest["size"] > 2 * 1024 * 1024  # a few MB
        env.cluster.auth.kill()  # SIGKILL with the upload half sent
        relay.release()
        env.restart_auth()
        wait_for(lambda: sid in env.recording_ids(), timeout=UPLOAD_WAIT, what="the recording to arrive")
        records = [r for r in env.recordings() if r["session_id"] == sid]
        assert len(records) == 1
        assert (records[0]["size"], records[0]["sha256"]) == (manifest["size"], manifest["sha256"])
        data = env.tsh_bytes("alice", "play", sid, "--format=asciicast").stdout
        assert (len(data), hashlib.sha256(data).hexdigest()) == (manifest["size"], manifest["sha256"])
        assert b"END-42" in data
        stored = sorted(p.name for p in (env.cluster.data_dir / "recordings").iterdir() if sid in p.name)
        assert stored == [f"{sid}.cast", f"{sid}.json"]  # one copy, no temp file left behind
        assert len(_events(env.audit("--type=session.upload", "--format=json"), "session.upload", sid)) == 1
        wait_for(lambda: not list(spool.glob(f"{sid}.*")), what="node2's spool to drop it")
    finally:
        relay.close()


def _fields(event: dict[str, Any], *names: str) -> None:
    """The event has a code, a time, a remote address and each named field (non-empty)."""
    assert event["code"] and event["time"] and event["remote_addr"], event
    for name in names:
        assert event.get(name), (name, event)


def test_exec_sftp_port_forwards_and_refusals_are_audited(env: Env, tmp_path: Path) -> None:
    sftp = require_binary("sftp")
    since = datetime.now(UTC).isoformat()
    # exec: the command and its exit code
    assert env.tsh("alice", "ssh", "root@node1", "echo audited; exit 5").returncode == 5
    # the sftp subsystem, with the real OpenSSH client through the proxy (tsh config)
    config = tmp_path / "ssh_config"
    config.write_text(env.tsh("alice", "config", check=True).stdout)
    local, remote = tmp_path / "up.txt", f"/tmp/rec-audit-{os.getpid()}-{tmp_path.name}.txt"
    local.write_text("over sftp\n")
    batch = tmp_path / "batch"
    batch.write_text(f"put {local} {remote}\nrm {remote}\n")
    result = subprocess.run([sftp, "-F", str(config), "-o", "BatchMode=yes", "-b", str(batch),
                             f"root@node1.{CLUSTER}"], env=env.env("alice"), capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    # a local port forward (tsh ssh -L: a direct-tcpip channel) to the node's own SSH port
    lport = free_port()
    dest = f"{env.node.ip}:{env.node.ssh_port}"
    forward = subprocess.Popen([TSH, "ssh", "-L", f"{lport}:{dest}", "root@node1", "sleep 60"], env=env.env("alice"),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def banner() -> bytes:
            try:
                with socket.create_connection(("127.0.0.1", lport), timeout=5) as sock:
                    return sock.recv(64)
            except OSError:
                return b""

        assert wait_for(banner, what="the forwarded port").startswith(b"SSH-2.0-")
    finally:
        forward.kill()
        forward.wait()
    # a session the role does not allow: alice may log in as root only
    refused = env.tsh("alice", "ssh", "nobody@node1", "true")
    assert refused.returncode != 0
    # a failed authorization on the auth API: bob's roles do not grant reading recordings
    assert env.tsh("bob", "recordings", "ls").returncode != 0

    def recent() -> list[dict[str, Any]]:
        return [e for e in env.audit("--format=json") if str(e.get("time")) >= since]

    def found() -> list[dict[str, Any]] | None:
        events = recent()
        kinds = {e["event"] for e in events}
        wanted = {"exec", "subsystem", "port", "auth.rejected", "access.denied"}
        return events if wanted <= kinds and any(e.get("name") == "sftp" for e in events) else None

    events = wait_for(found, timeout=UPLOAD_WAIT, what="the audit events of exec, sftp, -L and the refusals")
    [run] = [e for e in events if e["event"] == "exec" and e.get("command") == "echo audited; exit 5"]
    assert (run["exit_status"], run["code"]) == (5, "T3002E")
    _fields(run, "user", "login", "node", "session_id", "server_id")
    [sub] = [e for e in events if e["event"] == "subsystem" and e.get("name") == "sftp"]
    assert (sub["exit_status"], sub["code"]) == (0, "T3001I")
    _fields(sub, "user", "login", "node", "session_id")
    assert [e for e in events if e["event"] == "session.start" and e.get("session_id") == sub["session_id"]
            and e.get("kind") == "subsystem"]
    [port] = [e for e in events if e["event"] == "port" and e.get("dest") == dest]
    assert port["code"] == "T3003I"
    _fields(port, "user", "login", "node")
    rejected = [e for e in events if e["event"] == "auth.rejected" and e.get("login") == "nobody"]
    assert rejected and rejected[0]["code"] == "T3007W" and rejected[0]["user"] == "alice"
    _fields(rejected[0], "user", "login", "node", "reason")
    denied = [e for e in events if e["event"] == "access.denied" and e.get("user") == "bob"]
    assert denied and denied[0]["code"] == "T1007W"
    assert (denied[0]["resource"], denied[0]["verb"]) == ("session", "list")
    _fields(denied[0], "user", "reason")
    for event in (run, sub, port, rejected[0]):
        assert (event["user"], event["node"]) == ("alice", "node1")
    assert (run["login"], sub["login"], port["login"]) == ("root", "root", "root")
    # the JSON a script reads names each of them by type, too
    exec_only = env.audit("--type=exec", "--format=json")
    assert run["id"] in {e["id"] for e in exec_only} and {e["event"] for e in exec_only} == {"exec"}


def test_node_sync_streams_and_ends_a_session_it_cannot_record(env: Env) -> None:
    env.restart_auth(session_recording="node-sync")
    mode_file = env.node.data_dir / "cache" / "session_recording"
    wait_for(lambda: mode_file.exists() and mode_file.read_text().strip() == "node-sync",
             what="the node to learn the node-sync mode from its heartbeat answer")
    shell = Shell(env)
    try:
        sid = shell.session_id
        stream = env.cluster.data_dir / "recordings" / "streams" / f"{sid}.cast.part"
        shell.run("echo streamed-$((2+2))")
        # the auth service holds the session as it happens, before it ends
        wait_for(lambda: stream.exists() and b"streamed-4" in stream.read_bytes(), what="the live stream")
        env.cluster.auth.kill()
        shell.child.sendline("echo cannot-be-recorded")
        shell.child.expect("so the session ends")
        shell.child.expect(pexpect.EOF)
    finally:
        shell.close()
    assert shell.child.exitstatus != 0 or shell.child.signalstatus is not None
    env.restart_auth()
    wait_for(lambda: sid in env.recording_ids(), timeout=UPLOAD_WAIT, what="the recording to arrive")
    assert env.recording_ids().count(sid) == 1
    assert not stream.exists()  # the complete upload replaced the live stream
    # the node's events wait for the auth service to come back
    audit = wait_for(lambda: (a := env.audit("--format=json")) and _events(a, "session.end", sid) and a,
                     timeout=UPLOAD_WAIT, what="the node's session.end event")
    failed = _events(audit, "session.recording_failed", sid)
    assert len(failed) == 1 and failed[0]["code"] == "T2006E" and "auth service" in failed[0]["reason"]
    assert len(_events(audit, "session.end", sid)) == 1
    assert b"streamed-4" in env.tsh_bytes("alice", "play", sid, "--format=asciicast").stdout
