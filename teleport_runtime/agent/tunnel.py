"""A node in reverse tunnel mode: it reaches the cluster through a proxy and binds no port.

- **Which mode.** ``teleport.proxy_server: PROXY:3080`` says it. So does an auth server address
  that is a proxy's web port (older configs, ``--auth-server=PROXY:3080``): at start, a node with
  no auth or proxy service asks each configured address ``GET /webapi/find`` (TLS unverified: the
  answer only picks the mode; everything after is verified). An address that answers it as a proxy
  is a proxy; the auth API answers 404. The finding is kept in ``<data_dir>/tunnel/proxy_server``
  so a restart while the proxy is away keeps the mode.
- **The local relay.** The node's one :class:`~teleport_runtime.api.client.AuthClient` connects
  to a unix socket in ``<data_dir>/tunnel/`` (directory 0700, socket 0600; in a private
  ``$TMPDIR/teleport-<hash of the data dir>/`` when that path is too long for a unix socket) with the same mutual
  TLS, server name and ``Auth`` role check as a direct one; each connection there is piped to the
  auth API: through a tunnel channel to ``TUNNEL_AUTH_TARGET`` once the node has joined
  (``auth.sock``), through the proxy's ``/webapi/connect/auth`` websocket while it joins
  (``join.sock``). The TLS runs end to end between the node and an auth server: the CA pin is
  checked as on a direct join, whatever certificate the proxy's web port presents.
- **The tunnels.** :class:`TunnelAgent` dials the proxy's tunnel address (from ``/webapi/find``,
  verified against the cluster's host CAs; when it is the proxy's web address, the proxy runs in
  one-port mode and the SSH runs inside TLS with ALPN ``teleport-reversetunnel``), checks the
  proxy's SSH host certificate (signed by a host CA the node trusts, role ``Proxy``, this
  cluster: another cluster's proxy is refused), authenticates with the node's host certificate,
  asks for its forwarding, and hands each channel the proxy opens to the node's SSH server
  through a socketpair. Keep-alives every 30 s; a lost
  tunnel is dialled again with back-off and jitter (:mod:`teleport_runtime.backoff`).
- **Several proxies** behind one load balancer: the node learns the proxies from the auth API
  (``GET /v1/proxies``: their host UUIDs) and keeps dialling the one tunnel address until it holds
  a tunnel to each (the proxy's certificate names which one answered; a second tunnel to the same
  proxy is closed at once), a bounded number of attempts per round; tunnels to proxies the auth
  service no longer lists are closed. Chosen over proxy-to-proxy forwarding: it needs no
  proxy-to-proxy trust, links or discovery, a proxy that stops costs only its own tunnels, and the
  proxies stay identical and stateless behind any layer-4 balancer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import socket
import ssl
import stat
import struct
import tempfile
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncssh

from teleport_runtime.api.client import insecure_ssl_context, trusting_ssl_context
from teleport_runtime.api.names import (
    ALPN_REVERSE_TUNNEL,
    CONNECT_AUTH_PATH,
    TUNNEL_AUTH_TARGET,
    TUNNEL_NODE_HOST,
    TUNNEL_NODE_PORT,
)
from teleport_runtime.backoff import Backoff
from teleport_runtime.ca import parse_host_ssh_cert
from teleport_runtime.config import PROXY_TUNNEL_PORT, SSH_MAX_PACKET, SSH_PACKET_FRAMING, SSH_WINDOW, HostPort
from teleport_runtime.durable import write_private
from teleport_runtime.errors import AccessDenied, BadParameter, ConfigError, ConnectionProblem, TeleportError
from teleport_runtime.identity import Identity
from teleport_runtime.netaddr import EVERY_IPV4, parse_host_port
from teleport_runtime.relay import pipe_both
from teleport_runtime.sshinternals import HostKeyRecorder

log = logging.getLogger("teleport.tunnel")

#: Bound on one dial of the tunnel address (TCP, SSH handshake, authentication).
DIAL_TIMEOUT = 15.0
#: Bound on a ``/webapi/find`` request.
FIND_TIMEOUT = 5.0
#: How often the agent compares its tunnels with the cluster's proxies.
SYNC_INTERVAL = 5.0
#: Tunnel keep-alives (both sides): a dead tunnel is noticed within about 90 s.
KEEPALIVE_INTERVAL = 30
KEEPALIVE_COUNT_MAX = 3
#: Re-dial delays after failures in a row.
RECONNECT_BACKOFF = Backoff(0.5, 15.0)
#: Host key algorithms a proxy may present: certificates only (its identity is the certificate).
PROXY_HOST_KEY_ALGS = (
    "ssh-ed25519-cert-v01@openssh.com",
    "ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "rsa-sha2-512-cert-v01@openssh.com",
    "rsa-sha2-256-cert-v01@openssh.com",
)
#: Largest websocket message accepted from the proxy while joining.
MAX_JOIN_MESSAGE = 64 * 1024

Connect = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def tunnel_dir(data_dir: Path) -> Path:
    """``<data_dir>/tunnel``, mode 0700: the local relay sockets and the mode finding."""
    directory = data_dir / "tunnel"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    return directory


#: Longest unix socket path (sun_path holds 108 bytes with its NUL).
MAX_SOCKET_PATH = 100


def _socket_path(data_dir: Path, name: str) -> Path:
    """``<data_dir>/tunnel/<name>``, or, when that is too long for a unix socket, the same name
    in a private directory of the temp dir named after the data dir (checked at start)."""
    path = data_dir / "tunnel" / name
    if len(os.fsencode(str(path))) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(os.fsencode(str(data_dir.resolve()))).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"teleport-{digest}" / name


def auth_relay_path(data_dir: Path) -> Path:
    """The local relay to the auth API through the tunnels."""
    return _socket_path(data_dir, "auth.sock")


def join_relay_path(data_dir: Path) -> Path:
    """The local relay to the auth API through the proxy's web port, while joining."""
    return _socket_path(data_dir, "join.sock")


def _private_dir(directory: Path) -> None:
    """``directory`` exists, is ours and is mode 0700 (a relay socket is reachable only by this
    user); ConfigError naming it otherwise (such as one made by someone else in /tmp)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = directory.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise ConfigError(f"{directory} is not a directory of this user: remove it, then start teleport again")
    os.chmod(directory, 0o700)


# ---------------------------------------------------------------------- which mode


async def find_proxy(addr: HostPort, ssl_context: ssl.SSLContext) -> dict[str, Any] | None:
    """The ``proxy`` part of ``GET /webapi/find`` at ``addr``, or None when it does not answer as
    a proxy (an auth server, nothing there)."""
    timeout = aiohttp.ClientTimeout(total=FIND_TIMEOUT)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
            f"https://{addr}/webapi/find", ssl=ssl_context
        ) as resp:
            if resp.status != 200:
                return None
            data = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
        return None
    proxy = data.get("proxy") if isinstance(data, dict) else None
    return proxy if isinstance(proxy, dict) else None


async def detect_proxy(data_dir: Path, addresses: list[HostPort]) -> HostPort | None:
    """The address among ``addresses`` that is a proxy's web port (see the module docstring),
    or None: they are auth servers."""
    marker = data_dir / "tunnel" / "proxy_server"
    with contextlib.suppress(OSError):
        known = marker.read_text().strip()
        if known in {str(a) for a in addresses}:
            return next(a for a in addresses if str(a) == known)
    for addr in addresses:
        if await find_proxy(addr, insecure_ssl_context()) is not None:
            log.info("%s is a proxy's web address: joining and running through it (reverse tunnel mode)", addr)
            tunnel_dir(data_dir)
            write_private(marker, f"{addr}\n")
            return addr
    return None


# ---------------------------------------------------------------------- the local relay


class LocalRelay:
    """A unix socket whose connections ``connect`` pipes to the auth API."""

    def __init__(self, path: Path, connect: Connect) -> None:
        self.path = path
        self.connect = connect
        self._server: asyncio.AbstractServer | None = None
        self._handlers: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    async def start(self) -> None:
        _private_dir(self.path.parent)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._handle, path=str(self.path))
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        # Closing a connection ends its piping (cancelling the handler would make asyncio log
        # the cancellation as an error of the stream callback).
        for writer in self._handlers.values():
            writer.close()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=5)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers[task] = writer
        try:
            await self.connect(reader, writer)
        except (TeleportError, OSError, asyncssh.Error, aiohttp.ClientError, TimeoutError) as exc:
            message = exc.message if isinstance(exc, TeleportError) else str(exc) or type(exc).__name__
            log.warning("cannot reach the auth API through the proxy: %s", message)
        finally:
            writer.close()
            if task is not None:
                self._handlers.pop(task, None)


def websocket_connect(proxy: HostPort) -> Connect:
    """Piping to the proxy's ``/webapi/connect/auth`` websocket (joining). The proxy's web TLS is
    not verified here: the TLS inside, to the auth server, is (by the CA pin)."""

    async def connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with aiohttp.ClientSession() as session, session.ws_connect(
            f"https://{proxy}{CONNECT_AUTH_PATH}", ssl=insecure_ssl_context(), max_msg_size=MAX_JOIN_MESSAGE,
            heartbeat=30, timeout=aiohttp.ClientWSTimeout(ws_close=5),
        ) as ws:

            async def up() -> None:
                while data := await reader.read(MAX_JOIN_MESSAGE // 2):
                    await ws.send_bytes(data)
                await ws.close()

            async def down() -> None:
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.BINARY:
                        break
                    writer.write(msg.data)
                    await writer.drain()
                writer.close()

            tasks = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    return connect


# ---------------------------------------------------------------------- the node's side of the socketpair


class _PeerTransport:
    """A transport as the node's SSH server sees it: the socketpair's, with the client's address
    (as the proxy passed it in the channel) for the peer and the node's SSH port for its own."""

    def __init__(self, transport: asyncio.Transport, peer: tuple[str, int]) -> None:
        self._transport = transport
        self._peer = peer

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peer
        if name == "sockname":
            return (EVERY_IPV4, TUNNEL_NODE_PORT)
        return self._transport.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class PeerShim(asyncio.Protocol):
    """Passes a socketpair connection to ``inner`` (the node's SSH connection) through
    :class:`_PeerTransport`."""

    def __init__(self, inner: asyncio.Protocol, peer: tuple[str, int]) -> None:
        self.inner = inner
        self.peer = peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(_PeerTransport(transport, self.peer))  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


# ---------------------------------------------------------------------- the tunnels


def check_proxy_host_key(key_data: bytes | None, trusted_host_ca_keys: list[str], cluster: str) -> str:
    """The proxy's host UUID if ``key_data`` (the host key blob the server presented) is a host
    certificate from a trusted host CA with the ``Proxy`` role of ``cluster``, valid now;
    AccessDenied naming why otherwise."""
    try:
        (length,) = struct.unpack(">I", (key_data or b"")[:4])
        algorithm = (key_data or b"")[4 : 4 + length].decode("ascii")
    except (struct.error, UnicodeDecodeError):
        algorithm = ""
    if not algorithm.endswith("-cert-v01@openssh.com") or key_data is None:
        raise AccessDenied("the tunnel server presented a plain host key, not a host certificate: not a proxy")
    try:
        info = parse_host_ssh_cert(f"{algorithm} {base64.b64encode(key_data).decode()}", trusted_host_ca_keys)
    except (BadParameter, AccessDenied) as exc:
        raise AccessDenied(
            f"the tunnel server is not a proxy of cluster {cluster}: {exc.message} (is the proxy address "
            "right? another cluster's proxy is refused)"
        ) from None
    if info.role != "Proxy" or info.cluster_name != cluster:
        raise AccessDenied(
            f"the tunnel server's certificate is a {info.role}'s of cluster {info.cluster_name}, "
            f"not a Proxy of {cluster}: refused"
        )
    now = datetime.now(UTC)
    if info.valid_after > now or (info.valid_before is not None and info.valid_before <= now):
        raise AccessDenied("the tunnel server's host certificate is not valid now: refused")
    return info.host_uuid


class TunnelAgent:
    """Holds the node's reverse tunnels: one to each proxy of the cluster."""

    def __init__(
        self,
        *,
        identity: Callable[[], Identity],
        cluster: str,
        host_uuid: str,
        proxy: HostPort,
        accept: Callable[[socket.socket, tuple[str, int]], Awaitable[None]],
        proxies: Callable[[], Awaitable[set[str]]],
    ) -> None:
        self.identity = identity
        self.cluster = cluster
        self.host_uuid = host_uuid
        self.proxy = proxy
        self.accept = accept
        self.proxies = proxies
        #: proxy host UUID -> the tunnel to it
        self.tunnels: dict[str, asyncssh.SSHClientConnection] = {}
        self.connected = asyncio.Event()
        self._changed = asyncio.Event()
        self._tunnel_addr: HostPort | None = None
        #: The proxy announced its web address for tunnels (one-port mode): TLS with ALPN.
        self._tunnel_tls = False
        self._task: asyncio.Task[None] | None = None
        self._channels: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="reverse-tunnels")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for conn in list(self.tunnels.values()):
            conn.close()
        for conn in list(self.tunnels.values()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 5)
        self.tunnels.clear()

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._converge()
                failures = 0
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), SYNC_INTERVAL)
            except (OSError, asyncssh.Error, TeleportError, TimeoutError) as exc:
                failures += 1
                delay = RECONNECT_BACKOFF.delay(failures)
                message = exc.message if isinstance(exc, TeleportError) else str(exc) or type(exc).__name__
                log.warning("cannot hold a reverse tunnel to the proxy at %s (%s); retrying in %.1fs",
                            self._tunnel_addr or self.proxy, message, delay)
                self._tunnel_addr = None  # ask the proxy again: it may have moved
                await asyncio.sleep(delay)

    async def _converge(self) -> None:
        """At least one tunnel; then one to each proxy the cluster lists, none to others."""
        if not self.tunnels:
            await self._dial()
        try:
            wanted = await self.proxies()
        except TeleportError as exc:
            log.debug("cannot list the proxies (%s); keeping the tunnels held", exc.message)
            return
        if not wanted:
            return
        for proxy_id in [p for p in self.tunnels if p not in wanted]:
            log.info("closing the tunnel to proxy %s: the cluster no longer lists it", proxy_id)
            self.tunnels.pop(proxy_id).close()
        attempts = 0
        while wanted - set(self.tunnels) and attempts < 2 * len(wanted) + 2:
            attempts += 1
            await self._dial()

    async def tunnel_addr(self) -> HostPort:
        """Where to dial: the proxy's ``tunnel_addr`` from ``/webapi/find`` (TLS verified against
        the cluster's host CAs)."""
        if self._tunnel_addr is None:
            context = trusting_ssl_context(list(self.identity().ca_certs))
            context.check_hostname = False  # the chain is checked; the proxy's name is the LB's
            found = await find_proxy(self.proxy, context)
            text = str((found or {}).get("tunnel_addr") or "")
            if not text:
                raise ConnectionProblem(f"the proxy at {self.proxy} does not say where its reverse tunnels are "
                                        "(is it a proxy of this cluster, and does it run?)")
            self._tunnel_addr = parse_host_port(text, PROXY_TUNNEL_PORT, "tunnel_addr")
            self._tunnel_tls = text == str((found or {}).get("web_addr") or "")
        return self._tunnel_addr

    def _tls_context(self) -> ssl.SSLContext | None:
        """TLS for a tunnel on the proxy's web port (one-port mode): the proxy's certificate
        checked against the cluster's host CAs, ALPN naming the reverse tunnel."""
        if not self._tunnel_tls:
            return None
        context = trusting_ssl_context(list(self.identity().ca_certs))
        context.check_hostname = False  # the chain is checked; the name may be a balancer's
        context.set_alpn_protocols([ALPN_REVERSE_TUNNEL])
        return context

    async def _dial(self) -> str | None:
        """One tunnel to whichever proxy answers the tunnel address; its UUID, or None when it
        was one the node already holds a tunnel to (that second one is closed)."""
        addr = await self.tunnel_addr()
        identity = self.identity()
        key = asyncssh.import_private_key(identity.ssh_key)
        cert = asyncssh.import_certificate(identity.ssh_cert)
        recorder = HostKeyRecorder(addr.host, addr.port, self._tls_context())
        conn = await asyncio.wait_for(asyncssh.connect(
            addr.host, addr.port, tunnel=recorder, username=self.host_uuid, client_keys=[(key, cert)], known_hosts=None,
            server_host_key_algs=list(PROXY_HOST_KEY_ALGS), agent_path=None, config=None,
            keepalive_interval=KEEPALIVE_INTERVAL, keepalive_count_max=KEEPALIVE_COUNT_MAX,
            preferred_auth="publickey",
        ), DIAL_TIMEOUT)
        try:
            proxy_id = check_proxy_host_key(recorder.key_data, list(identity.host_ca_keys or []), self.cluster)
            if proxy_id in self.tunnels:
                conn.close()
                return None
            await conn.start_server(self._forwarded, TUNNEL_NODE_HOST, TUNNEL_NODE_PORT,
                                    window=SSH_WINDOW, max_pktsize=SSH_MAX_PACKET + SSH_PACKET_FRAMING)
        except BaseException:
            conn.close()
            raise
        self.tunnels[proxy_id] = conn
        self.connected.set()
        log.info("reverse tunnel to proxy %s at %s is up (%d held)", proxy_id, addr, len(self.tunnels))
        task = asyncio.get_running_loop().create_task(self._watch(proxy_id, conn))
        self._channels.add(task)
        task.add_done_callback(self._channels.discard)
        return proxy_id

    async def _watch(self, proxy_id: str, conn: asyncssh.SSHClientConnection) -> None:
        await conn.wait_closed()
        if self.tunnels.get(proxy_id) is conn:
            del self.tunnels[proxy_id]
            log.warning("reverse tunnel to proxy %s closed; dialling again", proxy_id)
            if not self.tunnels:
                self.connected.clear()
            self._changed.set()

    def _forwarded(self, orig_host: str, orig_port: int) -> Callable[..., Awaitable[None]]:
        """A channel the proxy opened: a connection to the node's SSH server."""

        async def handle(reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes]) -> None:
            ours, theirs = socket.socketpair()
            try:
                await self.accept(theirs, (orig_host, orig_port))
                local_reader, local_writer = await asyncio.open_connection(sock=ours)
            except BaseException:
                ours.close()
                theirs.close()
                raise
            await pipe_both(reader, writer, local_reader, local_writer)

        return handle

    async def connect_auth(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Pipe a local relay connection to the auth API through a tunnel (the newest first)."""
        problems = []
        for proxy_id, conn in reversed(list(self.tunnels.items())):
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    conn.open_connection(TUNNEL_AUTH_TARGET, 0, encoding=None), DIAL_TIMEOUT)
            except (asyncssh.Error, OSError, TimeoutError) as exc:
                problems.append(f"proxy {proxy_id}: {exc}")
                continue
            await pipe_both(reader, writer, up_reader, up_writer)
            return
        raise ConnectionProblem("no reverse tunnel to a proxy is up" + (": " + "; ".join(problems) if problems else ""))
