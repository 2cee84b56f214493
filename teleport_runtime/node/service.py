"""The node service: labels, heartbeats and (with the SSH access path) the SSH server on 3022."""

from __future__ import annotations

import logging
from typing import Any

from teleport_runtime import __version__
from teleport_runtime.agent.client import AuthClient
from teleport_runtime.agent.heartbeat import Heartbeat
from teleport_runtime.agent.identity import Identity
from teleport_runtime.config import Config
from teleport_runtime.node.labels import CommandLabels

log = logging.getLogger("teleport.node")


def advertised_addr(cfg: Config) -> str:
    """The address the node reports: public_addr, else the listen address (a wildcard host is
    replaced by the auth service with the address it sees)."""
    if cfg.ssh.public_addr is not None:
        return str(cfg.ssh.public_addr)
    host = cfg.advertise_ip or cfg.ssh.listen_addr.host
    return f"{host}:{cfg.ssh.listen_addr.port}" if ":" not in host else f"[{host}]:{cfg.ssh.listen_addr.port}"


class NodeService:
    """Runs on every host with the node role."""

    def __init__(self, cfg: Config, identity: Identity, client: AuthClient) -> None:
        self.cfg = cfg
        self.identity = identity
        self.client = client
        self.command_labels = CommandLabels(cfg.ssh.commands, on_change=self._labels_changed)
        self.heartbeat = Heartbeat(client, self.report)

    def report(self) -> dict[str, Any]:
        return {
            "hostname": self.cfg.nodename,
            "addr": advertised_addr(self.cfg),
            "labels": dict(self.cfg.ssh.labels),
            "cmd_labels": dict(self.command_labels.values),
            "version": __version__,
        }

    def labels(self) -> dict[str, str]:
        return {**self.cfg.ssh.labels, **self.command_labels.values}

    def _labels_changed(self) -> None:
        self.heartbeat.poke()

    async def start(self) -> None:
        await self.command_labels.start()
        self.heartbeat.start()

    async def stop(self) -> None:
        await self.heartbeat.stop()
        await self.command_labels.stop()
