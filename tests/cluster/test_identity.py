"""What a joined node holds and what it may do: its host SSH certificate (read by ssh-keygen),
the CA pin (computed independently with openssl), and mutual-TLS authorization on the auth API."""

from __future__ import annotations

import re
import ssl
import stat
import subprocess
import threading
import urllib.request
from datetime import timedelta

import aiohttp
import pytest

from teleport_runtime.api.client import AuthClient
from teleport_runtime.ca import (
    CAType,
    TLSIdentity,
    generate_tls_identity_cert,
    generate_tls_keypair,
    new_cert_authority,
)
from teleport_runtime.config import HostPort
from teleport_runtime.errors import AccessDenied, ConfigError
from teleport_runtime.identity import Identity
from tests.conftest import Cluster, require_binary, wait_for

API_NAME = "teleport.cluster.local"
CLUSTER = "test.example.com"


@pytest.fixture(scope="module")
def joined(tmp_path_factory):
    """An auth service and one node that joined it with the pin."""
    cluster = Cluster(tmp_path_factory.mktemp("identity"), CLUSTER,
                      auth_service={"presence_ttl": "10s"})
    try:
        cluster.start()
        token = cluster.add_token()["token"]
        node = cluster.start_node("hopper", cluster.node_argv("hopper", token=token,
                                                             pins=(cluster.pin(),)))
        wait_for(lambda: node.host_uuid() in cluster.node_ids(), what="hopper listed")
        yield cluster, node
    finally:
        cluster.kill_all()


# ---------------------------------------------------------------------------- SSH host cert


def keygen_listing(path) -> str:
    keygen = require_binary("ssh-keygen")
    return subprocess.run([keygen, "-L", "-f", str(path)], capture_output=True, text=True,
                          check=True).stdout


def section(listing: str, title: str) -> list[str]:
    """The lines indented under ``title:`` in ``ssh-keygen -L`` output."""
    lines = listing.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{title}:"))
    depth = len(lines[start]) - len(lines[start].lstrip())
    out = []
    for line in lines[start + 1:]:
        if not line.strip() or len(line) - len(line.lstrip()) <= depth:
            break
        out.append(line.strip())
    return out


def extension_value(line: str) -> str:
    """An extension as ``ssh-keygen -L`` prints one it does not know: the hex of its wire value
    (an SSH string inside the extension's data, as Go's x/crypto/ssh encodes it too)."""
    name, _, rest = line.partition(" ")
    match = re.search(r"([0-9a-f]+) \(len (\d+)\)", rest)
    if match is None:  # a future ssh-keygen printing the value as text
        return rest.strip()
    raw = bytes.fromhex(match.group(1))
    assert len(raw) == int(match.group(2))
    length = int.from_bytes(raw[:4], "big")
    assert length == len(raw) - 4, f"{name}: value is not one SSH string: {raw!r}"
    return raw[4:].decode()


def test_host_cert_principals_and_extensions(joined):
    _cluster, node = joined
    uuid = node.host_uuid()
    listing = keygen_listing(node.identity_dir() / "ssh_cert")
    assert "host certificate" in listing
    assert f'Key ID: "{uuid}.{CLUSTER}"' in listing
    principals = section(listing, "Principals")
    assert principals == [f"{uuid}.{CLUSTER}", uuid, f"hopper.{CLUSTER}", "hopper",
                          node.ip,  # the node's own address (--listen-ip)
                          "localhost", "127.0.0.1", "::1"], listing
    extensions = {line.split()[0]: extension_value(line)
                  for line in section(listing, "Extensions")}
    assert extensions.get("x-teleport-role") == "Node", listing
    assert extensions.get("x-teleport-authority") == CLUSTER, listing
    # signed by the cluster's host CA: the key the node trusts for hosts
    host_ca = (node.identity_dir() / "host_ca.pub").read_text().split()
    fingerprint = subprocess.run(
        [require_binary("ssh-keygen"), "-l", "-f", "/dev/stdin"], input=" ".join(host_ca[:2]),
        capture_output=True, text=True, check=True).stdout.split()[1]
    assert f"Signing CA: {host_ca[0].upper().replace('SSH-', '')} {fingerprint}" in listing


def test_identity_files_are_private(joined):
    _cluster, node = joined
    directory = node.identity_dir()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name in ("ssh_key", "ssh_cert", "tls_key.pem", "tls_cert.pem", "ca_certs.pem",
                 "user_ca.pub"):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE((node.data_dir / "host_uuid").stat().st_mode) == 0o600


# ---------------------------------------------------------------------------- CA pin


def openssl_pin_digest(cert_pem: str) -> str:
    """sha256 of the DER SubjectPublicKeyInfo, by openssl and sha256sum (not our code)."""
    openssl = require_binary("openssl")
    return subprocess.run(
        f"{openssl} x509 -pubkey -noout | {openssl} pkey -pubin -outform der | sha256sum",
        shell=True, input=cert_pem, capture_output=True, text=True, check=True,
    ).stdout.split()[0]


async def test_ca_pin_matches_independent_computation(joined):
    cluster, _node = joined
    async with aiohttp.ClientSession() as session:  # the public endpoint: no verification
        async with session.get(f"https://{cluster.addr}/v1/ca", ssl=False) as resp:
            assert resp.status == 200
            cas = await resp.json()
    assert cas["cluster"] == CLUSTER
    digest = openssl_pin_digest(cas["host_ca_certs"][0])
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    status = cluster.tctl("status").stdout
    assert re.search(rf"^CA pin\s+sha256:{digest}$", status, re.M), status
    # and the pin tctl nodes add puts in the join command is the same one
    assert cluster.add_token()["ca_pins"] == [f"sha256:{digest}"]


# ---------------------------------------------------------------------------- mutual TLS


def tls_context(ca_certs: bytes, cert=None, key=None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca_certs.decode())
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


async def call(cluster: Cluster, ctx: ssl.SSLContext, method: str, path: str, body=None):
    async with aiohttp.ClientSession() as session:
        async with session.request(method, f"https://{cluster.addr}{path}", json=body, ssl=ctx,
                                   server_hostname=API_NAME) as resp:
            return resp.status, await resp.json(content_type=None)


async def test_node_identity_cannot_create_tokens(joined):
    cluster, node = joined
    ident = node.identity_dir()
    ctx = tls_context((ident / "ca_certs.pem").read_bytes(), ident / "tls_cert.pem",
                      ident / "tls_key.pem")
    status, body = await call(cluster, ctx, "POST", "/v1/tokens",
                              {"roles": ["node"], "ttl": "5m", "token": "node-made-this"})
    assert status == 403, body
    assert body["error"]["code"] == "access_denied"
    assert "node-made-this" not in {t["token"] for t in cluster.tctl_json("tokens", "ls")}
    status, body = await call(cluster, ctx, "GET", "/v1/tokens")
    assert status == 403 and body["error"]["code"] == "access_denied"
    status, body = await call(cluster, ctx, "DELETE", "/v1/tokens/anything")
    assert status == 403 and body["error"]["code"] == "access_denied"
    status, body = await call(cluster, ctx, "GET", "/v1/status")
    assert status == 403 and body["error"]["code"] == "access_denied"
    assert "denied POST /v1/tokens" in cluster.auth_log()

    # the same through the project's client: AccessDenied, not a generic failure
    async with AuthClient.for_identity([HostPort("127.0.0.1", cluster.port)],
                                       Identity.load(ident)) as client:
        with pytest.raises(AccessDenied):
            await client.request("POST", "/v1/tokens", {"roles": ["node"]})
        # what a node may do: list nodes (it sees itself)
        nodes = await client.request("GET", "/v1/nodes")
        assert node.host_uuid() in {n["id"] for n in nodes}


async def test_no_client_cert_is_denied(joined):
    cluster, node = joined
    ctx = tls_context((node.identity_dir() / "ca_certs.pem").read_bytes())
    for method, path in (("GET", "/v1/nodes"), ("GET", "/v1/tokens"), ("POST", "/v1/tokens"),
                         ("POST", "/v1/heartbeat"), ("GET", "/v1/status")):
        status, body = await call(cluster, ctx, method, path, {})
        assert status == 403, (method, path, body)
        assert body["error"]["code"] == "access_denied"
        assert "client certificate" in body["error"]["message"]
    # the public endpoint answers without one
    status, body = await call(cluster, ctx, "GET", "/v1/ca")
    assert status == 200 and body["cluster"] == CLUSTER


async def test_admin_identity_can(joined):
    cluster, node = joined
    admin = cluster.data_dir / "admin"
    ctx = tls_context((admin / "ca_certs.pem").read_bytes(), admin / "tls_cert.pem",
                      admin / "tls_key.pem")
    status, body = await call(cluster, ctx, "GET", "/v1/nodes")
    assert status == 200, body
    assert node.host_uuid() in {n["id"] for n in body}
    status, body = await call(cluster, ctx, "POST", "/v1/tokens",
                              {"roles": ["node"], "ttl": "5m", "token": "admin-made-this"})
    assert status == 200, body
    assert body["token"] == "admin-made-this" and body["roles"] == ["node"]
    assert "admin-made-this" in {t["token"] for t in cluster.tctl_json("tokens", "ls")}
    status, body = await call(cluster, ctx, "DELETE", "/v1/tokens/admin-made-this")
    assert status == 200, body
    assert "admin-made-this" not in {t["token"] for t in cluster.tctl_json("tokens", "ls")}


async def test_forged_admin_from_another_ca_is_rejected(joined, tmp_path):
    """An admin certificate from a CA with the same cluster name, but not the cluster's."""
    cluster, node = joined
    forger = new_cert_authority(CAType.HOST, CLUSTER)
    key, public = generate_tls_keypair()
    cert = generate_tls_identity_cert(
        forger.active, public,
        TLSIdentity(name="admin", kind="admin", roles=["Admin"], cluster=CLUSTER),
        ttl=timedelta(hours=1),
    )
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    ctx = tls_context((node.identity_dir() / "ca_certs.pem").read_bytes(),
                      tmp_path / "cert.pem", tmp_path / "key.pem")
    try:
        status, body = await call(cluster, ctx, "POST", "/v1/tokens",
                                  {"roles": ["node"], "token": "forged-token"})
    except aiohttp.ClientError:
        pass  # refused in the TLS handshake
    else:
        assert status == 403, body
    assert "forged-token" not in {t["token"] for t in cluster.tctl_json("tokens", "ls")}


def test_node_diag_endpoints(joined):
    _cluster, node = joined
    base = f"http://{node.daemon.diag}"
    with urllib.request.urlopen(f"{base}/healthz", timeout=5) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(f"{base}/readyz", timeout=5) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    sent = re.search(r"^teleport_heartbeats_sent_total (\S+)$", metrics, re.M)
    assert sent and float(sent.group(1)) >= 1, metrics
    assert re.search(r"^teleport_ready 1(\.0)?$", metrics, re.M), metrics


def _admin_identity(ca, key_and_public=None) -> Identity:
    key, public = key_and_public or generate_tls_keypair()
    cert = generate_tls_identity_cert(
        ca.active, public, TLSIdentity(name="admin", kind="admin", roles=["Admin"], cluster="c.example"),
        ttl=timedelta(hours=1),
    )
    return Identity(tls_key=key, tls_cert=cert, ca_certs=ca.trusted_tls_certs())


def test_a_torn_read_of_an_identity_being_replaced_is_read_again(tmp_path):
    """The auth service rewrites the admin identity while tctl may be reading it: a key from the
    new identity beside the old certificate is not loaded as a pair."""
    ca = new_cert_authority(CAType.HOST, "c.example")
    old, new = _admin_identity(ca), _admin_identity(ca)
    old.save(tmp_path)
    (tmp_path / "tls_key.pem").write_bytes(new.tls_key)  # the writer is between its two files
    with pytest.raises(ConfigError, match="do not belong together"):
        Identity.load(tmp_path)

    finish = threading.Timer(0.2, lambda: (tmp_path / "tls_cert.pem").write_bytes(new.tls_cert))
    finish.start()
    try:
        loaded = Identity.load(tmp_path)
    finally:
        finish.join()
    assert loaded.tls_cert == new.tls_cert and loaded.tls_key == new.tls_key
