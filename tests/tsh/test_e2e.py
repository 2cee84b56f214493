"""End to end, as a user would: `teleport start` daemons (auth, a proxy, two nodes), a user made
with `tctl users add` who signs up and logs in with `tsh`, then `tsh ls`, `tsh ssh` (commands,
exit codes, label selectors, an interactive shell under pexpect), `tsh scp`, and OpenSSH's ssh,
scp and sftp through the proxy with the config `tsh config` prints. No timing assertions: waits
are bounded polls."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pexpect
import pyotp
import pytest

from tests.conftest import (
    TSH,
    Cluster,
    Node,
    free_port,
    require_binary,
    run_tsh,
    sign_up_and_log_in,
    tsh_env,
    wait_for,
)

CLUSTER = "e2e.test"
PASSWORD = "correct horse battery staple"


@dataclass
class E2E:
    root: Path
    cluster: Cluster
    proxy: Node
    web: str
    nodes: dict[str, Node]
    home: Path
    password_file: Path
    otp_file: Path
    pin: str

    def env(self, **extra: str) -> dict[str, str]:
        return tsh_env(self.home, **extra)

    def tsh(self, *args: str, stdin: str | None = None, check: bool = False) -> subprocess.CompletedProcess[str]:
        return run_tsh(self.home, *args, cwd=self.root, stdin=stdin, check=check)

    def ssh_config(self) -> Path:
        path = self.root / "ssh_config"
        path.write_text(self.tsh("config", check=True).stdout)
        return path


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("e2e")
    cluster = Cluster(root, CLUSTER, {"presence_ttl": "10s"})
    try:
        cluster.start()
        token = cluster.add_token(roles="node,proxy", ttl="10m")["token"]
        pin = cluster.pin()
        proxy, web = cluster.start_proxy(token)
        nodes = {
            name: cluster.start_node(name, config={"ssh_service": {"labels": labels}}, token=token, pins=(pin,))
            for name, labels in (("node1", {"env": "prod", "role": "web"}), ("node2", {"env": "dev"}))
        }
        home = root / "tsh-home"
        env = E2E(root, cluster, proxy, web, nodes, home, root / "password", root / "otp-secret", pin)
        env.password_file.write_text(PASSWORD + "\n")
        sign_up_and_log_in(cluster, web, "alice", roles="access", logins="root,nobody", home=home,
                           password_file=env.password_file, otp_file=env.otp_file)

        def all_listed() -> bool:
            out = env.tsh("ls", "--format=json")
            return out.returncode == 0 and {n["hostname"] for n in json.loads(out.stdout)} >= {"node1", "node2"}

        wait_for(all_listed, what="tsh ls to show both nodes")
        yield env
    finally:
        cluster.kill_all()


def test_ls(e2e: E2E) -> None:
    result = e2e.tsh("ls", check=True)
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[2:]}
    assert rows["node1"][1] == e2e.nodes["node1"].addr
    assert rows["node1"][2] == "env=prod,role=web"
    assert [n["hostname"] for n in json.loads(e2e.tsh("ls", "env=dev", "--format=json").stdout)] == ["node2"]


def test_ssh_runs_commands_and_propagates_exit_codes(e2e: E2E) -> None:
    result = e2e.tsh("ssh", "root@node1", "echo ok")
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok\n", "")
    result = e2e.tsh("ssh", "root@node2", "echo out; echo err >&2; exit 7")
    assert (result.returncode, result.stdout, result.stderr) == (7, "out\n", "err\n")
    # stdin is streamed; and the node can be named by its address or UUID, or with the cluster suffix
    assert e2e.tsh("ssh", f"root@{e2e.nodes['node1'].ip}", "cat", stdin="piped\n").stdout == "piped\n"
    uuid = e2e.nodes["node2"].host_uuid()
    assert e2e.tsh("ssh", f"root@{uuid}", "hostname").returncode == 0
    assert e2e.tsh("ssh", f"root@node1.{CLUSTER}", "true").returncode == 0
    # options after the destination belong to the remote command
    assert e2e.tsh("ssh", "root@node1", "echo", "-n", "x").stdout == "x"


def test_ssh_large_output(e2e: E2E) -> None:
    result = subprocess.run([TSH, "ssh", "root@node1", "head -c 3000000 /dev/zero"], env=e2e.env(),
                            capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0
    assert len(result.stdout) == 3000000


def test_ssh_large_input_arrives_intact(e2e: E2E) -> None:
    """Many packets of the node connection, batched into the proxy channel, with the windows
    filling and emptying on the way: every byte arrives, in order, and EOF after them."""
    data = os.urandom(24 * 1024 * 1024 + 12345)
    result = subprocess.run([TSH, "ssh", "root@node1", "sha256sum; echo done"], env=e2e.env(), input=data,
                            capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split() == [hashlib.sha256(data).hexdigest(), "-", "done"]


def test_label_selector_runs_on_every_match(e2e: E2E) -> None:
    result = e2e.tsh("ssh", "root@env=prod", "echo hi")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[node1] hi\n"
    both = e2e.tsh("ssh", "root@env=prod,role=web", "hostname")
    assert both.returncode == 0
    failing = e2e.tsh("ssh", "root@env=dev", "exit 3")
    assert failing.returncode != 0
    assert "node2: exit status 3" in failing.stderr
    none = e2e.tsh("ssh", "root@env=nowhere", "true")
    assert none.returncode == 1
    assert "no node you can reach matches env=nowhere" in none.stderr


def test_refusals(e2e: E2E) -> None:
    unknown = e2e.tsh("ssh", "root@ghost", "true")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("ERROR: ")
    assert f"node ghost is not registered in cluster {CLUSTER}" in unknown.stderr
    denied = e2e.tsh("ssh", "postgres@node1", "true")
    assert denied.returncode == 1
    assert "access denied to postgres@node1" in denied.stderr
    assert "root, nobody" in denied.stderr


def test_interactive_shell(e2e: E2E) -> None:
    child = pexpect.spawn(TSH, ["ssh", "root@node1"], env=e2e.env(TERM="xterm-256color"),
                          dimensions=(30, 100), timeout=30, encoding="utf-8")
    try:
        child.expect(r"[#$] ")  # the shell's first prompt: it may drop what is typed before
        child.sendline("export PS1='READY$ '")
        child.expect("READY\\$ ")
        child.sendline("echo term=$TERM size=$(stty size)")
        child.expect("term=xterm-256color size=30 100")
        child.setwinsize(40, 120)
        child.sendline("stty size")
        child.expect("40 120")
        child.sendline("exit 5")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 5


def test_terminal_is_restored_after_the_shell(e2e: E2E) -> None:
    """tsh puts the local terminal in raw mode for a shell and restores it on exit."""
    child = pexpect.spawn("/bin/sh", env=e2e.env(PS1="LOCAL> ", TERM="xterm"), timeout=30, encoding="utf-8")
    try:
        child.expect("LOCAL> ")
        child.sendline(f"{TSH} ssh root@node2")
        child.expect(r"[#$] ")
        child.sendline("exit")
        child.expect("LOCAL> ")
        child.sendline("echo STTY-$((20+22)); stty -a; echo STTY-$((40+2))")
        child.expect("STTY-42\r\n")  # the echoed command line does not match; the output does
        child.expect("STTY-42\r\n")
        settings = child.before.split()
        assert "icanon" in settings and "echo" in settings and "-icanon" not in settings
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()


def test_tty_flags(e2e: E2E) -> None:
    assert e2e.tsh("ssh", "root@node1", "tty").stdout.strip() == "not a tty"
    forced = subprocess.run([TSH, "ssh", "-t", "root@node1", "tty"], env=e2e.env(), capture_output=True,
                            text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.strip().startswith("/dev/pts/")


def test_agent_forwarding(e2e: E2E, tmp_path: Path) -> None:
    agent = require_binary("ssh-agent")
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen([agent, "-D", "-a", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(sock.exists, what="ssh-agent's socket")
        env = e2e.env(SSH_AUTH_SOCK=str(sock))
        result = subprocess.run([TSH, "ssh", "-A", "root@node1", "test -S \"$SSH_AUTH_SOCK\" && echo forwarded"],
                                env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert (result.returncode, result.stdout) == (0, "forwarded\n"), result.stderr
        without = subprocess.run([TSH, "ssh", "root@node1", "echo ${SSH_AUTH_SOCK:-none}"], env=env,
                                 capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert without.stdout == "none\n"
    finally:
        proc.kill()
        proc.wait()
    no_agent = e2e.tsh("ssh", "-A", "root@node1", "true")
    assert no_agent.returncode == 1 and "SSH_AUTH_SOCK" in no_agent.stderr


def test_local_port_forwarding(e2e: E2E) -> None:
    lport = free_port()
    node = e2e.nodes["node2"]
    proc = subprocess.Popen(
        [TSH, "ssh", "-L", f"{lport}:{node.ip}:{node.ssh_port}", "root@node1", "sleep 60"],
        env=e2e.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:

        def banner() -> bytes:
            try:
                with socket.create_connection(("127.0.0.1", lport), timeout=5) as sock:
                    return sock.recv(64)
            except OSError:
                return b""

        assert wait_for(banner, what="the forwarded port").startswith(b"SSH-2.0-")
    finally:
        proc.kill()
        proc.wait()


def test_tsh_scp_both_ways(e2e: E2E, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    (src / "sub" / "b.bin").write_bytes(os.urandom(300000))
    remote = f"/tmp/tsh-scp-{os.getpid()}-{tmp_path.name}"
    result = e2e.tsh("scp", "-r", str(src), f"root@node1:{remote}")
    assert result.returncode == 0, result.stderr
    assert e2e.tsh("ssh", "root@node1", f"cat {remote}/a.txt").stdout == "alpha\n"
    back = tmp_path / "back"
    result = e2e.tsh("scp", "-r", f"root@node1:{remote}", str(back))
    assert result.returncode == 0, result.stderr
    assert (back / "sub" / "b.bin").read_bytes() == (src / "sub" / "b.bin").read_bytes()
    single = tmp_path / "single.txt"
    assert e2e.tsh("scp", f"root@node1:{remote}/a.txt", str(single)).returncode == 0
    assert single.read_text() == "alpha\n"
    no_r = e2e.tsh("scp", str(src), "root@node1:/tmp/x")
    assert no_r.returncode == 1 and "use tsh scp -r" in no_r.stderr
    missing = e2e.tsh("scp", "root@node1:/nonexistent/file", str(tmp_path / "x"))
    assert missing.returncode == 1 and missing.stderr.startswith("ERROR: scp failed")
    e2e.tsh("ssh", "root@node1", f"rm -rf {remote}")


@pytest.mark.interop
def test_openssh_with_tsh_config(e2e: E2E) -> None:
    ssh = require_binary("ssh")
    config = e2e.ssh_config()
    base = [ssh, "-F", str(config), "-o", "BatchMode=yes"]
    result = subprocess.run([*base, f"root@node1.{CLUSTER}", "echo ok; exit 4"],
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 4, result.stderr
    assert result.stdout == "ok\n"
    # ssh -J through the proxy (the jump hop reads the same config for the proxy's port and key)
    result = subprocess.run([*base, "-J", f"root@{e2e.proxy.ip}", f"root@node2.{CLUSTER}", "hostname"],
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    # unknown nodes are refused by the proxy with its message
    result = subprocess.run([*base, f"root@ghost.{CLUSTER}", "true"],
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 255
    assert f"node ghost.{CLUSTER} is not registered in cluster {CLUSTER}" in result.stderr


@pytest.mark.interop
def test_openssh_scp_and_sftp(e2e: E2E, tmp_path: Path) -> None:
    scp, sftp = require_binary("scp"), require_binary("sftp")
    config = e2e.ssh_config()
    local = tmp_path / "up.txt"
    local.write_text("via openssh\n")
    remote = f"/tmp/openssh-{os.getpid()}-{tmp_path.name}.txt"
    up = subprocess.run([scp, "-F", str(config), "-o", "BatchMode=yes", str(local), f"root@node1.{CLUSTER}:{remote}"],
                        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert up.returncode == 0, up.stderr
    down = tmp_path / "down.txt"
    batch = tmp_path / "batch"
    batch.write_text(f"get {remote} {down}\nrm {remote}\n")
    result = subprocess.run([sftp, "-F", str(config), "-o", "BatchMode=yes", "-b", str(batch),
                             f"root@node1.{CLUSTER}"], capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert down.read_text() == "via openssh\n"


def test_interactive_signup_and_login(e2e: E2E, tmp_path: Path) -> None:
    invite = e2e.cluster.tctl_json("users", "add", "carol", "--roles=access", "--logins=root")
    env = e2e.env(TELEPORT_HOME=str(tmp_path / "carol-home"))
    child = pexpect.spawn(TSH, ["signup", f"--proxy={e2e.web}", f"--token={invite['token']}", f"--ca-pin={e2e.pin}"],
                          env=env, timeout=30, encoding="utf-8", dimensions=(60, 160))
    try:
        child.expect(r"or enter this URI: (otpauth://\S+)")
        assert any(block in child.before for block in "\u2580\u2584\u2588")  # the QR code
        totp = pyotp.parse_uri(child.match.group(1))
        child.expect("Password: ")
        child.sendline(PASSWORD)
        child.expect("Confirm password: ")
        child.sendline(PASSWORD)
        child.expect("One-time code from your authenticator")
        signup_code = totp.now()
        child.sendline(signup_code)
        child.expect("User carol is ready")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0

    def login(code: str, expect: str) -> int | None:
        child = pexpect.spawn(TSH, ["login", f"--proxy={e2e.web}", "--user=carol", f"--ca-pin={e2e.pin}"],
                              env=env, timeout=30, encoding="utf-8")
        try:
            child.expect("Enter password for Teleport user carol: ")
            child.sendline(PASSWORD)
            child.expect("Enter your OTP token")
            child.sendline(code)
            child.expect(expect)
            child.expect(pexpect.EOF)
        finally:
            child.close()
        return child.exitstatus

    # A one-time code is good once: the sign-up's code is refused; the next step's code works.
    assert login(signup_code, "invalid user name, password or one-time code") == 1
    next_code = totp.at(time.time() + totp.interval)
    if next_code == signup_code:  # the clock moved on since the sign-up: take the one after
        next_code = totp.at(time.time() + 2 * totp.interval)
    assert login(next_code, "User: +carol") == 0
    result = subprocess.run([TSH, "ssh", "root@node1", "echo carol-ok"], env=env, capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    assert result.stdout == "carol-ok\n", result.stderr
