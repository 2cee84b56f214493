"""OpenSSH certificates: host certs for agents and user certs for people, built and parsed.

Built with ``cryptography``'s :class:`SSHCertificateBuilder`; returned as one OpenSSH line
(``ssh-ed25519-cert-v01@openssh.com AAAA...``), the ``-cert.pub`` form.

Host certificate
    key id ``<uuid>.<cluster>``; principals ``<uuid>.<cluster>``, ``<uuid>``,
    ``<nodename>.<cluster>``, ``<nodename>``, the extra principals (addresses), ``localhost``,
    ``127.0.0.1``, ``::1`` (deduplicated, order kept); extensions ``x-teleport-role=<role>``
    and ``x-teleport-authority=<cluster>``; valid from now-1min, forever when ``ttl`` is None.

User certificate
    key id = username; principals = logins; extensions ``permit-pty``, optionally
    ``permit-agent-forwarding`` and ``permit-port-forwarding``, ``teleport-roles`` (JSON
    ``{"roles": [...]}``) and ``teleport-traits`` (JSON, ``{"logins": [...]}`` by default);
    valid from now-1min to now+ttl (12h by default). A user with no logins gets a single
    unusable placeholder principal (``-teleport-nologin-<uuid>``), never an empty principal
    list, which OpenSSH would read as "any user"; the parser hides it again.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import (
    SSHCertificate,
    SSHCertificateBuilder,
    SSHCertificateType,
)

from teleport_runtime.ca._common import openssh_public_line, utcnow
from teleport_runtime.ca.authority import CLOCK_SKEW, CAKeyPair
from teleport_runtime.errors import AccessDenied, BadParameter

#: ``valid_before`` of a certificate that never expires.
FOREVER = 0xFFFFFFFFFFFFFFFF
#: Default lifetime of a user certificate.
DEFAULT_USER_CERT_TTL = timedelta(hours=12)
#: System roles a host certificate may carry (title case, as in certs).
HOST_ROLES = ("Auth", "Proxy", "Node")

EXT_ROLE = "x-teleport-role"
EXT_AUTHORITY = "x-teleport-authority"
EXT_PERMIT_PTY = "permit-pty"
EXT_PERMIT_AGENT = "permit-agent-forwarding"
EXT_PERMIT_PORT = "permit-port-forwarding"
EXT_ROLES = "teleport-roles"
EXT_TRAITS = "teleport-traits"
NOLOGIN_PREFIX = "-teleport-nologin-"
_LOOPBACK_PRINCIPALS = ("localhost", "127.0.0.1", "::1")
#: OpenSSH's limit on principals per certificate.
MAX_PRINCIPALS = 255


@dataclass
class HostCertInfo:
    """What a host certificate says (see :func:`parse_host_ssh_cert`)."""

    key_id: str
    host_uuid: str
    cluster_name: str
    role: str
    principals: list[str]
    valid_after: datetime
    valid_before: datetime | None  # None: valid forever
    ca_public_key: str
    public_key: str
    serial: int


@dataclass
class UserCertInfo:
    """What a user certificate says (see :func:`parse_user_ssh_cert`)."""

    username: str
    logins: list[str]
    roles: list[str]
    traits: dict[str, Any]
    valid_after: datetime
    valid_before: datetime | None  # None: valid forever
    ca_public_key: str
    public_key: str
    serial: int
    permit_pty: bool = False
    permit_agent_forwarding: bool = False
    permit_port_forwarding: bool = False
    extensions: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------- helpers


def _ca_signer(ca: CAKeyPair) -> Any:
    if ca.ssh_private_key is None:
        raise BadParameter("this CA key pair has no SSH private key: it is trusted, not signing")
    try:
        return serialization.load_ssh_private_key(ca.ssh_private_key, password=None)
    except (ValueError, TypeError) as exc:
        raise BadParameter(f"CA SSH private key cannot be loaded: {exc}") from exc


def _subject_key(public_key: str | bytes) -> Any:
    raw = public_key.encode("ascii") if isinstance(public_key, str) else bytes(public_key)
    if b"-cert-v01@openssh.com" in raw.split(b" ", 1)[0]:
        raise BadParameter("expected a public key, got an SSH certificate")
    try:
        return serialization.load_ssh_public_key(raw.strip())
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise BadParameter(
            f"invalid SSH public key: {exc}; "
            "expected the authorized_keys form 'ssh-ed25519 AAAA...'"
        ) from exc


def _epoch(dt: datetime) -> int:
    return max(0, int(dt.timestamp()))


def _from_epoch(value: int) -> datetime | None:
    if value >= FOREVER:
        return None
    return datetime.fromtimestamp(value, UTC)


def _serial() -> int:
    return int.from_bytes(os.urandom(8), "big")


def _dedupe(items: Iterable[str]) -> list[str]:
    out: list[str] = []
    for item in items:
        if item and item not in out:
            out.append(item)
    return out


def _check_principal_count(principals: list[str]) -> None:
    if len(principals) > MAX_PRINCIPALS:
        raise BadParameter(
            f"too many principals ({len(principals)}): an SSH certificate holds at most "
            f"{MAX_PRINCIPALS}"
        )


def _cert_line(cert: SSHCertificate) -> str:
    return cert.public_bytes().decode("ascii").strip()


def _load_cert(cert_line: str | bytes) -> SSHCertificate:
    raw = cert_line.encode("ascii") if isinstance(cert_line, str) else bytes(cert_line)
    try:
        identity = serialization.load_ssh_public_identity(raw.strip())
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise BadParameter(f"invalid SSH certificate: {exc}") from exc
    if not isinstance(identity, SSHCertificate):
        raise BadParameter("expected an SSH certificate, got a plain public key")
    try:
        identity.verify_cert_signature()
    except InvalidSignature:
        raise AccessDenied("SSH certificate signature is invalid") from None
    return identity


def _check_trusted(ca_key: str, trusted_ca_keys: Iterable[str] | None) -> None:
    if trusted_ca_keys is None:
        return
    trusted = {" ".join(k.split()[:2]) for k in trusted_ca_keys}
    if ca_key not in trusted:
        raise AccessDenied("SSH certificate is not signed by a trusted CA")


def _ext(cert: SSHCertificate) -> dict[str, str]:
    return {k.decode("utf-8"): v.decode("utf-8") for k, v in cert.extensions.items()}


def _validity(now: datetime | None, ttl: timedelta | None) -> tuple[int, int]:
    current = utcnow(now)
    valid_after = _epoch(current - CLOCK_SKEW)
    if ttl is None:
        return valid_after, FOREVER
    if ttl <= timedelta(0):
        raise BadParameter(f"certificate TTL must be positive, got {ttl}")
    return valid_after, _epoch(current + ttl)


# ---------------------------------------------------------------------------- host certs


def generate_host_ssh_cert(
    ca: CAKeyPair,
    host_public_key: str,
    *,
    host_uuid: str,
    nodename: str,
    cluster_name: str,
    role: str,
    extra_principals: Iterable[str] = (),
    ttl: timedelta | None = None,
    now: datetime | None = None,
) -> str:
    """Sign ``host_public_key`` with the host CA ``ca``; returns the OpenSSH cert line."""
    if role not in HOST_ROLES:
        raise BadParameter(f"invalid host role {role!r}: expected one of {', '.join(HOST_ROLES)}")
    for what, value in (
        ("host UUID", host_uuid),
        ("nodename", nodename),
        ("cluster name", cluster_name),
    ):
        if not value:
            raise BadParameter(f"host certificate: missing {what}")
    signer = _ca_signer(ca)
    subject = _subject_key(host_public_key)
    principals = _dedupe(
        [
            f"{host_uuid}.{cluster_name}",
            host_uuid,
            f"{nodename}.{cluster_name}",
            nodename,
            *extra_principals,
            *_LOOPBACK_PRINCIPALS,
        ]
    )
    _check_principal_count(principals)
    valid_after, valid_before = _validity(now, ttl)
    cert = (
        SSHCertificateBuilder()
        .public_key(subject)
        .serial(_serial())
        .type(SSHCertificateType.HOST)
        .key_id(f"{host_uuid}.{cluster_name}".encode())
        .valid_principals([p.encode() for p in principals])
        .valid_after(valid_after)
        .valid_before(valid_before)
        .add_extension(EXT_ROLE.encode(), role.encode())
        .add_extension(EXT_AUTHORITY.encode(), cluster_name.encode())
        .sign(signer)
    )
    return _cert_line(cert)


def parse_host_ssh_cert(
    cert_line: str | bytes, trusted_ca_keys: Iterable[str] | None = None
) -> HostCertInfo:
    """Decode a host certificate line (signature checked against its embedded CA key).

    With ``trusted_ca_keys`` (authorized_keys lines) the signing CA must be one of them
    (AccessDenied otherwise). Raises BadParameter for a user certificate or one missing the
    Teleport extensions.
    """
    cert = _load_cert(cert_line)
    if cert.type != SSHCertificateType.HOST:
        raise BadParameter("expected an SSH host certificate, got a user certificate")
    ca_key = openssh_public_line(cert.signature_key())
    _check_trusted(ca_key, trusted_ca_keys)
    ext = _ext(cert)
    if EXT_ROLE not in ext or EXT_AUTHORITY not in ext:
        raise BadParameter(
            f"SSH host certificate lacks the {EXT_ROLE} and {EXT_AUTHORITY} extensions"
        )
    key_id = cert.key_id.decode("utf-8")
    cluster = ext[EXT_AUTHORITY]
    suffix = "." + cluster
    host_uuid = key_id[: -len(suffix)] if key_id.endswith(suffix) else key_id
    return HostCertInfo(
        key_id=key_id,
        host_uuid=host_uuid,
        cluster_name=cluster,
        role=ext[EXT_ROLE],
        principals=[p.decode("utf-8") for p in cert.valid_principals],
        valid_after=datetime.fromtimestamp(cert.valid_after, UTC),
        valid_before=_from_epoch(cert.valid_before),
        ca_public_key=ca_key,
        public_key=openssh_public_line(cert.public_key()),
        serial=cert.serial,
    )


# ---------------------------------------------------------------------------- user certs


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode("utf-8")


def generate_user_ssh_cert(
    ca: CAKeyPair,
    user_public_key: str,
    *,
    username: str,
    logins: Iterable[str],
    roles: list[str],
    traits: dict[str, Any] | None = None,
    ttl: timedelta = DEFAULT_USER_CERT_TTL,
    permit_agent_forwarding: bool = False,
    permit_port_forwarding: bool = False,
    now: datetime | None = None,
    source_addresses: Iterable[str] = (),
) -> str:
    """Sign ``user_public_key`` with the user CA ``ca``; returns the OpenSSH cert line.

    ``source_addresses`` (IPs or CIDRs): the ``source-address`` critical option, so the
    certificate is accepted only from those addresses (the proxy's per-session certificates).

    ``traits`` defaults to ``{"logins": logins}``. TTL policy (role caps, the 30h maximum) is
    the caller's; this only requires a positive TTL.
    """
    if not username:
        raise BadParameter("user certificate: missing username")
    if ttl is None:
        raise BadParameter("user certificate: a TTL is required (user certs never live forever)")
    login_list = _dedupe(logins)
    if any(login.startswith(NOLOGIN_PREFIX) for login in login_list):
        raise BadParameter(f"invalid login: logins must not start with {NOLOGIN_PREFIX!r}")
    principals = login_list or [f"{NOLOGIN_PREFIX}{uuid.uuid4()}"]
    _check_principal_count(principals)
    signer = _ca_signer(ca)
    subject = _subject_key(user_public_key)
    valid_after, valid_before = _validity(now, ttl)
    trait_map = {"logins": list(login_list)} if traits is None else traits
    builder = (
        SSHCertificateBuilder()
        .public_key(subject)
        .serial(_serial())
        .type(SSHCertificateType.USER)
        .key_id(username.encode("utf-8"))
        .valid_principals([p.encode("utf-8") for p in principals])
        .valid_after(valid_after)
        .valid_before(valid_before)
        .add_extension(EXT_PERMIT_PTY.encode(), b"")
        .add_extension(EXT_ROLES.encode(), _json({"roles": list(roles)}))
        .add_extension(EXT_TRAITS.encode(), _json(trait_map))
    )
    if permit_agent_forwarding:
        builder = builder.add_extension(EXT_PERMIT_AGENT.encode(), b"")
    if permit_port_forwarding:
        builder = builder.add_extension(EXT_PERMIT_PORT.encode(), b"")
    sources = _dedupe(source_addresses)
    if sources:
        builder = builder.add_critical_option(b"source-address", ",".join(sources).encode())
    return _cert_line(builder.sign(signer))


def parse_user_ssh_cert(
    cert_line: str | bytes, trusted_ca_keys: Iterable[str] | None = None
) -> UserCertInfo:
    """Decode a user certificate line (signature checked against its embedded CA key).

    With ``trusted_ca_keys`` (authorized_keys lines) the signing CA must be one of them
    (AccessDenied otherwise). Raises BadParameter for a host certificate or malformed
    ``teleport-roles``/``teleport-traits`` extensions. Validity is reported, not enforced.
    """
    cert = _load_cert(cert_line)
    if cert.type != SSHCertificateType.USER:
        raise BadParameter("expected an SSH user certificate, got a host certificate")
    ca_key = openssh_public_line(cert.signature_key())
    _check_trusted(ca_key, trusted_ca_keys)
    ext = _ext(cert)
    try:
        roles_doc = json.loads(ext.get(EXT_ROLES, '{"roles": []}'))
        traits = json.loads(ext.get(EXT_TRAITS, "{}"))
    except json.JSONDecodeError as exc:
        raise BadParameter(f"SSH user certificate has a malformed JSON extension: {exc}") from exc
    roles = roles_doc.get("roles") if isinstance(roles_doc, dict) else None
    if not isinstance(roles, list) or not isinstance(traits, dict):
        raise BadParameter(
            f'SSH user certificate: {EXT_ROLES} must be {{"roles": [...]}} and '
            f"{EXT_TRAITS} an object"
        )
    logins = [
        p.decode("utf-8")
        for p in cert.valid_principals
        if not p.startswith(NOLOGIN_PREFIX.encode())
    ]
    return UserCertInfo(
        username=cert.key_id.decode("utf-8"),
        logins=logins,
        roles=[str(r) for r in roles],
        traits=traits,
        valid_after=datetime.fromtimestamp(cert.valid_after, UTC),
        valid_before=_from_epoch(cert.valid_before),
        ca_public_key=ca_key,
        public_key=openssh_public_line(cert.public_key()),
        serial=cert.serial,
        permit_pty=EXT_PERMIT_PTY in ext,
        permit_agent_forwarding=EXT_PERMIT_AGENT in ext,
        permit_port_forwarding=EXT_PERMIT_PORT in ext,
        extensions=ext,
    )
