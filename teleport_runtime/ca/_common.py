"""Small helpers shared by the ``ca`` modules: clock, PEM/DER loading, key loading.

Nothing here does I/O; everything works on bytes already in memory.
"""

from __future__ import annotations

from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from teleport_runtime.errors import BadParameter

PEM_CERT_MARKER = b"-----BEGIN CERTIFICATE-----"


def utcnow(now: datetime | None = None) -> datetime:
    """``now`` as an aware UTC datetime (the current time when None; naive means UTC)."""
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        return now.replace(tzinfo=UTC)
    return now.astimezone(UTC)


def load_certs(data: bytes | str | x509.Certificate) -> list[x509.Certificate]:
    """Every X.509 certificate in ``data``: one DER cert, or one or more PEM certs."""
    if isinstance(data, x509.Certificate):
        return [data]
    raw = data.encode("ascii") if isinstance(data, str) else bytes(data)
    try:
        if PEM_CERT_MARKER in raw:
            return x509.load_pem_x509_certificates(raw)
        return [x509.load_der_x509_certificate(raw)]
    except ValueError as exc:
        raise BadParameter(f"not a valid X.509 certificate (PEM or DER): {exc}") from exc


def load_one_cert(data: bytes | str | x509.Certificate) -> x509.Certificate:
    """Exactly one X.509 certificate from ``data`` (PEM or DER); a bundle is refused."""
    certs = load_certs(data)
    if len(certs) != 1:
        raise BadParameter(f"expected exactly one X.509 certificate, got {len(certs)}")
    return certs[0]


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def openssh_public_line(key: PublicKeyTypes) -> str:
    """The authorized_keys form (``ssh-ed25519 AAAA...``, no comment) of a public key."""
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return line.decode("ascii").strip()
