"""One daemon, the services its config enables: auth first, then proxy and node.

Nodes and proxies reach cluster state only through the auth API. When the auth service runs in
the same process, they still join over that API, with a one-minute token the auth service makes
for them, so there is one join path.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import time
from datetime import UTC, datetime, timedelta

import psutil

from teleport_runtime.agent.client import AuthClient
from teleport_runtime.agent.identity import Identity
from teleport_runtime.agent.join import ensure_identity
from teleport_runtime.auth.api import AuthAPI
from teleport_runtime.auth.audit import AuditLog
from teleport_runtime.auth.service import AuthService
from teleport_runtime.backend import Backend, EventType, open_audit_backend, open_backend
from teleport_runtime.config import Config, HostPort
from teleport_runtime.daemon.diag import DiagServer
from teleport_runtime.errors import TeleportError
from teleport_runtime.node.service import NodeService
from teleport_runtime.proxy.service import ProxyService

log = logging.getLogger("teleport")
ROTATION_TICK_SECONDS = 60.0


def interface_addresses() -> list[str]:
    """The host's own IP addresses, without loopback and link-local ones."""
    out = []
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if addr.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = ipaddress.ip_address(addr.address.split("%")[0])
            if not (ip.is_loopback or ip.is_link_local):
                out.append(str(ip))
    return out


class TeleportProcess:
    """Starts, runs and stops the enabled services in order."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.backend: Backend | None = None
        self.audit_backend: Backend | None = None
        self.auth: AuthService | None = None
        self.auth_api: AuthAPI | None = None
        self.auth_port: int | None = None
        self.node: NodeService | None = None
        self.proxy: ProxyService | None = None
        self.clients: list[AuthClient] = []
        self.diag: DiagServer | None = None
        self.ready = False
        self.started = time.time()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._auth_names: list[str] = []
        self._ca_changed = asyncio.Event()

    def host_addresses(self) -> list[str]:
        """Names and addresses this host is known by, for its certificates."""
        out = [a for a in (self.cfg.advertise_ip,) if a]
        if self.cfg.ssh.public_addr:
            out.append(self.cfg.ssh.public_addr.host)
        for addr in (self.cfg.proxy.public_addr, self.cfg.proxy.ssh_public_addr):
            if addr:
                out.append(addr.host)
        wildcard = False
        for listen in (self.cfg.ssh.listen_addr, self.cfg.proxy.listen_addr, self.cfg.proxy.web_listen_addr):
            if listen.host in ("0.0.0.0", "::", ""):  # noqa: S104
                wildcard = True
            else:
                out.append(listen.host)
        if wildcard:  # reachable at every address of the host: clients may dial any of them
            out.extend(interface_addresses())
        return list(dict.fromkeys(out))

    async def start(self) -> None:
        cfg = self.cfg
        cfg.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if cfg.diag_addr is not None:
            self.diag = DiagServer(lambda: self.ready, self.metrics)
            await self.diag.start(cfg.diag_addr.host, cfg.diag_addr.port)
        if cfg.auth.enabled:
            await self._start_auth()
        if cfg.ssh.enabled or cfg.proxy.enabled:
            if cfg.auth.enabled and not cfg.auth_token:
                await self._local_join_token()
        if cfg.proxy.enabled:
            identity = await ensure_identity(cfg, "proxy", self.host_addresses())
            self.proxy = ProxyService(cfg, identity, self._client(identity), self.host_addresses())
            await self.proxy.start()
        if cfg.ssh.enabled:
            identity = await ensure_identity(cfg, "node", self.host_addresses())
            client = self._client(identity)
            self.node = NodeService(cfg, identity, client, self.host_addresses())
            await self.node.start()
        self.ready = True
        log.info("teleport is running: %s", ", ".join(cfg.roles))

    async def _start_auth(self) -> None:
        cfg = self.cfg
        self.backend = open_backend(cfg.storage, str(cfg.data_dir))
        self.auth = AuthService(self.backend, cfg.auth, cfg.data_dir)
        audit_backend = open_audit_backend(cfg.storage)
        if audit_backend is not None:  # teleport.storage.audit_events_uri: a database of its own
            self.audit_backend = audit_backend
            await audit_backend.open()
            self.auth.audit = AuditLog(audit_backend)
        await self.auth.init()
        self.auth_api = AuthAPI(self.auth)
        names = [cfg.nodename, *cfg.auth.public_addr, *self.host_addresses()]
        if cfg.auth.listen_addr.host not in ("0.0.0.0", "::"):  # noqa: S104
            names.append(cfg.auth.listen_addr.host)
        self.auth_port = await self.auth_api.start(
            cfg.auth.listen_addr.host, cfg.auth.listen_addr.port, names
        )
        if cfg.auth.listen_addr.port == 0:  # tests: let local agents find the picked port
            cfg.auth.listen_addr = HostPort(cfg.auth.listen_addr.host, self.auth_port)
        await self.auth.write_admin_identity()
        self._auth_names = names
        loop = asyncio.get_running_loop()
        self._tasks += [
            loop.create_task(self._rotation_timer(), name="rotation-timer"),
            loop.create_task(self._follow_authorities(), name="ca-watch"),
        ]
        pins = await self.auth.ca_pins()
        log.info("auth service ready: cluster %s, CA pin %s", self.auth.cluster_name, pins[0])

    async def _rotation_timer(self) -> None:
        """Auto-mode rotations move on their schedule: the timer wakes at the next scheduled
        phase change (or when a CA changes, or after a minute at most) and applies what is due."""
        assert self.auth is not None
        while True:
            wait = ROTATION_TICK_SECONDS
            try:
                moved = await self.auth.rotation.tick()
                for ca_type, view in moved.items():
                    log.info("%s CA rotation moved to phase %s", ca_type, view["phase"])
                deadline = await self.auth.rotation.next_deadline()
                if moved:
                    wait = 0.0  # several steps may be overdue: one per tick
                elif deadline is not None:
                    wait = min(wait, max(0.2, (deadline - datetime.now(UTC)).total_seconds()))
            except TeleportError as exc:
                log.warning("rotation timer: %s", exc.message)
            self._ca_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ca_changed.wait(), timeout=wait)

    async def _follow_authorities(self) -> None:
        """Whenever a CA changes (a rotation step, here or on another auth server), serve the API
        with the new trust and refresh the local admin identity tctl uses."""
        assert self.auth is not None and self.backend is not None and self.auth_api is not None
        watcher = await self.backend.new_watcher(["/authorities/"])
        try:
            async for event in watcher:
                if event.type is not EventType.PUT:
                    continue
                self._ca_changed.set()
                await self.auth_api.reload_tls(self._auth_names)
                await self.auth.write_admin_identity()
        finally:
            watcher.close()

    async def _local_join_token(self) -> None:
        assert self.auth is not None
        roles = [r for r in ("node", "proxy") if r in self.cfg.roles]
        token = await self.auth.tokens.create(roles, ttl=timedelta(minutes=1))
        self.cfg.auth_token = token.value
        self.cfg.ca_pins = await self.auth.ca_pins()

    def _client(self, identity: Identity) -> AuthClient:
        client = AuthClient.for_identity(self.cfg.auth_addresses(), identity)
        self.clients.append(client)
        return client

    def metrics(self) -> dict[str, float]:
        out = {
            "process_start_time_seconds": self.started,
            "teleport_ready": float(self.ready),
        }
        if self.node is not None:
            out["teleport_heartbeats_sent_total"] = float(self.node.heartbeat.sent)
        return out

    async def stop(self) -> None:
        """Ordered shutdown: agents first, then the auth API, then the backend."""
        self.ready = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.node is not None:
            await self.node.stop()
        if self.proxy is not None:
            await self.proxy.stop()
        for client in self.clients:
            await client.close()
        if self.auth_api is not None:
            await self.auth_api.close()
        if self.backend is not None:
            await self.backend.close()
        if self.audit_backend is not None:
            await self.audit_backend.close()
        if self.diag is not None:
            await self.diag.close()

    async def run(self) -> None:
        """Start, serve until SIGTERM/SIGINT, stop."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            await self.start()
            await self._stop.wait()
            log.info("shutting down (pid %d)", os.getpid())
        finally:
            await asyncio.wait_for(self.stop(), timeout=30)
