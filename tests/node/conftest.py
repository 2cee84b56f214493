"""Fixtures for the node SSH service: CAs, a host identity, a test OS user, a running node.

The node listens on 127.0.0.1 port 0. Roles are served from a dict the test can change; audit
events land in a list. No timing assertions: waits are bounded polls for a condition.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from teleport_runtime.ca import (
    CAType,
    CertAuthority,
    generate_host_ssh_cert,
    generate_ssh_keypair,
    generate_user_ssh_cert,
    new_cert_authority,
)
from teleport_runtime.node.ssh_server import NodeSSHServer
from teleport_runtime.rbac import Role, parse_role
from tests.conftest import async_wait_for

CLUSTER = "node-test.example.com"
HOST_UUID = "8b1d2c3e-4f50-4a6b-9c7d-0e1f2a3b4c5d"
NODENAME = "node1"
WAIT = 20.0


def make_role(name: str, allow: dict | None = None, deny: dict | None = None, **options) -> Role:
    return parse_role(
        {
            "kind": "role",
            "version": "v1",
            "metadata": {"name": name},
            "spec": {"allow": allow or {}, "deny": deny or {}, "options": options},
        }
    )


def access_role(name: str = "access", **options) -> Role:
    opts = {"forward_agent": True, "port_forwarding": True, **options}
    return make_role(name, allow={"logins": ["{{internal.logins}}"], "node_labels": {"*": "*"}}, **opts)


# ---------------------------------------------------------------------------- CAs and keys


@pytest.fixture(scope="session")
def host_ca() -> CertAuthority:
    return new_cert_authority(CAType.HOST, CLUSTER)


@pytest.fixture(scope="session")
def user_ca() -> CertAuthority:
    return new_cert_authority(CAType.USER, CLUSTER)


@pytest.fixture(scope="session")
def other_user_ca() -> CertAuthority:
    return new_cert_authority(CAType.USER, "evil.example.com")


@pytest.fixture(scope="session")
def host_identity(host_ca: CertAuthority) -> tuple[bytes, str]:
    private, public = generate_ssh_keypair()
    cert = generate_host_ssh_cert(
        host_ca.active,
        public,
        host_uuid=HOST_UUID,
        nodename=NODENAME,
        cluster_name=CLUSTER,
        role="Node",
    )
    return private, cert


@dataclass
class UserKey:
    """A user key pair with its certificate, in the forms the clients want."""

    private_pem: bytes
    public: str
    cert: str

    def asyncssh_pair(self) -> tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]:
        return asyncssh.import_private_key(self.private_pem), asyncssh.import_certificate(self.cert)

    def write(self, directory: Path) -> tuple[Path, Path]:
        """Write ``id`` (0600) and ``id-cert.pub`` for the OpenSSH client."""
        key_path = directory / "id"
        cert_path = directory / "id-cert.pub"
        key_path.write_bytes(self.private_pem)
        key_path.chmod(0o600)
        cert_path.write_text(self.cert + "\n")
        return key_path, cert_path


@pytest.fixture
def issue(user_ca: CertAuthority):
    """``issue(logins, roles=["access"], ca=..., **cert kwargs) -> UserKey``."""

    def make(
        logins: list[str],
        roles: list[str] | None = None,
        *,
        ca: CertAuthority | None = None,
        username: str = "alice",
        **kwargs: Any,
    ) -> UserKey:
        private, public = generate_ssh_keypair()
        kwargs.setdefault("permit_agent_forwarding", True)
        kwargs.setdefault("permit_port_forwarding", True)
        kwargs.setdefault("ttl", timedelta(hours=1))
        cert = generate_user_ssh_cert(
            (ca or user_ca).active,
            public,
            username=username,
            logins=logins,
            roles=roles if roles is not None else ["access"],
            traits={"logins": logins},
            **kwargs,
        )
        return UserKey(private, public, cert)

    return make


# ---------------------------------------------------------------------------- OS user


@pytest.fixture(scope="session")
def os_login() -> Iterator[str]:
    """A throwaway local account (created with useradd, removed afterwards); needs root."""
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("creating a test OS user needs root and useradd")
    name = f"tpnode{secrets.token_hex(3)}"
    subprocess.run(["useradd", "-m", "-s", "/bin/bash", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", "-r", "-f", name], check=False, capture_output=True)


@pytest.fixture(scope="session")
def os_user(os_login: str) -> pwd.struct_passwd:
    return pwd.getpwnam(os_login)


# ---------------------------------------------------------------------------- the node


@dataclass
class RunningNode:
    server: NodeSSHServer
    port: int
    host_ca: CertAuthority
    roles: dict[str, Role]
    labels: dict[str, str]
    trusted: list[str]
    events: list[dict[str, Any]] = field(default_factory=list)
    recorders: list[Any] = field(default_factory=list)

    def known_hosts(self) -> tuple[list, list, list]:
        ca_keys = [asyncssh.import_public_key(k) for k in self.host_ca.trusted_ssh_public_keys()]
        return ([], ca_keys, [])

    async def connect(self, login: str, key: UserKey | None = None, **kwargs: Any) -> asyncssh.SSHClientConnection:
        """Log in as ``login`` with ``key`` (and its certificate), or with the ``client_keys`` or
        ``password`` given; the client trusts the host CA."""
        kwargs.setdefault("agent_path", None)
        if key is not None:
            kwargs["client_keys"] = [key.asyncssh_pair()]
        return await asyncio.wait_for(
            asyncssh.connect(
                "127.0.0.1",
                self.port,
                username=login,
                known_hosts=self.known_hosts(),
                config=None,
                **kwargs,
            ),
            WAIT,
        )

    def find(self, event: str, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event and all(e.get(k) == v for k, v in match.items())]

    async def wait_event(self, event: str, **match: Any) -> dict[str, Any]:
        found = await async_wait_for(lambda: self.find(event, **match), what=f"{event} {match}")
        return found[0]


class FakeRecorder:
    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info
        self.output_data = bytearray()
        self.input_data = bytearray()
        self.resizes: list[tuple[int, int]] = []
        self.closed: list[int | None] = []

    def output(self, data: bytes) -> None:
        self.output_data += data

    def input(self, data: bytes) -> None:
        self.input_data += data

    def resize(self, cols: int, rows: int) -> None:
        self.resizes.append((cols, rows))

    def close(self, exit_status: int | None) -> None:
        self.closed.append(exit_status)


@pytest.fixture
async def node(
    host_ca: CertAuthority, user_ca: CertAuthority, host_identity: tuple[bytes, str]
) -> AsyncIterator[RunningNode]:
    roles = {"access": access_role()}
    labels = {"env": "test", "team": "core"}
    trusted = list(user_ca.trusted_ssh_public_keys())
    events: list[dict[str, Any]] = []
    recorders: list[FakeRecorder] = []

    async def role_lookup(names: list[str]) -> list[Role]:
        return [roles[n] for n in names if n in roles]

    async def audit(event: dict[str, Any]) -> None:
        events.append(event)

    def recorder_factory(info: dict[str, Any]) -> FakeRecorder:
        recorder = FakeRecorder(info)
        recorders.append(recorder)
        return recorder

    server = NodeSSHServer(
        host_key=host_identity[0],
        host_cert=host_identity[1],
        trusted_user_ca_keys=lambda: list(trusted),
        node_labels=lambda: dict(labels),
        role_lookup=role_lookup,
        audit=audit,
        recorder_factory=recorder_factory,
        cluster_name=CLUSTER,
        nodename=NODENAME,
        host_uuid=HOST_UUID,
    )
    port = await server.start("127.0.0.1", 0)
    running = RunningNode(server, port, host_ca, roles, labels, trusted, events, recorders)
    try:
        yield running
    finally:
        await server.stop()


@pytest.fixture
def client_files(tmp_path, node, issue, os_login):
    """Key, certificate and a known_hosts trusting the host CA, for the OpenSSH tools."""
    key_path, cert_path = issue([os_login]).write(tmp_path)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("".join(f"@cert-authority * {k}\n" for k in node.host_ca.trusted_ssh_public_keys()))
    return key_path, cert_path, known_hosts
