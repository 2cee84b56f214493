"""The node service: labels, heartbeats and (with the SSH access path) the SSH server on 3022."""

from __future__ import annotations

import logging
from typing import Any

from teleport_runtime import __version__
from teleport_runtime.agent.client import AuthClient
from teleport_runtime.agent.heartbeat import Heartbeat
from teleport_runtime.agent.identity import Identity, host_uuid
from teleport_runtime.agent.join import identity_dir
from teleport_runtime.agent.roles import RoleCache
from teleport_runtime.agent.rotation import RotationSync
from teleport_runtime.ca import parse_tls_identity
from teleport_runtime.config import Config, HostPort
from teleport_runtime.errors import TeleportError
from teleport_runtime.node.labels import CommandLabels
from teleport_runtime.node.ssh_server import NodeSSHServer

log = logging.getLogger("teleport.node")


def advertised_addr(cfg: Config, port: int | None = None) -> str:
    """The address the node reports: public_addr, else the listen address with the bound port (a
    wildcard host is replaced by the auth service with the address it sees)."""
    if cfg.ssh.public_addr is not None:
        return str(cfg.ssh.public_addr)
    host = cfg.advertise_ip or cfg.ssh.listen_addr.host
    return str(HostPort(host, port or cfg.ssh.listen_addr.port))


class NodeService:
    """Runs on every host with the node role."""

    def __init__(
        self, cfg: Config, identity: Identity, client: AuthClient, addresses: list[str] | None = None
    ) -> None:
        self.cfg = cfg
        self.client = client
        self.command_labels = CommandLabels(cfg.ssh.commands, on_change=self._labels_changed)
        self.heartbeat = Heartbeat(client, self.report)
        self.roles = RoleCache(client, cfg.data_dir / "cache" / "roles.json")
        self.rotation = RotationSync(
            role="node",
            directory=identity_dir(cfg.data_dir, "node"),
            identity=identity,
            client=client,
            addresses=list(addresses or []),
            on_serve=self._serve_identity,
            on_applied=self.heartbeat.poke,
        )
        tls = parse_tls_identity(identity.tls_cert)
        self.ssh = NodeSSHServer(
            host_key=identity.ssh_key,
            host_cert=identity.ssh_cert,
            # the user CA keys the cluster trusts now (both while the user CA rotates)
            trusted_user_ca_keys=lambda: list(self.rotation.identity.user_ca_keys or []),
            node_labels=self.labels,
            role_lookup=self.roles.lookup,
            audit=self.audit,
            cluster_name=tls.cluster,
            nodename=cfg.nodename,
            host_uuid=host_uuid(cfg.data_dir),
        )
        self.ssh_port: int | None = None

    @property
    def identity(self) -> Identity:
        """The identity the node serves (it changes during a host CA rotation)."""
        return self.rotation.identity

    def _serve_identity(self, identity: Identity) -> None:
        self.ssh.update_identity(identity.ssh_key, identity.ssh_cert)

    async def audit(self, event: dict[str, Any]) -> None:
        """Send an audit event to the auth service; a lost event is logged, never fatal."""
        try:
            await self.client.post("/v1/audit", event)
        except TeleportError as exc:
            log.warning("audit event %s not delivered: %s", event.get("event"), exc.message)

    def report(self) -> dict[str, Any]:
        return {
            "hostname": self.cfg.nodename,
            "addr": advertised_addr(self.cfg, self.ssh_port),
            "labels": dict(self.cfg.ssh.labels),
            "cmd_labels": dict(self.command_labels.values),
            "version": __version__,
            "rotation": self.rotation.report(),
        }

    def labels(self) -> dict[str, str]:
        return {**self.cfg.ssh.labels, **self.command_labels.values}

    def _labels_changed(self) -> None:
        self.heartbeat.poke()

    async def start(self) -> None:
        await self.rotation.start()
        await self.command_labels.start()
        listen = self.cfg.ssh.listen_addr
        self.ssh_port = await self.ssh.start(listen.host, listen.port)
        self.heartbeat.start()

    async def stop(self) -> None:
        await self.rotation.stop()
        await self.heartbeat.stop()
        await self.ssh.close()
        await self.command_labels.stop()
