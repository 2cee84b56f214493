"""The node service: labels, heartbeats, the SSH server on 3022 and session recording.

Recording: interactive sessions are written to the spool (``<data_dir>/log/upload/sessions``)
and uploaded to the auth service by :class:`~teleport_runtime.recording.NodeRecording`, in the
mode the auth service names in its heartbeat answers (remembered in
``<data_dir>/cache/session_recording``); pending uploads resume when the node starts.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from teleport_runtime import __version__
from teleport_runtime.agent.client import AuthClient
from teleport_runtime.agent.heartbeat import Heartbeat
from teleport_runtime.agent.identity import Identity, host_uuid
from teleport_runtime.agent.roles import RoleCache
from teleport_runtime.ca import parse_tls_identity
from teleport_runtime.config import Config, HostPort
from teleport_runtime.errors import ConnectionProblem, TeleportError
from teleport_runtime.node.labels import CommandLabels
from teleport_runtime.node.ssh_server import NodeSSHServer
from teleport_runtime.recording.node import ModeCache, NodeRecording, spool_dir

#: Upload retries back off up to this many seconds while the auth service is unreachable.
UPLOAD_MAX_BACKOFF = 15.0
#: Audit events are retried as long as the auth service is unreachable, backing off up to this.
AUDIT_MAX_BACKOFF = 15.0

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

    def __init__(self, cfg: Config, identity: Identity, client: AuthClient) -> None:
        self.cfg = cfg
        self.identity = identity
        self.client = client
        self.command_labels = CommandLabels(cfg.ssh.commands, on_change=self._labels_changed)
        self.heartbeat = Heartbeat(client, self.report)
        self.roles = RoleCache(client, cfg.data_dir / "cache" / "roles.json")
        self.recording_mode = ModeCache(cfg.data_dir / "cache" / "session_recording")
        self.recording = NodeRecording(
            spool_dir(cfg.data_dir), client, mode=self._recording_mode, max_backoff=UPLOAD_MAX_BACKOFF
        )
        tls = parse_tls_identity(identity.tls_cert)
        self.ssh = NodeSSHServer(
            host_key=identity.ssh_key,
            host_cert=identity.ssh_cert,
            trusted_user_ca_keys=lambda: list(self.identity.user_ca_keys or []),
            node_labels=self.labels,
            role_lookup=self.roles.lookup,
            audit=self.audit,
            recorder_factory=self.recording.recorder_factory,
            cluster_name=tls.cluster,
            nodename=cfg.nodename,
            host_uuid=host_uuid(cfg.data_dir),
        )
        self.ssh_port: int | None = None

    async def audit(self, event: dict[str, Any]) -> None:
        """Send an audit event to the auth service. While the auth service is unreachable the
        event is retried with backoff (the SSH server queues the events behind it, in order);
        an event the auth service refuses is logged and dropped, never fatal."""
        delay = 1.0
        while True:
            try:
                await self.client.post("/v1/audit", event)
                return
            except ConnectionProblem as exc:
                log.warning("audit event %s not delivered yet (%s); retrying in %.0fs",
                            event.get("event"), exc.message, delay)
            except TeleportError as exc:
                log.warning("audit event %s refused: %s", event.get("event"), exc.message)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, AUDIT_MAX_BACKOFF)

    def _recording_mode(self) -> str:
        return self.recording_mode.update(self.heartbeat.answer.get("session_recording"))

    def report(self) -> dict[str, Any]:
        self._recording_mode()  # remember the mode the last heartbeat answer named
        return {
            "hostname": self.cfg.nodename,
            "addr": advertised_addr(self.cfg, self.ssh_port),
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
        await self.recording.start()  # resumes the uploads a previous run left in the spool
        listen = self.cfg.ssh.listen_addr
        self.ssh_port = await self.ssh.start(listen.host, listen.port)
        self.heartbeat.start()

    async def stop(self) -> None:
        await self.heartbeat.stop()
        await self.ssh.close()
        await self.recording.stop()
        await self.command_labels.stop()
