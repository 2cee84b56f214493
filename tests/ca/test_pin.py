"""The CA pin, checked against openssl, and the join-time pin check."""

from __future__ import annotations

import re
import subprocess
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from teleport_runtime.ca import (
    CAType,
    ca_pin,
    check_ca_pins,
    generate_ca_keypair,
    normalize_pin,
)
from teleport_runtime.errors import AccessDenied, BadParameter
from tests.conftest import require_binary

from .conftest import CLUSTER, NOW


def test_pin_matches_openssl(tmp_path, host_ca):
    openssl = require_binary("openssl")
    path = tmp_path / "ca.pem"
    path.write_bytes(host_ca.active.tls_cert)
    out = subprocess.run(
        f"{openssl} x509 -in {path} -pubkey -noout"
        f" | {openssl} pkey -pubin -outform der | sha256sum",
        shell=True, check=True, capture_output=True, text=True,
    ).stdout
    expected = "sha256:" + out.split()[0]
    assert ca_pin(host_ca.active.tls_cert) == expected
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", expected)


def test_pin_accepts_der_and_refuses_bundles(host_ca, user_ca):
    cert = x509.load_pem_x509_certificate(host_ca.active.tls_cert)
    der = cert.public_bytes(serialization.Encoding.DER)
    assert ca_pin(der) == ca_pin(host_ca.active.tls_cert)
    with pytest.raises(BadParameter, match="exactly one"):
        ca_pin(host_ca.active.tls_cert + user_ca.active.tls_cert)
    with pytest.raises(BadParameter, match=r"X\.509"):
        ca_pin(b"not a certificate")


def test_check_pins_accepts_matching(host_ca):
    pin = ca_pin(host_ca.active.tls_cert)
    check_ca_pins(host_ca.trusted_tls_certs(), [pin])
    # Upper case and surrounding blanks are tolerated.
    check_ca_pins(host_ca.trusted_tls_certs(), ["  " + pin.upper().replace("SHA256", "sha256")])
    # Extra pins are fine (a rotation hands out both).
    other = ca_pin(generate_ca_keypair(CAType.HOST, CLUSTER).tls_cert)
    check_ca_pins(host_ca.trusted_tls_certs(), [other, pin])


def test_check_pins_during_rotation_needs_every_cert_pinned(host_ca):
    new = generate_ca_keypair(CAType.HOST, CLUSTER)
    certs = [host_ca.active.tls_cert, new.tls_cert]
    old_pin, new_pin = ca_pin(host_ca.active.tls_cert), ca_pin(new.tls_cert)
    check_ca_pins(certs, [old_pin, new_pin])
    with pytest.raises(AccessDenied) as err:
        check_ca_pins(certs, [old_pin])
    assert new_pin in err.value.message
    # A PEM bundle is split: the unpinned second cert is not skipped.
    with pytest.raises(AccessDenied):
        check_ca_pins([b"".join(certs)], [old_pin])


def test_mismatch_message_names_pins_and_fix(host_ca):
    wrong = "sha256:" + "ab" * 32
    with pytest.raises(AccessDenied) as err:
        check_ca_pins(host_ca.trusted_tls_certs(), [wrong])
    message = err.value.message
    assert ca_pin(host_ca.active.tls_cert) in message  # received
    assert wrong in message  # expected
    assert "check --ca-pin against `tctl status` on the auth server" in message
    assert err.value.http_status == 403


def test_expired_ca_is_refused():
    old = generate_ca_keypair(CAType.HOST, CLUSTER, now=NOW - timedelta(days=3651))
    pin = ca_pin(old.tls_cert)
    with pytest.raises(AccessDenied, match="expired") as err:
        check_ca_pins([old.tls_cert], [pin], now=NOW)
    assert "tctl status" in err.value.message
    # The same cert was fine while it was valid.
    check_ca_pins([old.tls_cert], [pin], now=NOW - timedelta(days=10))


def test_no_certs_is_refused(host_ca):
    with pytest.raises(AccessDenied, match="no CA certificates"):
        check_ca_pins([], [ca_pin(host_ca.active.tls_cert)])


@pytest.mark.parametrize(
    "pin",
    [
        "",
        "ab" * 32,  # no prefix
        "sha1:" + "ab" * 32,
        "sha256:" + "ab" * 31,  # too short
        "sha256:" + "ab" * 33,  # too long
        "sha256:" + "zz" * 32,  # not hex
        "sha256:" + "ab" * 32 + "\nx",
    ],
)
def test_bad_pin_syntax(host_ca, pin):
    with pytest.raises(BadParameter, match=r"expected sha256:<64 hex>"):
        check_ca_pins(host_ca.trusted_tls_certs(), [pin])
    with pytest.raises(BadParameter):
        normalize_pin(pin)


def test_no_pin_given(host_ca):
    with pytest.raises(BadParameter, match="no CA pin"):
        check_ca_pins(host_ca.trusted_tls_certs(), [])
