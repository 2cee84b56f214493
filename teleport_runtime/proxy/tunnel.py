"""The proxy's reverse tunnel server (``proxy_service.tunnel_listen_addr``, default 3024).

A node in tunnel mode binds no port: it dials this listener (SSH), and the proxy reaches it
through that connection. The rules:

- The node authenticates with its *host* identity: its SSH host certificate, signed by a host
  CA the cluster trusts now (the current one, or the next one during a rotation), with the
  ``Node`` role of this cluster, valid now, and the signature over the session proving that it
  holds the key. The node's name is the certificate's (its UUID); the SSH username it sends
  means nothing. Connections that do not authenticate are bounded like the SSH listeners'
  (:class:`~teleport_runtime.sshserver.StartupGate`: per source, in all, and the login grace
  time), and garbage ends at the SSH version exchange, with a log line.
- The node asks for one forwarding (``tcpip-forward`` of ``api.names.TUNNEL_NODE_HOST`` /
  ``TUNNEL_NODE_PORT``): nothing is bound for it; it means "open ``forwarded-tcpip`` channels to
  me", and each is a connection to the node's SSH server.
- The node may open one kind of channel: ``direct-tcpip`` to ``api.names.TUNNEL_AUTH_TARGET``,
  relayed as raw bytes to an auth server (each of the proxy's auth addresses in turn). The
  node's TLS to the auth API runs inside it, end to end: the proxy sees nothing. Anything else is
  refused, logged and audited.
- Routing only goes to nodes the auth service lists (:class:`NodeDirectory`), so a node removed
  with ``tctl nodes rm`` (its certificate locked) is unreachable even while its tunnel is up,
  and its calls to the auth API through the tunnel are refused by the auth service; its tunnel is
  closed at the next node-list refresh that no longer lists it.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import socket
import ssl
import struct
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncssh
from aiohttp import WSMsgType, web

from teleport_runtime.api.names import TUNNEL_AUTH_TARGET, TUNNEL_NODE_HOST, TUNNEL_NODE_PORT
from teleport_runtime.ca import parse_host_ssh_cert
from teleport_runtime.ca.ssh import HostCertInfo
from teleport_runtime.config import SSH_MAX_PACKET, SSH_PACKET_FRAMING, SSH_WINDOW, HostPort
from teleport_runtime.errors import AccessDenied, ConnectionProblem, NotFound, TeleportError
from teleport_runtime.ratelimit import RateLimited, TokenBuckets
from teleport_runtime.sshinternals import BufferingForwarder, verify_userauth_signature
from teleport_runtime.sshserver import (
    GatedServerConnection,
    StartupGate,
    StartupLimits,
    cert_only_options,
    close_listener,
    signature_refusal,
)

log = logging.getLogger("teleport.proxy.tunnel")

#: Bound on reaching an auth server for a node, and on opening a channel to a node.
DIAL_TIMEOUT = 10.0
#: Keep-alives on each tunnel: a node that stops answering is dropped after about 90 s.
KEEPALIVE_INTERVAL = 30
KEEPALIVE_COUNT_MAX = 3

Audit = Callable[..., None]


def _cert_line(key_data: bytes) -> str:
    """The OpenSSH text form of a certificate in wire format."""
    (length,) = struct.unpack(">I", key_data[:4])
    algorithm = key_data[4 : 4 + length].decode("ascii")
    return f"{algorithm} {base64.b64encode(key_data).decode()}"


class _NoBindListener(asyncssh.SSHListener):
    """What a node's ``tcpip-forward`` gets: a record, nothing bound on the proxy."""

    def get_port(self) -> int:
        return TUNNEL_NODE_PORT

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass


class _TunnelServerConnection(GatedServerConnection):
    """asyncssh's server connection, authenticating nodes by their host certificate."""

    async def validate_public_key(self, username: str, key_data: bytes, msg: bytes, signature: bytes) -> bool:
        owner = self.get_owner()
        if not isinstance(owner, _TunnelConnection):
            return False
        refusal = signature_refusal(key_data, signature)
        if refusal is not None:
            owner.refuse(refusal)
            return False
        try:
            info = owner.server.check_node_cert(key_data)
        except (TeleportError, ValueError, UnicodeDecodeError, struct.error) as exc:
            owner.refuse(exc.message if isinstance(exc, TeleportError) else f"not a host certificate ({exc})")
            return False
        if not msg:
            return True  # a query: the signature comes next
        key = asyncssh.import_certificate(_cert_line(key_data)).key
        if not verify_userauth_signature(self, key, msg, signature):
            owner.refuse("the signature does not match the certificate's key")
            return False
        owner.node = info
        return True


class _TunnelConnection(asyncssh.SSHServer):
    """One node's tunnel."""

    def __init__(self, server: TunnelServer) -> None:
        self.server = server
        self.conn: asyncssh.SSHServerConnection | None = None
        self.peer = ""
        self.node: HostCertInfo | None = None
        self.forwarding = False
        #: The auth service listed the node while this tunnel was up (see drop_unlisted).
        self.was_listed = False
        self.id = next(server.conn_ids)

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername") or ("", 0)
        self.peer = str(peer[0]) if peer else ""
        self.server.connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.server.connections.discard(self.conn)
        self.server.unregister(self)
        if self.node is not None:
            log.info("tunnel %d from node %s (%s) closed%s", self.id, self.node.host_uuid, self.peer,
                     f": {exc}" if exc else "")
        else:  # garbage, a half-open handshake, a refused certificate
            log.info("tunnel %d from %s dropped before it authenticated%s", self.id, self.peer,
                     f": {exc}" if exc else "")

    def refuse(self, reason: str) -> None:
        log.warning("tunnel %d from %s refused: %s", self.id, self.peer, reason)
        self.server.audit("auth.rejected", remote_addr=self.peer, via="reverse tunnel", reason=reason)

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def auth_completed(self) -> None:
        assert self.node is not None
        log.info("tunnel %d from node %s (%s) authenticated", self.id, self.node.host_uuid, self.peer)

    def server_requested(self, listen_host: str, listen_port: int) -> Any:
        if (listen_host, listen_port) != (TUNNEL_NODE_HOST, TUNNEL_NODE_PORT) or self.node is None:
            log.warning("tunnel %d: refused a forwarding of %s:%s (only %s:%s is served)",
                        self.id, listen_host, listen_port, TUNNEL_NODE_HOST, TUNNEL_NODE_PORT)
            return False
        self.forwarding = True
        self.server.register(self)
        return _NoBindListener()

    async def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> Any:
        """The node's channels: only to the auth API, relayed as raw bytes."""
        node = self.node.host_uuid if self.node else "?"
        if dest_host != TUNNEL_AUTH_TARGET:
            reason = f"a node may open only {TUNNEL_AUTH_TARGET} through its tunnel, not {dest_host}:{dest_port}"
            log.warning("tunnel %d from node %s: refused: %s", self.id, node, reason)
            self.server.audit("port.rejected", server_id=node, remote_addr=self.peer, target=dest_host,
                              via="reverse tunnel", reason=reason)
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, reason)
        loop = asyncio.get_running_loop()
        problems = []
        for addr in self.server.auth_addresses():
            try:
                async with asyncio.timeout(DIAL_TIMEOUT):
                    _, auth_side = await loop.create_connection(BufferingForwarder, addr.host, addr.port)
            except (OSError, TimeoutError) as exc:
                problems.append(f"{addr}: {exc or 'timed out'}")
                continue
            return BufferingForwarder(auth_side)
        reason = "no auth server answers the proxy: " + "; ".join(problems)
        log.warning("tunnel %d from node %s: %s", self.id, node, reason)
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, reason)


class TunnelServer:
    """The reverse tunnel listener and the registry of live tunnels, by node UUID."""

    def __init__(
        self,
        *,
        host_key: asyncssh.SSHKey,
        host_cert: asyncssh.SSHCertificate,
        trusted_host_ca_keys: Callable[[], list[str]],
        auth_addresses: Callable[[], list[HostPort]],
        cluster: str,
        audit: Audit,
        startup_limits: StartupLimits | None = None,
    ) -> None:
        self.host_key = host_key
        self.host_cert = host_cert
        self.trusted_host_ca_keys = trusted_host_ca_keys
        self.auth_addresses = auth_addresses
        self.cluster = cluster
        self.audit = audit
        self.startup_gate = StartupGate("reverse tunnel service", startup_limits)
        self.conn_ids = itertools.count(1)
        self.connections: set[asyncssh.SSHServerConnection] = set()
        #: node UUID -> its live tunnels, the newest last
        self.tunnels: dict[str, list[_TunnelConnection]] = {}
        self._server: asyncio.AbstractServer | None = None
        self._options: asyncssh.SSHServerConnectionOptions | None = None
        self.port: int | None = None

    def _make_options(self) -> asyncssh.SSHServerConnectionOptions:
        return cert_only_options(
            server_factory=lambda: _TunnelConnection(self),
            server_host_keys=[(self.host_key, self.host_cert)],
            server_version="Teleport-Proxy-Tunnel",
            allow_scp=False,
            allow_pty=False,
            agent_forwarding=False,
            keepalive_interval=KEEPALIVE_INTERVAL,
            keepalive_count_max=KEEPALIVE_COUNT_MAX,
            max_pktsize=SSH_MAX_PACKET + SSH_PACKET_FRAMING,
        )

    def _new_connection(self) -> _TunnelServerConnection:
        if self._options is None:
            self._options = self._make_options()
        return _TunnelServerConnection(asyncio.get_running_loop(), self._options, self.startup_gate)

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (port 0: any free port); returns the bound port."""
        self._options = self._make_options()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._new_connection, host or None, port, reuse_address=True)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("reverse tunnel service listening on %s:%s", host, self.port)
        return self.port

    async def serve_socket(self, sock: socket.socket, ssl_context: ssl.SSLContext | None = None) -> None:
        """Serve one already-accepted connection (the proxy's one-port mode hands over those it
        told apart as tunnels; with ``ssl_context``, TLS is terminated here first)."""
        loop = asyncio.get_running_loop()
        await loop.connect_accepted_socket(self._new_connection, sock, ssl=ssl_context)

    def update_host_key(self, host_key: asyncssh.SSHKey, host_cert: asyncssh.SSHCertificate) -> None:
        """Serve a new host certificate to new tunnels (after a host CA rotation)."""
        self.host_key, self.host_cert = host_key, host_cert
        self._options = self._make_options()

    async def stop(self) -> None:
        server, self._server = self._server, None
        await close_listener(server, self.connections)
        self.connections.clear()
        self.tunnels.clear()

    # ------------------------------------------------------------------ checks

    def check_node_cert(self, key_data: bytes) -> HostCertInfo:
        """The node a certificate (wire format) names, if it may hold a tunnel; AccessDenied or
        BadParameter naming the problem otherwise."""
        info = parse_host_ssh_cert(_cert_line(key_data), self.trusted_host_ca_keys())
        if info.role != "Node":
            raise AccessDenied(f"only nodes hold reverse tunnels; this certificate is a {info.role}'s")
        if info.cluster_name != self.cluster:
            raise AccessDenied(f"the certificate is of cluster {info.cluster_name}, not {self.cluster}")
        now = datetime.now(UTC)
        if info.valid_after > now or (info.valid_before is not None and info.valid_before <= now):
            raise AccessDenied("the host certificate is not valid now")
        return info

    # ------------------------------------------------------------------ registry

    def register(self, conn: _TunnelConnection) -> None:
        assert conn.node is not None
        self.tunnels.setdefault(conn.node.host_uuid, []).append(conn)

    def unregister(self, conn: _TunnelConnection) -> None:
        if conn.node is None:
            return
        held = self.tunnels.get(conn.node.host_uuid)
        if held and conn in held:
            held.remove(conn)
            if not held:
                del self.tunnels[conn.node.host_uuid]

    def has(self, node_id: str) -> bool:
        return bool(self.tunnels.get(node_id))

    def drop_unlisted(self, listed: set[str]) -> None:
        """Close the tunnels of nodes the auth service no longer lists as registered (removed
        with ``tctl nodes rm``) among those it listed before (``listed`` is the current list)."""
        for node_id in [n for n in self.tunnels if n not in listed]:
            for conn in list(self.tunnels.get(node_id, [])):
                if conn.conn is not None and conn.was_listed:
                    log.info("closing the tunnel of node %s: the cluster no longer lists it", node_id)
                    conn.conn.close()
        for node_id in listed:
            for conn in self.tunnels.get(node_id, []):
                conn.was_listed = True

    async def open(
        self, node_id: str, orig: tuple[str, int]
    ) -> tuple[asyncssh.SSHReader[bytes], asyncssh.SSHWriter[bytes]]:
        """A connection to the node's SSH server through its newest tunnel; NotFound when it
        holds none to this proxy."""
        held = list(self.tunnels.get(node_id, []))
        if not held:
            raise NotFound(f"node {node_id} has no reverse tunnel to this proxy (yet): try again in a few seconds")
        problems = []
        for conn in reversed(held):
            assert conn.conn is not None
            try:
                async with asyncio.timeout(DIAL_TIMEOUT):
                    reader, writer = await conn.conn.open_connection(
                        TUNNEL_NODE_HOST, TUNNEL_NODE_PORT, orig[0], orig[1], encoding=None,
                        window=SSH_WINDOW, max_pktsize=SSH_MAX_PACKET + SSH_PACKET_FRAMING,
                    )
            except (asyncssh.Error, OSError, TimeoutError) as exc:
                problems.append(str(exc) or type(exc).__name__)
                continue
            return reader, writer
        raise ConnectionProblem(f"node {node_id}'s tunnel does not answer: {'; '.join(problems)}")

    def through(self, node_id: str, orig: tuple[str, int]) -> ThroughTunnel:
        """What ``asyncssh.connect(tunnel=...)`` takes to reach the node's SSH server through
        its newest tunnel (the proxy's own connection when it terminates SSH for the node)."""
        return ThroughTunnel(self, node_id, orig)


class ThroughTunnel:
    """A node's SSH server through its reverse tunnel, as asyncssh's ``tunnel=`` object."""

    def __init__(self, server: TunnelServer, node_id: str, orig: tuple[str, int]) -> None:
        self.server = server
        self.node_id = node_id
        self.orig = orig

    async def create_connection(
        self, session_factory: Callable[[], Any], _host: str, _port: int
    ) -> tuple[Any, Any]:
        held = list(self.server.tunnels.get(self.node_id, []))
        if not held or held[-1].conn is None:
            # OSError: the caller reports it as a node that cannot be reached.
            raise ConnectionRefusedError(
                f"node {self.node_id} has no reverse tunnel to this proxy (yet): try again in a few seconds"
            )
        conn = held[-1].conn
        return await conn.create_connection(
            session_factory, TUNNEL_NODE_HOST, TUNNEL_NODE_PORT, self.orig[0], self.orig[1],
            window=SSH_WINDOW, max_pktsize=SSH_MAX_PACKET + SSH_PACKET_FRAMING,
        )


# ---------------------------------------------------------------------- joining through the proxy

#: Joins through the proxy, per source address: as the auth API's own join limit.
CONNECT_BURST = 20
CONNECT_RATE = 5.0
#: Largest websocket message a joining node may send (its TLS records are at most 16 KiB).
MAX_CONNECT_MESSAGE = 64 * 1024


async def relay_websocket_to_auth(request: web.Request, auth_addresses: list[HostPort],
                                  limiter: TokenBuckets, audit: Audit) -> web.StreamResponse:
    """``GET /webapi/connect/auth``: a websocket whose binary messages are relayed as raw bytes
    to an auth server (the first of ``auth_addresses`` that answers) and back. A node that has
    only the proxy's web address joins through it: its TLS to the auth API (the CA pin check,
    then the token) runs inside, exactly as on a direct join. Rate limited per source."""
    remote = request.remote or ""
    try:
        limiter.take(remote)
    except RateLimited as exc:
        if exc.first:
            audit("access.denied", resource=request.path, verb=request.method, remote_addr=remote,
                  reason=exc.message)
        raise
    problems = []
    for addr in auth_addresses:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(addr.host, addr.port), DIAL_TIMEOUT)
            break
        except (OSError, TimeoutError) as exc:
            problems.append(f"{addr}: {exc or 'timed out'}")
    else:
        raise ConnectionProblem("the proxy cannot reach an auth server: " + "; ".join(problems))
    ws = web.WebSocketResponse(max_msg_size=MAX_CONNECT_MESSAGE, heartbeat=30)
    await ws.prepare(request)

    async def upstream() -> None:  # node -> auth
        async for msg in ws:
            if msg.type != WSMsgType.BINARY:
                break
            writer.write(msg.data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    async def downstream() -> None:  # auth -> node
        while data := await reader.read(MAX_CONNECT_MESSAGE):
            await ws.send_bytes(data)
        await ws.close()

    tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        writer.close()
        await ws.close()
    return ws
