"""X.509 identities: encoding round trip, issuer checks, openssl, and real mutual TLS."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from teleport_runtime.ca import (
    CAKeyPair,
    CAType,
    CertAuthority,
    TLSIdentity,
    ca_type_for_kind,
    generate_ca_keypair,
    generate_tls_identity_cert,
    generate_tls_keypair,
    issuing_ca_matches,
    parse_tls_identity,
)
from teleport_runtime.errors import BadParameter
from tests.conftest import require_binary

from .conftest import CLUSTER, NOW

API_SERVER_NAME = "teleport.cluster.local"
HOST_UUID = "5d4c5d3e-0b0d-4a8a-9d1c-3b7f2f3a9e11"


def node_identity() -> TLSIdentity:
    return TLSIdentity(
        name=f"{HOST_UUID}.{CLUSTER}", kind="host", roles=["Node"], cluster=CLUSTER,
        host_uuid=HOST_UUID, nodename="node-1",
    )


def issue(ca: CAKeyPair, identity: TLSIdentity, **kw) -> tuple[bytes, bytes]:
    key, public = generate_tls_keypair()
    kw.setdefault("ttl", timedelta(hours=1))
    return key, generate_tls_identity_cert(ca, public, identity, **kw)


# ---------------------------------------------------------------------------- encoding


def test_round_trip_host_identity(host_ca):
    identity = node_identity()
    _, cert = issue(host_ca.active, identity, now=NOW)
    parsed = parse_tls_identity(cert)
    assert parsed.expires == NOW + timedelta(hours=1)
    identity.expires = parsed.expires
    assert parsed == identity


def test_round_trip_user_identity_and_der(user_ca):
    identity = TLSIdentity(
        name="alice", kind="user", roles=["access", "editor"], cluster=CLUSTER,
        logins=["root", "alice"],
    )
    _, cert = issue(user_ca.active, identity, now=NOW, ttl=timedelta(hours=12))
    der = x509.load_pem_x509_certificate(cert).public_bytes(serialization.Encoding.DER)
    parsed = parse_tls_identity(der)
    assert (parsed.name, parsed.kind, parsed.roles, parsed.cluster, parsed.logins) == (
        "alice", "user", ["access", "editor"], CLUSTER, ["root", "alice"],
    )
    assert parsed.host_uuid is None and parsed.nodename is None


def test_leaf_certificate_fields(host_ca):
    _, cert_pem = issue(
        host_ca.active, node_identity(), now=NOW,
        dns_names=[API_SERVER_NAME, "node-1"], ip_addresses=["127.0.0.1", "::1"],
    )
    cert = x509.load_pem_x509_certificate(cert_pem)
    ca_cert = x509.load_pem_x509_certificate(host_ca.active.tls_cert)
    subject = cert.subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"{HOST_UUID}.{CLUSTER}"
    assert [a.value for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == ["Node"]
    assert subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "host"
    cluster_oid = x509.ObjectIdentifier("1.3.9999.1.7")
    assert subject.get_attributes_for_oid(cluster_oid)[0].value == CLUSTER
    assert cert.issuer == ca_cert.subject
    assert cert.not_valid_before_utc == NOW - timedelta(minutes=1)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [API_SERVER_NAME, "node-1"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest


def test_no_san_without_names(host_ca):
    _, cert_pem = issue(
        host_ca.active, TLSIdentity("admin", "admin", ["Admin"], CLUSTER), now=NOW
    )
    cert = x509.load_pem_x509_certificate(cert_pem)
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_long_name_survives(host_ca):
    long_cluster = "teleport.production.eu-west-1.internal.example.com"
    identity = TLSIdentity(f"{HOST_UUID}.{long_cluster}", "host", ["Proxy"], long_cluster)
    assert len(identity.name) > 64
    _, cert = issue(host_ca.active, identity)
    assert parse_tls_identity(cert).name == identity.name


def test_rsa_public_key_is_accepted(host_ca):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    cert = generate_tls_identity_cert(
        host_ca.active, pub, node_identity(), ttl=timedelta(minutes=5)
    )
    ku = x509.load_pem_x509_certificate(cert).extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.value.digital_signature and ku.value.key_encipherment


@pytest.mark.parametrize(
    "identity, fragment",
    [
        (TLSIdentity("", "host", ["Node"], CLUSTER), "name"),
        (TLSIdentity("x", "robot", ["Node"], CLUSTER), "kind"),
        (TLSIdentity("x", "host", ["Node"], ""), "cluster"),
        (TLSIdentity("x", "host", [""], CLUSTER), "role"),
    ],
)
def test_bad_identity(host_ca, identity, fragment):
    with pytest.raises(BadParameter, match=fragment):
        issue(host_ca.active, identity)


def test_bad_inputs(host_ca):
    with pytest.raises(BadParameter, match="TTL"):
        issue(host_ca.active, node_identity(), ttl=timedelta(0))
    with pytest.raises(BadParameter, match="IP address"):
        issue(host_ca.active, node_identity(), ip_addresses=["not-an-ip"])
    with pytest.raises(BadParameter, match="public key"):
        generate_tls_identity_cert(host_ca.active, b"junk", node_identity(), ttl=timedelta(1))
    with pytest.raises(BadParameter, match="trusted, not signing"):
        issue(host_ca.active.public(), node_identity())


def test_parse_refuses_certs_without_identity(host_ca):
    # A CA certificate has no OU (kind) and no cluster attribute.
    with pytest.raises(BadParameter, match="kind"):
        parse_tls_identity(host_ca.active.tls_cert)


def test_ca_type_for_kind():
    assert ca_type_for_kind("host") is CAType.HOST
    assert ca_type_for_kind("admin") is CAType.HOST
    assert ca_type_for_kind("user") is CAType.USER
    with pytest.raises(BadParameter):
        ca_type_for_kind("root")


def test_issuing_ca_matches(host_ca, user_ca):
    _, host_leaf = issue(host_ca.active, node_identity())
    assert issuing_ca_matches(host_leaf, host_ca.trusted_tls_certs())
    # Same subject (CN=O=cluster), different key: not a match.
    assert not issuing_ca_matches(host_leaf, user_ca.trusted_tls_certs())
    # A bundle works, and so does any position in the list.
    bundle = b"".join(user_ca.trusted_tls_certs() + host_ca.trusted_tls_certs())
    assert issuing_ca_matches(host_leaf, [bundle])
    assert issuing_ca_matches(host_leaf, [*user_ca.trusted_tls_certs(), host_ca.active.tls_cert])
    # A leaf is never an issuer, even of itself-signed look-alikes.
    assert not issuing_ca_matches(host_leaf, [host_leaf])
    assert not issuing_ca_matches(host_leaf, [])


def test_openssl_verifies_the_chain(tmp_path, host_ca):
    openssl = require_binary("openssl")
    _, leaf = issue(host_ca.active, node_identity(), dns_names=[API_SERVER_NAME])
    (tmp_path / "ca.pem").write_bytes(host_ca.active.tls_cert)
    (tmp_path / "leaf.pem").write_bytes(leaf)
    for purpose in ("sslserver", "sslclient"):
        out = subprocess.run(
            [openssl, "verify", "-x509_strict", "-purpose", purpose,
             "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "leaf.pem")],
            capture_output=True, text=True,
        )
        assert out.returncode == 0, out.stdout + out.stderr


# ---------------------------------------------------------------------------- mutual TLS


def _write_pair(tmp_path, stem: str, key: bytes, cert: bytes) -> tuple[str, str]:
    key_path, cert_path = tmp_path / f"{stem}.key", tmp_path / f"{stem}.crt"
    key_path.write_bytes(key)
    cert_path.write_bytes(cert)
    return str(cert_path), str(key_path)


def _strict(ctx: ssl.SSLContext) -> ssl.SSLContext:
    # What Python 3.13 turns on by default; our certificates must pass it.
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    return ctx


async def _serve_and_connect(
    tmp_path, server_ca: CAKeyPair, server_trusts: list[bytes],
    client_ca: CAKeyPair, client_identity: TLSIdentity, client_trusts: list[bytes],
    trusted_cas: dict[CAType, list[bytes]] | None = None,
    server_dns: tuple[str, ...] = (API_SERVER_NAME,),
) -> dict:
    """Run a TLS server on 127.0.0.1:0 requiring client certs; return what it saw of the client.

    ``trusted_cas`` maps CA type to the certs the server accepts for that kind (the auth API's
    fail-closed check).
    """
    server_key, server_cert = issue(
        server_ca, TLSIdentity(f"auth.{CLUSTER}", "host", ["Auth"], CLUSTER),
        dns_names=server_dns, ip_addresses=["127.0.0.1"],
    )
    client_key, client_cert = issue(client_ca, client_identity)

    server_ctx = _strict(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))
    server_ctx.load_cert_chain(*_write_pair(tmp_path, "server", server_key, server_cert))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_verify_locations(cadata=b"".join(server_trusts).decode())

    client_ctx = _strict(ssl.create_default_context(ssl.Purpose.SERVER_AUTH))
    client_ctx.load_verify_locations(cadata=b"".join(client_trusts).decode())
    client_ctx.load_cert_chain(*_write_pair(tmp_path, "client", client_key, client_cert))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        ident = parse_tls_identity(der)
        allowed = (trusted_cas or {}).get(ca_type_for_kind(ident.kind), server_trusts)
        reply = {"name": ident.name, "kind": ident.kind, "roles": ident.roles,
                 "issuer_ok": issuing_ca_matches(der, allowed)}
        await reader.readline()
        writer.write(json.dumps(reply).encode() + b"\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname=API_SERVER_NAME
        )
        try:
            writer.write(b"hello\n")
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), 30)
        finally:
            writer.close()
        return json.loads(line) if line else {}
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    "kind, roles",
    [("host", ["Node"]), ("admin", ["Admin"]), ("user", ["access"])],
)
async def test_mutual_tls_handshake(tmp_path, host_ca, user_ca, kind, roles):
    signer = user_ca if kind == "user" else host_ca
    trusted = {CAType.HOST: host_ca.trusted_tls_certs(), CAType.USER: user_ca.trusted_tls_certs()}
    seen = await _serve_and_connect(
        tmp_path,
        server_ca=host_ca.active,
        # Both CAs have subject CN=O=example.com; OpenSSL must still pick the right issuer.
        server_trusts=host_ca.trusted_tls_certs() + user_ca.trusted_tls_certs(),
        client_ca=signer.active,
        client_identity=TLSIdentity(f"{kind}-1", kind, roles, CLUSTER),
        client_trusts=host_ca.trusted_tls_certs(),
        trusted_cas=trusted,
    )
    assert seen == {"name": f"{kind}-1", "kind": kind, "roles": roles, "issuer_ok": True}


async def test_kind_signed_by_the_wrong_ca_is_flagged(tmp_path, host_ca, user_ca):
    # A "host" identity signed by the user CA passes the TLS handshake (the server trusts both
    # CAs) but the kind/issuer check fails closed.
    trusted = {CAType.HOST: host_ca.trusted_tls_certs(), CAType.USER: user_ca.trusted_tls_certs()}
    seen = await _serve_and_connect(
        tmp_path, host_ca.active, host_ca.trusted_tls_certs() + user_ca.trusted_tls_certs(),
        user_ca.active, TLSIdentity("sneaky", "host", ["Node"], CLUSTER),
        host_ca.trusted_tls_certs(), trusted_cas=trusted,
    )
    assert seen["issuer_ok"] is False


async def test_mutual_tls_during_rotation(tmp_path, host_ca):
    # Old and new host CA keys share a subject; a server cert from the new key and a client
    # cert from the old one both verify when both are trusted.
    new = generate_ca_keypair(CAType.HOST, CLUSTER)
    rotating = CertAuthority(CAType.HOST, CLUSTER, host_ca.active, [new])
    seen = await _serve_and_connect(
        tmp_path, server_ca=new, server_trusts=rotating.trusted_tls_certs(),
        client_ca=host_ca.active, client_identity=node_identity(),
        client_trusts=list(reversed(rotating.trusted_tls_certs())),
    )
    assert seen["name"] == node_identity().name and seen["issuer_ok"]


async def test_client_cert_from_a_foreign_ca_is_refused(tmp_path, host_ca):
    foreign = generate_ca_keypair(CAType.HOST, CLUSTER)  # same name, different key
    try:
        seen = await _serve_and_connect(
            tmp_path, host_ca.active, host_ca.trusted_tls_certs(),
            foreign, node_identity(), host_ca.trusted_tls_certs(),
        )
    except (ssl.SSLError, ConnectionError):
        seen = {}
    assert seen == {}


async def test_server_without_the_api_name_is_refused(tmp_path, host_ca):
    with pytest.raises(ssl.SSLCertVerificationError, match=r"teleport\.cluster\.local"):
        await _serve_and_connect(
            tmp_path, host_ca.active, host_ca.trusted_tls_certs(),
            host_ca.active, node_identity(), host_ca.trusted_tls_certs(),
            server_dns=("auth.example.com",),
        )


async def test_server_from_an_untrusted_ca_is_refused(tmp_path, host_ca):
    foreign = generate_ca_keypair(CAType.HOST, CLUSTER)
    with pytest.raises(ssl.SSLCertVerificationError):
        # The client trusts only a foreign CA, so the server's cert does not verify.
        await _serve_and_connect(
            tmp_path, host_ca.active, host_ca.trusted_tls_certs(),
            host_ca.active, node_identity(), [foreign.tls_cert],
        )
