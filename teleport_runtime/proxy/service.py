"""The proxy service: every client reaches the cluster through it.

- SSH on ``proxy_service.listen_addr`` (3023): the jump hop to registered nodes
  (:mod:`teleport_runtime.proxy.ssh`); for OpenSSH nodes the proxy terminates SSH, logs in
  itself and records (:mod:`teleport_runtime.proxy.recording_proxy`).
- HTTPS on ``proxy_service.web_listen_addr`` (3080): discovery, login, signup and node listing
  (:mod:`teleport_runtime.proxy.web`).
- A heartbeat as a Proxy (with its CA rotation phases), so the auth API lists it among the proxies.

Cluster state comes from the auth API only, with the proxy's identity: the node list (cached by
:class:`~teleport_runtime.proxy.directory.NodeDirectory`), the public CAs (followed by the
rotation watch, :mod:`teleport_runtime.agent.rotation`, so a user CA rotation reaches the SSH
listener and the web TLS trust without a restart, and a host CA rotation gives the proxy a new
identity to serve), and the roles (for filtering ``/webapi/nodes``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Any

from teleport_runtime import __version__
from teleport_runtime.agent.heartbeat import Heartbeat
from teleport_runtime.agent.join import identity_dir
from teleport_runtime.agent.rotation import RotationSync
from teleport_runtime.api.client import AuthClient
from teleport_runtime.api.types import AuditEvent
from teleport_runtime.ca import parse_tls_identity
from teleport_runtime.config import Config, HostPort
from teleport_runtime.errors import TeleportError
from teleport_runtime.identity import Identity
from teleport_runtime.netaddr import advertised, format_host_port, split_host
from teleport_runtime.proxy.directory import NodeDirectory
from teleport_runtime.proxy.recording_proxy import RecordingProxy
from teleport_runtime.proxy.ssh import ProxySSHServer, load_host_credentials
from teleport_runtime.proxy.web import ProxyWeb, parse_roles, server_ssl_context
from teleport_runtime.rbac import Role
from teleport_runtime.recording.node import ModeCache, NodeRecording

log = logging.getLogger("teleport.proxy")

#: How long the role list is reused for ``/webapi/nodes``.
ROLE_CACHE_SECONDS = 5.0


class ProxyService:
    """The proxy role of a teleport process.

    ``ssh_port`` and ``web_port`` are the bound ports once :meth:`start` returned (tests listen
    on port 0).
    """

    def __init__(
        self, cfg: Config, identity: Identity, client: AuthClient, addresses: list[str] | None = None
    ) -> None:
        self.cfg = cfg
        self.identity = identity
        self.client = client
        self.cluster = parse_tls_identity(identity.tls_cert).cluster
        self.directory = NodeDirectory(self._fetch_nodes, self.cluster)
        self.heartbeat = Heartbeat(client, self.report)
        self.rotation = RotationSync(
            role="proxy",
            directory=identity_dir(cfg.data_dir, "proxy"),
            identity=identity,
            client=client,
            addresses=list(addresses or []),
            on_serve=self.update_identity,
            on_cas=self.apply_cas,
            on_applied=self.heartbeat.poke,
        )
        self._cas: dict[str, Any] | None = None
        self._roles: tuple[float, list[dict[str, Any]]] | None = None
        host_key, host_cert = load_host_credentials(identity.ssh_key, identity.ssh_cert)
        # Sessions the proxy terminates (OpenSSH nodes) are recorded here, in a spool of the
        # proxy's own (a node service in the same process has its own).
        self.recording_mode = ModeCache(cfg.data_dir / "cache" / "proxy_session_recording")
        self.recording = NodeRecording(
            cfg.data_dir / "log" / "upload" / "proxy-sessions", client, track_sessions=False, at="proxy",
            mode=lambda: self.recording_mode.update(self.heartbeat.answer.session_recording),
        )
        self.terminator = RecordingProxy(
            client=client, cluster=self.cluster, trusted_user_ca_keys=self.user_ca_keys,
            host_ca_keys=self.host_ca_keys, roles=self.roles, recording=self.recording, audit=self.audit,
            mode=lambda: self.recording_mode.update(self.heartbeat.answer.session_recording),
        )
        self.ssh = ProxySSHServer(
            host_key=host_key,
            host_cert=host_cert,
            trusted_user_ca_keys=self.user_ca_keys,
            directory=self.directory,
            cluster=self.cluster,
            audit=self.audit,
            terminator=self.terminator,
        )
        self.web = ProxyWeb(self)
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ lifecycle

    @property
    def ssh_port(self) -> int | None:
        return self.ssh.port

    @property
    def web_port(self) -> int | None:
        return self.web.port

    async def start(self) -> None:
        """Sync with the CAs and load the nodes (best effort: the auth service may be away),
        listen, beat."""
        await self.rotation.start()
        await self.directory.start()
        await self.recording.start()
        listen = self.cfg.proxy.listen_addr
        await self.ssh.start(listen.host, listen.port)
        web_listen = self.cfg.proxy.web_listen_addr
        await self.web.start(web_listen.host, web_listen.port)
        self.heartbeat.start()
        log.info(
            "proxy service ready: cluster %s, SSH on %s, web on %s",
            self.cluster, format_host_port(listen.host, self.ssh_port or 0),
            format_host_port(web_listen.host, self.web_port or 0),
        )

    async def stop(self) -> None:
        await self.rotation.stop()
        await self.heartbeat.stop()
        await self.web.stop()
        await self.ssh.stop()
        await self.terminator.close()
        await self.recording.stop()
        await self.directory.stop()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    def update_identity(self, identity: Identity) -> None:
        """Serve a new identity (SSH host cert, web TLS cert) to new connections."""
        self.identity = identity
        self.ssh.update_host_key(*load_host_credentials(identity.ssh_key, identity.ssh_cert))
        self.web.reload_tls()

    # ------------------------------------------------------------------ what the proxy says

    def report(self) -> dict[str, Any]:
        """The heartbeat: name, the SSH address clients dial, version."""
        return {
            "hostname": self.cfg.nodename,
            "addr": self.ssh_addr(),
            "ssh_addr": self.ssh_addr(),
            "web_addr": self.web_addr(),
            "labels": {},
            "cmd_labels": {},
            "version": __version__,
            "rotation": self.rotation.report(),
        }

    def ssh_addr(self, request_host: str | None = None) -> str:
        """The proxy SSH address clients dial (see :meth:`_advertised`)."""
        proxy = self.cfg.proxy
        return self._advertised(proxy.ssh_public_addr, proxy.listen_addr, self.ssh_port, request_host)

    def web_addr(self, request_host: str | None = None) -> str:
        """The proxy web address clients use (see :meth:`_advertised`)."""
        proxy = self.cfg.proxy
        return self._advertised(proxy.public_addr, proxy.web_listen_addr, self.web_port, request_host)

    def _advertised(
        self, public: HostPort | None, listen: HostPort, bound_port: int | None, request_host: str | None
    ) -> str:
        """:func:`netaddr.advertised` with the port actually bound; for a wildcard listener, the
        host the client reached the web API with."""
        return str(advertised(
            public, listen, bound_port=bound_port, advertise_ip=self.cfg.advertise_ip,
            fallbacks=[split_host(request_host or "")],
        ))

    def ping_info(self, request_host: str | None = None) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "proxy": {
                "ssh_addr": self.ssh_addr(request_host),
                "web_addr": self.web_addr(request_host),
            },
            "auth": {"second_factor": "otp", "type": "local"},
            "host_ca_certs": self.host_ca_certs(),
            "host_ca_keys": self.host_ca_keys(),
            "version": __version__,
        }

    # ------------------------------------------------------------------ trust

    def host_ca_certs(self) -> list[str]:
        if self._cas is not None:
            return list(self._cas.get("host_ca_certs") or [])
        return [c.decode() for c in self.identity.ca_certs]

    def host_ca_keys(self) -> list[str]:
        """Host CA SSH keys the cluster trusts (both during a host CA rotation): what clients put
        in known_hosts."""
        if self._cas is not None:
            return list(self._cas.get("host_ca_keys") or [])
        return list(self.identity.host_ca_keys or [])

    def user_ca_certs(self) -> list[str]:
        return list((self._cas or {}).get("user_ca_certs") or [])

    def user_ca_keys(self) -> list[str]:
        """User CA SSH keys trusted for proxy SSH logins: the auth service's current list, or
        the identity's until that is known."""
        if self._cas is not None:
            return list(self._cas.get("user_ca_keys") or [])
        return list(self.identity.user_ca_keys or [])

    def web_ssl_context(self) -> ssl.SSLContext:
        return server_ssl_context(self.identity, self.user_ca_certs())

    def apply_cas(self, cas: dict[str, Any]) -> None:
        """The cluster's public CAs, as the rotation watch saw them (SSH and web trust)."""
        changed = self._cas is None or any(
            cas.get(k) != self._cas.get(k) for k in ("host_ca_certs", "user_ca_certs", "user_ca_keys")
        )
        self._cas = cas
        if changed and self.web.runner is not None:
            log.info("cluster CAs changed; reloading the web TLS trust")
            self.web.reload_tls()

    # ------------------------------------------------------------------ auth API

    async def _fetch_nodes(self) -> list[dict[str, Any]]:
        return [node.to_json() for node in await self.client.nodes()]

    async def roles(self, names: list[str]) -> list[Role]:
        """The named roles, from a short-lived cache of the auth API's roles."""
        now = time.monotonic()
        if self._roles is None or now - self._roles[0] > ROLE_CACHE_SECONDS:
            self._roles = (now, [role.to_json() for role in await self.client.roles()])
        return parse_roles(self._roles[1], names)

    def audit(self, event: str, **fields: Any) -> None:
        """Record an audit event with the auth service, without delaying the caller."""

        async def send() -> None:
            try:
                await self.client.emit_audit(AuditEvent({"event": event, **fields}))
            except TeleportError as exc:
                log.warning("cannot record audit event %s: %s", event, exc.message)

        task = asyncio.get_running_loop().create_task(send())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

