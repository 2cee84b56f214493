"""The reverse tunnel server and the node's check of the proxy, in process with real asyncssh
connections on loopback: who may hold a tunnel, what a tunnel may open, garbage and half-open
handshakes, another cluster's proxy."""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import ssl
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncssh
import pytest

from teleport_runtime.agent.tunnel import check_proxy_host_key
from teleport_runtime.api.names import ALPN_REVERSE_TUNNEL, TUNNEL_AUTH_TARGET, TUNNEL_NODE_HOST, TUNNEL_NODE_PORT
from teleport_runtime.ca import generate_host_ssh_cert, generate_ssh_keypair
from teleport_runtime.ca.authority import generate_ca_keypair
from teleport_runtime.config import HostPort
from teleport_runtime.errors import AccessDenied
from teleport_runtime.proxy.tunnel import TunnelServer
from teleport_runtime.sshinternals import HostKeyRecorder
from teleport_runtime.sshserver import StartupLimits

CLUSTER = "tunnel.test"
GRACE = 1.0


def host_identity(ca: Any, role: str, cluster: str = CLUSTER) -> tuple[asyncssh.SSHKey, asyncssh.SSHCertificate, str]:
    private, public = generate_ssh_keypair()
    host_id = str(uuid.uuid4())
    line = generate_host_ssh_cert(ca, public, host_uuid=host_id, nodename=f"{role.lower()}1",
                                  cluster_name=cluster, role=role)
    return asyncssh.import_private_key(private), asyncssh.import_certificate(line), host_id


def blob(cert: asyncssh.SSHCertificate) -> bytes:
    return base64.b64decode(cert.export_certificate().split()[1])


class Env:
    def __init__(self) -> None:
        self.ca = generate_ca_keypair("host", CLUSTER)
        self.audited: list[tuple[str, dict[str, Any]]] = []
        key, cert, self.proxy_id = host_identity(self.ca, "Proxy")
        self.auth_port = 0
        self.server = TunnelServer(
            host_key=key, host_cert=cert, trusted_host_ca_keys=lambda: [self.ca.ssh_public_key],
            auth_addresses=lambda: [HostPort("127.0.0.1", self.auth_port)], cluster=CLUSTER,
            audit=lambda event, **fields: self.audited.append((event, fields)),
            startup_limits=StartupLimits(per_source=3, total=5, grace_time=GRACE),
        )

    async def connect(self, key: asyncssh.SSHKey, cert: asyncssh.SSHCertificate) -> asyncssh.SSHClientConnection:
        return await asyncssh.connect("127.0.0.1", self.server.port, username="anything", client_keys=[(key, cert)],
                                      known_hosts=None, agent_path=None, config=None)


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    env = Env()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"auth:" + await reader.read(100))
        await writer.drain()
        writer.close()

    auth = await asyncio.start_server(echo, "127.0.0.1", 0)
    env.auth_port = auth.sockets[0].getsockname()[1]
    await env.server.start("127.0.0.1", 0)
    try:
        yield env
    finally:
        await env.server.stop()
        auth.close()


async def test_a_node_with_a_host_certificate_holds_a_tunnel_and_may_open_only_the_auth_api(env: Env) -> None:
    key, cert, node_id = host_identity(env.ca, "Node")
    async with await env.connect(key, cert) as conn:
        await conn.create_server(lambda *_: None, TUNNEL_NODE_HOST, TUNNEL_NODE_PORT)  # type: ignore[arg-type]
        await asyncio.sleep(0.1)
        assert env.server.has(node_id)  # by the certificate's UUID, whatever username was sent
        reader, writer = await conn.open_connection(TUNNEL_AUTH_TARGET, 0)
        writer.write(b"hello")
        assert await reader.read(100) == b"auth:hello"  # relayed as raw bytes
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.open_connection("127.0.0.1", env.auth_port)
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.create_session(asyncssh.SSHClientSession)
    assert any(event == "port.rejected" for event, _ in env.audited)


@pytest.mark.parametrize("case", ["other CA", "proxy role", "other cluster"])
async def test_a_certificate_that_is_not_a_node_of_this_cluster_is_refused(env: Env, case: str) -> None:
    if case == "other CA":
        key, cert, _ = host_identity(generate_ca_keypair("host", CLUSTER), "Node")
    elif case == "proxy role":
        key, cert, _ = host_identity(env.ca, "Proxy")
    else:
        key, cert, _ = host_identity(env.ca, "Node", cluster="other.test")
    with pytest.raises(asyncssh.PermissionDenied):
        await env.connect(key, cert)
    assert not env.server.tunnels
    assert [event for event, _ in env.audited] and all(event == "auth.rejected" for event, _ in env.audited)


async def test_garbage_and_half_open_handshakes_are_dropped_with_bounded_memory(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    assert env.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", env.server.port)
    writer.write(b"GET / HTTP/1.1\r\n\r\n" + b"\x00" * 70000)
    async with asyncio.timeout(10):
        while await reader.read(65536):
            pass  # the server's version line, then the close
    writer.close()

    held = [await asyncio.open_connection("127.0.0.1", env.server.port) for _ in range(3)]
    extra_reader, extra_writer = await asyncio.open_connection("127.0.0.1", env.server.port)
    async with asyncio.timeout(5):
        assert await extra_reader.read(100) == b""  # over the per-source limit: closed at once
    extra_writer.close()
    async with asyncio.timeout(GRACE + 10):  # the login grace time ends the half-open ones
        for half_open, _ in held:
            while await half_open.read(100):
                pass
    for _, w in held:
        w.close()
    assert env.server.startup_gate.pending() == 0
    assert "not authenticated within" in caplog.text
    assert "tunnel 1 from 127.0.0.1 dropped before it authenticated" in caplog.text  # the garbage's line


def test_the_node_refuses_a_proxy_of_another_cluster_or_a_non_proxy() -> None:
    ca = generate_ca_keypair("host", CLUSTER)
    _, proxy_cert, proxy_id = host_identity(ca, "Proxy")
    assert check_proxy_host_key(blob(proxy_cert), [ca.ssh_public_key], CLUSTER) == proxy_id
    rogue = generate_ca_keypair("host", CLUSTER)
    _, rogue_cert, _ = host_identity(rogue, "Proxy")
    with pytest.raises(AccessDenied, match="not a proxy of cluster"):
        check_proxy_host_key(blob(rogue_cert), [ca.ssh_public_key], CLUSTER)
    _, node_cert, _ = host_identity(ca, "Node")
    with pytest.raises(AccessDenied, match="not a Proxy"):
        check_proxy_host_key(blob(node_cert), [ca.ssh_public_key], CLUSTER)
    with pytest.raises(AccessDenied, match="plain host key"):
        check_proxy_host_key(proxy_cert.key.public_data, [ca.ssh_public_key], CLUSTER)


def test_the_asyncssh_internals_the_tunnels_use_are_still_there() -> None:
    """sshinternals: HostKeyRecorder wraps validate_server_host_key(key_data), stream_session
    builds asyncssh.stream's session, verify_userauth_signature reads _session_id."""
    import inspect

    from asyncssh.stream import SSHTCPStreamSession

    params = list(inspect.signature(asyncssh.SSHClientConnection.validate_server_host_key).parameters)
    assert params == ["self", "key_data"]
    assert list(inspect.signature(SSHTCPStreamSession.__init__).parameters)[1:2] == ["session_factory"]
    assert "_session_id" in inspect.getsource(asyncssh.SSHServerConnection.validate_public_key)


def _self_signed_tls(tmp: Any) -> ssl.SSLContext:
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "proxy")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(hours=1))
            .sign(key, hashes.SHA256()))
    (tmp / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp / "c.pem", tmp / "k.pem")
    ctx.set_alpn_protocols([ALPN_REVERSE_TUNNEL])
    return ctx


async def test_a_tunnel_handed_over_by_the_one_port_listener_inside_tls(env: Env, tmp_path: Any) -> None:
    """``serve_socket``: what the proxy's one-port mode calls with a connection it told apart as a
    tunnel (TLS with the tunnel's ALPN); the node dials it as HostKeyRecorder does with TLS."""
    server_tls = _self_signed_tls(tmp_path)
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]

    async def accept_one() -> None:
        sock, _ = await loop.sock_accept(listener)
        await env.server.serve_socket(sock, server_tls)

    accepting = asyncio.ensure_future(accept_one())
    client_tls = ssl.create_default_context()
    client_tls.check_hostname = False
    client_tls.verify_mode = ssl.CERT_NONE
    client_tls.set_alpn_protocols([ALPN_REVERSE_TUNNEL])
    key, cert, node_id = host_identity(env.ca, "Node")
    recorder = HostKeyRecorder("127.0.0.1", port, client_tls)
    async with await asyncssh.connect("127.0.0.1", port, tunnel=recorder, username="x", client_keys=[(key, cert)],
                                      known_hosts=None, agent_path=None, config=None) as conn:
        assert check_proxy_host_key(recorder.key_data, [env.ca.ssh_public_key], CLUSTER) == env.proxy_id
        await conn.create_server(lambda *_: None, TUNNEL_NODE_HOST, TUNNEL_NODE_PORT)  # type: ignore[arg-type]
        await asyncio.sleep(0.1)
        assert env.server.has(node_id)
    await accepting
    listener.close()
