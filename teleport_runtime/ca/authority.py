"""Certificate authorities: key pairs, the CA record the backend stores, and client key pairs.

Each cluster has two CAs (:class:`CAType`): the host CA signs node/proxy/auth identities and
the admin identity, the user CA signs user identities. A CA has one *active* key pair (the one
that signs) and zero or more *additional trusted* key pairs (trusted but not signing; CA
rotation keeps the old or the new key there). Every key pair holds:

- an Ed25519 SSH key (private key in OpenSSH PEM, public key in authorized_keys form), and
- an ECDSA P-256 key with a self-signed X.509 CA certificate (``CN=<cluster>, O=<cluster>``,
  ``basicConstraints CA:TRUE`` critical, ``keyUsage keyCertSign, cRLSign`` critical,
  SubjectKeyIdentifier, valid from one minute before creation for 10 years).

Both CA types of a cluster (and the old and new key during a rotation) share the same subject;
leaves carry an AuthorityKeyIdentifier, which OpenSSL uses to pick the right issuer.

A key pair without private keys is *public*: :meth:`CertAuthority.public` strips them, and that
form is what leaves the auth server. ``to_dict``/``from_dict`` give the JSON-safe form for the
backend (PEM as text, ``created`` as ISO 8601).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from teleport_runtime.ca._common import cert_pem, openssh_public_line, utcnow
from teleport_runtime.errors import BadParameter

#: Lifetime of a CA's self-signed X.509 certificate.
CA_CERT_VALIDITY = timedelta(days=3650)
#: Clock-skew allowance: certificates are valid from this long before they are issued.
CLOCK_SKEW = timedelta(minutes=1)


class CAType(StrEnum):
    """The two certificate authorities of a cluster (a str Enum: ``"host"``, ``"user"``)."""

    HOST = "host"
    USER = "user"


def to_ca_type(value: CAType | str) -> CAType:
    """``value`` as a CAType; raises BadParameter for anything but ``host`` or ``user``."""
    try:
        return CAType(value)
    except ValueError:
        raise BadParameter(f"unknown CA type {value!r}: expected 'host' or 'user'") from None


def default_rotation() -> dict[str, Any]:
    """The rotation state of a CA that has never rotated."""
    return {"state": "standby", "phase": "standby"}


def _pem_text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("ascii")


def _pem_bytes(value: Any, what: str) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("ascii")
    raise BadParameter(f"{what}: expected PEM text, got {type(value).__name__}")


@dataclass
class CAKeyPair:
    """One CA key pair: SSH key and X.509 CA key/cert. Private parts are None when public."""

    ssh_private_key: bytes | None
    ssh_public_key: str
    tls_key: bytes | None
    tls_cert: bytes
    created: datetime

    @property
    def has_secrets(self) -> bool:
        """True when both private keys are present (the pair can sign)."""
        return self.ssh_private_key is not None and self.tls_key is not None

    def public(self) -> CAKeyPair:
        """A copy without private keys."""
        return CAKeyPair(
            ssh_private_key=None,
            ssh_public_key=self.ssh_public_key,
            tls_key=None,
            tls_cert=self.tls_cert,
            created=self.created,
        )

    def to_dict(self, with_secrets: bool) -> dict[str, Any]:
        """JSON-safe form; private keys are included only when ``with_secrets``."""
        return {
            "ssh_private_key": _pem_text(self.ssh_private_key) if with_secrets else None,
            "ssh_public_key": self.ssh_public_key,
            "tls_key": _pem_text(self.tls_key) if with_secrets else None,
            "tls_cert": _pem_text(self.tls_cert),
            "created": utcnow(self.created).isoformat(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CAKeyPair:
        """Inverse of :meth:`to_dict`; raises BadParameter naming a missing or bad field."""
        if not isinstance(d, dict):
            raise BadParameter(f"CA key pair: expected an object, got {type(d).__name__}")
        for key in ("ssh_public_key", "tls_cert", "created"):
            if not d.get(key):
                raise BadParameter(f"CA key pair: missing field {key!r}")
        try:
            created = utcnow(datetime.fromisoformat(str(d["created"])))
        except ValueError as exc:
            raise BadParameter(f"CA key pair: bad 'created' timestamp {d['created']!r}") from exc
        tls_cert = _pem_bytes(d["tls_cert"], "CA key pair tls_cert")
        assert tls_cert is not None
        return cls(
            ssh_private_key=_pem_bytes(d.get("ssh_private_key"), "CA key pair ssh_private_key"),
            ssh_public_key=str(d["ssh_public_key"]).strip(),
            tls_key=_pem_bytes(d.get("tls_key"), "CA key pair tls_key"),
            tls_cert=tls_cert,
            created=created,
        )


def generate_ssh_keypair() -> tuple[bytes, str]:
    """A new Ed25519 SSH key: (OpenSSH PEM private key, ``ssh-ed25519 AAAA...`` public line)."""
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    return private_pem, openssh_public_line(key.public_key())


def generate_tls_keypair() -> tuple[bytes, bytes]:
    """A new ECDSA P-256 key: (PKCS8 PEM private key, SubjectPublicKeyInfo PEM public key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


def _self_signed_ca_cert(
    key: ec.EllipticCurvePrivateKey, cluster_name: str, now: datetime
) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cluster_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_name),
        ]
    )
    public_key = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CA_CERT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )


def generate_ca_keypair(
    ca_type: CAType | str, cluster_name: str, now: datetime | None = None
) -> CAKeyPair:
    """A new CA key pair for ``cluster_name`` (Ed25519 SSH key, ECDSA P-256 X.509 CA)."""
    to_ca_type(ca_type)
    if not cluster_name or len(cluster_name.encode("utf-8")) > 64:
        raise BadParameter(
            f"invalid cluster name {cluster_name!r}: expected 1 to 64 bytes (it is the CA's CN)"
        )
    created = utcnow(now)
    ssh_private, ssh_public = generate_ssh_keypair()
    tls_key = ec.generate_private_key(ec.SECP256R1())
    cert = _self_signed_ca_cert(tls_key, cluster_name, created)
    return CAKeyPair(
        ssh_private_key=ssh_private,
        ssh_public_key=ssh_public,
        tls_key=tls_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        tls_cert=cert_pem(cert),
        created=created,
    )


@dataclass
class CertAuthority:
    """A cluster CA as stored in the backend: the signing pair plus pairs trusted in rotation."""

    type: CAType
    cluster_name: str
    active: CAKeyPair
    additional_trusted: list[CAKeyPair] = field(default_factory=list)
    rotation: dict[str, Any] = field(default_factory=default_rotation)

    def __post_init__(self) -> None:
        self.type = to_ca_type(self.type)

    def key_pairs(self) -> list[CAKeyPair]:
        """The active key pair followed by the additional trusted ones."""
        return [self.active, *self.additional_trusted]

    def public(self) -> CertAuthority:
        """A copy with no private key anywhere (what may leave the auth server)."""
        return CertAuthority(
            type=self.type,
            cluster_name=self.cluster_name,
            active=self.active.public(),
            additional_trusted=[kp.public() for kp in self.additional_trusted],
            rotation=copy.deepcopy(self.rotation),
        )

    def trusted_ssh_public_keys(self) -> list[str]:
        """SSH public keys (authorized_keys form) of every trusted pair, active first, deduped."""
        out: list[str] = []
        for kp in self.key_pairs():
            if kp.ssh_public_key not in out:
                out.append(kp.ssh_public_key)
        return out

    def trusted_tls_certs(self) -> list[bytes]:
        """PEM X.509 CA certs of every trusted pair, active first, deduped."""
        out: list[bytes] = []
        for kp in self.key_pairs():
            if kp.tls_cert not in out:
                out.append(kp.tls_cert)
        return out

    def to_dict(self, with_secrets: bool) -> dict[str, Any]:
        """JSON-safe form; private keys are included only when ``with_secrets``."""
        return {
            "type": self.type.value,
            "cluster_name": self.cluster_name,
            "active": self.active.to_dict(with_secrets),
            "additional_trusted": [kp.to_dict(with_secrets) for kp in self.additional_trusted],
            "rotation": copy.deepcopy(self.rotation),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CertAuthority:
        """Inverse of :meth:`to_dict`; raises BadParameter naming a missing or bad field."""
        if not isinstance(d, dict):
            raise BadParameter(f"cert authority: expected an object, got {type(d).__name__}")
        for key in ("type", "cluster_name", "active"):
            if not d.get(key):
                raise BadParameter(f"cert authority: missing field {key!r}")
        ca_type = to_ca_type(d["type"])
        rotation = d.get("rotation") or default_rotation()
        if not isinstance(rotation, dict):
            raise BadParameter("cert authority: 'rotation' must be an object")
        return cls(
            type=ca_type,
            cluster_name=str(d["cluster_name"]),
            active=CAKeyPair.from_dict(d["active"]),
            additional_trusted=[CAKeyPair.from_dict(x) for x in d.get("additional_trusted") or []],
            rotation=copy.deepcopy(rotation),
        )


def new_cert_authority(
    ca_type: CAType | str, cluster_name: str, now: datetime | None = None
) -> CertAuthority:
    """A fresh CA of ``ca_type`` for ``cluster_name`` with one active key pair."""
    return CertAuthority(
        type=to_ca_type(ca_type),
        cluster_name=cluster_name,
        active=generate_ca_keypair(ca_type, cluster_name, now),
    )
