"""One daemon, the services its config enables: auth first, then proxy and node.

Nodes and proxies reach cluster state only through the auth API. When the auth service runs in
the same process, they still join over that API, with a one-minute token the auth service makes
for them, so there is one join path.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import socket
import time

import psutil

from teleport_runtime.agent.join import ensure_identity
from teleport_runtime.agent.tunnel import (
    LocalRelay,
    auth_relay_path,
    detect_proxy,
    join_relay_path,
    websocket_connect,
)
from teleport_runtime.api.client import AuthClient
from teleport_runtime.auth.server import AuthServer
from teleport_runtime.config import Config, HostPort
from teleport_runtime.daemon.diag import DiagServer
from teleport_runtime.identity import Identity
from teleport_runtime.netaddr import is_wildcard
from teleport_runtime.node.service import NodeService
from teleport_runtime.proxy.service import ProxyService

log = logging.getLogger("teleport")


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
        self.auth_server: AuthServer | None = None
        self.node: NodeService | None = None
        self.proxy: ProxyService | None = None
        self.clients: list[AuthClient] = []
        self.diag: DiagServer | None = None
        self.ready = False
        self.started = time.time()
        self._stop = asyncio.Event()

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
            if is_wildcard(listen.host):
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
            proxy = await self._proxy_server()
            if proxy is not None:
                await self._start_tunnel_node(proxy)
            else:
                identity = await ensure_identity(cfg, "node", self.host_addresses())
                client = self._client(identity)
                self.node = NodeService(cfg, identity, client, self.host_addresses())
                await self.node.start()
        self.ready = True
        log.info("teleport is running: %s", ", ".join(cfg.roles))

    async def _proxy_server(self) -> HostPort | None:
        """The proxy a node-only process reaches the cluster through (reverse tunnel mode):
        ``teleport.proxy_server``, or an auth server address that is a proxy's web port."""
        cfg = self.cfg
        if cfg.proxy_server is not None:
            return cfg.proxy_server
        if cfg.auth.enabled or cfg.proxy.enabled or not cfg.auth_servers:
            return None
        return await detect_proxy(cfg.data_dir, cfg.auth_servers)

    async def _start_tunnel_node(self, proxy: HostPort) -> None:
        """Join through the proxy's web port (when not joined yet), then run in tunnel mode."""
        cfg = self.cfg
        join_relay = LocalRelay(join_relay_path(cfg.data_dir), websocket_connect(proxy))
        await join_relay.start()
        try:
            identity = await ensure_identity(cfg, "node", [], through=(proxy, str(join_relay.path)))
        finally:
            await join_relay.stop()
        client = AuthClient([proxy], identity.client_ssl_context(), cluster=identity.cluster,
                            unix_socket=str(auth_relay_path(cfg.data_dir)))
        self.clients.append(client)
        self.node = NodeService(cfg, identity, client, [], proxy=proxy)
        await self.node.start()
        log.info("node %s runs in reverse tunnel mode through the proxy at %s (no port bound)", cfg.nodename, proxy)

    async def _start_auth(self) -> None:
        cfg = self.cfg
        self.auth_server = AuthServer(
            cfg.auth, cfg.data_dir, storage=cfg.storage,
            names=[cfg.nodename, *cfg.auth.public_addr, *self.host_addresses()],
        )
        await self.auth_server.start()
        if cfg.auth.listen_addr.port == 0:  # tests: let local agents find the picked port
            cfg.auth.listen_addr = self.auth_server.addr

    async def _local_join_token(self) -> None:
        assert self.auth_server is not None
        roles = [r for r in ("node", "proxy") if r in self.cfg.roles]
        self.cfg.auth_token, self.cfg.ca_pins = await self.auth_server.local_join_token(roles)

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
        if self.node is not None:
            await self.node.stop()
        if self.proxy is not None:
            await self.proxy.stop()
        for client in self.clients:
            await client.close()
        if self.auth_server is not None:
            await self.auth_server.stop()
        if self.diag is not None:
            await self.diag.stop()

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
