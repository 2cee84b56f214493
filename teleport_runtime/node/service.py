"""The node service: labels, heartbeats, the SSH server on 3022 and session recording.

Audit: every event is spooled on disk first (``<data_dir>/log/audit``) and sent to the auth
service in order by :class:`~teleport_runtime.node.audit.AuditSender`, so a node crash or an auth
outage loses none (see :mod:`teleport_runtime.node.audit`).

Recording: interactive sessions are written to the spool (``<data_dir>/log/upload/sessions``)
and uploaded to the auth service by :class:`~teleport_runtime.recording.NodeRecording`, in the
mode the auth service names in its heartbeat answers (remembered in
``<data_dir>/cache/session_recording``); pending uploads resume when the node starts.

Reverse tunnel mode (``proxy`` given: the node reaches the cluster through that proxy's web
address): the SSH server binds no port; connections come through the node's tunnels
(:class:`~teleport_runtime.agent.tunnel.TunnelAgent`), and the auth client's connections go to
the local relay ``<data_dir>/tunnel/auth.sock``, piped through a tunnel to the auth API. The
heartbeat says ``tunnel: true`` and no address.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from typing import Any

from teleport_runtime import __version__
from teleport_runtime.agent.heartbeat import Heartbeat
from teleport_runtime.agent.join import identity_dir
from teleport_runtime.agent.roles import RoleCache
from teleport_runtime.agent.rotation import RotationSync
from teleport_runtime.agent.tunnel import LocalRelay, PeerShim, TunnelAgent, auth_relay_path
from teleport_runtime.api.client import AuthClient
from teleport_runtime.api.types import AuditEvent
from teleport_runtime.ca import parse_tls_identity
from teleport_runtime.config import Config, HostPort
from teleport_runtime.errors import TeleportError
from teleport_runtime.identity import Identity, host_uuid
from teleport_runtime.netaddr import advertised
from teleport_runtime.node.audit import AuditSender, AuditSpool, audit_spool_dir
from teleport_runtime.node.bpf import EnhancedRecorder
from teleport_runtime.node.host_users import HostUsers
from teleport_runtime.node.labels import CommandLabels
from teleport_runtime.node.ssh_server import NodeSSHServer
from teleport_runtime.recording.node import ModeCache, NodeRecording, spool_dir

#: Upload retries back off up to this many seconds while the auth service is unreachable.
UPLOAD_MAX_BACKOFF = 15.0
#: Audit events are retried as long as the auth service is unreachable, backing off up to this.
AUDIT_MAX_BACKOFF = 15.0
#: Why a node's salvaged session has no proper end.
#: How long a tunnel node's start waits for its first tunnel before going on without it.
FIRST_TUNNEL_WAIT = 30.0
KILLED_REASON = "the node stopped during the session (its recording was salvaged from the spool)"

log = logging.getLogger("teleport.node")


def advertised_addr(cfg: Config, port: int | None = None) -> str:
    """The address the node reports (:func:`netaddr.advertised`; a wildcard host is replaced by the
    auth service with the address it sees)."""
    ssh = cfg.ssh
    return str(advertised(ssh.public_addr, ssh.listen_addr, bound_port=port, advertise_ip=cfg.advertise_ip))


class NodeService:
    """Runs on every host with the node role."""

    def __init__(
        self, cfg: Config, identity: Identity, client: AuthClient, addresses: list[str] | None = None,
        *, proxy: HostPort | None = None,
    ) -> None:
        self.cfg = cfg
        self.client = client
        self.command_labels = CommandLabels(cfg.ssh.commands, on_change=self._labels_changed)
        self.heartbeat = Heartbeat(client, self.report)
        self.roles = RoleCache(client, cfg.data_dir / "cache" / "roles.json")
        self.recording_mode = ModeCache(cfg.data_dir / "cache" / "session_recording")
        self.recording = NodeRecording(
            spool_dir(cfg.data_dir), client, mode=self._recording_mode, max_backoff=UPLOAD_MAX_BACKOFF
        )
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
        self.audit_spool = AuditSpool(audit_spool_dir(cfg.data_dir))
        self.audit_sender = AuditSender(
            self.audit_spool, lambda event: client.emit_audit(AuditEvent(event)),
            common={"nodename": cfg.nodename, "cluster_name": tls.cluster}, max_backoff=AUDIT_MAX_BACKOFF,
        )
        self.ssh = NodeSSHServer(
            host_key=identity.ssh_key,
            host_cert=identity.ssh_cert,
            # the user CA keys the cluster trusts now (both while the user CA rotates)
            trusted_user_ca_keys=lambda: list(self.rotation.identity.user_ca_keys or []),
            node_labels=self.labels,
            role_lookup=self.roles.lookup,
            audit=self.audit,
            recorder_factory=self.recording.recorder_factory,
            cluster_name=tls.cluster,
            nodename=cfg.nodename,
            host_uuid=host_uuid(cfg.data_dir),
            host_users=HostUsers(),
            enhanced=EnhancedRecorder(cfg.ssh.enhanced_recording, cfg.data_dir / "cache" / "bpf"),
        )
        self.ssh_port: int | None = None
        self.tunnel: TunnelAgent | None = None
        self.auth_relay: LocalRelay | None = None
        if proxy is not None:
            self.tunnel = TunnelAgent(
                identity=lambda: self.rotation.identity, cluster=tls.cluster, host_uuid=host_uuid(cfg.data_dir),
                proxy=proxy, accept=self._accept_tunneled, proxies=self._proxy_ids,
            )
            self.auth_relay = LocalRelay(auth_relay_path(cfg.data_dir), self.tunnel.connect_auth)

    @property
    def identity(self) -> Identity:
        """The identity the node serves (it changes during a host CA rotation)."""
        return self.rotation.identity

    def _serve_identity(self, identity: Identity) -> None:
        self.ssh.update_identity(identity.ssh_key, identity.ssh_cert)

    async def audit(self, event: dict[str, Any]) -> None:
        """Spool an audit event on disk (durable before this returns) for the sender, which
        delivers it to the auth service in order, retrying while the auth service is away."""
        try:
            await asyncio.to_thread(self.audit_spool.append, event)
        except OSError as exc:
            log.error("cannot spool audit event %s (%s); sending it once, without a copy on disk",
                      event.get("event"), exc)
            try:
                await self.client.emit_audit(AuditEvent(event))
            except TeleportError as send_exc:
                log.error("audit event lost (%s): %s", send_exc.message, json.dumps(event, default=str))
            return
        self.audit_sender.notify()

    def _recording_mode(self) -> str:
        return self.recording_mode.update(self.heartbeat.answer.session_recording)

    async def _accept_tunneled(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        """A connection from a proxy through a tunnel, to the SSH server (no port involved)."""
        loop = asyncio.get_running_loop()
        await loop.connect_accepted_socket(lambda: PeerShim(self.ssh.new_connection(), peer), sock)

    async def _proxy_ids(self) -> set[str]:
        return {proxy.id for proxy in await self.client.proxies()}

    def report(self) -> dict[str, Any]:
        self._recording_mode()  # remember the mode the last heartbeat answer named
        if self.tunnel is not None:
            return {"hostname": self.cfg.nodename, "addr": "", "tunnel": True, **self._common_report()}
        return {
            "hostname": self.cfg.nodename,
            "addr": advertised_addr(self.cfg, self.ssh_port),
            **self._common_report(),
        }

    def _common_report(self) -> dict[str, Any]:
        return {
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
        if self.tunnel is not None and self.auth_relay is not None:
            await self.auth_relay.start()
            await self.tunnel.start()
            with contextlib.suppress(TimeoutError):  # else it goes on as when the auth service is away
                await asyncio.wait_for(self.tunnel.connected.wait(), FIRST_TUNNEL_WAIT)
        await self.rotation.start()
        await self.command_labels.start()
        self.audit_sender.start()  # first what a previous run left undelivered
        # Resumes the uploads a previous run left in the spool, and completes at once the
        # recordings of sessions it was killed in; their sessions end in the audit log here.
        for manifest in await self.recording.start():
            await self.audit(_killed_session_end(manifest))
        if self.tunnel is not None:
            await self.ssh.start_unlisted()
        else:
            listen = self.cfg.ssh.listen_addr
            self.ssh_port = await self.ssh.start(listen.host, listen.port)
        self.heartbeat.start()

    async def stop(self) -> None:
        await self.rotation.stop()
        await self.heartbeat.stop()
        await self.ssh.stop()
        await self.recording.stop()
        await self.audit_sender.stop()  # what is not delivered yet stays spooled
        await self.command_labels.stop()
        if self.tunnel is not None and self.auth_relay is not None:
            await self.tunnel.stop()
            await self.auth_relay.stop()


def _killed_session_end(manifest: dict[str, Any]) -> dict[str, Any]:
    """The ``session.end`` of a session the node was killed in (from its salvaged recording)."""
    meta = manifest.get("meta") or {}
    event = {
        "event": "session.end", "session_id": manifest["session_id"], "exit_status": None, "signal": None,
        "interrupted": True, "reason": KILLED_REASON, "time": manifest.get("ended"),
    }
    for key in ("user", "login", "remote_addr", "kind", "command"):
        if meta.get(key) is not None:
            event[key] = meta[key]
    if meta.get("node"):
        event["nodename"] = meta["node"]
    if meta.get("cluster"):
        event["cluster_name"] = meta["cluster"]
    return event
