"""Real daemons on loopback for reverse tunnel tests: an auth service, proxies with a tunnel
listener, tunnel nodes started with only a proxy's web address, a token and the CA pin, and a
logged-in tsh user."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import TELEPORT, Cluster, Node, free_port, next_loopback_ip, run_tsh, sign_up_and_log_in, wait_for

PASSWORD = "correct horse battery staple"


@dataclass
class Proxy:
    node: Node
    web: str
    ssh: str
    tunnel: str


@dataclass
class TunnelEnv:
    root: Path
    cluster: Cluster
    proxies: list[Proxy] = field(default_factory=list)
    home: Path = Path()

    def start_proxy(self, name: str, tunnel_public: str | None = None, *, public: str | None = None,
                    ssh_public: str | None = None) -> Proxy:
        ip = next_loopback_ip()
        ssh, web, tunnel = (f"{ip}:{free_port(ip)}" for _ in range(3))
        proxy_cfg: dict[str, Any] = {"enabled": True, "listen_addr": ssh, "web_listen_addr": web,
                                     "tunnel_listen_addr": tunnel}
        if tunnel_public:
            proxy_cfg["tunnel_public_addr"] = tunnel_public
        if public:
            proxy_cfg["public_addr"] = public
        if ssh_public:
            proxy_cfg["ssh_public_addr"] = ssh_public
        token = self.cluster.add_token("proxy")["token"]
        node = self.cluster.start_node(
            name,
            [TELEPORT, "start", "--roles=proxy", f"--token={token}", f"--ca-pin={self.cluster.pin()}",
             f"--auth-server={self.cluster.addr}"],
            config={"proxy_service": proxy_cfg}, listen_ip=ip,
        )
        proxy = Proxy(node, web, ssh, tunnel)
        self.proxies.append(proxy)
        return proxy

    def start_tunnel_node(self, name: str, web: str, *, token: str | None = None, pin: str | None = None,
                          labels: dict[str, str] | None = None, wait: bool = True) -> Node:
        """``teleport start --roles=node --auth-server=PROXY_WEB --token --ca-pin``: nothing else."""
        token = token or self.cluster.add_token("node")["token"]
        argv = [TELEPORT, "start", "--roles=node", f"--token={token}", f"--ca-pin={pin or self.cluster.pin()}",
                f"--auth-server={web}"]
        config = {"ssh_service": {"labels": labels}} if labels else None
        return self.cluster.start_node(name, argv, config=config, wait=wait)

    def node_record(self, name: str) -> dict[str, Any] | None:
        return next((n for n in self.cluster.nodes() if n["hostname"] == name), None)

    def wait_registered(self, name: str) -> dict[str, Any]:
        wait_for(lambda: self.node_record(name) is not None, 60, what=f"node {name} registered")
        record = self.node_record(name)
        assert record is not None
        return record

    def login(self, roles: str = "access", logins: str = "root", web: str | None = None) -> None:
        """Sign up alice and log in through ``web`` (default: the first proxy; profile in ``home``)."""
        self.home = self.root / "tsh-home"
        sign_up_and_log_in(self.cluster, web or self.proxies[0].web, "alice", roles=roles, logins=logins,
                           home=self.home, password_file=self.root / "password", otp_file=self.root / "otp")

    def login_through(self, proxy: Proxy) -> None:
        """Log alice in again through ``proxy`` (its profile becomes the current one)."""
        run_tsh(self.home, "login", f"--proxy={proxy.web}", "--user=alice", f"--ca-pin={self.cluster.pin()}",
                f"--password-file={self.root / 'password'}", f"--otp-secret-file={self.root / 'otp'}",
                cwd=self.root, check=True)

    def tsh(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_tsh(self.home, *args, cwd=self.root)


def tcp_listeners(pid: int) -> list[Any]:
    """The TCP ports the process (and its children) listen on."""
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    out = []
    for proc in procs:
        out += [c.laddr for c in proc.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]
    return out


class RoundRobin:
    """A tiny layer-4 round-robin forwarder on loopback (a load balancer in front of proxies)."""

    def __init__(self, backends: list[str], ip: str | None = None) -> None:
        self.backends = backends
        self.ip = ip or next_loopback_ip()
        self.sock = socket.create_server((self.ip, 0))
        self.port = int(self.sock.getsockname()[1])
        self.addr = f"{self.ip}:{self.port}"
        self.next = 0
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            for _ in range(len(self.backends)):
                host, port = self.backends[self.next % len(self.backends)].rsplit(":", 1)
                self.next += 1
                try:
                    upstream = socket.create_connection((host, int(port)), timeout=5)
                except OSError:
                    continue
                upstream.settimeout(None)
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()
                break
            else:
                client.close()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        self.closed = True
        self.sock.close()


class HAProxy:
    """A real HAProxy (Debian's package, which scripts/setup installs) in front of the proxies:
    layer 4, round robin, health checks; one frontend per proxy port, on 127.0.0.1."""

    def __init__(self, binary: str, root: Path, ports: dict[str, int]) -> None:
        self.binary = binary
        self.root = root
        self.ports = ports
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, backends: dict[str, list[str]]) -> None:
        lines = ["global", "    maxconn 256", "defaults", "    mode tcp", "    timeout connect 5s",
                 "    timeout client 1h", "    timeout server 1h", "    retries 3", "    option redispatch"]
        for name, port in self.ports.items():
            lines += [f"frontend {name}", f"    bind 127.0.0.1:{port}", f"    default_backend {name}",
                      f"backend {name}", "    balance roundrobin"]
            lines += [f"    server p{i} {addr} check inter 1s fall 2 rise 1"
                      for i, addr in enumerate(backends[name], 1)]
        config = self.root / "haproxy.cfg"
        config.write_text("\n".join(lines) + "\n")
        subprocess.run([self.binary, "-c", "-q", "-f", str(config)], check=True)
        log = (self.root / "haproxy.log").open("wb")
        self.proc = subprocess.Popen([self.binary, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
        for port in self.ports.values():
            wait_for(lambda p=port: _accepts("127.0.0.1", p), 20, what=f"HAProxy on port {port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


def _accepts(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture
def tunnel_env(cluster_factory: Callable[..., Cluster], tmp_path: Path) -> Iterator[TunnelEnv]:
    cluster = cluster_factory(name="tunnel.test", auth_service={"presence_ttl": "10s"})
    (tmp_path / "password").write_text(PASSWORD + "\n")
    yield TunnelEnv(tmp_path, cluster)
