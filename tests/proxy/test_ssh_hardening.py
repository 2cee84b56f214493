"""Attacks on the proxy's SSH listener, replayed against a real proxy on loopback: OpenSSH forced
to offer only SHA-1, CBC or group-exchange algorithms, SHA-1 signatures, and a flood of
connections that never authenticate."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import asyncssh
import pytest

from teleport_runtime.ca import CAType, generate_user_ssh_cert
from teleport_runtime.sshserver import MAX_STARTUPS_PER_SOURCE
from tests.conftest import async_wait_for, require_binary
from tests.proxy.harness import LocalCluster, UserKeys, connect

WAIT = 20.0
WEAK = [
    "KexAlgorithms=diffie-hellman-group14-sha1",
    "KexAlgorithms=diffie-hellman-group-exchange-sha1",
    "KexAlgorithms=diffie-hellman-group-exchange-sha256",
    "Ciphers=aes128-ctr MACs=hmac-sha1",
    "Ciphers=aes128-cbc",
]


@pytest.fixture
async def proxy(local_cluster: LocalCluster):
    return await local_cluster.start_proxy()


async def client_files(cluster: LocalCluster, keys: UserKeys, directory: Path) -> list[str]:
    key, cert, known_hosts = directory / "id", directory / "id-cert.pub", directory / "known_hosts"
    key.write_bytes(keys.ssh_key)
    key.chmod(0o600)
    cert.write_text(keys.ssh_cert + "\n")
    host_cas = (await cluster.auth.get_ca(CAType.HOST)).trusted_ssh_public_keys()
    known_hosts.write_text("".join(f"@cert-authority * {k}\n" for k in host_cas))
    return [
        "-F", "/dev/null", "-i", str(key), "-o", f"CertificateFile={cert}",
        "-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
        "-o", "IdentityAgent=none",
    ]


async def openssh(proxy, files: list[str], *extra: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        require_binary("ssh"), *files, *extra, "-p", str(proxy.ssh_port),
        f"root@{proxy.cfg.proxy.listen_addr.host}", "true",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), WAIT)
    return int(process.returncode or 0), err.decode(errors="replace")


@pytest.mark.interop
async def test_openssh_gets_in_with_modern_algorithms_only(local_cluster, proxy, tmp_path):
    keys = await local_cluster.user_keys("alice", ["root"], ["access"])
    files = await client_files(local_cluster, keys, tmp_path)
    # logged in: the proxy answers the command itself (it runs none)
    code, err = await openssh(proxy, files)
    assert code == 1 and "does not run command 'true'" in err, err
    for weak in WEAK:
        options = [arg for option in weak.split() for arg in ("-o", option)]
        code, err = await openssh(proxy, files, *options)
        assert code == 255 and "no matching" in err, (weak, err)


async def test_sha1_signature_is_refused(local_cluster, proxy):
    keys = await local_cluster.user_keys("alice", ["root"], ["access"])
    rsa = asyncssh.generate_private_key("ssh-rsa", key_size=2048)
    user_ca = (await local_cluster.auth.get_ca(CAType.USER)).active
    cert = generate_user_ssh_cert(user_ca, rsa.export_public_key().decode(), username="alice",
                                  logins=["root"], roles=["access"])
    rsa_keys = UserKeys(rsa.export_private_key(), "", cert, keys.tls_key, keys.tls_cert)
    async with await connect(proxy, rsa_keys, local_cluster):
        pass  # SHA-2 RSA signatures are fine
    pair = asyncssh.load_keypairs([(rsa, asyncssh.import_certificate(cert))])[0]
    pair.sign = lambda data: rsa.sign(data, b"ssh-rsa")  # type: ignore[method-assign]
    host_cas = (await local_cluster.auth.get_ca(CAType.HOST)).trusted_ssh_public_keys()
    with pytest.raises(asyncssh.PermissionDenied):
        await asyncssh.connect(
            proxy.cfg.proxy.listen_addr.host, proxy.ssh_port, username="root", client_keys=[pair],
            known_hosts=([], [asyncssh.import_public_key(k) for k in host_cas], []), config=[], agent_path=None,
        )


async def test_unauthenticated_connections_are_capped_per_source(local_cluster, proxy):
    host = proxy.cfg.proxy.listen_addr.host
    held = []
    try:
        for _ in range(MAX_STARTUPS_PER_SOURCE):
            held.append(await asyncio.open_connection(host, proxy.ssh_port, local_addr=("127.0.0.1", 0)))
        for reader, _ in held:
            assert (await asyncio.wait_for(reader.readline(), WAIT)).startswith(b"SSH-2.0-")
        reader, writer = await asyncio.open_connection(host, proxy.ssh_port, local_addr=("127.0.0.1", 0))
        held.append((reader, writer))
        assert await asyncio.wait_for(reader.read(100), WAIT) == b""  # closed without a word
    finally:
        for _, writer in held:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    gate = proxy.ssh.startup_gate
    await async_wait_for(lambda: gate.pending("127.0.0.1") == 0, what="the flood to drain")
    keys = await local_cluster.user_keys("alice", ["root"], ["access"])
    async with await connect(proxy, keys, local_cluster) as conn:
        result = await conn.run("id", input="")
        assert result.exit_status == 1 and "does not run command" in result.stderr


def test_subsystem_names_are_matched_whole():
    from teleport_runtime.proxy.ssh import parse_proxy_subsystem

    assert parse_proxy_subsystem("proxy:node1:3022@c.example.com") == ("node1", 3022, "c.example.com")
    for name in ("proxy:node1@c.example.com\n", "proxy:node1\n"):
        with pytest.raises(ValueError):
            parse_proxy_subsystem(name)
