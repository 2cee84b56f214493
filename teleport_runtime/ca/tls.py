"""X.509 identities: the TLS client/server certificates agents, admins and users present.

The host CA signs identities of kind ``host`` and ``admin``; the user CA signs kind ``user``
(:func:`ca_type_for_kind`). The auth API must check that the issuing CA matches the kind
(:func:`issuing_ca_matches`) and fail closed.

Encoding of :class:`TLSIdentity` in the leaf certificate (all in the subject, one RDN per
attribute, UTF8String values):

==========================  =======================  =========================================
field                       attribute                notes
==========================  =======================  =========================================
``name``                    CN (2.5.4.3)             when it exceeds 64 bytes (CN's upper
                                                     bound), CN holds its first 64 bytes and
                                                     the full name is in ``1.3.9999.7000.4``
``roles``                   O (2.5.4.10)             one attribute per role, in order
``kind``                    OU (2.5.4.11)            ``host``, ``user`` or ``admin``
``cluster``                 ``1.3.9999.1.7``         the reference's TeleportCluster OID
``host_uuid``               ``1.3.9999.7000.1``      absent when None
``nodename``                ``1.3.9999.7000.2``      absent when None
``logins``                  ``1.3.9999.7000.3``      one attribute per login, in order
``expires``                 notAfter                 set from ``ttl``, not from the identity
==========================  =======================  =========================================

Extensions: basicConstraints CA:FALSE (critical), keyUsage digitalSignature (+ keyEncipherment
for RSA keys) (critical), extKeyUsage serverAuth + clientAuth, subjectAltName from the given DNS
names and IP addresses (omitted when there are none), SubjectKeyIdentifier, and
AuthorityKeyIdentifier taken from the CA certificate's SubjectKeyIdentifier.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from teleport_runtime.ca._common import cert_pem, load_certs, load_one_cert, utcnow
from teleport_runtime.ca.authority import CLOCK_SKEW, CAKeyPair, CAType
from teleport_runtime.errors import BadParameter

OID_CLUSTER = ObjectIdentifier("1.3.9999.1.7")
OID_HOST_UUID = ObjectIdentifier("1.3.9999.7000.1")
OID_NODENAME = ObjectIdentifier("1.3.9999.7000.2")
OID_LOGIN = ObjectIdentifier("1.3.9999.7000.3")
OID_FULL_NAME = ObjectIdentifier("1.3.9999.7000.4")

IDENTITY_KINDS = ("host", "user", "admin")
_CN_MAX_BYTES = 64


@dataclass
class TLSIdentity:
    """Who a TLS certificate speaks for. ``expires`` is filled in by :func:`parse_tls_identity`."""

    name: str
    kind: str
    roles: list[str]
    cluster: str
    expires: datetime | None = None
    host_uuid: str | None = None
    nodename: str | None = None
    logins: list[str] = field(default_factory=list)


def ca_type_for_kind(kind: str) -> CAType:
    """The CA that must have issued an identity of ``kind`` (host/admin: host CA; user: user)."""
    if kind not in IDENTITY_KINDS:
        raise BadParameter(
            f"invalid identity kind {kind!r}: expected one of {', '.join(IDENTITY_KINDS)}"
        )
    return CAType.USER if kind == "user" else CAType.HOST


def _truncate_utf8(value: str, limit: int) -> str:
    raw = value.encode("utf-8")[:limit]
    return raw.decode("utf-8", errors="ignore")


def _subject(identity: TLSIdentity) -> x509.Name:
    attrs: list[x509.NameAttribute[str]] = []
    if len(identity.name.encode("utf-8")) > _CN_MAX_BYTES:
        attrs.append(
            x509.NameAttribute(NameOID.COMMON_NAME, _truncate_utf8(identity.name, _CN_MAX_BYTES))
        )
        attrs.append(x509.NameAttribute(OID_FULL_NAME, identity.name))
    else:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, identity.name))
    attrs.extend(x509.NameAttribute(NameOID.ORGANIZATION_NAME, r) for r in identity.roles)
    attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, identity.kind))
    attrs.append(x509.NameAttribute(OID_CLUSTER, identity.cluster))
    if identity.host_uuid:
        attrs.append(x509.NameAttribute(OID_HOST_UUID, identity.host_uuid))
    if identity.nodename:
        attrs.append(x509.NameAttribute(OID_NODENAME, identity.nodename))
    attrs.extend(x509.NameAttribute(OID_LOGIN, login) for login in identity.logins)
    return x509.Name(attrs)


def _validate_identity(identity: TLSIdentity) -> None:
    if not identity.name:
        raise BadParameter("TLS identity: missing name")
    ca_type_for_kind(identity.kind)
    if not identity.cluster:
        raise BadParameter("TLS identity: missing cluster")
    for what, values in (("role", identity.roles), ("login", identity.logins)):
        if any(not isinstance(v, str) or not v for v in values):
            raise BadParameter(f"TLS identity: every {what} must be a non-empty string")


def _load_ca(ca: CAKeyPair) -> tuple[x509.Certificate, object]:
    if ca.tls_key is None:
        raise BadParameter("this CA key pair has no X.509 private key: it is trusted, not signing")
    ca_cert = load_one_cert(ca.tls_cert)
    try:
        ca_key = serialization.load_pem_private_key(ca.tls_key, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise BadParameter(f"CA X.509 private key cannot be loaded: {exc}") from exc
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if ca_key.public_key().public_bytes(serialization.Encoding.DER, spki) != (
        ca_cert.public_key().public_bytes(serialization.Encoding.DER, spki)
    ):
        raise BadParameter("CA X.509 private key does not match the CA certificate")
    return ca_cert, ca_key


def _aki(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def generate_tls_identity_cert(
    ca: CAKeyPair,
    public_key_pem: bytes,
    identity: TLSIdentity,
    *,
    ttl: timedelta,
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str | ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
    now: datetime | None = None,
) -> bytes:
    """Sign a PEM leaf certificate for ``identity`` over ``public_key_pem`` with ``ca``.

    Valid from now-1min to now+``ttl``. ``identity.expires`` is ignored (``ttl`` decides).
    Which CA to pass for which kind is the caller's choice; see :func:`ca_type_for_kind`.
    """
    _validate_identity(identity)
    if ttl is None or ttl <= timedelta(0):
        raise BadParameter(f"TLS certificate TTL must be positive, got {ttl}")
    try:
        public_key = serialization.load_pem_public_key(public_key_pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise BadParameter(f"invalid PEM public key: {exc}") from exc
    if not isinstance(
        public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
    ):
        raise BadParameter("unsupported public key type: expected ECDSA, RSA or Ed25519")
    ca_cert, ca_key = _load_ca(ca)
    current = utcnow(now)

    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dict.fromkeys(dns_names) if d]
    for ip in dict.fromkeys(ip_addresses):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError as exc:
            raise BadParameter(f"invalid IP address {ip!r} for the certificate: {exc}") from exc

    builder = (
        x509.CertificateBuilder()
        .subject_name(_subject(identity))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(current - CLOCK_SKEW)
        .not_valid_after(current + ttl)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_aki(ca_cert), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    algorithm = None if isinstance(ca_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return cert_pem(builder.sign(ca_key, algorithm))  # type: ignore[arg-type]


def _values(name: x509.Name, oid: ObjectIdentifier) -> list[str]:
    return [str(a.value) for a in name.get_attributes_for_oid(oid)]


def _single(name: x509.Name, oid: ObjectIdentifier, what: str, required: bool) -> str | None:
    values = _values(name, oid)
    if len(values) > 1:
        raise BadParameter(f"TLS identity: more than one {what} in the certificate subject")
    if not values:
        if required:
            raise BadParameter(f"TLS identity: the certificate subject has no {what}")
        return None
    return values[0]


def parse_tls_identity(cert_pem_or_der: bytes | x509.Certificate) -> TLSIdentity:
    """The :class:`TLSIdentity` a leaf certificate (PEM or DER) carries; inverse of generation.

    Raises BadParameter when the name, kind or cluster is missing or ambiguous. This does not
    check who signed the certificate: see :func:`issuing_ca_matches`.
    """
    cert = load_one_cert(cert_pem_or_der)
    subject = cert.subject
    name = _single(subject, OID_FULL_NAME, "full name", required=False) or _single(
        subject, NameOID.COMMON_NAME, "common name (CN)", required=True
    )
    kind = _single(subject, NameOID.ORGANIZATIONAL_UNIT_NAME, "kind (OU)", required=True)
    if kind not in IDENTITY_KINDS:
        raise BadParameter(
            f"TLS identity: unknown kind {kind!r}: expected one of {', '.join(IDENTITY_KINDS)}"
        )
    cluster = _single(subject, OID_CLUSTER, f"cluster ({OID_CLUSTER.dotted_string})", True)
    assert name is not None and kind is not None and cluster is not None
    return TLSIdentity(
        name=name,
        kind=kind,
        roles=_values(subject, NameOID.ORGANIZATION_NAME),
        cluster=cluster,
        expires=cert.not_valid_after_utc,
        host_uuid=_single(subject, OID_HOST_UUID, "host UUID", required=False),
        nodename=_single(subject, OID_NODENAME, "nodename", required=False),
        logins=_values(subject, OID_LOGIN),
    )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def is_ca_cert(data: bytes | str) -> bool:
    """True when ``data`` is exactly one X.509 certificate (PEM or DER) with CA:TRUE."""
    try:
        certs = load_certs(data)
    except BadParameter:
        return False
    return len(certs) == 1 and _is_ca(certs[0])


def issuing_ca_matches(
    cert: bytes | x509.Certificate, ca_certs: Iterable[bytes | x509.Certificate]
) -> bool:
    """True when ``cert`` was signed by one of ``ca_certs`` (issuer name and signature).

    Only certificates with basicConstraints CA:TRUE count as issuers. Each element of
    ``ca_certs`` may be a PEM bundle. Validity periods are not checked here.
    """
    leaf = load_one_cert(cert)
    for item in ca_certs:
        for ca_cert in load_certs(item):
            if not _is_ca(ca_cert):
                continue
            try:
                leaf.verify_directly_issued_by(ca_cert)
            except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
                continue
            return True
    return False
