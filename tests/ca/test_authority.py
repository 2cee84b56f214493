"""CA key pairs and the CA record: key types, the CA certificate, serialisation, public()."""

from __future__ import annotations

import json
import subprocess
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from teleport_runtime.ca import (
    CAKeyPair,
    CAType,
    CertAuthority,
    generate_ca_keypair,
    generate_ssh_keypair,
    generate_tls_keypair,
    new_cert_authority,
)
from teleport_runtime.errors import BadParameter
from tests.conftest import require_binary

from .conftest import CLUSTER, NOW


def test_ca_type_is_a_str_enum():
    assert CAType.HOST == "host"
    assert CAType("user") is CAType.USER
    assert f"{CAType.HOST}" == "host"


def test_keypair_key_types_and_forms():
    kp = generate_ca_keypair(CAType.HOST, CLUSTER, now=NOW)
    assert kp.created == NOW
    assert kp.ssh_private_key.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    ssh_key = serialization.load_ssh_private_key(kp.ssh_private_key, password=None)
    assert isinstance(ssh_key, ed25519.Ed25519PrivateKey)
    assert kp.ssh_public_key.startswith("ssh-ed25519 AAAA")
    assert len(kp.ssh_public_key.split()) == 2  # no comment
    assert kp.tls_key.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8
    tls_key = serialization.load_pem_private_key(kp.tls_key, password=None)
    assert isinstance(tls_key, ec.EllipticCurvePrivateKey)
    assert tls_key.curve.name == "secp256r1"


def test_ca_certificate_fields():
    kp = generate_ca_keypair(CAType.USER, CLUSTER, now=NOW)
    cert = x509.load_pem_x509_certificate(kp.tls_cert)
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == CLUSTER
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == CLUSTER
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert cert.not_valid_before_utc == NOW - timedelta(minutes=1)
    assert cert.not_valid_after_utc == NOW + timedelta(days=3650)
    cert.verify_directly_issued_by(cert)  # self-signed


def test_ca_certificate_as_openssl_sees_it(tmp_path, host_ca):
    openssl = require_binary("openssl")
    path = tmp_path / "ca.pem"
    path.write_bytes(host_ca.active.tls_cert)
    text = subprocess.run(
        [openssl, "x509", "-in", str(path), "-noout", "-text"],
        check=True, capture_output=True, text=True,
    ).stdout
    assert "CA:TRUE" in text
    assert "Certificate Sign, CRL Sign" in text
    assert "Subject Key Identifier" in text
    assert f"CN = {CLUSTER}" in text or f"CN={CLUSTER}" in text
    # Self-signed CA verifies against itself, strictly.
    subprocess.run(
        [openssl, "verify", "-x509_strict", "-CAfile", str(path), str(path)],
        check=True, capture_output=True,
    )


def test_new_cert_authority_defaults(host_ca):
    assert host_ca.type is CAType.HOST
    assert host_ca.cluster_name == CLUSTER
    assert host_ca.additional_trusted == []
    assert host_ca.rotation == {"state": "standby", "phase": "standby"}
    # Each CA gets its own default dict.
    other = new_cert_authority("host", CLUSTER)
    other.rotation["state"] = "in_progress"
    assert new_cert_authority("user", CLUSTER).rotation["state"] == "standby"


def _with_rotation_key(ca: CertAuthority) -> CertAuthority:
    return CertAuthority(
        type=ca.type,
        cluster_name=ca.cluster_name,
        active=ca.active,
        additional_trusted=[generate_ca_keypair(ca.type, ca.cluster_name)],
        rotation={"state": "in_progress", "phase": "init", "mode": "manual"},
    )


def test_dict_round_trip_is_json_safe(host_ca):
    ca = _with_rotation_key(host_ca)
    data = json.loads(json.dumps(ca.to_dict(with_secrets=True)))
    assert CertAuthority.from_dict(data) == ca
    public_data = json.loads(json.dumps(ca.to_dict(with_secrets=False)))
    restored = CertAuthority.from_dict(public_data)
    assert restored == ca.public()
    assert restored.trusted_ssh_public_keys() == ca.trusted_ssh_public_keys()


def test_public_strips_every_private_key(host_ca):
    ca = _with_rotation_key(host_ca)
    public = ca.public()
    for kp in public.key_pairs():
        assert kp.ssh_private_key is None and kp.tls_key is None
        assert not kp.has_secrets
    text = json.dumps(public.to_dict(with_secrets=True))
    assert "PRIVATE KEY" not in text
    assert "PRIVATE KEY" not in json.dumps(ca.to_dict(with_secrets=False))
    # The original is untouched.
    assert ca.active.has_secrets


def test_trusted_lists_active_first(host_ca):
    ca = _with_rotation_key(host_ca)
    assert ca.trusted_ssh_public_keys() == [
        ca.active.ssh_public_key, ca.additional_trusted[0].ssh_public_key,
    ]
    assert ca.trusted_tls_certs() == [ca.active.tls_cert, ca.additional_trusted[0].tls_cert]
    # Duplicates are removed.
    dup = CertAuthority(CAType.HOST, CLUSTER, ca.active, [ca.active])
    assert dup.trusted_tls_certs() == [ca.active.tls_cert]


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda d: d.pop("active"), "active"),
        (lambda d: d.update(type="bogus"), "bogus"),
        (lambda d: d["active"].pop("tls_cert"), "tls_cert"),
        (lambda d: d["active"].update(created="yesterday"), "created"),
    ],
)
def test_from_dict_rejects_bad_input(host_ca, mutate, fragment):
    data = host_ca.to_dict(with_secrets=False)
    mutate(data)
    with pytest.raises(BadParameter, match=fragment):
        CertAuthority.from_dict(data)


def test_bad_ca_type_and_cluster_name():
    with pytest.raises(BadParameter, match="expected 'host' or 'user'"):
        generate_ca_keypair("db", CLUSTER)
    with pytest.raises(BadParameter, match="cluster name"):
        generate_ca_keypair(CAType.HOST, "")


def test_client_keypair_helpers():
    priv, pub = generate_ssh_keypair()
    assert isinstance(serialization.load_ssh_private_key(priv, None), ed25519.Ed25519PrivateKey)
    assert pub.startswith("ssh-ed25519 ") and len(pub.split()) == 2
    key_pem, pub_pem = generate_tls_keypair()
    key = serialization.load_pem_private_key(key_pem, None)
    assert pub_pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == pub_pem


def test_keypair_public_copy():
    kp = generate_ca_keypair(CAType.HOST, CLUSTER)
    pub = kp.public()
    assert isinstance(pub, CAKeyPair)
    assert pub.ssh_public_key == kp.ssh_public_key and pub.tls_cert == kp.tls_cert
    assert pub.ssh_private_key is None and pub.tls_key is None
