"""The auth server assembly (teleport_runtime/auth/server.py) the daemon and the test harness
share: what it starts, what its background tasks do, and that it stops what it started."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from teleport_runtime.auth.server import AuthServer
from teleport_runtime.config import AuthConfig, HostPort
from teleport_runtime.errors import ConfigError
from teleport_runtime.identity import Identity
from tests.conftest import async_wait_for


def config(cluster: str = "server.test") -> AuthConfig:
    return AuthConfig(enabled=True, listen_addr=HostPort("127.0.0.1", 0), cluster_name=cluster)


def listening(addr: HostPort) -> bool:
    try:
        with socket.create_connection((addr.host, addr.port), timeout=2):
            return True
    except OSError:
        return False


async def test_it_serves_writes_the_admin_identity_and_stops_in_order(tmp_path: Path) -> None:
    async with AuthServer(config(), tmp_path, names=["auth.example"]) as server:
        addr = server.addr
        assert addr.port != 0 and listening(addr)
        admin = Identity.load(tmp_path / "admin")
        assert admin.cluster == "server.test"
        assert "auth.example" in server.names and "127.0.0.1" in server.names
        token, pins = await server.local_join_token(["node"])
        assert token and pins == await server.service.ca_pins()
    assert not listening(addr)
    with pytest.raises(RuntimeError, match="not started"):
        server.backend  # noqa: B018 - the property raises once the backend is closed
    await server.stop()  # twice is harmless


async def test_a_ca_change_refreshes_the_admin_identity(tmp_path: Path) -> None:
    """The CA watcher runs here as in the daemon: a rotation step is followed by an admin
    identity that trusts both CAs, without a restart."""
    async with AuthServer(config(), tmp_path) as server:
        assert len(Identity.load(tmp_path / "admin").ca_certs) == 1
        await server.service.rotation.rotate("host", mode="manual", target_phase="init")
        await async_wait_for(
            lambda: len(Identity.load(tmp_path / "admin").ca_certs) == 2, what="the admin identity to trust both CAs"
        )


async def test_a_failed_start_leaves_nothing_running(tmp_path: Path) -> None:
    async with AuthServer(config("first.test"), tmp_path):
        pass
    other = AuthServer(config("second.test"), tmp_path)
    with pytest.raises(ConfigError, match="cluster name cannot change"):
        await other.start()
    with pytest.raises(RuntimeError, match="not started"):
        other.backend  # noqa: B018
    # the backend was closed: the same data opens again
    async with AuthServer(config("first.test"), tmp_path) as again:
        assert again.service.cluster_name == "first.test"
