"""Certificate building, pure (no file or network I/O): the one place certificates are made.

The auth service, tctl and the tests build every certificate through this package:

- :mod:`.authority`: CA key pairs (:class:`CAKeyPair`), the stored CA record
  (:class:`CertAuthority`), and key pairs for clients and agents.
- :mod:`.pin`: the CA pin (:func:`ca_pin`) and the join-time check (:func:`check_ca_pins`).
- :mod:`.ssh`: OpenSSH host and user certificates, built and parsed.
- :mod:`.tls`: X.509 identities (:class:`TLSIdentity`), built and parsed; the module
  docstring documents how an identity is encoded in a certificate.
"""

from teleport_runtime.ca._common import load_certs
from teleport_runtime.ca.authority import (
    CA_CERT_VALIDITY,
    CAKeyPair,
    CAType,
    CertAuthority,
    default_rotation,
    generate_ca_keypair,
    generate_ssh_keypair,
    generate_tls_keypair,
    new_cert_authority,
    to_ca_type,
)
from teleport_runtime.ca.pin import ca_pin, check_ca_pins, normalize_pin
from teleport_runtime.ca.ssh import (
    DEFAULT_USER_CERT_TTL,
    HostCertInfo,
    UserCertInfo,
    generate_host_ssh_cert,
    generate_user_ssh_cert,
    parse_host_ssh_cert,
    parse_user_ssh_cert,
)
from teleport_runtime.ca.tls import (
    TLSIdentity,
    ca_type_for_kind,
    generate_tls_identity_cert,
    is_ca_cert,
    issuing_ca_matches,
    parse_tls_identity,
)

__all__ = [
    "CA_CERT_VALIDITY",
    "DEFAULT_USER_CERT_TTL",
    "CAKeyPair",
    "CAType",
    "CertAuthority",
    "HostCertInfo",
    "TLSIdentity",
    "UserCertInfo",
    "ca_pin",
    "ca_type_for_kind",
    "check_ca_pins",
    "default_rotation",
    "generate_ca_keypair",
    "generate_host_ssh_cert",
    "generate_ssh_keypair",
    "generate_tls_identity_cert",
    "generate_tls_keypair",
    "generate_user_ssh_cert",
    "is_ca_cert",
    "issuing_ca_matches",
    "load_certs",
    "new_cert_authority",
    "normalize_pin",
    "parse_host_ssh_cert",
    "parse_tls_identity",
    "parse_user_ssh_cert",
    "to_ca_type",
]
