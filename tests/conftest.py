"""Shared fixtures for tests that run the real daemons: an auth service started as a subprocess
(``teleport start -c auth.yaml``) on 127.0.0.1 with a free port in a temporary directory, helpers
to run ``tctl -c auth.yaml ...`` and to start nodes and a proxy as subprocesses, each on its own
loopback address (``--listen-ip=127.0.0.N``), and users who sign up and log in with ``tsh``. Every
process a test starts is killed at teardown. Also the in-process cluster (:class:`LocalCluster`)
as a fixture.

No timing assertions: waits are bounded polls for a condition.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

if TYPE_CHECKING:  # the in-process cluster is imported by its fixture only (bench imports this module)
    from tests.proxy.harness import LocalCluster

BIN = Path(sys.executable).parent
TELEPORT = str(BIN / "teleport")
TCTL = str(BIN / "tctl")
TSH = str(BIN / "tsh")
WAIT = 20.0  # bound for every readiness poll, in seconds

# One loopback address per node: 127.0.0.N, starting at a random N so that two test runs on the
# same host rarely pick the same addresses.
_LOOPBACK = itertools.count(random.randint(2, 150))


def next_loopback_ip() -> str:
    return f"127.0.0.{2 + (next(_LOOPBACK) - 2) % 250}"


def require_binary(name: str) -> str:
    """The path of ``name`` (on $PATH, else in /usr/bin); skips the test if it is not installed."""
    path = shutil.which(name) or shutil.which(f"/usr/bin/{name}")
    if path is None:
        pytest.skip(f"{name} binary not available")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for(
    condition: Callable[[], Any], timeout: float = WAIT, interval: float = 0.2, what: str = ""
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what or condition}")
        time.sleep(interval)


async def async_wait_for(
    condition: Callable[[], Any], bound: float = WAIT, interval: float = 0.1, what: str = ""
) -> Any:
    """:func:`wait_for` inside an event loop (``bound`` seconds); ``condition`` may also be a
    coroutine function."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            pytest.fail(f"timed out after {bound:.0f}s waiting for {what or condition}")
        await asyncio.sleep(interval)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


class Daemon:
    """A ``teleport start`` subprocess in its own process group; its stderr (where it logs)
    goes to ``log_path`` and its stdout next to it (``.out``)."""

    def __init__(self, name: str, argv: list[str], log_path: Path, cwd: Path,
                 diag: str | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.diag = diag
        with open(log_path, "ab") as err, open(log_path.with_suffix(".out"), "ab") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        """Everything the process wrote to stderr."""
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout: float = WAIT) -> None:
        """Until ``/readyz`` answers 200; fails early (with the log) if the process exits."""
        assert self.diag, "wait_ready needs a diag address"

        def ready() -> bool:
            if not self.alive():
                pytest.fail(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            return http_ok(f"http://{self.diag}/readyz")

        wait_for(ready, timeout, what=f"{self.name} /readyz")

    def wait_exit(self, timeout: float = WAIT) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.name} still running after {timeout:.0f}s:\n{self.log()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the daemon's process group (it and the label commands it runs)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


class Cluster:
    """An auth service in ``root``, plus the nodes a test starts against it."""

    def __init__(self, root: Path, cluster_name: str = "test.example.com",
                 auth_service: dict[str, Any] | None = None) -> None:
        self.root = root
        self.cluster_name = cluster_name
        self.host = "127.0.0.1"
        self.port = free_port(self.host)
        self.addr = f"{self.host}:{self.port}"
        self.data_dir = root / "auth"
        self.config_path = root / "auth.yaml"
        self.log_path = root / "auth.log"
        auth = {
            "enabled": True,
            "listen_addr": self.addr,
            "cluster_name": cluster_name,
            **(auth_service or {}),
        }
        self.config = {
            "version": "v1",
            "teleport": {"nodename": "auth-host", "data_dir": str(self.data_dir)},
            "auth_service": auth,
        }
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.auth: Daemon | None = None
        self.daemons: list[Daemon] = []
        self._pin: str | None = None

    # ------------------------------------------------------------------ auth service

    def start(self) -> Daemon:
        diag = f"127.0.0.1:{free_port()}"
        self.auth = Daemon(
            "auth",
            [TELEPORT, "start", "-c", str(self.config_path), f"--diag-addr={diag}"],
            self.log_path, self.root, diag,
        )
        self.daemons.append(self.auth)
        self.auth.wait_ready()
        return self.auth

    def auth_log(self) -> str:
        return self.log_path.read_text(errors="replace")

    # ------------------------------------------------------------------ tctl

    def tctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [TCTL, "-c", str(self.config_path), *args],
            capture_output=True, text=True, cwd=self.root, timeout=60,
        )
        if check and result.returncode != 0:
            pytest.fail(f"tctl {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result

    def tctl_json(self, *args: str) -> Any:
        return json.loads(self.tctl(*args, "--format=json").stdout)

    def pin(self, fresh: bool = False) -> str:
        """The CA pin ``tctl status`` prints (remembered: it changes only with a rotation)."""
        if fresh or self._pin is None:
            self._pin = self.tctl_json("status")["ca_pins"][0]
        return self._pin

    def add_token(self, roles: str = "node", ttl: str = "5m") -> dict[str, Any]:
        return self.tctl_json("nodes", "add", f"--roles={roles}", f"--ttl={ttl}")

    def nodes(self) -> list[dict[str, Any]]:
        return self.tctl_json("nodes", "ls")

    def node_ids(self) -> set[str]:
        return {n["id"] for n in self.nodes()}

    # ------------------------------------------------------------------ nodes

    def node_argv(self, name: str, *, token: str | None = None, pins: tuple[str, ...] = (),
                  auth_server: str | None = None) -> list[str]:
        """A join command as ``tctl nodes add`` prints it."""
        argv = [TELEPORT, "start", "--roles=node"]
        if token is not None:
            argv.append(f"--token={token}")
        argv += [f"--ca-pin={p}" for p in pins]
        argv.append(f"--auth-server={auth_server or self.addr}")
        return argv

    def start_node(
        self,
        name: str,
        argv: list[str] | None = None,
        *,
        config: dict[str, Any] | None = None,
        listen_ip: str | None = None,
        wait: bool = True,
        **node_args: Any,
    ) -> Node:
        """Start a node with ``argv`` (a join command, default :meth:`node_argv`) plus its own
        data dir, nodename, ``--listen-ip=127.0.0.N``, a config file giving it a free SSH port
        (merged with ``config``) and a diag address; waits for readiness unless ``wait=False``."""
        node = Node(self, name, listen_ip or next_loopback_ip(), config)
        argv = list(argv or self.node_argv(name, **node_args))
        argv[0] = TELEPORT
        node.start(argv, wait=wait)
        return node

    def start_proxy(self, token: str, name: str = "proxy1") -> tuple[Node, str]:
        """Start a proxy (``teleport start --roles=proxy``) joining with ``token`` and the CA pin,
        its SSH and web listeners on free ports of its own loopback address; returns the proxy and
        its web address (``host:port``)."""
        ip = next_loopback_ip()
        ssh_port, web_port = free_port(ip), free_port(ip)
        web = f"{ip}:{web_port}"
        proxy = self.start_node(
            name,
            [TELEPORT, "start", "--roles=proxy", f"--token={token}", f"--ca-pin={self.pin()}",
             f"--auth-server={self.addr}"],
            config={"proxy_service": {"enabled": True, "listen_addr": f"{ip}:{ssh_port}",
                                      "web_listen_addr": web, "tunnel_listen_addr": f"{ip}:{free_port(ip)}"}},
            listen_ip=ip,
        )
        return proxy, web

    def kill_all(self) -> None:
        for daemon in reversed(self.daemons):
            daemon.kill()


class Node:
    """A node's files and its current process (restartable)."""

    def __init__(self, cluster: Cluster, name: str, ip: str, config: dict[str, Any] | None) -> None:
        self.cluster = cluster
        self.name = name
        self.ip = ip
        self.dir = cluster.root / name
        self.dir.mkdir(exist_ok=True)
        self.data_dir = self.dir / "data"
        self.config_path = self.dir / "node.yaml"
        self.log_path = self.dir / "node.log"
        self.ssh_port = free_port(ip)
        cfg: dict[str, Any] = {
            "version": "v1",
            "teleport": {"nodename": name, "data_dir": str(self.data_dir)},
            "ssh_service": {"enabled": True, "listen_addr": f"{ip}:{self.ssh_port}"},
        }
        for section, values in (config or {}).items():
            if isinstance(values, dict):
                cfg.setdefault(section, {}).update(values)
            else:
                cfg[section] = values
        self.config_path.write_text(yaml.safe_dump(cfg))
        self.daemon: Daemon | None = None

    @property
    def addr(self) -> str:
        return f"{self.ip}:{self.ssh_port}"

    def start(self, argv: list[str], wait: bool = True) -> Daemon:
        """Run ``argv`` with this node's config, listen IP and diag address added."""
        diag = f"{self.ip}:{free_port(self.ip)}"
        full = [*argv, "-c", str(self.config_path), f"--listen-ip={self.ip}",
                f"--diag-addr={diag}"]
        self.log_path.write_text("")  # one run per log: stderr assertions see only this run
        self.daemon = Daemon(self.name, full, self.log_path, self.dir, diag)
        self.cluster.daemons.append(self.daemon)
        if wait:
            self.daemon.wait_ready()
        return self.daemon

    def restart(self, argv: list[str], wait: bool = True) -> Daemon:
        if self.daemon is not None:
            self.daemon.kill()
        return self.start(argv, wait)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.daemon is not None
        self.daemon.kill(sig)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def host_uuid(self) -> str:
        return (self.data_dir / "host_uuid").read_text().strip()

    def identity_dir(self) -> Path:
        return self.data_dir / "identity" / "node"


def tsh_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a user whose tsh profile is in ``home`` (none of our TELEPORT_* variables)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEPORT")}
    env["TELEPORT_HOME"] = str(home)
    env.update(extra)
    return env


def run_tsh(home: Path, *args: str, cwd: Path, stdin: str | None = None,
            check: bool = False) -> subprocess.CompletedProcess[str]:
    """``tsh ARGS`` as the user whose profile is in ``home``; with ``check`` a failure fails the test."""
    result = subprocess.run(
        [TSH, *args], env=tsh_env(home), cwd=cwd, capture_output=True, text=True, timeout=120,
        input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        pytest.fail(f"tsh {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def sign_up_and_log_in(cluster: Cluster, web: str, user: str, *, roles: str, logins: str, home: Path,
                       password_file: Path, otp_file: Path) -> None:
    """``tctl users add``, then the user signs up (password from ``password_file``, one-time code
    secret written to ``otp_file``) and logs in with tsh through the proxy's web address ``web``,
    trusting the cluster by its CA pin; the tsh profile is in ``home``."""
    invite = cluster.tctl_json("users", "add", user, f"--roles={roles}", f"--logins={logins}")
    pin = cluster.pin()
    run_tsh(home, "signup", f"--proxy={web}", f"--token={invite['token']}", f"--ca-pin={pin}",
            f"--password-file={password_file}", f"--otp-secret-out={otp_file}", cwd=cluster.root, check=True)
    run_tsh(home, "login", f"--proxy={web}", f"--user={user}", f"--ca-pin={pin}",
            f"--password-file={password_file}", f"--otp-secret-file={otp_file}", cwd=cluster.root, check=True)


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Make and start clusters in the test's tmp dir; all their processes die at teardown."""
    made: list[Cluster] = []

    def make(name: str = "test.example.com", auth_service: dict[str, Any] | None = None,
             start: bool = True) -> Cluster:
        root = tmp_path / f"cluster{len(made)}"
        root.mkdir()
        cluster = Cluster(root, name, auth_service)
        made.append(cluster)
        if start:
            cluster.start()
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            cluster.kill_all()


@pytest.fixture
def cluster(cluster_factory: Callable[..., Cluster]) -> Cluster:
    """A running auth service (presence TTL 10s, so nodes heartbeat every second)."""
    return cluster_factory(auth_service={"presence_ttl": "10s"})


@pytest.fixture
async def local_cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """The in-process cluster (auth service and API on loopback) in the test's tmp dir."""
    from tests.proxy.harness import LocalCluster

    cluster = LocalCluster(tmp_path)
    await cluster.start()
    try:
        yield cluster
    finally:
        await cluster.stop()
