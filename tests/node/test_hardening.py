"""Attacks on the node's SSH listener, replayed against a real node on loopback: weak algorithms
(OpenSSH forced to offer only SHA-1, CBC or group exchange), SHA-1 signatures, a flood of
connections that never authenticate, and probing for OS logins with a certificate whose key the
client does not hold."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from pathlib import Path

import asyncssh
import pytest

from teleport_runtime.ca import generate_user_ssh_cert
from teleport_runtime.node.ssh_server import NodeSSHServer
from teleport_runtime.sshserver import KEX_ALGS, MAX_STARTUPS_PER_SOURCE, StartupLimits
from tests.conftest import async_wait_for, require_binary

from .conftest import CLUSTER, HOST_UUID, NODENAME, WAIT, UserKey, access_role
from .test_openssh_interop import execute, options

#: OpenSSH options that each leave the client only algorithms the node must refuse (a MAC is
#: only negotiated with a cipher that is not an AEAD, hence the CTR cipher beside the SHA-1 MACs).
WEAK = [
    "KexAlgorithms=diffie-hellman-group14-sha1",
    "KexAlgorithms=diffie-hellman-group-exchange-sha1",
    "KexAlgorithms=diffie-hellman-group-exchange-sha256",
    "KexAlgorithms=diffie-hellman-group1-sha1",
    "Ciphers=aes128-ctr MACs=hmac-sha1",
    "Ciphers=aes128-ctr MACs=hmac-sha1-etm@openssh.com",
    "Ciphers=aes128-cbc",
    "Ciphers=3des-cbc",
]


def weak_options(weak: str) -> list[str]:
    return [arg for option in weak.split() for arg in ("-o", option)]


async def openssh(port: int, files: tuple[Path, Path, Path], login: str, *extra: str) -> tuple[int, str, str]:
    return await execute(
        require_binary("ssh"), *options(*files), *extra, "-p", str(port), f"{login}@127.0.0.1", "echo in",
    )


def test_no_sha1_or_group_exchange_is_offered():
    assert not [alg for alg in KEX_ALGS if "sha1" in alg or "group-exchange" in alg or "group14" in alg]
    assert "curve25519-sha256" in KEX_ALGS


@pytest.mark.interop
async def test_openssh_default_gets_in(node, client_files, os_login):
    code, out, err = await openssh(node.port, client_files, os_login)
    assert (code, out) == (0, "in\n"), err


@pytest.mark.interop
@pytest.mark.parametrize("weak", WEAK)
async def test_openssh_with_only_weak_algorithms_is_refused(node, client_files, os_login, weak):
    code, out, err = await openssh(node.port, client_files, os_login, *weak_options(weak))
    assert code == 255 and out == ""
    assert "no matching" in err, err


@pytest.mark.interop
async def test_sha1_rsa_certificate_signature_is_refused(node, user_ca, tmp_path, os_login):
    rsa = asyncssh.generate_private_key("ssh-rsa", key_size=2048)
    cert = generate_user_ssh_cert(
        user_ca.active, rsa.export_public_key().decode(), username="alice", logins=[os_login],
        roles=["access"], traits={"logins": [os_login]}, ttl=timedelta(hours=1),
    )
    key_path, cert_path = UserKey(rsa.export_private_key(), "", cert).write(tmp_path)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("".join(f"@cert-authority * {k}\n" for k in node.host_ca.trusted_ssh_public_keys()))
    files = (key_path, cert_path, known_hosts)
    # RSA with SHA-2 signatures is fine ...
    code, out, err = await openssh(node.port, files, os_login)
    assert (code, out) == (0, "in\n"), err
    # ... an RSA signature over SHA-1 is not, even with a good key and certificate. (OpenSSH
    # no longer offers one to a server whose server-sig-algs lacks ssh-rsa: sign by hand.)
    pair = asyncssh.load_keypairs([(rsa, asyncssh.import_certificate(cert))])[0]
    pair.sign = lambda data: rsa.sign(data, b"ssh-rsa")  # type: ignore[method-assign]
    with pytest.raises(asyncssh.PermissionDenied):
        await node.connect(os_login, client_keys=[pair])
    event = await node.wait_event("auth.rejected", login=os_login)
    assert "ssh-rsa is not accepted" in event["reason"]


# ---------------------------------------------------------------------------- unauthenticated floods


async def hold_open(port: int, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection that never authenticates."""
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), WAIT)


async def closed_at_once(port: int, source: str = "127.0.0.1") -> bool:
    """Whether the listener closes a new connection without a word (no SSH version line)."""
    reader, writer = await hold_open(port, source)
    try:
        return await asyncio.wait_for(reader.read(100), WAIT) == b""
    finally:
        writer.close()


async def greeted(reader: asyncio.StreamReader) -> bool:
    return (await asyncio.wait_for(reader.readline(), WAIT)).startswith(b"SSH-2.0-")


async def close_all(held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    for _, writer in held:
        writer.close()
    for _, writer in held:
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_unauthenticated_connections_are_capped_per_source(node, issue, os_login):
    held = [await hold_open(node.port) for _ in range(MAX_STARTUPS_PER_SOURCE)]
    try:
        assert all([await greeted(reader) for reader, _ in held])
        assert await closed_at_once(node.port)
        # another address is not affected by this one's flood
        held.append(await hold_open(node.port, "127.0.0.2"))
        assert await greeted(held[-1][0])
    finally:
        await close_all(held)
    await async_wait_for(lambda: node.server.startup_gate.pending("127.0.0.1") == 0, what="the flood to drain")
    conn = await node.connect(os_login, issue([os_login]))
    async with conn:
        assert (await conn.run("echo in", check=True)).stdout == "in\n"
    # an authenticated connection no longer counts: the source may start as many again
    assert node.server.startup_gate.pending("127.0.0.1") == 0


@pytest.fixture
async def small_node(host_identity, user_ca):
    """A node allowing 2 unauthenticated connections per source, 3 in all, 1 s to log in."""
    server = NodeSSHServer(
        host_key=host_identity[0], host_cert=host_identity[1],
        trusted_user_ca_keys=lambda: list(user_ca.trusted_ssh_public_keys()),
        node_labels=dict, role_lookup=lambda names: _roles(names), cluster_name=CLUSTER,
        nodename=NODENAME, host_uuid=HOST_UUID,
        startup_limits=StartupLimits(per_source=2, total=3, grace_time=1.0),
    )
    port = await server.start("127.0.0.1", 0)
    try:
        yield server, port
    finally:
        await server.stop()


async def _roles(names: list[str]) -> list:
    return [access_role()] if "access" in names else []


async def test_unauthenticated_connections_are_capped_in_all(small_node):
    _, port = small_node
    held = [await hold_open(port, "127.0.0.2"), await hold_open(port, "127.0.0.2"), await hold_open(port, "127.0.0.3")]
    try:
        assert all([await greeted(reader) for reader, _ in held])
        assert await closed_at_once(port, "127.0.0.4")  # a fresh source, but the listener is full
    finally:
        await close_all(held)


async def test_a_connection_that_does_not_log_in_in_time_is_closed(small_node):
    server, port = small_node
    reader, writer = await hold_open(port)
    try:
        assert await greeted(reader)
        assert server.startup_gate.pending("127.0.0.1") == 1
        # nothing more is sent: the node closes it after its grace time
        assert await asyncio.wait_for(reader.read(), WAIT) == b""
    finally:
        writer.close()
    await async_wait_for(lambda: server.startup_gate.pending() == 0, what="the connection to be released")


# ---------------------------------------------------------------------------- probing for logins


class _Banners(asyncssh.SSHClient):
    def __init__(self) -> None:
        self.banners: list[str] = []

    def auth_banner_received(self, msg: str, lang: str) -> None:
        self.banners.append(msg)


async def _probe(node, key: UserKey, login: str) -> tuple[str, list[str]]:
    """Log in as ``login`` presenting ``key``'s certificate without holding its private key
    (signatures come from another key): what the client is told."""
    pair = asyncssh.load_keypairs([key.asyncssh_pair()])[0]
    impostor = asyncssh.generate_private_key("ssh-ed25519")
    pair.sign = lambda data: impostor.sign(data, b"ssh-ed25519")  # type: ignore[method-assign]
    client = _Banners()
    try:
        await asyncio.wait_for(
            asyncssh.connect(
                "127.0.0.1", node.port, username=login, client_keys=[pair], known_hosts=node.known_hosts(),
                config=None, agent_path=None, client_factory=lambda: client,
            ),
            WAIT,
        )
    except asyncssh.PermissionDenied as exc:
        return f"denied: {exc.reason}".replace(login, "LOGIN"), client.banners
    return "in", client.banners


async def test_a_probe_without_the_key_learns_nothing_about_logins(node, issue, os_login):
    key = issue([os_login, "no-such-login-p"])
    existing = await _probe(node, key, os_login)
    missing = await _probe(node, key, "no-such-login-p")
    assert existing[0].startswith("denied")
    assert existing == missing
    assert not [b for b in existing[1] + missing[1] if "exist" in b]
    events = [e for e in node.events if e["event"] == "auth.rejected"]
    assert {e["login"] for e in events} == {os_login, "no-such-login-p"}
    assert all(e["reason"] == "signature verification failed" for e in events)
    # with the key, the missing login is named: the client proved who it is
    code = await _probe_with_key(node, key, "no-such-login-p")
    assert "does not exist on this node" in " ".join(code)


async def _probe_with_key(node, key: UserKey, login: str) -> list[str]:
    client = _Banners()
    with pytest.raises(asyncssh.PermissionDenied):
        await node.connect(login, key, client_factory=lambda: client)
    return client.banners
