"""The proxy's one-port mode (``auth_service.proxy_listener_mode: multiplex``): SSH, reverse
tunnels and HTTPS on the web port, told apart before any protocol work.

A connection is accepted on a plain socket and its first bytes are *peeked* (``MSG_PEEK``: nothing
is consumed, so the protocol that gets the socket sees the connection from its first byte):

- ``SSH-`` (a client's version line): the proxy's SSH server (``ssh -J proxy:3080``, tsh).
- a TLS record holding a ClientHello: its ALPN list is read from the peeked record. A client that
  offers :data:`~teleport_runtime.api.names.ALPN_REVERSE_TUNNEL` is a tunnel agent (handed to the
  tunnel server, which runs its own handshake); anything else (``http/1.1``, ``h2``, no ALPN) is
  the web API, which gets the socket with the web TLS context (the current identity is chosen
  per handshake, as on the separate web listener).
- anything else is dropped.

Bounds (the threat model: anyone can reach this port): a connection counts as *unidentified*
from accept until it was handed to SSH, or its TLS handshake finished; the counts per source
address and per listener are capped by the SSH listener's rule
(:class:`~teleport_runtime.sshserver.StartupGate`, the same limits), so a flood of half-open
connections holds at most that many sockets. The first bytes must arrive within
:data:`IDENTIFY_TIMEOUT` and the TLS handshake must end within :data:`HANDSHAKE_TIMEOUT`; the
peek reads at most one TLS record (:data:`MAX_HELLO`). Each dropped connection gets one log line
(at most one a second; a flood is summarised with a count).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from teleport_runtime.api.names import ALPN_REVERSE_TUNNEL
from teleport_runtime.netaddr import format_host_port, is_ipv6
from teleport_runtime.sshserver import LOGIN_GRACE_TIME, StartupGate, StartupLimits, source_address

log = logging.getLogger("teleport.proxy.multiplex")

#: Seconds a new connection has to send the bytes that say what it is.
IDENTIFY_TIMEOUT = 10.0
#: Seconds the web TLS handshake may take after that.
HANDSHAKE_TIMEOUT = 10.0
#: Seconds a tunnel connection may take to be set up by the tunnel server.
TUNNEL_SETUP_TIMEOUT = LOGIN_GRACE_TIME
#: The largest TLS record (RFC 8446: 2^14 bytes of plaintext) plus its 5-byte header: the most
#: the peek reads.
MAX_HELLO = 5 + 16384
_SSH_PREFIX = b"SSH-"
_TLS_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_EXT_ALPN = 16
#: Between two peeks of a connection whose first bytes are incomplete (a socket with unread data
#: is always readable, so the wait is a short sleep, growing to the last value).
_POLL = (0.005, 0.02, 0.05, 0.1, 0.2)
_DROP_LOG_INTERVAL = 1.0

#: Serves one accepted socket, not read from yet, as a reverse tunnel connection.
TunnelHandler = Callable[[socket.socket], Awaitable[None]]
SSHFactory = Callable[[], asyncio.BaseProtocol]


class Unidentified(Exception):
    """The connection is neither SSH nor TLS the proxy serves (the message says why)."""


def _u16(data: bytes, offset: int) -> int:
    if offset + 2 > len(data):
        raise Unidentified("truncated ClientHello")
    return int.from_bytes(data[offset : offset + 2], "big")


def tls_record_length(head: bytes) -> int:
    """The length of the TLS handshake record whose 5-byte header starts ``head`` (header
    included); Unidentified if it is not a handshake record or larger than a record may be."""
    if len(head) < 5 or head[0] != _TLS_HANDSHAKE or head[1] != 3:
        raise Unidentified("not a TLS handshake record")
    length = _u16(head, 3)
    if not 0 < length <= MAX_HELLO - 5:
        raise Unidentified(f"TLS record of {length} bytes")
    return 5 + length


def client_hello_alpn(record: bytes) -> tuple[str, ...]:
    """The ALPN protocol names a TLS record holding a whole ClientHello offers (empty: no ALPN
    extension); Unidentified when the record is not one (or the ClientHello spans several
    records, which no client this proxy serves sends)."""
    body = record[5 : tls_record_length(record)]
    if len(body) < 4 or body[0] != _CLIENT_HELLO:
        raise Unidentified("the TLS record is not a ClientHello")
    length = int.from_bytes(body[1:4], "big")
    if 4 + length > len(body):
        raise Unidentified("the ClientHello spans several TLS records")
    hello = body[4 : 4 + length]
    offset = 2 + 32  # legacy version, random
    try:
        offset += 1 + hello[offset]  # session id
        offset += 2 + _u16(hello, offset)  # cipher suites
        offset += 1 + hello[offset]  # compression methods
    except IndexError:
        raise Unidentified("truncated ClientHello") from None
    if offset == len(hello):
        return ()
    end = offset + 2 + _u16(hello, offset)
    offset += 2
    if end > len(hello):
        raise Unidentified("truncated ClientHello extensions")
    while offset + 4 <= end:
        ext_type, ext_len = _u16(hello, offset), _u16(hello, offset + 2)
        offset += 4
        if offset + ext_len > end:
            raise Unidentified("truncated ClientHello extension")
        if ext_type == _EXT_ALPN:
            data = hello[offset : offset + ext_len]
            names, at, stop = [], 2, 2 + _u16(data, 0)
            if stop > len(data):
                raise Unidentified("truncated ALPN extension")
            while at < stop:
                size = data[at]
                if size == 0 or at + 1 + size > stop:
                    raise Unidentified("malformed ALPN extension")
                names.append(data[at + 1 : at + 1 + size].decode("ascii", "replace"))
                at += 1 + size
            return tuple(names)
        offset += ext_len
    return ()


class _DropLog:
    """One log line per dropped connection, at most one a second (the rest are counted)."""

    def __init__(self) -> None:
        self._suppressed = 0
        self._last = 0.0

    def __call__(self, peer: str, reason: str) -> None:
        now = time.monotonic()
        if now - self._last < _DROP_LOG_INTERVAL:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} more dropped since the last such message)" if self._suppressed else ""
        log.warning("multiplexed web port: dropped a connection from %s: %s%s", peer, reason, more)
        self._suppressed = 0
        self._last = now


class Multiplexer:
    """The listener of the one-port mode; see the module docstring.

    ``ssh`` is the SSH server's protocol factory; ``web`` the aiohttp server (the AppRunner's
    ``server``, a protocol factory) with ``web_ssl`` its TLS context; ``tunnel`` serves a tunnel
    connection (None: the proxy serves none, and tunnel agents are dropped with a log line)."""

    def __init__(
        self,
        *,
        ssh: SSHFactory,
        web: Callable[[], asyncio.BaseProtocol],
        web_ssl: ssl.SSLContext,
        tunnel: TunnelHandler | None = None,
        limits: StartupLimits | None = None,
    ) -> None:
        self.ssh = ssh
        self.web = web
        self.web_ssl = web_ssl
        self.tunnel = tunnel
        self.gate = StartupGate("proxy multiplexed web port", limits)
        self.port: int | None = None
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._pending: dict[socket.socket, asyncio.Task[None]] = {}
        self._dropped = _DropLog()

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (port 0: any free port); returns the bound port."""
        family = socket.AF_INET6 if is_ipv6(host) else socket.AF_INET
        listener = socket.create_server((host, port), family=family, backlog=1024)
        listener.setblocking(False)
        self._listener = listener
        self.port = int(listener.getsockname()[1])
        self._accepting = asyncio.get_running_loop().create_task(self._accept_loop(listener))
        log.info("proxy SSH, tunnels and web API multiplexed on %s", format_host_port(host, self.port))
        return self.port

    async def stop(self) -> None:
        """Stop accepting and drop the connections not handed over yet (the SSH, web and tunnel
        servers close theirs)."""
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.gather(self._accepting, return_exceptions=True)
            self._accepting = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        tasks = list(self._pending.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, peer = await loop.sock_accept(listener)
            except OSError as exc:  # EMFILE and the like: back off rather than spin
                log.warning("multiplexed web port: accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            if not self.gate.admit(sock, source_address(peer)):
                sock.close()  # the gate logged it
                continue
            task = loop.create_task(self._serve(sock, peer))
            self._pending[sock] = task

    async def _serve(self, sock: socket.socket, peer: Any) -> None:
        """Identify ``sock`` and hand it over; drop it (one log line) if that fails or is late."""
        where = format_host_port(str(peer[0]), int(peer[1])) if peer else "?"
        handed = False
        try:
            async with asyncio.timeout(IDENTIFY_TIMEOUT):
                first = await self._peek(sock)
            handed = await self._dispatch(sock, first, where)
        except Unidentified as exc:
            self._dropped(where, str(exc))
        except TimeoutError:
            self._dropped(where, f"sent nothing identifiable within {IDENTIFY_TIMEOUT:g}s")
        except (OSError, ssl.SSLError) as exc:
            self._dropped(where, f"{type(exc).__name__}: {exc}")
        except Exception:  # a bug here must cost one connection, not the listener
            log.exception("multiplexed web port: internal error serving a connection from %s", where)
        finally:
            self.gate.release(sock)
            self._pending.pop(sock, None)
            if not handed:
                sock.close()

    async def _peek(self, sock: socket.socket) -> bytes:
        """The first bytes of ``sock`` (not consumed): enough to tell SSH, or the whole first TLS
        record; Unidentified for anything else."""
        await self._readable(sock)
        polls = iter(_POLL)
        want = len(_SSH_PREFIX)
        while True:
            try:
                data = sock.recv(want, socket.MSG_PEEK)
            except BlockingIOError:
                data = None
            if data == b"":
                raise Unidentified("closed before sending anything identifiable")
            if data:
                if data[:1] == _SSH_PREFIX[:1]:
                    if not _SSH_PREFIX.startswith(data[: len(_SSH_PREFIX)]):
                        raise Unidentified(f"neither SSH nor TLS (first bytes {data[:8]!r})")
                    if len(data) >= len(_SSH_PREFIX):
                        return data
                elif data[0] == _TLS_HANDSHAKE:
                    want = tls_record_length(data) if len(data) >= 5 else 5
                    if len(data) >= want:
                        return data
                else:
                    raise Unidentified(f"neither SSH nor TLS (first bytes {data[:8]!r})")
            await asyncio.sleep(next(polls, _POLL[-1]))

    @staticmethod
    async def _readable(sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        fd = sock.fileno()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, wake)
        try:
            await ready
        finally:
            loop.remove_reader(fd)

    async def _dispatch(self, sock: socket.socket, first: bytes, where: str) -> bool:
        """Hand ``sock`` to the protocol ``first`` names; True once it owns the socket."""
        loop = asyncio.get_running_loop()
        if first.startswith(_SSH_PREFIX):
            await loop.connect_accepted_socket(self.ssh, sock)
            return True
        offered = client_hello_alpn(first)
        if ALPN_REVERSE_TUNNEL in offered:
            if self.tunnel is None:
                raise Unidentified("a reverse tunnel, but this proxy serves no tunnels")
            try:
                async with asyncio.timeout(TUNNEL_SETUP_TIMEOUT):
                    await self.tunnel(sock)
            except TimeoutError:
                self._dropped(where, f"tunnel not set up within {TUNNEL_SETUP_TIMEOUT:g}s")
            return True  # the tunnel server owns (and closes) the socket from here
        try:
            await loop.connect_accepted_socket(
                self.web, sock, ssl=self.web_ssl, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
            )
        except ConnectionAbortedError:  # asyncio's handshake timeout
            self._dropped(where, f"TLS handshake not finished within {HANDSHAKE_TIMEOUT:g}s")
            return True  # asyncio closed the socket
        except (OSError, ssl.SSLError) as exc:
            self._dropped(where, f"TLS handshake failed: {exc}")
            return True
        return True

