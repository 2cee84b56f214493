"""The node's SSH service (port 3022): certificate-only logins checked against roles.

A client logs in as an OS login with a user certificate. The certificate is accepted only when
it is a user certificate signed by one of the trusted user CA keys (asked for on every attempt,
so a CA rotation takes effect at once), valid now, lists the login among its principals, carries
roles (``teleport-roles``) that allow the login on this node's labels, and the login is a local
account. Nothing else authenticates: no passwords, no plain keys, no keyboard-interactive. Each
refusal is logged and audited (``auth.rejected``) with its reason. Whether the login exists here
is looked at only after the client's signature proved it holds the certificate's key, so a
client with someone else's certificate learns nothing about the node's accounts. Signatures
and certificates made with SHA-1 (``ssh-rsa``) are refused, and connections that have not
authenticated are capped per source address (:mod:`teleport_runtime.sshserver`).

Asyncssh drops the ``teleport-*`` certificate extensions while parsing, so the server connection
class (:class:`_NodeConnection`) looks at the raw certificate first, decides, and only then lets
asyncssh verify the key's signature (asyncssh re-checks validity and principals on its own as
well). Port and agent forwarding additionally need the role options *and* the certificate's
``permit-*`` extensions; remote forwarding (``-R``) and Unix socket forwarding are refused.

Audit events (dicts passed to ``audit``) always carry ``event``, ``time`` (ISO 8601 UTC),
``cluster_name``, ``server_id`` (host UUID), ``nodename``, ``conn_id``, ``user`` (the Teleport
user: the certificate's key id), ``login`` and ``remote_addr`` (``ip:port``); plus:

- ``auth.rejected``: ``reason``.
- ``session.start``: ``session_id``, ``kind`` (``shell``/``exec``/``subsystem``), ``pid``,
  ``command`` (exec), ``subsystem`` (subsystem), ``tty`` (``{term, cols, rows}``, PTY only).
- ``session.end``: the same plus ``exit_status`` (int, None when killed) and ``signal``.
- ``session.rejected``: ``session_id``, ``kind``, ``reason`` (the process could not start).
- ``exec``: ``session_id``, ``command``, ``exit_status``, ``signal`` (when the command ended).
- ``subsystem``: ``session_id``, ``name``, ``exit_status``, ``signal``.
- ``subsystem.rejected``: ``session_id``, ``name``, ``reason``.
- ``port``: ``dest`` (``host:port``) of an allowed local forward (``-L``/direct-tcpip).
- ``port.rejected``, ``agent.rejected``: ``reason`` (and ``dest`` or ``listen`` when known).
- ``host_user.create``, ``host_user.update``, ``host_user.delete``, ``host_user.rejected``: see
  :mod:`teleport_runtime.node.host_users` (when the node is given ``host_users``).
- ``session.command``, ``session.disk``, ``session.network``, ``session.enhanced_lost``: see
  :mod:`teleport_runtime.node.bpf` (when the node is given an ``enhanced`` recorder).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import logging
import os
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from ipaddress import ip_address, ip_network
from typing import Any

import asyncssh
from cryptography.hazmat.primitives.serialization import load_ssh_public_identity

from teleport_runtime.ca import UserCertInfo, parse_host_ssh_cert, parse_user_ssh_cert
from teleport_runtime.config import SSH_MAX_PACKET
from teleport_runtime.errors import AccessDenied, BadParameter, TeleportError
from teleport_runtime.netaddr import EVERY_IPV4, format_host_port, split_host
from teleport_runtime.node.bpf import EnhancedRecorder
from teleport_runtime.node.host_users import HostUserRefused, HostUsers
from teleport_runtime.node.osuser import OSUser, can_switch_to, lookup_os_user
from teleport_runtime.node.session import (
    DEFAULT_SFTP_SERVER,
    NodeSession,
    RecorderFactory,
    SessionContext,
    SessionRecorder,
)
from teleport_runtime.rbac import Role, RoleSet
from teleport_runtime.sshserver import (
    ConnectionLog,
    GatedServerConnection,
    StartupGate,
    StartupLimits,
    cert_only_options,
    close_listener,
)

__all__ = [
    "DEFAULT_PORT",
    "AuditFunc",
    "NodeSSHServer",
    "RecorderFactory",
    "RoleLookup",
    "SessionRecorder",
]

#: The node SSH service's port in the reference.
DEFAULT_PORT = 3022
#: Audit events waiting for a slow ``audit`` sink; beyond this, new events are dropped (logged).
AUDIT_QUEUE_SIZE = 10_000

AuditFunc = Callable[[dict[str, Any]], Awaitable[None]]
RoleLookup = Callable[[list[str]], Awaitable[list[Role]]]

_LOG = logging.getLogger("teleport.node.ssh")
_CERT_SUFFIX = b"-cert-v01@openssh.com"
#: Critical options a user certificate may carry (asyncssh enforces source-address too).
_KNOWN_CRITICAL_OPTIONS = {b"source-address"}


class _Refusal(Exception):
    """An authentication refusal: ``reason`` is logged and audited, ``client`` shown to the
    client in an auth banner when set."""

    def __init__(self, reason: str, *, user: str = "", client: str | None = None, plain: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.user = user
        self.client = client
        self.plain = plain  # a plain key: clients try those routinely, see _Conn.closed()


@dataclass
class _Identity:
    """Who an accepted certificate says the client is, and what they may do here."""

    user: str
    login: str
    cert: UserCertInfo
    roles: RoleSet
    ca_key: bytes
    #: The local account, looked up only after the client proved it holds the key.
    os_user: OSUser = field(default=None)  # type: ignore[assignment]

    @property
    def can_port_forward(self) -> bool:
        return self.cert.permit_port_forwarding and self.roles.can_port_forward()

    @property
    def can_forward_agent(self) -> bool:
        return self.cert.permit_agent_forwarding and self.roles.can_forward_agent()


def _ssh_string(data: bytes, offset: int = 0) -> tuple[bytes, int]:
    (length,) = struct.unpack_from(">I", data, offset)
    end = offset + 4 + length
    if end > len(data):
        raise ValueError("truncated SSH string")
    return data[offset + 4 : end], end


def _key_blob(line: str) -> bytes | None:
    """The key blob of an authorized_keys-form line (``[options] type base64 [comment]``)."""
    fields = line.split()
    for index, item in enumerate(fields[:-1]):
        if item.startswith(("ssh-", "ecdsa-", "sk-")):
            with contextlib.suppress(ValueError):
                return base64.b64decode(fields[index + 1], validate=True)
    return None


def _fingerprint(blob: bytes) -> str:
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def _fmt_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class _Conn:
    """Per-connection state: who is logging in, the decisions made, the connection's logger."""

    def __init__(self, node: NodeSSHServer, conn_id: int) -> None:
        self.node = node
        self.conn_id = conn_id
        self.log = ConnectionLog(_LOG, conn_id)
        self.conn: _NodeConnection | None = None
        self.remote_addr = ""
        self.identity: _Identity | None = None
        self._decisions: dict[tuple[str, bytes], _Identity | None] = {}
        self.approved_ca_keys: set[bytes] = set()
        self.auth_started = False
        self._audited_refusal = False
        self._plain_keys_refused = 0
        #: The host user this connection holds (released when it closes: insecure-drop).
        self.host_user: str | None = None

    def emit(self, event: dict[str, Any]) -> bool:
        """Queue an audit event with this connection's common fields (False: the queue is full
        and the event was dropped, logged)."""
        identity = self.identity
        fields = {
            "conn_id": self.conn_id,
            "user": identity.user if identity else self.log.fields.get("user", ""),
            "login": identity.login if identity else self.log.fields.get("login", ""),
            "remote_addr": self.remote_addr,
        }
        return self.node._emit({**fields, **event})

    # ------------------------------------------------------------------ authentication

    async def authorize(self, login: str, key_data: bytes) -> _Identity | None:
        """Decide (once per login and key) whether the certificate ``key_data`` may log in as
        ``login``, by the certificate and the roles alone: whether the login exists here is
        only looked at once the client proved it holds the key (:meth:`admit`)."""
        cache_key = (login, key_data)
        if cache_key in self._decisions:
            return self._decisions[cache_key]
        self.log.fields["login"] = login
        decision: _Identity | None
        try:
            checked = await self._check(login, key_data)
        except _Refusal as refusal:
            decision = None
            if refusal.plain:
                # Clients offer every key they have (agent keys first); only when no
                # certificate gets in is this worth an audit event (see closed()).
                self.log.info("key refused: %s", refusal.reason)
                self._plain_keys_refused += 1
                self._decisions[cache_key] = None
                return None
            self._refused(login, refusal)
        else:
            self.approved_ca_keys.add(checked.ca_key)
            decision = checked
        self._decisions[cache_key] = decision
        return decision

    async def admit(self, identity: _Identity) -> bool:
        """After the signature proved the client holds the key: the login must be a local
        account this node can start sessions as. Until then a client learns nothing about the
        node's accounts (the same answer for a login that exists and one that does not)."""
        try:
            await self._host_user(identity)
            identity.os_user = await self._os_user(identity.login, identity.user)
        except _Refusal as refusal:
            self._refused(identity.login, refusal)
            return False
        self.identity = identity
        return True

    def _refused(self, login: str, refusal: _Refusal) -> None:
        self.log.warning("login refused: %s", refusal.reason)
        self._audited_refusal = True
        self.emit({"event": "auth.rejected", "user": refusal.user, "login": login, "reason": refusal.reason})
        if refusal.client and self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.send_auth_banner(f"teleport: access denied: {refusal.client}\r\n")

    def signature_refused(self, login: str, identity: _Identity, reason: str) -> None:
        """The signature's algorithm (or the certificate's) is not accepted (SHA-1, DSA)."""
        self._refused(login, _Refusal(reason, user=identity.user))

    def reject_after_check(self, login: str, identity: _Identity, signed: bool) -> None:
        """asyncssh refused a certificate we accepted (bad signature, source address...)."""
        self._audited_refusal = True
        reason = (
            "signature verification failed"
            if signed
            else "certificate refused by the SSH layer (source-address or critical option)"
        )
        self.log.warning("login refused: %s", reason)
        self.emit({"event": "auth.rejected", "user": identity.user, "login": login, "reason": reason})

    async def _check(self, login: str, key_data: bytes) -> _Identity:
        try:
            algorithm, _ = _ssh_string(key_data)
        except (ValueError, struct.error):
            raise _Refusal("malformed public key") from None
        if not algorithm.endswith(_CERT_SUFFIX):
            raise _Refusal(
                f"a plain {algorithm.decode(errors='replace')} key is not accepted: "
                "a certificate signed by the cluster's user CA is required",
                plain=True,
            )
        line = algorithm + b" " + base64.b64encode(key_data)
        try:
            cert = parse_user_ssh_cert(line)
            critical = load_ssh_public_identity(line).critical_options  # type: ignore[union-attr]
        except (TeleportError, ValueError) as exc:
            message = exc.message if isinstance(exc, TeleportError) else str(exc)
            raise _Refusal(f"invalid certificate: {message}") from None
        user = cert.username
        self.log.fields["user"] = user
        ca_key = _key_blob(cert.ca_public_key) or b""
        try:
            trusted = {_key_blob(entry) for entry in self.node._trusted_user_ca_keys()}
            node_labels = self.node._node_labels()
        except Exception as exc:
            self.log.exception("cannot read the trusted user CA keys or the node labels")
            raise _Refusal(f"node configuration unavailable: {exc}", user=user) from None
        if ca_key not in trusted:
            raise _Refusal(
                f"certificate signed by an unknown certificate authority ({_fingerprint(ca_key)})",
                user=user,
            )
        now = datetime.now(UTC)
        if now < cert.valid_after:
            raise _Refusal(
                f"certificate is not valid yet (valid from {_fmt_time(cert.valid_after)})",
                user=user,
                client="your certificate is not valid yet",
            )
        if cert.valid_before is not None and now >= cert.valid_before:
            raise _Refusal(
                f"certificate expired at {_fmt_time(cert.valid_before)}",
                user=user,
                client="your certificate has expired; log in again",
            )
        unknown = sorted(k.decode(errors="replace") for k in critical if k not in _KNOWN_CRITICAL_OPTIONS)
        if unknown:
            raise _Refusal(f"certificate has unsupported critical options: {', '.join(unknown)}", user=user)
        if b"source-address" in critical:
            self._check_source_address(critical[b"source-address"].decode(), user)
        if login not in cert.logins:
            raise _Refusal(
                f"login {login!r} is not among the certificate's principals ({', '.join(cert.logins) or 'none'})",
                user=user,
                client=f"your certificate does not allow the login {login!r}",
            )
        if not cert.roles:
            raise _Refusal("certificate carries no roles", user=user)
        roles = await self._roles(cert.roles, user)
        role_set = RoleSet(roles, cert.traits)
        try:
            role_set.check_access_to_node(login, node_labels)
        except AccessDenied as exc:
            raise _Refusal(
                f"denied by role: {exc.message}",
                user=user,
                client=f"your roles do not allow {login!r} on this node",
            ) from None
        return _Identity(user, login, cert, role_set, ca_key)

    async def _host_user(self, identity: _Identity) -> None:
        """Create or update the login as a host user when the roles ask for it."""
        host_users = self.node.host_users
        if host_users is None:
            return
        policy = identity.roles.host_user_policy(self.node._node_labels())
        if policy is None:
            return
        loop = asyncio.get_running_loop()

        # identity is not on the connection yet: name the user here
        def emit(event: dict[str, Any]) -> None:
            self.emit({"user": identity.user, **event})

        try:
            await loop.run_in_executor(None, host_users.ensure, identity.login, policy, emit)
        except HostUserRefused as exc:
            raise _Refusal(exc.message, user=identity.user, client=exc.message) from None
        host_users.acquire(identity.login)
        self.host_user = identity.login

    async def _os_user(self, login: str, user: str) -> OSUser:
        loop = asyncio.get_running_loop()
        os_user = await loop.run_in_executor(None, lookup_os_user, login)
        if os_user is None:
            raise _Refusal(
                f"unknown OS login {login!r}: no such user on this node",
                user=user,
                client=f"the login {login!r} does not exist on this node",
            )
        if not can_switch_to(os_user):
            raise _Refusal(
                f"cannot start sessions as {login!r}: the node is not running as root",
                user=user,
                client=f"this node cannot start sessions as {login!r}",
            )
        return os_user

    def _check_source_address(self, value: str, user: str) -> None:
        try:
            networks = [ip_network(item.strip(), strict=False) for item in value.split(",")]
            peer = ip_address(split_host(self.remote_addr))
        except ValueError:
            raise _Refusal(f"certificate has an invalid source-address {value!r}", user=user) from None
        if not any(peer in network for network in networks):
            raise _Refusal(
                f"source address {peer} is not allowed by the certificate (source-address {value})", user=user
            )

    async def _roles(self, names: list[str], user: str) -> list[Role]:
        try:
            roles = await self.node._role_lookup(list(names))
        except Exception as exc:
            self.log.exception("role lookup failed")
            raise _Refusal(f"cannot load roles {', '.join(names)}: {exc}", user=user) from None
        found = {role.name for role in roles}
        missing = [name for name in names if name not in found]
        if missing:
            raise _Refusal(f"unknown role(s) {', '.join(missing)}", user=user)
        return [role for role in roles if role.name in names]

    def closed(self) -> None:
        """The connection ended: release its host user; audit a failed login nothing else has
        explained."""
        login, self.host_user = self.host_user, None
        host_users = self.node.host_users
        if login is not None and host_users is not None:
            release = asyncio.get_running_loop().run_in_executor(None, host_users.release, login, self.emit)
            self.node._background.add(release)
            release.add_done_callback(self.node._background.discard)
        if not self.auth_started or self.identity is not None or self._audited_refusal:
            return
        if self._plain_keys_refused:
            reason = (
                f"no certificate offered ({self._plain_keys_refused} plain key(s) refused): "
                "only certificates signed by the cluster's user CA are accepted"
            )
        else:
            reason = "no certificate offered: only certificate authentication is accepted"
        self.log.warning("login failed: %s", reason)
        self.emit({"event": "auth.rejected", "reason": reason})

    # ------------------------------------------------------------------ forwarding

    def forwarding_allowed(self, what: str) -> bool:
        """Whether the authenticated identity may use ``port`` or ``agent`` forwarding."""
        identity = self.identity
        if identity is None:
            return False
        if what == "port":
            cert_ok, role_ok = identity.cert.permit_port_forwarding, identity.roles.can_port_forward()
            option = "port_forwarding"
        else:
            cert_ok, role_ok = identity.cert.permit_agent_forwarding, identity.roles.can_forward_agent()
            option = "forward_agent"
        if cert_ok and role_ok:
            return True
        reason = (
            f"{what} forwarding is not permitted by the user's roles ({option})"
            if not role_ok
            else f"{what} forwarding is not permitted by the certificate (permit-{what}-forwarding)"
        )
        self.log.info("%s", reason)
        self.emit({"event": f"{what}.rejected", "reason": reason})
        return False

    def session_context(self) -> SessionContext:
        identity = self.identity
        assert identity is not None and self.conn is not None
        node = self.node
        peer = self.conn.get_extra_info("peername") or ("", 0)
        local = self.conn.get_extra_info("sockname") or ("", 0)
        env = {
            "SSH_CLIENT": f"{peer[0]} {peer[1]} {local[1]}",
            "SSH_CONNECTION": f"{peer[0]} {peer[1]} {local[0]} {local[1]}",
            "SSH_TELEPORT_USER": identity.user,
            "SSH_TELEPORT_HOST_UUID": node.host_uuid,
            "SSH_TELEPORT_CLUSTER_NAME": node.cluster_name,
        }
        return SessionContext(
            user=identity.user,
            login=identity.login,
            os_user=identity.os_user,
            remote_addr=self.remote_addr,
            env=env,
            emit=self.emit,
            log=self.log,
            agent_path=self.conn.get_agent_path,
            node_info={
                "cluster_name": node.cluster_name,
                "host_uuid": node.host_uuid,
                "nodename": node.nodename,
            },
            recorder_factory=node._recorder_factory,
            sftp_server=node.sftp_server,
            enhanced=node.enhanced if node.enhanced is not None and node.enhanced.active else None,
            enhanced_events=identity.roles.enhanced_recording(),
            active=node._active_sessions,
            may_watch_others=_may_watch_others(identity.roles),
        )


class _NodeConnection(GatedServerConnection):
    """asyncssh's server connection with the node's certificate checks in front."""

    node_conn: _Conn
    #: The certificate being checked while asyncssh verifies its signature.
    _checking: _Identity | None = None

    async def validate_public_key(self, username: str, key_data: bytes, msg: bytes, signature: bytes) -> bool:
        ctx = self.node_conn
        identity = await ctx.authorize(username, key_data)
        if identity is None:
            return False
        self._checking = identity
        ok = await super().validate_public_key(username, key_data, msg, signature)
        if not ok:
            if self._checking is not None:
                ctx.reject_after_check(username, identity, bool(msg))
            return False
        if not msg:
            return True  # a query: the client has yet to prove it holds the key
        # The signature proved possession: only now is the login itself looked at.
        return await ctx.admit(identity)

    def signature_refused(self, username: str, reason: str) -> None:
        identity, self._checking = self._checking, None
        if identity is not None:
            self.node_conn.signature_refused(username, identity, reason)

    def check_key_permission(self, permission: str) -> bool:
        if permission == "port-forwarding":
            return self.node_conn.forwarding_allowed("port")
        if permission == "agent-forwarding":
            return self.node_conn.forwarding_allowed("agent")
        return super().check_key_permission(permission)

    async def create_agent_listener(self) -> bool:
        if not await super().create_agent_listener():
            return False
        identity = self.node_conn.identity
        path = self.get_agent_path()
        if identity is not None and path and os.geteuid() == 0:
            # The listener's directory and socket belong to the login, like sshd's.
            for item in (os.path.dirname(path), path):
                os.chown(item, identity.os_user.uid, identity.os_user.gid)
        return True


def _may_watch_others(roles: RoleSet) -> bool:
    """Whether the roles may join other users' sessions: those that may read sessions (their
    recordings), such as the preset auditor, may watch them live too."""
    try:
        roles.check_rule("session", "read")
    except AccessDenied:
        return False
    return True


class _ServerHandler(asyncssh.SSHServer):
    """asyncssh's per-connection callbacks, answered from the connection's :class:`_Conn`."""

    def __init__(self) -> None:
        self.ctx: _Conn | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        assert isinstance(conn, _NodeConnection)
        ctx = self.ctx = conn.node_conn
        ctx.conn = conn
        peer = conn.get_extra_info("peername") or ("?", 0)
        ctx.remote_addr = format_host_port(str(peer[0]), peer[1])
        ctx.node._connections.add(conn)
        ctx.log.info("connection from %s", ctx.remote_addr)

    def connection_lost(self, exc: Exception | None) -> None:
        ctx = self.ctx
        if ctx is None:
            return
        if ctx.conn is not None:
            ctx.node._connections.discard(ctx.conn)
        ctx.closed()
        ctx.log.info("connection closed%s", f": {exc}" if exc else "")

    def begin_auth(self, username: str) -> bool:
        assert self.ctx is not None
        self.ctx.log.fields["login"] = username
        self.ctx.auth_started = True
        return True

    def auth_completed(self) -> None:
        assert self.ctx is not None
        identity = self.ctx.identity
        if identity is not None:
            self.ctx.log.info("authenticated with roles %s", ",".join(r.name for r in identity.roles.roles))

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return False  # plain keys never log in (refused and audited by the connection)

    def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        assert self.ctx is not None
        return key.public_data in self.ctx.approved_ca_keys

    def session_requested(self) -> NodeSession | bool:
        assert self.ctx is not None
        if self.ctx.identity is None:
            return False
        return NodeSession(self.ctx.session_context())

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> bool:
        # asyncssh asked check_key_permission("port-forwarding") first.
        assert self.ctx is not None
        dest = format_host_port(dest_host, dest_port)
        self.ctx.log.info("port forward to %s", dest)
        self.ctx.emit({"event": "port", "dest": dest})
        return True

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        assert self.ctx is not None
        return self._refuse_forward(
            "remote port forwarding (-R) is not supported", listen=format_host_port(listen_host, listen_port)
        )

    def unix_connection_requested(self, dest_path: str) -> bool:
        return self._refuse_forward("Unix socket forwarding is not supported", dest=dest_path)

    def unix_server_requested(self, listen_path: str) -> bool:
        return self._refuse_forward("Unix socket forwarding is not supported", listen=listen_path)

    def _refuse_forward(self, reason: str, **fields: str) -> bool:
        assert self.ctx is not None
        self.ctx.log.info("%s (%s)", reason, fields)
        self.ctx.emit({"event": "port.rejected", "reason": reason, **fields})
        return False


class NodeSSHServer:
    """The node's SSH service.

    ``host_key`` is the node's OpenSSH PEM private key and ``host_cert`` its host certificate
    line. ``trusted_user_ca_keys()`` returns the user CA keys (authorized_keys form) and is
    called on every login attempt. ``node_labels()`` returns the node's current labels.
    ``role_lookup(names)`` returns the named roles (cached by the caller, so logins keep
    working while the auth service is down); a name it does not return refuses the login.
    ``audit(event)`` receives the events listed in the module docstring, in order, from one
    queue (exceptions are logged, not raised). ``recorder_factory(info)`` makes a
    :class:`SessionRecorder` for each PTY session. ``host_users`` creates the host users roles
    ask for; ``enhanced`` records the sessions' commands, files and connections with BPF.
    ``startup_limits`` bound the connections that have not authenticated yet (defaults:
    :class:`~teleport_runtime.sshserver.StartupLimits`).
    """

    def __init__(
        self,
        *,
        host_key: bytes,
        host_cert: str,
        trusted_user_ca_keys: Callable[[], list[str]],
        node_labels: Callable[[], dict[str, str]],
        role_lookup: RoleLookup,
        audit: AuditFunc | None = None,
        recorder_factory: RecorderFactory | None = None,
        cluster_name: str,
        nodename: str,
        host_uuid: str,
        sftp_server: str = DEFAULT_SFTP_SERVER,
        startup_limits: StartupLimits | None = None,
        host_users: HostUsers | None = None,
        enhanced: EnhancedRecorder | None = None,
    ) -> None:
        self.cluster_name = cluster_name
        self.nodename = nodename
        self.host_uuid = host_uuid
        self.sftp_server = sftp_server
        self._trusted_user_ca_keys = trusted_user_ca_keys
        self._node_labels = node_labels
        self._role_lookup = role_lookup
        self._audit = audit
        self._recorder_factory = recorder_factory
        self.host_users = host_users
        self.enhanced = enhanced
        self._background: set[asyncio.Future[None]] = set()
        self.startup_gate = StartupGate("node SSH service", startup_limits)
        self._conn_ids = itertools.count(1)
        self._connections: set[asyncssh.SSHServerConnection] = set()
        #: Interactive sessions in progress, by ID: what a join looks up.
        self._active_sessions: dict[str, NodeSession] = {}
        self._server: asyncio.AbstractServer | None = None
        self._audit_queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(AUDIT_QUEUE_SIZE)
        self._audit_task: asyncio.Task[None] | None = None
        self._options = self._make_options(host_key, host_cert)

    # ------------------------------------------------------------------ identity

    def _make_options(self, host_key: bytes, host_cert: str) -> asyncssh.SSHServerConnectionOptions:
        try:
            key = asyncssh.import_private_key(host_key)
            cert = asyncssh.import_certificate(host_cert)
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise BadParameter(f"invalid node host key or certificate: {exc}") from exc
        if cert.key.public_data != key.public_data:
            raise BadParameter("the host certificate does not belong to the host key")
        try:
            parse_host_ssh_cert(host_cert)
        except TeleportError as exc:
            raise BadParameter(f"invalid node host certificate: {exc.message}") from exc
        return cert_only_options(
            server_factory=_ServerHandler,
            server_host_keys=[(key, cert)],
            server_version="Teleport",
            allow_pty=True,
            line_editor=False,
            agent_forwarding=True,
            max_pktsize=SSH_MAX_PACKET,
        )

    def update_identity(self, host_key: bytes, host_cert: str) -> None:
        """Serve new connections with a new host key and certificate (CA rotation).

        Connections already open keep the identity they started with.
        """
        self._options = self._make_options(host_key, host_cert)
        _LOG.info("node SSH service: host identity updated")

    # ------------------------------------------------------------------ lifecycle

    def _new_connection(self) -> _NodeConnection:
        loop = asyncio.get_running_loop()
        conn = _NodeConnection(loop, self._options, self.startup_gate)
        conn.node_conn = _Conn(self, next(self._conn_ids))
        return conn

    async def start(self, host: str = EVERY_IPV4, port: int = DEFAULT_PORT) -> int:
        """Listen on ``host:port`` (port 0: any free port); returns the bound port."""
        if self._server is not None:
            raise BadParameter("the node SSH service is already running")
        loop = asyncio.get_running_loop()
        await self.start_unlisted()
        self._server = await loop.create_server(self._new_connection, host, port)
        bound = self._server.sockets[0].getsockname()[1]
        _LOG.info("node SSH service listening on %s:%d", host, bound)
        return int(bound)

    async def start_unlisted(self) -> None:
        """Start everything but a listener: a node in reverse tunnel mode binds no port and
        gets its connections through its tunnel (:meth:`new_connection`)."""
        self._audit_task = asyncio.get_running_loop().create_task(self._audit_worker())
        if self.enhanced is not None:
            await self.enhanced.start()  # logs once why not, when it cannot run

    def new_connection(self) -> asyncio.Protocol:
        """The protocol of one connection handed over from elsewhere (a tunnel channel)."""
        return self._new_connection()

    async def stop(self) -> None:
        """Stop listening, close every connection (ending their sessions), flush the audit."""
        server, self._server = self._server, None
        await close_listener(server, self._connections)
        if self._background:  # host users of the closed connections (insecure-drop)
            await asyncio.wait(set(self._background), timeout=60)
        if self.enhanced is not None:
            await self.enhanced.stop()
        task, self._audit_task = self._audit_task, None
        if task is not None:
            with contextlib.suppress(asyncio.QueueFull):
                self._audit_queue.put_nowait(None)  # the worker stops after the queued events
            await asyncio.wait({task}, timeout=5)
            task.cancel()

    # ------------------------------------------------------------------ audit

    def _emit(self, event: dict[str, Any]) -> bool:
        if self._audit is None:
            return True
        event = {
            "time": datetime.now(UTC).isoformat(),
            "cluster_name": self.cluster_name,
            "server_id": self.host_uuid,
            "nodename": self.nodename,
            **event,
        }
        try:
            self._audit_queue.put_nowait(event)
        except asyncio.QueueFull:
            _LOG.warning("audit queue full: dropping %s event", event.get("event"))
            return False
        return True

    async def _audit_worker(self) -> None:
        while True:
            event = await self._audit_queue.get()
            if event is None:
                return
            assert self._audit is not None
            try:
                await self._audit(event)
            except Exception:
                _LOG.exception("audit sink failed for %s event", event.get("event"))
