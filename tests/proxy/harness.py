"""An in-process cluster for the proxy and tsh tests: the real auth server on 127.0.0.1 (mutual
TLS), assembled as the daemon assembles it (:class:`AuthServer`), hosts joined through the real
join flow, the real ProxyService on its own loopback address, and stand-in nodes (plain TCP
servers) registered with real heartbeats.

User certificates are signed directly with the user CA, so the proxy can be tested without users
and passwords; the login path is tested separately through the auth service's users.
"""

from __future__ import annotations

import asyncio
import time
import uuid as uuidlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncssh
import pyotp

from teleport_runtime.agent.join import join_cluster
from teleport_runtime.api.client import AuthClient
from teleport_runtime.api.types import HeartbeatReport
from teleport_runtime.auth.server import AuthServer
from teleport_runtime.ca import (
    CAType,
    TLSIdentity,
    generate_ssh_keypair,
    generate_tls_identity_cert,
    generate_tls_keypair,
    generate_user_ssh_cert,
)
from teleport_runtime.config import AuthConfig, Config, HostPort
from teleport_runtime.identity import Identity
from teleport_runtime.proxy import ProxyService
from tests.conftest import next_loopback_ip

CLUSTER = "proxy.test"


def loopback_ip() -> str:
    # distinct addresses: the auth service signs an address for one host only
    return next_loopback_ip()


@dataclass
class UserKeys:
    ssh_key: bytes
    ssh_public: str
    ssh_cert: str
    tls_key: bytes
    tls_cert: bytes


class EchoNode:
    """A TCP server standing in for a node: echoes what it receives, prefixed with its name."""

    def __init__(self, name: str, ip: str) -> None:
        self.name = name
        self.ip = ip
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.connections = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, self.ip, 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(f"hello from {self.name}\n".encode())
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    @property
    def addr(self) -> str:
        return f"{self.ip}:{self.port}"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


class LocalCluster:
    def __init__(self, root: Path, cluster: str = CLUSTER) -> None:
        self.root = root
        self.cluster = cluster
        self.clients: list[AuthClient] = []
        self.proxies: list[ProxyService] = []
        self.nodes: list[EchoNode] = []

    async def start(self) -> None:
        cfg = AuthConfig(
            enabled=True, listen_addr=HostPort("127.0.0.1", 0), cluster_name=self.cluster,
            presence_ttl=timedelta(seconds=60),
        )
        # The auth server the daemon runs (backend, service, API, rotation timer, CA watcher).
        self.server = AuthServer(cfg, self.root / "auth", storage={"type": "sqlite"})
        await self.server.start()
        self.backend = self.server.backend
        self.auth = self.server.service
        self.api = self.server.api
        self.addr = self.server.addr

    async def stop(self) -> None:
        for proxy in self.proxies:
            await proxy.stop()
        for node in self.nodes:
            await node.stop()
        for client in self.clients:
            await client.close()
        await self.server.stop()

    async def pins(self) -> list[str]:
        return await self.auth.ca_pins()

    async def join(self, role: str, nodename: str, addresses: list[str] | None = None) -> tuple[Identity, str]:
        token = await self.auth.tokens.create([role], ttl=timedelta(minutes=1))
        host_uuid = str(uuidlib.uuid4())
        identity = await join_cluster(
            auth_servers=[self.addr], token=token.value, ca_pins=await self.pins(), role=role,
            nodename=nodename, uuid=host_uuid, addresses=addresses or [],
        )
        return identity, host_uuid

    def client(self, identity: Identity) -> AuthClient:
        client = AuthClient.for_identity([self.addr], identity)
        self.clients.append(client)
        return client

    async def start_proxy(self, ip: str | None = None, name: str = "proxy1") -> ProxyService:
        ip = ip or loopback_ip()
        identity, _ = await self.join("proxy", name, [ip])
        cfg = Config(nodename=name, data_dir=self.root / name)
        cfg.proxy.enabled = True
        cfg.proxy.listen_addr = HostPort(ip, 0)
        cfg.proxy.web_listen_addr = HostPort(ip, 0)
        cfg.proxy.tunnel_listen_addr = HostPort(ip, 0)
        cfg.auth_servers = [self.addr]
        proxy = ProxyService(cfg, identity, self.client(identity))
        await proxy.start()
        self.proxies.append(proxy)
        return proxy

    async def add_node(
        self, name: str, labels: dict[str, str] | None = None, ip: str | None = None
    ) -> tuple[EchoNode, str]:
        """An echo server registered as node ``name``; returns it and its host UUID."""
        node = EchoNode(name, ip or loopback_ip())
        await node.start()
        self.nodes.append(node)
        identity, host_uuid = await self.join("node", name, [node.ip])
        client = self.client(identity)
        await client.heartbeat(HeartbeatReport(hostname=name, addr=node.addr, labels=dict(labels or {})))
        return node, host_uuid

    async def user_keys(
        self, username: str, logins: list[str], roles: list[str], *, ttl: timedelta = timedelta(hours=1),
        port_forwarding: bool = True, now: datetime | None = None, ca: Any = None,
    ) -> UserKeys:
        """Certificates for ``username`` signed by this cluster's user CA (or ``ca``)."""
        user_ca = ca or (await self.auth.get_ca(CAType.USER)).active
        ssh_key, ssh_public = generate_ssh_keypair()
        tls_key, tls_public = generate_tls_keypair()
        ssh_cert = generate_user_ssh_cert(
            user_ca, ssh_public, username=username, logins=logins, roles=roles, ttl=ttl,
            permit_port_forwarding=port_forwarding, now=now,
        )
        tls_cert = generate_tls_identity_cert(
            user_ca, tls_public,
            TLSIdentity(name=username, kind="user", roles=roles, cluster=self.cluster, logins=logins),
            ttl=ttl, now=now,
        )
        return UserKeys(ssh_key, ssh_public, ssh_cert, tls_key, tls_cert)

    async def add_user(self, name: str, roles: list[str], logins: list[str], password: str) -> str:
        """A user who completed sign-up; returns the TOTP secret. The sign-up uses the previous
        step's code (accepted within the window), so the current code is still good for a login."""
        invite = await self.auth.users.add_user(name, roles, logins)
        info = await self.auth.users.signup_info(invite["token"])
        totp = pyotp.parse_uri(info["otpauth_uri"])
        await self.auth.users.complete_signup(invite["token"], password, totp.at(time.time() - totp.interval))
        secret = totp.secret
        return secret

    async def audit_events(self, event: str) -> list[dict[str, Any]]:
        return await self.auth.audit.search(datetime.now(UTC) - timedelta(hours=1), types=[event])


async def connect(proxy: ProxyService, keys: UserKeys, cluster: LocalCluster, username: str = "root",
                  host_cas: list[str] | None = None) -> asyncssh.SSHClientConnection:
    """An SSH client connection to the proxy's listener with the user's key and certificate,
    trusting the cluster's host CA (or ``host_cas``)."""
    host_ca = host_cas or (await cluster.auth.get_ca(CAType.HOST)).trusted_ssh_public_keys()
    return await asyncssh.connect(
        proxy.cfg.proxy.listen_addr.host, proxy.ssh_port, username=username,
        client_keys=[(asyncssh.import_private_key(keys.ssh_key), asyncssh.import_certificate(keys.ssh_cert))],
        known_hosts=([], [asyncssh.import_public_key(k) for k in host_ca], []),
        config=[], agent_path=None,
    )
