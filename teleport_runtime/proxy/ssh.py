"""The proxy's SSH listener (default port 3023): the jump hop in front of every node.

Clients authenticate with a user certificate signed by a trusted user CA and valid now, whatever
SSH username they send: the proxy only routes, the node authorizes the login. Two ways through:

- ``direct-tcpip`` channels (``ssh -J``, ``ProxyJump``, asyncssh ``tunnel=``): the destination is
  resolved to a registered node and asyncssh's forwarder protocol relays the bytes to the node's
  registered address in protocol callbacks (a subclass that keeps what the node sends before the
  channel is up: asyncssh's ``forward_connection`` would drop the node's SSH version line then).
- the session subsystem ``proxy:HOST:PORT@CLUSTER`` (the ProxyCommand ``tsh config`` writes):
  the channel is relayed to a TCP connection to the node in large chunks, with SSH flow control
  on one side and asyncio stream back-pressure on the other.

Anything else (a shell, a command) is refused with a message saying how to reach a node.

For OpenSSH nodes, and for every node in proxy recording mode, either way through ends at the
proxy's terminating SSH server instead (:mod:`teleport_runtime.proxy.recording_proxy`), which
checks the user's roles itself, records and opens its own connection to the node.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
import re
import struct
from collections.abc import Callable
from typing import Any

import asyncssh

from teleport_runtime.ca import parse_user_ssh_cert
from teleport_runtime.config import SSH_MAX_PACKET, SSH_PACKET_FRAMING, SSH_WINDOW
from teleport_runtime.errors import TeleportError
from teleport_runtime.names import is_host_name
from teleport_runtime.netaddr import format_host_port, is_ipv6
from teleport_runtime.proxy.directory import NodeDirectory, NodeRecord
from teleport_runtime.proxy.recording_proxy import RecordingProxy
from teleport_runtime.proxy.tunnel import TunnelServer
from teleport_runtime.relay import pipe_both
from teleport_runtime.sshinternals import BufferingForwarder, stream_session
from teleport_runtime.sshserver import (
    ConnectionLog,
    GatedServerConnection,
    StartupGate,
    StartupLimits,
    TrustedUserCAs,
    cert_only_options,
    close_listener,
)

log = logging.getLogger("teleport.proxy.ssh")

#: Relay chunk size for the subsystem path.
CHUNK = 256 * 1024
#: Bound on dialing a node.
DIAL_TIMEOUT = 10.0
SUBSYSTEM = re.compile(r"proxy:(?P<host>\[[^\]]+\]|[^:@\[\]]+)(?::(?P<port>[0-9]{1,5}))?(?:@(?P<cluster>[^@]+))?")
_SUBSYSTEM_FORM = "expected proxy:HOST:PORT@CLUSTER, such as proxy:node1:3022@example.com"

Audit = Callable[..., None]


def parse_proxy_subsystem(name: str) -> tuple[str, int | None, str | None]:
    """``proxy:HOST:PORT@CLUSTER`` -> (host, port or None, cluster or None); ValueError naming
    the bad part if not (the host a DNS name, node name, UUID or IP; the port 0-65535)."""
    match = SUBSYSTEM.fullmatch(name)
    if not match:
        raise ValueError(f"unknown subsystem {name!r}: {_SUBSYSTEM_FORM}")
    host = match.group("host")
    if host.startswith("["):
        host = host[1:-1]
        if not is_ipv6(host):
            raise ValueError(f"subsystem {name!r}: {host!r} in brackets is not an IPv6 address")
    elif not is_host_name(host):
        raise ValueError(f"subsystem {name!r}: invalid host {host!r}: {_SUBSYSTEM_FORM}")
    port = int(match.group("port")) if match.group("port") else None
    if port is not None and port > 65535:
        raise ValueError(f"subsystem {name!r}: port {port} is out of range 0-65535")
    cluster = match.group("cluster")
    if cluster is not None and not is_host_name(cluster):
        raise ValueError(f"subsystem {name!r}: invalid cluster name {cluster!r}: {_SUBSYSTEM_FORM}")
    return host, port, cluster


def _cert_key_id(key_data: bytes) -> str:
    """The key id (the Teleport user name) of an SSH user certificate in wire format."""
    try:
        (length,) = struct.unpack(">I", key_data[:4])
        algorithm = key_data[4 : 4 + length].decode("ascii")
        return parse_user_ssh_cert(f"{algorithm} {base64.b64encode(key_data).decode()}").username
    except (struct.error, UnicodeDecodeError, TeleportError):
        return ""


class _ProxyServerConnection(GatedServerConnection):
    """asyncssh's server connection, remembering who logged in and treating the jump hop as
    routing rather than port forwarding."""

    async def validate_public_key(self, username: str, key_data: bytes, msg: bytes, signature: bytes) -> bool:
        ok = await super().validate_public_key(username, key_data, msg, signature)
        owner = self.get_owner()
        if ok and msg and isinstance(owner, _ProxyConnection):
            owner.user = _cert_key_id(key_data)
        return ok

    def check_certificate_permission(self, permission: str) -> bool:
        # A user whose certificate lacks permit-port-forwarding still reaches nodes through the
        # proxy: direct-tcpip here only ever goes to a registered node (connection_requested).
        if permission == "port-forwarding":
            return True
        return super().check_certificate_permission(permission)

    def create_tcp_channel(self, encoding: str | None = None, errors: str = "strict", window: int = SSH_WINDOW,
                           max_pktsize: int = SSH_MAX_PACKET + SSH_PACKET_FRAMING) -> asyncssh.SSHTCPChannel[bytes]:
        # The channels to nodes (direct-tcpip) carry whole SSH packets of the node connection
        # inside: one of the node's largest packets, framed, fits one packet of this channel.
        return super().create_tcp_channel(encoding, errors, SSH_WINDOW, SSH_MAX_PACKET + SSH_PACKET_FRAMING)


class _ProxyConnection(asyncssh.SSHServer):
    """One client connection to the proxy."""

    def __init__(self, server: ProxySSHServer) -> None:
        self.server = server
        self.conn: asyncssh.SSHServerConnection | None = None
        self.peer = ""
        self.log = ConnectionLog(log, next(server.conn_ids))

    @property
    def user(self) -> str:
        """The Teleport user: the certificate's key id (empty until a certificate is offered)."""
        return str(self.log.fields["user"])

    @user.setter
    def user(self, value: str) -> None:
        self.log.fields["user"] = value

    @property
    def login(self) -> str:
        return str(self.log.fields["login"])

    @login.setter
    def login(self, value: str) -> None:
        self.log.fields["login"] = value

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername") or ("", 0)
        self.peer = str(peer[0])
        self.server.connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.server.connections.discard(self.conn)

    def begin_auth(self, username: str) -> bool:
        self.login = username
        assert self.conn is not None
        self.conn.set_authorized_keys(TrustedUserCAs(self.server.trusted_user_ca_keys()))  # type: ignore[arg-type]
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def auth_completed(self) -> None:
        self.log.info("authenticated, from %s", self.peer)

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return False  # no remote forwarding on the proxy

    async def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Any:
        """direct-tcpip: resolve to a registered node; asyncssh's forwarder protocol then relays
        the bytes between the channel and the node's registered address."""
        node = await self.server.route(self, dest_host, dest_port, "direct-tcpip")
        if node.tunnel and not self.server.terminates(node):
            return await self.server.tunnel_relay(self, node)
        try:
            async with asyncio.timeout(DIAL_TIMEOUT):
                _, node_side = await asyncio.get_running_loop().create_connection(
                    BufferingForwarder, **await self.server.dial_args(self, node)
                )
        except (OSError, TimeoutError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "timed out"
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_CONNECT_FAILED,
                f"node {node.hostname} ({node.id}) is registered at {node.addr} but cannot be "
                f"reached from the proxy: {reason}",
            ) from None
        self.log.info("direct-tcpip to node %s (%s) at %s", node.hostname, node.id, node.addr)
        return BufferingForwarder(node_side)


class ProxySSHServer:
    """The asyncssh listener and its routing."""

    def __init__(
        self,
        *,
        host_key: asyncssh.SSHKey,
        host_cert: asyncssh.SSHCertificate,
        trusted_user_ca_keys: Callable[[], list[str]],
        directory: NodeDirectory,
        cluster: str,
        audit: Audit,
        startup_limits: StartupLimits | None = None,
        terminator: RecordingProxy | None = None,
    ) -> None:
        self.host_key = host_key
        self.host_cert = host_cert
        self.trusted_user_ca_keys = trusted_user_ca_keys
        self.directory = directory
        self.cluster = cluster
        self.audit = audit
        self._server: asyncio.AbstractServer | None = None
        self._conn_options: asyncssh.SSHServerConnectionOptions | None = None
        self.connections: set[asyncssh.SSHServerConnection] = set()
        self.port: int | None = None
        self.startup_gate = StartupGate("proxy SSH service", startup_limits)
        self.conn_ids = itertools.count(1)
        #: The reverse tunnels nodes in tunnel mode hold to this proxy (set by the service).
        self.tunnels: TunnelServer | None = None
        #: Terminates SSH for OpenSSH nodes (they are never relayed end to end) and, in proxy
        #: recording mode, for every node.
        self.terminator = terminator

    def _options(self) -> asyncssh.SSHServerConnectionOptions:
        return cert_only_options(
            server_factory=lambda: _ProxyConnection(self),
            server_host_keys=[(self.host_key, self.host_cert)],
            server_version="Teleport-Proxy",
            process_factory=self._session,
            allow_scp=False,
            allow_pty=False,
            agent_forwarding=False,
            keepalive_interval=60,
            max_pktsize=SSH_MAX_PACKET + SSH_PACKET_FRAMING,
        )

    def new_connection(self) -> _ProxyServerConnection:
        """The protocol of one accepted connection (the listener's factory; the one-port mode
        hands it the connections that start with ``SSH-``)."""
        if self._conn_options is None:
            self._conn_options = self._options()
        return _ProxyServerConnection(asyncio.get_running_loop(), self._conn_options, self.startup_gate)

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (port 0: any free port); returns the bound port."""
        self._conn_options = self._options()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self.new_connection, host or None, port, reuse_address=True)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("proxy SSH listening on %s:%s", host, self.port)
        return self.port

    def update_host_key(self, host_key: asyncssh.SSHKey, host_cert: asyncssh.SSHCertificate) -> None:
        """Serve a new host certificate to new connections (after a host CA rotation)."""
        self.host_key, self.host_cert = host_key, host_cert
        self._conn_options = self._options()

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        server, self._server = self._server, None
        await close_listener(server, self.connections)
        self.connections.clear()

    async def route(
        self, conn: _ProxyConnection, host: str, port: int | None, how: str
    ) -> NodeRecord:
        """The registered node for a request; ChannelOpenError (and an audit event) otherwise."""
        target = f"{host}:{port}" if port else host
        conn.log.fields["target"] = target
        try:
            return await self.directory.resolve(host)
        except TeleportError as exc:
            target = format_host_port(host, port) if port else host
            conn.log.warning("refused %s from %s to %s: %s", how, conn.peer, target, exc.message)
            self.audit(
                "proxy.connect.rejected",
                user=conn.user,
                login=conn.login,
                remote_addr=conn.peer,
                target=target,
                via=how,
                reason=exc.message,
            )
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, exc.message) from None

    async def dial(self, conn: _ProxyConnection, node: NodeRecord) -> tuple[Any, Any]:
        """(reader, writer) to the node's SSH server: a TCP connection to its registered
        address, or a channel through its reverse tunnel."""
        if not node.tunnel or self.terminates(node):
            return await asyncio.open_connection(**await self.dial_args(conn, node), limit=CHUNK)
        if self.tunnels is None:
            raise OSError(f"node {node.hostname} is reached through a reverse tunnel and this proxy serves none")
        peer = conn.conn.get_extra_info("peername") if conn.conn is not None else None
        try:
            return await self.tunnels.open(node.id, (conn.peer, int(peer[1]) if peer else 0))
        except TeleportError as exc:
            raise OSError(exc.message) from None

    async def tunnel_relay(self, conn: _ProxyConnection, node: NodeRecord) -> Any:
        """direct-tcpip to a tunnel node: a stream handler relaying the client's channel to a
        channel through the node's tunnel."""
        try:
            reader, writer = await asyncio.wait_for(self.dial(conn, node), DIAL_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_CONNECT_FAILED,
                f"node {node.hostname} ({node.id}) cannot be reached from the proxy: {exc or 'timed out'}",
            ) from None
        conn.log.info("direct-tcpip to node %s (%s) through its reverse tunnel", node.hostname, node.id)

        async def relay(client_reader: asyncssh.SSHReader[bytes], client_writer: asyncssh.SSHWriter[bytes]) -> None:
            await pipe_both(client_reader, client_writer, reader, writer)

        return stream_session(relay)

    def terminates(self, node: NodeRecord) -> bool:
        """Whether this proxy terminates SSH for ``node`` (then the terminator reaches it, through
        its tunnel when it has one) rather than relaying the client's bytes end to end."""
        return self.terminator is not None and self.terminator.terminates(node)

    async def dial_args(self, conn: _ProxyConnection, node: NodeRecord) -> dict[str, Any]:
        """Where a jump channel to ``node`` goes: its address, or a socket to the proxy's
        terminating SSH server for an OpenSSH node and, in proxy recording mode, for every node
        (:mod:`teleport_runtime.proxy.recording_proxy`)."""
        if not self.terminates(node):
            if node.sub_kind == "openssh":
                raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED,
                                                f"{node.hostname} is an OpenSSH node: this proxy cannot reach it")
            return {"host": node.addr.host, "port": node.addr.port}
        assert self.terminator is not None  # terminates() said so
        try:
            return {"sock": await self.terminator.dial(node, conn.user, conn.peer)}
        except TeleportError as exc:
            conn.log.warning("cannot terminate SSH for OpenSSH node %s: %s", node.hostname, exc.message)
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, exc.message) from None

    async def _session(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        """Sessions on the proxy: only the ``proxy:`` subsystem relays; the rest is refused."""
        conn = process.channel.get_connection().get_owner()
        if not isinstance(conn, _ProxyConnection):  # every connection here is made by _options()
            raise RuntimeError(f"proxy session on a connection owned by {type(conn).__name__}")
        subsystem = process.subsystem
        if not subsystem:
            what = f"command {process.command!r}" if process.command else "a shell"
            process.stderr.write(
                f"ERROR: this is the proxy of cluster {self.cluster}: it does not run {what}. "
                f"Reach a node with `tsh ssh LOGIN@NODE`, `ssh -J` or the config `tsh config` "
                f"prints.\r\n".encode()
            )
            process.exit(1)
            return
        try:
            host, port, cluster = parse_proxy_subsystem(subsystem)
        except ValueError as exc:
            process.stderr.write(f"ERROR: {exc}\r\n".encode())
            process.exit(1)
            return
        if cluster and cluster != self.cluster:
            process.stderr.write(
                f"ERROR: this proxy serves cluster {self.cluster}, not {cluster}\r\n".encode()
            )
            process.exit(1)
            return
        try:
            node = await self.route(conn, host, port, "subsystem")
            reader, writer = await asyncio.wait_for(self.dial(conn, node), DIAL_TIMEOUT)
        except asyncssh.ChannelOpenError as exc:
            process.stderr.write(f"ERROR: {exc.reason}\r\n".encode())
            process.exit(1)
            return
        except (OSError, TimeoutError) as exc:
            process.stderr.write(
                f"ERROR: node {node.hostname} is registered at {node.addr} but cannot be reached "
                f"from the proxy: {exc or 'timed out'}\r\n".encode()
            )
            process.exit(1)
            return
        conn.log.info("subsystem to node %s (%s) at %s", node.hostname, node.id, node.addr)
        await _relay(process, reader, writer)


async def _relay(
    process: asyncssh.SSHServerProcess[bytes], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Copy both ways until the node side closes; EOFs are passed on."""

    async def upstream() -> None:  # client -> node
        try:
            while data := await process.stdin.read(CHUNK):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (OSError, asyncssh.Error, asyncssh.BreakReceived, asyncssh.SignalReceived):
            writer.close()

    async def downstream() -> None:  # node -> client
        with contextlib.suppress(OSError, asyncssh.Error):
            while data := await reader.read(CHUNK):
                process.stdout.write(data)
                await process.stdout.drain()

    up = asyncio.ensure_future(upstream())
    try:
        await downstream()
    finally:
        up.cancel()
        await asyncio.gather(up, return_exceptions=True)
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        with contextlib.suppress(Exception):
            process.exit(0)


def load_host_credentials(ssh_key: bytes, ssh_cert: str) -> tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]:
    """The proxy's SSH host key and certificate from its identity files' contents."""
    return asyncssh.import_private_key(ssh_key), asyncssh.import_certificate(ssh_cert)

