"""Every use of asyncssh beyond its documented API, in one place, each with the reason.

The node and the proxy need a few things asyncssh does not offer publicly: to admit or refuse a
connection before asyncssh sets it up, to check a certificate at the point asyncssh verifies its
signature, to decide forwarding per connection, and to relay a node's bytes that arrive before
the client's channel is open. pyproject.toml caps asyncssh at the tested minor series while this
module exists; ``tests/test_sshinternals.py`` checks that each hook below is still where it is
expected, so an upgrade that moves one fails there, by name, rather than in a session.
"""

from __future__ import annotations

import asyncio
import inspect
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import asyncssh
from asyncssh.kex import get_kex_algs as _get_kex_algs
from asyncssh.packet import String
from asyncssh.stream import SSHReader, SSHTCPStreamSession, SSHWriter

__all__ = [
    "HOOKS", "BufferingForwarder", "HostKeyRecorder", "RelayServerProcess", "ServerConnection", "stream_session",
    "supported_kex_algs", "verify_userauth_signature",
]


def supported_kex_algs() -> list[bytes]:
    """The key exchanges this asyncssh build offers (asyncssh.kex, not exported): the
    post-quantum hybrids exist only with the right library, and the listeners offer them only
    then."""
    return list(_get_kex_algs())


def verify_userauth_signature(conn: asyncssh.SSHServerConnection, key: asyncssh.SSHKey, msg: bytes,
                              signature: bytes) -> bool:
    """Whether ``signature`` proves possession of ``key`` for this connection's user
    authentication request ``msg`` (RFC 4252: signed over the session ID, then the request).
    The reverse tunnel server needs it: its clients sign with a *host* certificate, which
    asyncssh's own check accepts only as a user certificate. Reads ``_session_id``."""
    session_id: bytes = conn._session_id
    return bool(key.verify(String(session_id) + msg, signature))


def stream_session(handler: Any) -> asyncssh.SSHTCPSession[bytes]:
    """The session asyncssh makes of a stream handler (``handler(reader, writer)``) when
    ``connection_requested`` returns one directly; a coroutine ``connection_requested`` must
    return a session, so the proxy builds it (asyncssh.stream, not exported)."""
    return SSHTCPStreamSession(handler)


class HostKeyRecorder:
    """What ``asyncssh.connect(..., tunnel=HostKeyRecorder(host, port))`` opens its TCP connection
    with, keeping the host key blob the server presented (``key_data``). A tunnel node needs the
    proxy's whole host *certificate* to check its role; asyncssh keeps only the key inside
    (``get_server_host_key``). It wraps the connection's ``validate_server_host_key(key_data)``,
    which asyncssh calls with the blob during key exchange (the kex signature is then verified
    with the certificate's key by asyncssh)."""

    def __init__(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> None:
        self.host = host
        self.port = port
        #: TLS under the SSH connection (a tunnel on the proxy's one port, told apart by ALPN).
        self.ssl_context = ssl_context
        self.key_data: bytes | None = None

    async def create_connection(self, session_factory: Any, _host: str, _port: int) -> Any:
        loop = asyncio.get_running_loop()

        def factory() -> Any:
            conn = session_factory()
            validate = conn.validate_server_host_key

            def recording(key_data: bytes) -> Any:
                self.key_data = bytes(key_data)
                return validate(key_data)

            conn.validate_server_host_key = recording
            return conn

        if self.ssl_context is None:
            return await loop.create_connection(factory, self.host, self.port)
        return await loop.create_connection(factory, self.host, self.port, ssl=self.ssl_context,
                                            server_hostname=self.host)


class ServerConnection(asyncssh.SSHServerConnection):
    """asyncssh's server connection, built by our own ``loop.create_server`` factory instead of
    ``asyncssh.listen`` (its constructor ``(loop, options)`` is internal), so that a connection
    can be counted and refused in ``connection_made`` before asyncssh sends anything.

    Subclasses override these internal methods (listed in :data:`HOOKS`):

    - ``validate_public_key(username, key_data, msg, signature)``: where asyncssh checks a key
      and, with ``msg``, its signature. The only point that sees the certificate's wire bytes and
      whether possession was proved, which the node's and proxy's certificate checks need.
    - ``send_userauth_success()``: the moment authentication succeeded, which ends a
      connection's count against the unauthenticated-connection limits.
    - ``check_key_permission(permission)``: asyncssh asks it before port or agent forwarding; the
      node answers from the user's roles.
    - ``create_agent_listener()``: creates the forwarded agent's socket; the node hands it to
      the login's user.
    """


#: The internal methods of asyncssh.SSHServerConnection the node and proxy override.
HOOKS: tuple[str, ...] = (
    "validate_public_key",
    "send_userauth_success",
    "check_key_permission",
    "create_agent_listener",
)


class BufferingForwarder(asyncssh.SSHForwarder):
    """asyncssh's forwarder protocol (it relays in protocol callbacks, with flow control both
    ways), minus a race: a node speaks first (its SSH version line), and asyncssh's own
    ``forward_connection`` drops data that arrives before the channel side is connected. Here it
    is kept and flushed once both sides are up.

    It reads the forwarder's private ``_inpbuf`` and ``_eof_received`` (what arrived before
    there was a peer) and ``_transport`` (whether this side is connected yet): the class offers
    no public way to ask."""

    def __init__(self, peer: asyncssh.SSHForwarder | None = None) -> None:
        self._pending: list[bytes] = []
        self._pending_eof = False
        super().__init__(peer)

    def set_peer(self, peer: asyncssh.SSHForwarder) -> None:
        super().set_peer(peer)
        if self._inpbuf:  # received before there was a peer
            peer.write(self._inpbuf)
            self._inpbuf = b""
        if self._eof_received:
            peer.write_eof()

    def write(self, data: bytes) -> None:
        if self._transport is None:
            self._pending.append(data)
        else:
            super().write(data)

    def write_eof(self) -> None:
        if self._transport is None:
            self._pending_eof = True
        else:
            super().write_eof()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        pending, self._pending = self._pending, []
        for data in pending:
            super().write(data)
        if self._pending_eof:
            super().write_eof()


class RelayServerProcess(asyncssh.SSHServerProcess[bytes]):
    """A server session whose every request, the ``sftp`` subsystem included, goes to one process
    handler: the proxy terminating SSH for a node relays subsystems to the node. asyncssh answers
    ``sftp`` itself when given an sftp server and refuses it otherwise; there is no public way to
    hand it to the process factory. Built by ``SSHServer.session_requested``; its constructor
    ``(process_factory, sftp_factory, sftp_version, allow_scp)`` and ``session_started`` (the
    reader and writers of the channel, then the factory) are asyncssh's internals."""

    def __init__(self, handler: Callable[[asyncssh.SSHServerProcess[bytes]], Awaitable[None]]) -> None:
        super().__init__(handler, None, 3, False)

    def subsystem_requested(self, subsystem: str) -> bool:
        return True

    def session_started(self) -> None:
        chan = self._chan
        stdin: SSHReader[bytes] = SSHReader(self, chan)
        stdout: SSHWriter[bytes] = SSHWriter(self, chan)
        stderr: SSHWriter[bytes] = SSHWriter(self, chan, asyncssh.EXTENDED_DATA_STDERR)
        handler = self._session_factory(stdin, stdout, stderr)  # type: ignore[misc]
        if inspect.isawaitable(handler) and self._conn is not None:
            self._conn.create_task(handler, stdin.logger)
