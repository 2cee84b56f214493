"""The proxy's one-port mode (``auth_service.proxy_listener_mode: multiplex``).

Real daemons on loopback: with the mode on, the proxy listens on its web port only, and tsh
login, tsh ssh, OpenSSH with the config ``tsh config`` prints (including ``ssh -J``) and the web
API all go through it; garbage, a half-open TLS handshake and a slowloris are dropped with a log
line. With the mode off the separate ports work as before. The bounds (identification deadline,
caps on unidentified connections per source and per listener) are checked in process against
the :class:`~teleport_runtime.proxy.multiplex.Multiplexer` itself, with small limits.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from teleport_runtime.api.names import ALPN_REVERSE_TUNNEL
from teleport_runtime.config import config_from_dict
from teleport_runtime.errors import ConfigError
from teleport_runtime.proxy import multiplex
from teleport_runtime.proxy.multiplex import Multiplexer, Unidentified, client_hello_alpn
from teleport_runtime.sshserver import StartupLimits
from tests.conftest import TELEPORT, Cluster, Node, require_binary, run_tsh, sign_up_and_log_in, wait_for

CLUSTER = "mux.test"
PASSWORD = "correct horse battery staple"


# ---------------------------------------------------------------------- the setting


def test_proxy_listener_mode_setting() -> None:
    auth = {"enabled": True, "cluster_name": "example.com"}
    assert config_from_dict({"auth_service": auth}, check=False).auth.proxy_listener_mode == "separate"
    cfg = config_from_dict({"auth_service": {**auth, "proxy_listener_mode": "multiplex"}}, check=False)
    assert cfg.auth.proxy_listener_mode == "multiplex"
    with pytest.raises(ConfigError, match=r"proxy_listener_mode.*'one-port'.*expected one of separate, multiplex"):
        config_from_dict({"auth_service": {**auth, "proxy_listener_mode": "one-port"}}, check=False)


# ---------------------------------------------------------------------- ClientHello parsing


def client_hello(alpn: list[str] | None) -> bytes:
    """The first TLS record a real client sends (Python's ssl, with ``alpn`` offered)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="proxy.example.com")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_client_hello_alpn_is_read_from_the_first_record() -> None:
    assert client_hello_alpn(client_hello([ALPN_REVERSE_TUNNEL])) == (ALPN_REVERSE_TUNNEL,)
    assert client_hello_alpn(client_hello(["h2", "http/1.1"])) == ("h2", "http/1.1")
    assert client_hello_alpn(client_hello(None)) == ()


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\n\r\n",
    b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00",  # a ServerHello, not a ClientHello
    b"\x16\x03\x01\x00\x08\x01\x00\x10\x00\x03\x03\x00\x00",  # a ClientHello longer than its record
    b"\x16\x03\x01\xff\xff",  # a record longer than TLS allows
])
def test_client_hello_garbage_is_refused(data: bytes) -> None:
    with pytest.raises(Unidentified):
        client_hello_alpn(data)


def test_truncated_client_hello_is_refused() -> None:
    hello = client_hello(["http/1.1"])
    body = hello[5:60]
    record = b"\x16\x03\x01" + len(body).to_bytes(2, "big") + body
    with pytest.raises(Unidentified):
        client_hello_alpn(record)


# ---------------------------------------------------------------------- bounds, in process


class _Silent(asyncio.Protocol):
    """Stands in for the SSH and web servers: the bounds apply before either sees a byte."""

    made: list[asyncio.BaseTransport] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        _Silent.made.append(transport)


async def _closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(100), within) == b""
    except ConnectionResetError:  # closed with the client's bytes unread
        return True
    except TimeoutError:
        return False


@pytest.fixture
async def small_mux(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(multiplex, "IDENTIFY_TIMEOUT", 1.0)
    mux = Multiplexer(
        ssh=_Silent, web=_Silent, web_ssl=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER),
        limits=StartupLimits(per_source=2, total=3),
    )
    await mux.start("127.0.0.1", 0)
    try:
        yield mux
    finally:
        await mux.stop()


async def test_unidentified_connections_are_capped_per_source_and_per_listener(small_mux: Multiplexer) -> None:
    port = small_mux.port
    assert port is not None
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    await asyncio.sleep(0.2)
    assert small_mux.gate.pending("127.0.0.1") == 2
    # a third from the same source is closed at once, before it sends anything
    reader, _ = await asyncio.open_connection("127.0.0.1", port)
    assert await _closed_by_server(reader, 0.9)
    # another source gets the listener's last slot, and then the listener is full
    other = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
    await asyncio.sleep(0.2)
    assert small_mux.gate.pending() == 3
    reader, _ = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.3", 0))
    assert await _closed_by_server(reader, 0.9)
    for _, writer in [*held, other]:
        writer.close()


async def test_garbage_half_open_tls_and_slowloris_are_dropped(
    small_mux: Multiplexer, caplog: pytest.LogCaptureFixture
) -> None:
    port = small_mux.port
    assert port is not None
    conns = {}
    for name, data in (
        ("garbage", b"GET / HTTP/1.0\r\n\r\n"),
        ("half-open TLS", client_hello(["http/1.1"])[:40]),
        ("slowloris", b"SS"),
        ("silent", b""),
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data)
        conns[name] = (reader, writer)
        await asyncio.sleep(1.1)  # one log line a second: each drop gets its own
    for name, (reader, writer) in conns.items():
        assert await _closed_by_server(reader, 5), name
        writer.close()
    assert small_mux.gate.pending() == 0
    assert not _Silent.made  # nothing reached the SSH or web server
    drops = [r.getMessage() for r in caplog.records if "dropped a connection" in r.getMessage()]
    assert any("neither SSH nor TLS" in m for m in drops), drops
    assert sum("sent nothing identifiable within 1s" in m for m in drops) == 3, drops


async def test_a_tunnel_agent_is_dropped_when_the_proxy_serves_no_tunnels(
    small_mux: Multiplexer, caplog: pytest.LogCaptureFixture
) -> None:
    assert small_mux.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", small_mux.port)
    writer.write(client_hello([ALPN_REVERSE_TUNNEL]))
    assert await _closed_by_server(reader, 5)
    writer.close()
    assert any("this proxy serves no tunnels" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------- daemons


def proxy_ports(proxy: Node) -> tuple[int, int]:
    """The SSH and web ports in the proxy's config file."""
    cfg = yaml.safe_load(proxy.config_path.read_text())["proxy_service"]
    return int(cfg["listen_addr"].rsplit(":", 1)[1]), int(cfg["web_listen_addr"].rsplit(":", 1)[1])


def listening_ports(pid: int) -> set[int]:
    """TCP ports process ``pid`` listens on (``ss -ltnp``)."""
    out = subprocess.run([require_binary("ss"), "-Hltnp"], capture_output=True, text=True, check=True).stdout
    ports = set()
    for line in out.splitlines():
        if re.search(rf"pid={pid},", line):
            ports.add(int(line.split()[3].rsplit(":", 1)[1]))
    return ports


def get_json(web: str, path: str) -> Any:
    host, port = web.rsplit(":", 1)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200, response.read()
        return json.loads(response.read())
    finally:
        conn.close()


class Env:
    def __init__(self, root: Path, cluster: Cluster, proxy: Node, web: str) -> None:
        self.root, self.cluster, self.proxy, self.web = root, cluster, proxy, web
        self.home = root / "tsh-home"

    def tsh(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return run_tsh(self.home, *args, cwd=self.root, check=check)


@pytest.fixture(scope="module")
def mux_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("mux")
    cluster = Cluster(root, CLUSTER, {"presence_ttl": "10s", "proxy_listener_mode": "multiplex"})
    try:
        cluster.start()
        token = cluster.add_token(roles="node,proxy", ttl="10m")["token"]
        proxy, web = cluster.start_proxy(token)
        cluster.start_node("node1", token=token, pins=(cluster.pin(),))
        env = Env(root, cluster, proxy, web)
        (root / "password").write_text(PASSWORD + "\n")
        sign_up_and_log_in(cluster, web, "alice", roles="access", logins="root", home=env.home,
                           password_file=root / "password", otp_file=root / "otp-secret")

        def listed() -> bool:
            out = env.tsh("ls", "--format=json")
            return out.returncode == 0 and "node1" in {n["hostname"] for n in json.loads(out.stdout)}

        wait_for(listed, what="tsh ls to show node1")
        yield env
    finally:
        cluster.kill_all()


def test_multiplex_listens_on_the_web_port_only(mux_env: Env) -> None:
    ssh_port, web_port = proxy_ports(mux_env.proxy)
    assert mux_env.proxy.daemon is not None and mux_env.proxy.daemon.diag is not None
    diag_port = int(mux_env.proxy.daemon.diag.rsplit(":", 1)[1])
    assert listening_ports(mux_env.proxy.daemon.pid) == {web_port, diag_port}
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((mux_env.proxy.ip, ssh_port), timeout=5).close()
    assert mux_env.cluster.tctl_json("status")["proxy_listener_mode"] == "multiplex"


def test_find_and_ping_give_the_web_address_for_ssh(mux_env: Env) -> None:
    find = get_json(mux_env.web, "/webapi/find")
    assert find["proxy"] == {"ssh_addr": mux_env.web, "web_addr": mux_env.web, "tunnel_addr": mux_env.web,
                             "listener_mode": "multiplex"}
    assert get_json(mux_env.web, "/webapi/ping")["proxy"]["ssh_addr"] == mux_env.web
    assert mux_env.tsh("status", check=True).returncode == 0


def test_tsh_ssh_through_the_one_port(mux_env: Env) -> None:
    result = mux_env.tsh("ssh", "root@node1", "echo ok; exit 3")
    assert (result.returncode, result.stdout) == (3, "ok\n"), result.stderr


@pytest.mark.interop
def test_openssh_with_tsh_config_through_the_one_port(mux_env: Env) -> None:
    ssh = require_binary("ssh")
    config = mux_env.root / "ssh_config"
    config.write_text(mux_env.tsh("config", check=True).stdout)
    _, web_port = proxy_ports(mux_env.proxy)
    assert f"Port {web_port}" in config.read_text()
    base = [ssh, "-F", str(config), "-o", "BatchMode=yes"]
    result = subprocess.run([*base, f"root@node1.{CLUSTER}", "echo ok"],
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr
    result = subprocess.run([*base, "-J", f"root@{mux_env.proxy.ip}:{web_port}", f"root@node1.{CLUSTER}", "echo jump"],
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert (result.returncode, result.stdout) == (0, "jump\n"), result.stderr


def test_a_tunnel_node_joins_and_is_reached_through_the_one_port(mux_env: Env) -> None:
    """A node given only the proxy's web address joins through it, holds its reverse tunnel on
    that same port (TLS with the tunnel ALPN) and is reached with tsh ssh; no other proxy port."""
    cluster = mux_env.cluster
    token = cluster.add_token("node")["token"]
    node = cluster.start_node(
        "tnode",
        [TELEPORT, "start", "--roles=node", f"--token={token}", f"--ca-pin={cluster.pin()}",
         f"--auth-server={mux_env.web}"],
    )
    assert get_json(mux_env.web, "/webapi/find")["proxy"]["tunnel_addr"] == mux_env.web

    def listed() -> bool:
        out = mux_env.tsh("ls", "--format=json")
        return out.returncode == 0 and "tnode" in {n["hostname"] for n in json.loads(out.stdout)}

    wait_for(listed, 60, what="tsh ls to show the tunnel node")
    result = mux_env.tsh("ssh", "root@tnode", "echo through the tunnel")
    assert (result.returncode, result.stdout) == (0, "through the tunnel\n"), result.stderr + node.log()[-3000:]
    assert mux_env.proxy.daemon is not None
    _, web_port = proxy_ports(mux_env.proxy)
    assert web_port in listening_ports(mux_env.proxy.daemon.pid)
    assert len(listening_ports(mux_env.proxy.daemon.pid)) == 2  # the web port and the diag port


def test_garbage_on_the_one_port_is_dropped_with_a_log_line(mux_env: Env) -> None:
    _, web_port = proxy_ports(mux_env.proxy)
    with socket.create_connection((mux_env.proxy.ip, web_port), timeout=30) as sock:
        sock.sendall(b"\x00\x01garbage\r\n")
        try:
            assert sock.recv(100) == b""
        except ConnectionResetError:  # closed with the bytes unread
            pass
    wait_for(lambda: "neither SSH nor TLS" in mux_env.proxy.log(), what="the proxy to log the drop")
    # and the port still serves
    assert get_json(mux_env.web, "/webapi/find")["cluster"] == CLUSTER


def test_separate_mode_keeps_both_ports(cluster: Cluster) -> None:
    token = cluster.add_token(roles="proxy")["token"]
    proxy, web = cluster.start_proxy(token)
    ssh_port, web_port = proxy_ports(proxy)
    assert proxy.daemon is not None
    assert {ssh_port, web_port} <= listening_ports(proxy.daemon.pid)
    find = get_json(web, "/webapi/find")
    assert find["proxy"]["listener_mode"] == "separate"
    assert find["proxy"]["ssh_addr"] == f"{proxy.ip}:{ssh_port}"
    with socket.create_connection((proxy.ip, ssh_port), timeout=10) as sock:
        assert sock.recv(4) == b"SSH-"
