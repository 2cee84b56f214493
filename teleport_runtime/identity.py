"""An agent's identity on disk: its SSH host key and certificate, its X.509 key and certificate,
and what it trusts (host CA certs, user CA keys). Nodes and proxies keep one per role under
``<data_dir>/identity/<role>/``; the auth service writes the local admin identity tctl uses under
``<data_dir>/admin/``. Files are written atomically and durably with mode 0600
(:func:`~teleport_runtime.durable.write_private`).
"""

from __future__ import annotations

import ssl
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from teleport_runtime.ca import TLSIdentity, parse_tls_identity
from teleport_runtime.durable import write_private
from teleport_runtime.errors import AccessDenied, BadParameter, ConfigError

_FILES = {
    "ssh_key": "ssh_key",
    "ssh_cert": "ssh_cert",
    "tls_key": "tls_key.pem",
    "tls_cert": "tls_cert.pem",
    "ca_certs": "ca_certs.pem",
    "user_ca_keys": "user_ca.pub",
    "host_ca_keys": "host_ca.pub",
}


def load_cert_chain(ctx: ssl.SSLContext, cert: bytes | str, key: bytes | str) -> None:
    """Load a PEM certificate and key held in memory into ``ctx`` (the ssl module reads files:
    they exist for the call only, private, in a temporary directory)."""
    with tempfile.TemporaryDirectory() as tmp:  # created 0700; nothing to keep, so no fsync
        cert_path, key_path = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        for path, data in ((cert_path, cert), (key_path, key)):
            path.write_bytes(data.encode() if isinstance(data, str) else data)
        ctx.load_cert_chain(cert_path, key_path)


#: A torn read of an identity being replaced is retried this often, this many seconds apart.
_TORN_READ_ATTEMPTS = 20
_TORN_READ_PAUSE = 0.05


def _key_matches_cert(key_pem: bytes, cert_pem: bytes) -> bool:
    """Whether the certificate is for this private key (both PEM); False when either is unreadable."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return False
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return key.public_key().public_bytes(der, spki) == cert.public_key().public_bytes(der, spki)


class WrongServer(ssl.SSLCertVerificationError):
    """The server's certificate chains to a trusted CA but does not speak for the service the
    client meant to reach (a node's certificate where the auth service's is expected).

    A certificate verification error, so that TLS stacks treat it as a failed handshake: the
    connection is closed before the client sends anything on it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.verify_message = message

    def __str__(self) -> str:
        return self.message


def check_server_identity(der: bytes | None, role: str, cluster: str | None = None) -> TLSIdentity:
    """The identity in a server's certificate (DER), which must be a host identity holding the
    system role ``role`` (of ``cluster`` when given); AccessDenied saying what it is otherwise.

    A certificate chaining to the host CA is not enough: the host CA signs every node and proxy
    too. The caller checks the chain (the TLS context) and names the peer in its message."""
    if not der:
        raise AccessDenied("it presented no certificate")
    try:
        identity = parse_tls_identity(der)
    except BadParameter as exc:
        raise AccessDenied(f"its certificate is not a Teleport identity ({exc.message})") from None
    if identity.kind != "host" or role not in identity.roles:
        raise AccessDenied(
            f"it presented the certificate of {identity.name!r} (kind {identity.kind}, roles "
            f"{','.join(identity.roles) or 'none'}), not one with the {role} role"
        )
    if cluster and identity.cluster != cluster:
        raise AccessDenied(f"it is a server of cluster {identity.cluster!r}, not of {cluster!r}")
    return identity


def require_server_role(ctx: ssl.SSLContext, role: str, cluster: str | None = None) -> ssl.SSLContext:
    """Make every TLS connection of ``ctx`` check :func:`check_server_identity` as the last step
    of its handshake, and fail the handshake (:class:`WrongServer`) otherwise.

    The check lives in the context (its SSLObject/SSLSocket classes, which asyncio, uvloop and
    the standard library's clients all use), so no code path can connect with the context and
    skip it, and nothing (no request line, no body) is written to a server that fails it."""

    def check(conn: ssl.SSLObject | ssl.SSLSocket) -> None:
        try:
            check_server_identity(conn.getpeercert(binary_form=True), role, cluster)
        except AccessDenied as exc:
            raise WrongServer(exc.message) from None

    class RoleCheckingSSLObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()
            check(self)

    class RoleCheckingSSLSocket(ssl.SSLSocket):
        def do_handshake(self, block: bool = False) -> None:
            super().do_handshake(block)
            check(self)

    ctx.sslobject_class = RoleCheckingSSLObject
    ctx.sslsocket_class = RoleCheckingSSLSocket
    # The checked certificate is the one the connection keeps: no renegotiation to another.
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    return ctx


@dataclass
class Identity:
    """Credentials issued by the auth service, and the cluster's CAs they trust."""

    tls_key: bytes
    tls_cert: bytes
    ca_certs: list[bytes]  # trusted host CA X.509 certs (the auth server's cert chains to one)
    ssh_key: bytes = b""
    ssh_cert: str = ""
    user_ca_keys: list[str] | None = None  # trusted user CA SSH keys (nodes check users)
    host_ca_keys: list[str] | None = None  # trusted host CA SSH keys (clients check hosts)

    def save(self, directory: Path) -> None:
        write_private(directory / _FILES["tls_key"], self.tls_key)
        write_private(directory / _FILES["tls_cert"], self.tls_cert)
        write_private(directory / _FILES["ca_certs"], b"".join(self.ca_certs))
        if self.ssh_key:
            write_private(directory / _FILES["ssh_key"], self.ssh_key)
            write_private(directory / _FILES["ssh_cert"], self.ssh_cert.strip() + "\n")
        if self.user_ca_keys is not None:
            write_private(directory / _FILES["user_ca_keys"], "".join(k + "\n" for k in self.user_ca_keys))
        if self.host_ca_keys is not None:
            write_private(directory / _FILES["host_ca_keys"], "".join(k + "\n" for k in self.host_ca_keys))

    @classmethod
    def load(cls, directory: Path) -> Identity:
        """Read an identity; ConfigError naming the missing file if it is incomplete."""

        def read_optional(name: str) -> bytes | None:
            path = directory / _FILES[name]
            try:
                return path.read_bytes()
            except FileNotFoundError:
                return None
            except PermissionError:
                raise ConfigError(f"cannot read {path}: permission denied (run as root?)") from None

        def read(name: str) -> bytes:
            data = read_optional(name)
            if data is None:
                raise ConfigError(f"identity file {directory / _FILES[name]} is missing")
            return data

        def lines(raw: bytes | None) -> list[str] | None:
            if raw is None:
                return None
            return [line.strip() for line in raw.decode().splitlines() if line.strip()]

        # The files are replaced one by one (the auth service renews its admin identity while
        # tctl may be reading it; an agent swaps in a rotated one): a key read before the swap and
        # a certificate read after it do not match, so read the pair again until they do.
        for _attempt in range(_TORN_READ_ATTEMPTS):
            tls_key, tls_cert = read("tls_key"), read("tls_cert")
            if _key_matches_cert(tls_key, tls_cert):
                break
            time.sleep(_TORN_READ_PAUSE)
        else:
            raise ConfigError(
                f"the TLS key and certificate in {directory} do not belong together: the identity is being "
                "replaced or is damaged; try again, and if it persists re-join this host (or restart the "
                "auth service for its admin identity)"
            )
        return cls(
            tls_key=tls_key,
            tls_cert=tls_cert,
            ca_certs=split_pem(read("ca_certs")),
            ssh_key=read_optional("ssh_key") or b"",
            ssh_cert=(read_optional("ssh_cert") or b"").decode().strip(),
            user_ca_keys=lines(read_optional("user_ca_keys")),
            host_ca_keys=lines(read_optional("host_ca_keys")),
        )

    @staticmethod
    def exists(directory: Path) -> bool:
        return (directory / _FILES["tls_cert"]).exists() and (directory / _FILES["tls_key"]).exists()

    def client_ssl_context(self) -> ssl.SSLContext:
        """A TLS client context presenting this identity and trusting only the cluster's host CAs."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=b"".join(self.ca_certs).decode())
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        load_cert_chain(ctx, self.tls_cert, self.tls_key)
        return ctx

    @property
    def cluster(self) -> str:
        """The cluster this identity belongs to (from its X.509 certificate)."""
        return parse_tls_identity(self.tls_cert).cluster


def split_pem(data: bytes) -> list[bytes]:
    """Split concatenated PEM certificates."""
    marker = b"-----END CERTIFICATE-----"
    parts = []
    for chunk in data.split(marker):
        if b"-----BEGIN CERTIFICATE-----" in chunk:
            parts.append(chunk.strip() + b"\n" + marker + b"\n")
    return parts


def host_uuid(data_dir: Path) -> str:
    """This host's UUID, created once and kept in ``<data_dir>/host_uuid``."""
    path = data_dir / "host_uuid"
    try:
        value = path.read_text().strip()
        if value:
            return value
    except FileNotFoundError:
        pass
    value = str(uuid.uuid4())
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(path, value + "\n")
    return value
