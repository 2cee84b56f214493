"""What every benchmark stands on: the OpenSSH baseline (a jump-host sshd and a target sshd on
loopback ports, with their own host keys and authorized keys) and this project's cluster (auth,
proxy and node processes on loopback, a user signed up and logged in with ``tsh``), plus process
measurements (RSS, PSS, CPU time) read from /proc.

Everything lives in one temporary directory; :class:`Processes` kills what was started.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import TCTL, TELEPORT, Cluster, Node, free_port, next_loopback_ip

BIN = Path(sys.executable).parent
TSH = str(BIN / "tsh")
SSHD = "/usr/sbin/sshd"
CLUSTER = "bench.test"
PASSWORD = "bench password 0123456789"
NODE = "node1"
WAIT = 30.0
CLASSIC_KEX = "curve25519-sha256"


class BenchError(RuntimeError):
    """A benchmark could not run (a daemon did not start, a command failed)."""


def raise_nofile(wanted: int) -> int:
    """Raise RLIMIT_NOFILE (soft, and hard if allowed) to ``wanted``; returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def wait_until(condition, what: str, timeout: float = WAIT, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for client commands: no agent, no Teleport variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEPORT", "SSH_AUTH_SOCK", "SSH_AGENT"))}
    env.update(extra)
    return env


# ---------------------------------------------------------------------------- /proc


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def pss_bytes(pid: int) -> int:
    """Proportional set size: shared pages divided among their sharers (fair for forked sshd)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """All processes below ``pid`` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def tree_pss(pid: int) -> int:
    """PSS of a process and everything below it."""
    return sum(pss_bytes(p) for p in [pid, *descendants(pid)])


def load_average() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


# ---------------------------------------------------------------------------- processes


class Processes:
    """Subprocesses in their own process groups, all killed by :meth:`stop_all`."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, argv: list[str], log: Path, **kwargs) -> subprocess.Popen:
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(10)
        self.procs.clear()


# ---------------------------------------------------------------------------- OpenSSH baseline


@dataclass
class OpenSSH:
    """Two sshd instances: the jump host on 127.0.0.1 and the target on its own loopback address."""

    root: Path
    procs: Processes
    jump: tuple[str, int] = ("", 0)
    target: tuple[str, int] = ("", 0)
    config: Path = field(default_factory=Path)
    pids: dict[str, int] = field(default_factory=dict)

    def start(self, max_sessions: int = 100) -> OpenSSH:
        self.root.mkdir(parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
        user_key = self.root / "user_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(user_key)], check=True)
        authorized = self.root / "authorized_keys"
        shutil.copy(user_key.with_suffix(".pub"), authorized)
        authorized.chmod(0o600)
        known = []
        self.jump = ("127.0.0.1", free_port("127.0.0.1"))
        ip = next_loopback_ip()
        self.target = (ip, free_port(ip))
        for name, (host, port) in (("jump", self.jump), ("target", self.target)):
            key = self.root / f"{name}_host_key"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
            known.append(f"[{host}]:{port} {key.with_suffix('.pub').read_text().strip()}")
            config = self.root / f"sshd_{name}.conf"
            config.write_text(
                f"ListenAddress {host}:{port}\nHostKey {key}\nAuthorizedKeysFile {authorized}\n"
                "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                "UsePAM no\nStrictModes no\nPidFile none\nUseDNS no\nAllowTcpForwarding yes\n"
                f"MaxStartups {max_sessions}:30:{max_sessions * 2}\nLogLevel ERROR\n"
                "Subsystem sftp /usr/lib/openssh/sftp-server\n"
            )
            proc = self.procs.start([SSHD, "-D", "-e", "-f", str(config)], self.root / f"sshd_{name}.log")
            self.pids[name] = proc.pid
            wait_until(lambda h=host, p=port: port_open(h, p), f"sshd {name} on {host}:{port}")
        (self.root / "known_hosts").write_text("\n".join(known) + "\n")
        self.config = self.root / "ssh_config"
        common = (f"    User root\n    IdentityFile {user_key}\n    IdentitiesOnly yes\n"
                  f"    UserKnownHostsFile {self.root / 'known_hosts'}\n    StrictHostKeyChecking yes\n"
                  "    BatchMode yes\n    GSSAPIAuthentication no\n")
        self.config.write_text(
            f"Host jump\n    HostName {self.jump[0]}\n    Port {self.jump[1]}\n{common}\n"
            f"Host target\n    HostName {self.target[0]}\n    Port {self.target[1]}\n    ProxyJump jump\n{common}\n"
            # The same hosts with classic curve25519 key exchange instead of OpenSSH 9's default
            # post-quantum hybrid (sntrup761x25519), which costs the client tens of ms of CPU.
            f"Host jump-x25519\n    HostName {self.jump[0]}\n    Port {self.jump[1]}\n{common}"
            f"    KexAlgorithms {CLASSIC_KEX}\n    HostKeyAlias [{self.jump[0]}]:{self.jump[1]}\n\n"
            f"Host target-x25519\n    HostName {self.target[0]}\n    Port {self.target[1]}\n"
            f"    ProxyJump jump-x25519\n{common}    KexAlgorithms {CLASSIC_KEX}\n"
            f"    HostKeyAlias [{self.target[0]}]:{self.target[1]}\n"
        )
        self.user_key = user_key
        return self

    def ssh(self, classic_kex: bool = False) -> list[str]:
        """``ssh`` to the target through the jump host: append a command."""
        return ["ssh", "-F", str(self.config), "target-x25519" if classic_kex else "target"]

    def scp_dest(self, path: str) -> tuple[list[str], str]:
        return ["scp", "-q", "-F", str(self.config)], f"target:{path}"

    def memory(self) -> int:
        """PSS of both sshd instances and every process they forked (sessions, shells)."""
        return sum(tree_pss(pid) for pid in self.pids.values())


# ---------------------------------------------------------------------------- our cluster


@dataclass
class OurCluster:
    """auth + proxy + one node (``teleport start`` processes) and a logged-in tsh profile."""

    root: Path
    cluster: Cluster | None = None
    proxy: Node | None = None
    node: Node | None = None
    home: Path = field(default_factory=Path)
    web: str = ""
    proxy_ip: str = ""
    proxy_ssh_port: int = 0
    config: Path = field(default_factory=Path)

    def start(self) -> OurCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        self.cluster = Cluster(self.root, CLUSTER)
        self.cluster.start()
        token = self.cluster.add_token(roles="node,proxy", ttl="30m")["token"]
        pin = self.cluster.pin()
        ip = next_loopback_ip()
        self.proxy_ip, self.proxy_ssh_port, web_port = ip, free_port(ip), free_port(ip)
        self.web = f"{ip}:{web_port}"
        self.proxy = self.cluster.start_node(
            "proxy1",
            [TELEPORT, "start", "--roles=proxy", f"--token={token}", f"--ca-pin={pin}",
             f"--auth-server={self.cluster.addr}"],
            config={"proxy_service": {"enabled": True, "listen_addr": f"{ip}:{self.proxy_ssh_port}",
                                      "web_listen_addr": self.web}},
            listen_ip=ip,
        )
        self.node = self.cluster.start_node(NODE, token=token, pins=(pin,))
        self.home = self.root / "tsh-home"
        password_file, otp_file = self.root / "password", self.root / "otp-secret"
        password_file.write_text(PASSWORD + "\n")
        invite = self.cluster.tctl_json("users", "add", "bench", "--roles=access", "--logins=root")
        self.tsh("signup", f"--proxy={self.web}", f"--token={invite['token']}", f"--ca-pin={pin}",
                 f"--password-file={password_file}", f"--otp-secret-out={otp_file}")
        self.tsh("login", f"--proxy={self.web}", "--user=bench", f"--ca-pin={pin}",
                 f"--password-file={password_file}", f"--otp-secret-file={otp_file}")

        def listed() -> bool:
            out = subprocess.run([TSH, "ls", "--format=json"], env=self.env(), capture_output=True, text=True)
            return out.returncode == 0 and NODE in {n["hostname"] for n in json.loads(out.stdout)}

        wait_until(listed, "tsh ls to list the node")
        self.config = self.root / "ssh_config"
        self.config.write_text(self.tsh("config"))
        return self

    def env(self) -> dict[str, str]:
        return clean_env(TELEPORT_HOME=str(self.home))

    def tsh(self, *args: str) -> str:
        result = subprocess.run([TSH, *args], env=self.env(), capture_output=True, text=True, timeout=120,
                                stdin=subprocess.DEVNULL, cwd=self.root)
        if result.returncode != 0:
            raise BenchError(f"tsh {args[0]} exited {result.returncode}: {result.stderr.strip()}")
        return result.stdout

    @property
    def target(self) -> str:
        return f"root@{NODE}.{CLUSTER}"

    def ssh(self) -> list[str]:
        """OpenSSH through our proxy with the config ``tsh config`` prints: append a command."""
        return ["ssh", "-F", str(self.config), "-o", "BatchMode=yes", self.target]

    def ssh_jump(self) -> list[str]:
        """OpenSSH ``-J`` through our proxy (direct-tcpip instead of the proxy subsystem)."""
        return ["ssh", "-F", str(self.config), "-o", "BatchMode=yes", "-J", f"root@{self.proxy_ip}", self.target]

    def tctl(self) -> list[str]:
        """tctl on the auth host, with its config: append a command."""
        assert self.cluster is not None
        return [TCTL, "-c", str(self.cluster.config_path)]

    def tsh_ssh(self, tty: bool = False) -> list[str]:
        return [TSH, "ssh", *(["-t"] if tty else []), f"root@{NODE}"]

    def scp_dest(self, path: str) -> tuple[list[str], str]:
        return ["scp", "-q", "-F", str(self.config), "-o", "BatchMode=yes"], f"{self.target}:{path}"

    def profile_files(self) -> dict[str, Path]:
        """The tsh profile's key, certificate and known_hosts (for asyncssh clients)."""
        keys = next(p for p in (self.home / "keys").rglob("*") if p.is_file() and p.name.endswith("-cert.pub"))
        known = next(self.home.rglob("known_hosts"))
        return {"key": keys.with_name(keys.name[: -len("-cert.pub")]), "cert": keys, "known_hosts": known}

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.kill_all()
