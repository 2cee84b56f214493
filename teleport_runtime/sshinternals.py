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
from collections.abc import Awaitable, Callable

import asyncssh
from asyncssh.kex import get_kex_algs as _get_kex_algs
from asyncssh.stream import SSHReader, SSHWriter

__all__ = ["HOOKS", "BufferingForwarder", "RelayServerProcess", "ServerConnection", "supported_kex_algs"]


def supported_kex_algs() -> list[bytes]:
    """The key exchanges this asyncssh build offers (asyncssh.kex, not exported): the
    post-quantum hybrids exist only with the right library, and the listeners offer them only
    then."""
    return list(_get_kex_algs())


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
