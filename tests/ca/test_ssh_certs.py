"""Host and user SSH certificates: as ssh-keygen and asyncssh see them, and parsed back."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from datetime import timedelta

import asyncssh
import pytest
from asyncssh.public_key import CERT_TYPE_HOST, CERT_TYPE_USER

from teleport_runtime.ca import (
    CAType,
    generate_ca_keypair,
    generate_host_ssh_cert,
    generate_ssh_keypair,
    generate_user_ssh_cert,
    parse_host_ssh_cert,
    parse_user_ssh_cert,
)
from teleport_runtime.errors import AccessDenied, BadParameter
from tests.conftest import require_binary

from .conftest import CLUSTER, NOW

HOST_UUID = "5d4c5d3e-0b0d-4a8a-9d1c-3b7f2f3a9e11"


def keygen_listing(tmp_path, cert_line: str) -> str:
    ssh_keygen = require_binary("ssh-keygen")
    path = tmp_path / "key-cert.pub"
    path.write_text(cert_line + "\n")
    return subprocess.run(
        [ssh_keygen, "-L", "-f", str(path)],
        check=True, capture_output=True, text=True, env={**os.environ, "TZ": "UTC"},
    ).stdout


def listing_section(listing: str, title: str) -> list[str]:
    """The indented lines under ``title:`` in ``ssh-keygen -L`` output."""
    lines = listing.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(title + ":"))
    indent = len(lines[start]) - len(lines[start].lstrip())
    out = []
    for line in lines[start + 1:]:
        if len(line) - len(line.lstrip()) <= indent:
            break
        out.append(line.strip())
    return out


def unknown_option_value(line: str) -> str:
    """Decode ssh-keygen's ``name UNKNOWN OPTION: <hex> (len N)``: an SSH string in hex."""
    hexdata = line.split("UNKNOWN OPTION: ", 1)[1].split()[0]
    raw = bytes.fromhex(hexdata)
    size = int.from_bytes(raw[:4], "big")
    assert len(raw) == 4 + size
    return raw[4:].decode()


def host_cert(host_ca, **kw) -> tuple[str, str]:
    _, public = generate_ssh_keypair()
    args = dict(
        host_uuid=HOST_UUID, nodename="node-1", cluster_name=CLUSTER, role="Node",
        extra_principals=["10.1.2.3", "node-1.internal", "localhost"], now=NOW,
    )
    args.update(kw)
    return public, generate_host_ssh_cert(host_ca.active, public, **args)


# ---------------------------------------------------------------------------- host certs


def test_host_cert_as_ssh_keygen_sees_it(tmp_path, host_ca):
    _, line = host_cert(host_ca)
    assert line.startswith("ssh-ed25519-cert-v01@openssh.com AAAA")
    listing = keygen_listing(tmp_path, line)
    assert "host certificate" in listing
    assert f'Key ID: "{HOST_UUID}.{CLUSTER}"' in listing
    # ssh-keygen's way of saying "from 03:03:05 (now - 1 min) to forever".
    assert "Valid: after 2030-01-02T03:03:05\n" in listing
    assert listing_section(listing, "Principals") == [
        f"{HOST_UUID}.{CLUSTER}", HOST_UUID, f"node-1.{CLUSTER}", "node-1",
        "10.1.2.3", "node-1.internal", "localhost", "127.0.0.1", "::1",
    ]
    extensions = {
        line.split()[0]: unknown_option_value(line)
        for line in listing_section(listing, "Extensions")
    }
    assert extensions == {"x-teleport-authority": CLUSTER, "x-teleport-role": "Node"}
    assert "Critical Options: (none)" in listing


def test_host_cert_with_ttl(tmp_path, host_ca):
    _, line = host_cert(host_ca, role="Proxy", ttl=timedelta(hours=1))
    listing = keygen_listing(tmp_path, line)
    assert "Valid: from 2030-01-02T03:03:05 to 2030-01-02T04:04:05" in listing
    info = parse_host_ssh_cert(line)
    assert info.role == "Proxy"
    assert info.valid_before == NOW + timedelta(hours=1)


def test_host_cert_parses_back(host_ca):
    public, line = host_cert(host_ca)
    info = parse_host_ssh_cert(line, trusted_ca_keys=host_ca.trusted_ssh_public_keys())
    assert info.key_id == f"{HOST_UUID}.{CLUSTER}"
    assert info.host_uuid == HOST_UUID
    assert info.cluster_name == CLUSTER
    assert info.role == "Node"
    assert info.principals[:4] == [f"{HOST_UUID}.{CLUSTER}", HOST_UUID, f"node-1.{CLUSTER}",
                                   "node-1"]
    assert info.valid_after == NOW - timedelta(minutes=1)
    assert info.valid_before is None
    assert info.ca_public_key == host_ca.active.ssh_public_key
    assert info.public_key == public


def test_host_cert_verifies_with_asyncssh(host_ca):
    _, public = generate_ssh_keypair()
    line = generate_host_ssh_cert(
        host_ca.active, public, host_uuid=HOST_UUID, nodename="node-1",
        cluster_name=CLUSTER, role="Node",
    )
    cert = asyncssh.import_certificate(line)
    ca_key = asyncssh.import_public_key(host_ca.active.ssh_public_key)
    assert cert.signing_key.public_data == ca_key.public_data
    cert.validate(CERT_TYPE_HOST, "node-1")
    cert.validate(CERT_TYPE_HOST, "127.0.0.1")
    with pytest.raises(ValueError):
        cert.validate(CERT_TYPE_HOST, "other-host")


def test_host_cert_serials_are_random(host_ca):
    a = parse_host_ssh_cert(host_cert(host_ca)[1])
    b = parse_host_ssh_cert(host_cert(host_ca)[1])
    assert a.serial != b.serial


@pytest.mark.parametrize(
    "kw, fragment",
    [
        ({"role": "node"}, "invalid host role"),
        ({"role": "Admin"}, "invalid host role"),
        ({"host_uuid": ""}, "host UUID"),
        ({"nodename": ""}, "nodename"),
        ({"ttl": timedelta(0)}, "TTL"),
    ],
)
def test_host_cert_bad_input(host_ca, kw, fragment):
    with pytest.raises(BadParameter, match=fragment):
        host_cert(host_ca, **kw)


def test_trust_only_keypair_cannot_sign(host_ca):
    with pytest.raises(BadParameter, match="trusted, not signing"):
        host_cert(host_ca.public())


def test_certificate_is_not_a_public_key(host_ca):
    _, line = host_cert(host_ca)
    with pytest.raises(BadParameter, match="got an SSH certificate"):
        generate_host_ssh_cert(
            host_ca.active, line, host_uuid=HOST_UUID, nodename="n", cluster_name=CLUSTER,
            role="Node",
        )
    with pytest.raises(BadParameter, match="invalid SSH public key"):
        generate_host_ssh_cert(
            host_ca.active, "ssh-ed25519 garbage", host_uuid=HOST_UUID, nodename="n",
            cluster_name=CLUSTER, role="Node",
        )


# ---------------------------------------------------------------------------- user certs


def user_cert(user_ca, **kw) -> tuple[str, str]:
    _, public = generate_ssh_keypair()
    args = dict(username="alice", logins=["root", "alice"], roles=["access", "editor"], now=NOW)
    args.update(kw)
    return public, generate_user_ssh_cert(user_ca.active, public, **args)


def test_user_cert_as_ssh_keygen_sees_it(tmp_path, user_ca):
    _, line = user_cert(user_ca, permit_agent_forwarding=True, permit_port_forwarding=True)
    listing = keygen_listing(tmp_path, line)
    assert "user certificate" in listing
    assert 'Key ID: "alice"' in listing
    # Default TTL is 12h; valid from now-1min.
    assert "Valid: from 2030-01-02T03:03:05 to 2030-01-02T15:04:05" in listing
    assert listing_section(listing, "Principals") == ["root", "alice"]
    extensions = {}
    for entry in listing_section(listing, "Extensions"):
        name = entry.split()[0]
        extensions[name] = unknown_option_value(entry) if "UNKNOWN OPTION" in entry else None
    assert extensions.keys() == {
        "permit-pty", "permit-agent-forwarding", "permit-port-forwarding",
        "teleport-roles", "teleport-traits",
    }
    assert json.loads(extensions["teleport-roles"]) == {"roles": ["access", "editor"]}
    assert json.loads(extensions["teleport-traits"]) == {"logins": ["root", "alice"]}


def test_user_cert_without_forwarding(tmp_path, user_ca):
    _, line = user_cert(user_ca, ttl=timedelta(hours=1))
    listing = keygen_listing(tmp_path, line)
    names = [e.split()[0] for e in listing_section(listing, "Extensions")]
    assert sorted(names) == ["permit-pty", "teleport-roles", "teleport-traits"]
    assert "to 2030-01-02T04:04:05" in listing


def test_user_cert_verifies_against_the_ca_with_asyncssh(user_ca):
    _, line = user_cert(user_ca, now=None)
    cert = asyncssh.import_certificate(line)  # checks the signature
    ca_key = asyncssh.import_public_key(user_ca.active.ssh_public_key)
    assert cert.signing_key.public_data == ca_key.public_data
    assert cert.principals == ["root", "alice"]
    cert.validate(CERT_TYPE_USER, "root")
    with pytest.raises(ValueError):
        cert.validate(CERT_TYPE_USER, "nobody")
    with pytest.raises(ValueError):
        cert.validate(CERT_TYPE_HOST, "root")
    info = parse_user_ssh_cert(line)
    assert info.valid_before - info.valid_after == timedelta(hours=12, minutes=1)


def test_tampered_user_cert_is_rejected(user_ca):
    _, line = user_cert(user_ca)
    kind, blob = line.split()[:2]
    raw = bytearray(base64.b64decode(blob))
    pos = raw.find(b"alice")  # key id
    raw[pos:pos + 5] = b"mally"
    forged = f"{kind} {base64.b64encode(bytes(raw)).decode()}"
    with pytest.raises(asyncssh.KeyImportError):
        asyncssh.import_certificate(forged)
    with pytest.raises(AccessDenied, match="signature"):
        parse_user_ssh_cert(forged)


def test_user_cert_parses_back(user_ca):
    public, line = user_cert(
        user_ca, traits={"logins": ["root"], "env": ["prod"]}, permit_port_forwarding=True,
        ttl=timedelta(hours=2),
    )
    info = parse_user_ssh_cert(line, trusted_ca_keys=user_ca.trusted_ssh_public_keys())
    assert info.username == "alice"
    assert info.logins == ["root", "alice"]
    assert info.roles == ["access", "editor"]
    assert info.traits == {"logins": ["root"], "env": ["prod"]}
    assert info.valid_after == NOW - timedelta(minutes=1)
    assert info.valid_before == NOW + timedelta(hours=2)
    assert info.ca_public_key == user_ca.active.ssh_public_key
    assert info.public_key == public
    assert info.permit_pty and info.permit_port_forwarding and not info.permit_agent_forwarding


def test_untrusted_ca_and_wrong_kind(user_ca, host_ca):
    _, line = user_cert(user_ca)
    with pytest.raises(AccessDenied, match="trusted CA"):
        parse_user_ssh_cert(line, trusted_ca_keys=host_ca.trusted_ssh_public_keys())
    with pytest.raises(BadParameter, match="host certificate"):
        parse_user_ssh_cert(host_cert(host_ca)[1])
    with pytest.raises(BadParameter, match="user certificate"):
        parse_host_ssh_cert(line)
    with pytest.raises(BadParameter, match="plain public key"):
        parse_user_ssh_cert(generate_ssh_keypair()[1])


def test_trusted_keys_may_carry_comments(user_ca):
    _, line = user_cert(user_ca)
    parse_user_ssh_cert(line, trusted_ca_keys=[user_ca.active.ssh_public_key + " user-ca"])


def test_rotated_ca_signs_and_old_one_stays_trusted(user_ca):
    new = generate_ca_keypair(CAType.USER, CLUSTER)
    _, public = generate_ssh_keypair()
    line = generate_user_ssh_cert(new, public, username="bob", logins=["bob"], roles=["access"])
    trusted = [user_ca.active.ssh_public_key, new.ssh_public_key]
    assert parse_user_ssh_cert(line, trusted).ca_public_key == new.ssh_public_key
    with pytest.raises(AccessDenied):
        parse_user_ssh_cert(line, [user_ca.active.ssh_public_key])


def test_user_without_logins_is_not_valid_for_any_principal(tmp_path, user_ca):
    _, line = user_cert(user_ca, logins=[], now=None)
    principals = listing_section(keygen_listing(tmp_path, line), "Principals")
    assert len(principals) == 1 and principals[0].startswith("-teleport-nologin-")
    cert = asyncssh.import_certificate(line)
    with pytest.raises(ValueError):
        cert.validate(CERT_TYPE_USER, "root")
    info = parse_user_ssh_cert(line)
    assert info.logins == []
    assert info.traits == {"logins": []}


def test_user_cert_bad_input(user_ca):
    with pytest.raises(BadParameter, match="username"):
        user_cert(user_ca, username="")
    with pytest.raises(BadParameter, match="TTL"):
        user_cert(user_ca, ttl=timedelta(seconds=-1))
    with pytest.raises(BadParameter, match="TTL"):
        user_cert(user_ca, ttl=None)
    with pytest.raises(BadParameter, match="nologin"):
        user_cert(user_ca, logins=["-teleport-nologin-x"])


def test_user_cert_validity_starts_a_minute_back(user_ca):
    _, line = user_cert(user_ca, now=None)
    info = parse_user_ssh_cert(line)
    assert info.valid_after.timestamp() <= time.time() - 59


def test_too_many_logins(user_ca):
    with pytest.raises(BadParameter, match="too many principals"):
        user_cert(user_ca, logins=[f"u{i}" for i in range(300)])
