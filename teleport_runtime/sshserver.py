"""What the node's and the proxy's SSH listeners share: certificate-only connection options with
one explicit list of algorithms, the cap on connections that have not authenticated yet (with
the login grace time), and the shutdown of a listener with its connections.

Algorithms (:data:`KEX_ALGS`, :data:`ENCRYPTION_ALGS`, :data:`MAC_ALGS`, :data:`SIGNATURE_ALGS`):
no SHA-1 anywhere (no ``diffie-hellman-group14-sha1``, no ``hmac-sha1``, no ``ssh-rsa``
signatures, by a client or in a certificate), no CBC ciphers, no group exchange (a client may ask
for small moduli there). OpenSSH 9.2 and later negotiate ``curve25519-sha256`` or a
post-quantum hybrid, ``chacha20-poly1305@openssh.com`` and an AEAD or ETM MAC.

Unauthenticated connections (like OpenSSH's ``MaxStartups``, ``PerSourceMaxStartups`` and
``LoginGraceTime``): a connection counts from TCP accept until its user authentication succeeded.
A source address with :data:`MAX_STARTUPS_PER_SOURCE` of them, or a listener with
:data:`MAX_STARTUPS` of them, gets further connections closed at once, before any SSH work; one
that has not authenticated after :data:`LOGIN_GRACE_TIME` seconds is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Hashable, Iterable, MutableMapping
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any, cast

import asyncssh

from teleport_runtime.config import SSH_WINDOW
from teleport_runtime.errors import BadParameter
from teleport_runtime.sshinternals import ServerConnection, supported_kex_algs

_LOG = logging.getLogger("teleport.sshserver")

#: Seconds a closing connection or listener is waited for.
CLOSE_WAIT = 5

#: Key exchange, best first. The post-quantum hybrids are offered when this asyncssh has them.
_PREFERRED_KEX = (
    b"mlkem768x25519-sha256",
    b"sntrup761x25519-sha512",
    b"sntrup761x25519-sha512@openssh.com",
    b"curve25519-sha256",
    b"curve25519-sha256@libssh.org",
    b"ecdh-sha2-nistp256",
    b"ecdh-sha2-nistp384",
    b"ecdh-sha2-nistp521",
    b"diffie-hellman-group16-sha512",
    b"diffie-hellman-group18-sha512",
)
KEX_ALGS: tuple[str, ...] = tuple(alg.decode() for alg in _PREFERRED_KEX if alg in supported_kex_algs())
ENCRYPTION_ALGS: tuple[str, ...] = (
    "chacha20-poly1305@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)
MAC_ALGS: tuple[str, ...] = (
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "umac-128-etm@openssh.com",
    "hmac-sha2-256",
    "hmac-sha2-512",
)
#: Signatures accepted from clients (user authentication), in certificates, and made with host
#: keys: SHA-2 RSA, ECDSA and Ed25519 (and their security-key forms); never ``ssh-rsa`` (SHA-1)
#: or ``ssh-dss``.
SIGNATURE_ALGS: tuple[str, ...] = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "rsa-sha2-512",
    "rsa-sha2-256",
)
_SIGNATURES = frozenset(alg.encode() for alg in SIGNATURE_ALGS)
#: Host key algorithms whose signatures are SHA-1 (a certificate or plain RSA host key would
#: otherwise also be offered as these).
_SHA1_HOST_KEY_ALGS = frozenset({b"ssh-rsa", b"ssh-rsa-cert-v01@openssh.com", b"ssh-dss",
                                 b"ssh-dss-cert-v01@openssh.com"})

#: Unauthenticated connections one source address may hold (OpenSSH: PerSourceMaxStartups).
#: Not OpenSSH's 10: a node sees every session relayed by a proxy as coming from that proxy, and
#: a proxy sees all of an Ansible controller's forks from one address, so a legitimate source
#: opens dozens at once; the cap is there so that one address cannot take the whole listener.
MAX_STARTUPS_PER_SOURCE = 100
#: Unauthenticated connections one listener may hold (OpenSSH: MaxStartups): a bound on the
#: memory a flood of half-open handshakes can take.
MAX_STARTUPS = 500
#: Seconds a connection has to authenticate (OpenSSH: LoginGraceTime).
LOGIN_GRACE_TIME = 30.0
#: Seconds between two log lines about dropped connections (a flood is summarised, not echoed).
_DROP_LOG_INTERVAL = 1.0


def cert_only_options(**settings: Any) -> asyncssh.SSHServerConnectionOptions:
    """Connection options of a listener where a user certificate is the only way in: public-key
    authentication (the server's handler accepts certificates only), every other method off, no
    X11, bytes not text, the project's SSH window and algorithms, and no login timer of asyncssh's
    own (:class:`StartupGate` has the grace time); ``settings`` add the rest."""
    options = asyncssh.SSHServerConnectionOptions(
        public_key_auth=True,
        password_auth=False,
        kbdint_auth=False,
        host_based_auth=False,
        gss_auth=False,
        gss_kex=False,
        x11_forwarding=False,
        encoding=None,
        window=SSH_WINDOW,
        kex_algs=list(KEX_ALGS),
        encryption_algs=list(ENCRYPTION_ALGS),
        mac_algs=list(MAC_ALGS),
        signature_algs=list(SIGNATURE_ALGS),
        login_timeout=None,
        **settings,
    )
    for alg in [alg for alg in options.server_host_keys if alg in _SHA1_HOST_KEY_ALGS]:
        del options.server_host_keys[alg]
    if not options.server_host_keys:
        raise BadParameter("the SSH host key allows only SHA-1 signatures: use an Ed25519, ECDSA or RSA-SHA2 key")
    return options


# ---------------------------------------------------------------------- signatures


def _ssh_strings(data: bytes, count: int, offset: int = 0) -> tuple[list[bytes], int]:
    values = []
    for _ in range(count):
        (length,) = struct.unpack_from(">I", data, offset)
        end = offset + 4 + length
        if end > len(data):
            raise ValueError("truncated SSH string")
        values.append(data[offset + 4 : end])
        offset = end
    return values, offset


#: Public key fields (each an SSH string or mpint) of a certificate, by its key type.
_CERT_KEY_FIELDS = {
    b"ssh-ed25519": 1,
    b"ssh-rsa": 2,
    b"ecdsa-sha2-nistp256": 2,
    b"ecdsa-sha2-nistp384": 2,
    b"ecdsa-sha2-nistp521": 2,
    b"ssh-dss": 4,
    b"sk-ssh-ed25519@openssh.com": 2,
    b"sk-ecdsa-sha2-nistp256@openssh.com": 3,
}


def certificate_signature_alg(key_data: bytes) -> bytes | None:
    """The algorithm of the CA's signature in an OpenSSH certificate (wire form); None when
    ``key_data`` is not a certificate this can read."""
    try:
        (algorithm,), offset = _ssh_strings(key_data, 1)
        if not algorithm.endswith(b"-cert-v01@openssh.com"):
            return None
        key_type = algorithm[: -len(b"-cert-v01@openssh.com")]
        key_type = b"ssh-rsa" if key_type.startswith(b"rsa-sha2-") else key_type
        fields = _CERT_KEY_FIELDS.get(key_type)
        if fields is None:
            return None
        _, offset = _ssh_strings(key_data, 1 + fields, offset)  # nonce, public key
        offset += 8 + 4  # serial, type
        _, offset = _ssh_strings(key_data, 2, offset)  # key id, principals
        offset += 16  # valid after, valid before
        (_, _, _, _, signature), offset = _ssh_strings(key_data, 5, offset)
        (sig_alg,), _ = _ssh_strings(signature, 1)
        return sig_alg
    except (ValueError, struct.error):
        return None


def signature_refusal(key_data: bytes, signature: bytes) -> str | None:
    """Why a user authentication signature (and the certificate's own) is not acceptable, or None.
    Only the algorithms are checked here; asyncssh verifies the signatures."""
    if signature:
        try:
            (sig_alg,), _ = _ssh_strings(signature, 1)
        except (ValueError, struct.error):
            return "malformed signature"
        if sig_alg not in _SIGNATURES:
            return (
                f"signature algorithm {sig_alg.decode(errors='replace')} is not accepted (SHA-1 or "
                f"obsolete); use one of {', '.join(SIGNATURE_ALGS)}"
            )
    cert_sig = certificate_signature_alg(key_data)
    if cert_sig is not None and cert_sig not in _SIGNATURES:
        return f"the certificate is signed with {cert_sig.decode(errors='replace')} (SHA-1 or obsolete)"
    return None


# ---------------------------------------------------------------------- unauthenticated connections


@dataclass(frozen=True)
class StartupLimits:
    """Bounds on connections that have not authenticated yet (see the module docstring)."""

    per_source: int = MAX_STARTUPS_PER_SOURCE
    total: int = MAX_STARTUPS
    grace_time: float = LOGIN_GRACE_TIME


def source_address(peer: Any) -> str:
    """The source address of a peer name, IPv4-mapped IPv6 addresses as IPv4."""
    host = str(peer[0]) if peer else "?"
    with contextlib.suppress(ValueError):
        address = ip_address(host.split("%", 1)[0])
        mapped = getattr(address, "ipv4_mapped", None)
        return str(mapped or address)
    return host


class StartupGate:
    """One listener's connections that have not authenticated yet, by source address."""

    def __init__(self, name: str, limits: StartupLimits | None = None) -> None:
        self.name = name
        self.limits = limits or StartupLimits()
        self._pending: dict[Hashable, str] = {}
        self._per_source: dict[str, int] = {}
        self._dropped = 0
        self._last_drop_log = 0.0

    def pending(self, source: str | None = None) -> int:
        """Unauthenticated connections held (from ``source``, or in all)."""
        return len(self._pending) if source is None else self._per_source.get(source, 0)

    def admit(self, conn: Hashable, source: str) -> bool:
        """Count ``conn`` as unauthenticated, or refuse it (False) when a limit is reached."""
        if self._per_source.get(source, 0) >= self.limits.per_source:
            self._drop(source, f"{self.limits.per_source} connections from this address (the per-source limit)")
            return False
        if len(self._pending) >= self.limits.total:
            self._drop(source, f"{self.limits.total} connections (the limit of the listener)")
            return False
        self._pending[conn] = source
        self._per_source[source] = self._per_source.get(source, 0) + 1
        return True

    def release(self, conn: Hashable) -> None:
        """``conn`` authenticated or closed: it no longer counts."""
        source = self._pending.pop(conn, None)
        if source is None:
            return
        left = self._per_source[source] - 1
        if left:
            self._per_source[source] = left
        else:
            del self._per_source[source]

    def _drop(self, source: str, reason: str) -> None:
        self._dropped += 1
        now = time.monotonic()
        if now - self._last_drop_log >= _DROP_LOG_INTERVAL:
            _LOG.warning(
                "%s: closed a connection from %s at once: %s have not authenticated yet "
                "(%d connection(s) dropped since the last such message)",
                self.name, source, reason, self._dropped,
            )
            self._dropped = 0
            self._last_drop_log = now


class ConnectionLog(logging.LoggerAdapter[logging.Logger]):
    """A connection's logger: messages start with ``[conn=N user=U login=L]`` (and
    ``target=T`` once the connection goes somewhere), the same on the node and the proxy, so one
    connection's lines can be found among many. The fields are set as they become known
    (``log.extra["user"] = ...``)."""

    def __init__(self, logger: logging.Logger, conn_id: int) -> None:
        self.fields: dict[str, Any] = {"conn": conn_id, "user": "", "login": ""}
        super().__init__(logger, self.fields)

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        f = self.fields
        prefix = f"conn={f['conn']} user={f.get('user') or '-'} login={f.get('login') or '-'}"
        if f.get("target"):
            prefix += f" target={f['target']}"
        return f"[{prefix}] {msg}", kwargs


class GatedServerConnection(ServerConnection):
    """asyncssh's server connection behind a :class:`StartupGate`, refusing SHA-1 signatures.

    A connection the gate refuses is aborted in ``connection_made``, before asyncssh sets it up
    (no version line, no key exchange, no server handler). The gate's count ends when user
    authentication succeeds or the connection closes; the grace timer closes it before that.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, options: asyncssh.SSHServerConnectionOptions,
                 gate: StartupGate) -> None:
        super().__init__(loop, options)
        self._gate = gate
        self._grace_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._gate.admit(self, source_address(transport.get_extra_info("peername"))):
            cast(asyncio.Transport, transport).abort()  # a stream transport: TCP
            return
        self._grace_timer = asyncio.get_running_loop().call_later(
            self._gate.limits.grace_time, self._grace_expired
        )
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None = None) -> None:
        self._authenticated_or_gone()
        super().connection_lost(exc)

    async def send_userauth_success(self) -> None:
        self._authenticated_or_gone()
        await super().send_userauth_success()

    def _authenticated_or_gone(self) -> None:
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None
        self._gate.release(self)

    def _grace_expired(self) -> None:
        self._grace_timer = None
        _LOG.info(
            "%s: closed a connection from %s: not authenticated within %gs",
            self._gate.name, source_address(self.get_extra_info("peername")), self._gate.limits.grace_time,
        )
        self.connection_lost(asyncssh.ConnectionLost("Login grace time expired"))

    async def validate_public_key(self, username: str, key_data: bytes, msg: bytes, signature: bytes) -> bool:
        refusal = signature_refusal(key_data, signature)
        if refusal is not None:
            self.signature_refused(username, refusal)
            return False
        return await super().validate_public_key(username, key_data, msg, signature)

    def signature_refused(self, username: str, reason: str) -> None:
        """A signature algorithm was refused (the node audits it; here it is logged)."""
        _LOG.warning("%s: login %s refused: %s", self._gate.name, username, reason)


async def close_listener(
    server: asyncio.AbstractServer | None, connections: Iterable[asyncssh.SSHServerConnection]
) -> None:
    """Stop accepting, close every connection (ending its sessions) and wait for them, bounded."""
    if server is not None:
        server.close()
    connections = list(connections)
    for conn in connections:
        conn.close()
    for conn in connections:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.wait_closed(), CLOSE_WAIT)
    if server is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), CLOSE_WAIT)


class TrustedUserCAs:
    """An authorized_keys stand-in for :meth:`SSHServerConnection.set_authorized_keys`: trusts
    user certificates signed by one of the given CA keys, for any principal (the ``principals``
    option makes asyncssh check the certificate's validity period but not the username: the
    login is checked against the certificate by whoever installs it)."""

    def __init__(self, ca_keys: list[str]) -> None:
        self._blobs: set[bytes] = set()
        for line in ca_keys:
            try:
                self._blobs.add(asyncssh.import_public_key(line).public_data)
            except (asyncssh.KeyImportError, ValueError):
                _LOG.warning("ignoring an unparsable user CA key: %.40s...", line)

    def validate(
        self,
        key: asyncssh.SSHKey,
        client_host: str,
        client_addr: str,
        cert_principals: Any = None,
        ca: bool = False,
    ) -> dict[str, Any] | None:
        if ca and key.public_data in self._blobs:
            return {"principals": ["*"]}
        return None

    def validate_x509(self, *_args: Any) -> tuple[None, None]:
        return None, None
