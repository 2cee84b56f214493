"""The CA pin: how a joining agent trusts the auth server before it has any certificate.

A pin is ``"sha256:" + lowercase hex(sha256(DER SubjectPublicKeyInfo))`` of a host CA's X.509
certificate, exactly as the reference computes it (``tctl status`` prints it). On join the agent
fetches every trusted host-CA cert and :func:`check_ca_pins` requires each one to match one of
the pins it was given (several during a rotation) and to be unexpired.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from teleport_runtime.ca._common import load_certs, load_one_cert, utcnow
from teleport_runtime.errors import AccessDenied, BadParameter

PIN_PREFIX = "sha256:"
_PIN_RE = re.compile(r"sha256:[0-9a-f]{64}")
PIN_FIX_HINT = "check --ca-pin against `tctl status` on the auth server"


def _pin_of(cert: x509.Certificate) -> str:
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return PIN_PREFIX + hashlib.sha256(spki).hexdigest()


def ca_pin(cert_pem: bytes | str) -> str:
    """The pin of one X.509 CA certificate (PEM, or DER)."""
    return _pin_of(load_one_cert(cert_pem))


def normalize_pin(pin: str) -> str:
    """``pin`` stripped and lower-cased; raises BadParameter unless it is ``sha256:<64 hex>``."""
    if not isinstance(pin, str):
        raise BadParameter(f"invalid CA pin {pin!r}: expected sha256:<64 hex>")
    value = pin.strip().lower()
    if not _PIN_RE.fullmatch(value):
        raise BadParameter(f"invalid CA pin {pin!r}: expected sha256:<64 hex>")
    return value


def check_ca_pins(cert_pems: list[bytes], pins: list[str], now: datetime | None = None) -> None:
    """Require every CA cert to match one of ``pins`` (constant-time) and to be unexpired.

    Each element of ``cert_pems`` may be PEM (a bundle is split, every cert in it is checked)
    or DER. Raises BadParameter for a malformed pin or when no pin is given, and AccessDenied
    when no certificate was received, a certificate matches no pin, or one has expired.
    """
    if isinstance(pins, str):
        pins = [pins]
    expected = [normalize_pin(p) for p in pins]
    if not expected:
        raise BadParameter("no CA pin given: expected at least one sha256:<64 hex>")
    certs: list[x509.Certificate] = []
    for item in cert_pems:
        certs.extend(load_certs(item))
    if not certs:
        raise AccessDenied(
            f"the auth server sent no CA certificates to check against the CA pin; {PIN_FIX_HINT}"
        )
    current = utcnow(now)
    mismatched: list[str] = []
    expired: list[str] = []
    for cert in certs:
        got = _pin_of(cert)
        matched = False
        for want in expected:
            # No short-circuit: every comparison runs in constant time.
            matched = hmac.compare_digest(got.encode(), want.encode()) or matched
        if not matched:
            mismatched.append(got)
        elif cert.not_valid_after_utc < current:
            expired.append(f"{got} (expired {cert.not_valid_after_utc.isoformat()})")
    if mismatched:
        raise AccessDenied(
            f"CA pin mismatch: the auth server's CA has pin(s) {', '.join(mismatched)} "
            f"but expected {', '.join(expected)}; {PIN_FIX_HINT}"
        )
    if expired:
        raise AccessDenied(
            f"the auth server's CA certificate matching the pin has expired: "
            f"{', '.join(expired)}; {PIN_FIX_HINT}"
        )
