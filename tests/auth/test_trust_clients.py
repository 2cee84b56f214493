"""What clients of the auth API verify about the server, replayed against real daemons.

The attack: a member of the cluster (here a node, with a certificate from the normal join, the
API's name ``teleport.cluster.local`` added with the host CA) serves the auth API where the auth
service was. Its certificate chains to the host CA and carries the API's name; without a check
of the role in it, nodes would adopt its CAs through their rotation sync and proxies would send
it users' passwords. Every client (a node's, a proxy's, tctl, a joining host) must refuse it
during the TLS handshake, before sending anything.

Also the request-path rules of the auth client (:mod:`teleport_runtime.urlpath`).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import ssl
import threading
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from teleport_runtime.agent.join import join_cluster
from teleport_runtime.api.client import AuthClient, insecure_ssl_context, trusting_ssl_context
from teleport_runtime.backend import open_backend
from teleport_runtime.ca import CAType, CertAuthority, generate_tls_identity_cert, parse_tls_identity
from teleport_runtime.config import HostPort
from teleport_runtime.errors import BadParameter, ConnectionProblem
from teleport_runtime.identity import Identity, WrongServer, load_cert_chain, require_server_role
from teleport_runtime.urlpath import api_path, check_path_param, check_request_path, check_url_token
from tests.conftest import Cluster, next_loopback_ip, wait_for
from tests.proxy.harness import LocalCluster

API_SERVER_NAME = "teleport.cluster.local"
PASSWORD = "rogue-must-never-see-this-password"


# ---------------------------------------------------------------------------- the rogue server


@dataclass
class RogueAuth:
    """A TLS server with a node's key and certificate that answers like the auth API (``GET
    /v1/ca`` with the real cluster's CAs, so a pin would match; ``{}`` to anything else) and
    records every connection and every byte a client sends after the handshake."""

    cert: bytes
    key: bytes
    host: str
    port: int
    ca_answer: dict[str, Any] = field(default_factory=dict)
    accepted: int = 0
    received: bytearray = field(default_factory=bytearray)
    requests: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        load_cert_chain(self.ctx, self.cert, self.key)
        # SO_REUSEADDR: the rogue takes over the address of the auth service it replaces.
        self.sock = socket.create_server((self.host, self.port))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(0.2)
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def addr(self) -> HostPort:
        return HostPort(self.host, self.port)

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                self.accepted += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = tls.recv(65536)
                    if not chunk:
                        return
                    self._record(chunk)
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                request_line = head.split(b"\r\n")[0].decode(errors="replace")
                with self.lock:
                    self.requests.append(request_line)
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(body) < length:
                    chunk = tls.recv(65536)
                    if not chunk:
                        break
                    self._record(chunk)
                    body += chunk
                answer = json.dumps(self.ca_answer if request_line.startswith("GET /v1/ca ") else {}).encode()
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                            b"Content-Length: " + str(len(answer)).encode() + b"\r\n\r\n" + answer)
        except (ssl.SSLError, OSError):
            pass  # the clients under test abort the handshake

    def _record(self, chunk: bytes) -> None:
        with self.lock:
            self.received += chunk

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()
        self.thread.join(5)


def _public_pem(private_pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(private_pem, password=None)
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


async def _host_ca(data_dir: Path) -> CertAuthority:
    backend = open_backend({"type": "sqlite"}, data_dir, sweep_interval=None)
    try:
        return CertAuthority.from_dict(json.loads((await backend.get("/authorities/host")).value))
    finally:
        await backend.close()


async def _node_certificate(
    auth_addr: HostPort, token: str, pins: list[str], auth_data_dir: Path
) -> tuple[bytes, bytes]:
    """A node's key and certificate: joined the normal way, then the API's name added by signing
    the same identity and key with the host CA (the join may not sign that name)."""
    joined = await join_cluster(
        auth_servers=[auth_addr], token=token, ca_pins=pins, role="node", nodename="rogue",
        uuid=str(uuid.uuid4()), addresses=["127.0.0.1"], warn=lambda _m: None,
    )
    identity = parse_tls_identity(joined.tls_cert)
    assert (identity.kind, identity.roles) == ("host", ["Node"])
    cert = generate_tls_identity_cert(
        (await _host_ca(auth_data_dir)).active, _public_pem(joined.tls_key), identity,
        ttl=timedelta(hours=1), dns_names=[API_SERVER_NAME], ip_addresses=["127.0.0.1"],
    )
    return cert, joined.tls_key


def _replace_auth_with_rogue(cluster: Cluster) -> RogueAuth:
    """Kill the auth service and serve the rogue at its address."""
    token = cluster.add_token("node")["token"]
    auth = HostPort(cluster.host, cluster.port)
    cert, key = asyncio.run(_node_certificate(auth, token, [cluster.pin()], cluster.data_dir))
    cas = asyncio.run(_fetch_cas(auth))
    assert cluster.auth is not None
    cluster.auth.kill()
    return RogueAuth(cert, key, cluster.host, cluster.port, ca_answer=cas)


async def _fetch_cas(addr: HostPort) -> dict[str, Any]:
    async with AuthClient([addr], insecure_ssl_context(), verify_name=False) as probe:
        return await probe.request("GET", "/v1/ca")


def _assert_nothing_sent(rogue: RogueAuth) -> None:
    assert rogue.accepted > 0, "the client never reached the rogue server: the test proves nothing"
    assert rogue.requests == []
    assert bytes(rogue.received) == b""


@pytest.fixture
def rogue_cleanup() -> Any:
    made: list[RogueAuth] = []
    yield made
    for rogue in made:
        rogue.close()


# ---------------------------------------------------------------------------- real daemons


def test_a_node_refuses_a_node_serving_the_auth_api(cluster: Cluster, rogue_cleanup: list[RogueAuth]) -> None:
    token = cluster.add_token("node")["token"]
    node = cluster.start_node("node1", token=token, pins=(cluster.pin(),))
    user_ca = (node.identity_dir() / "user_ca.pub").read_bytes()
    ca_certs = (node.identity_dir() / "ca_certs.pem").read_bytes()
    rogue = _replace_auth_with_rogue(cluster)
    rogue_cleanup.append(rogue)

    # the node's heartbeat (every second) and rotation sync dial the rogue and refuse it
    wait_for(lambda: "is not the auth service" in node.log() and rogue.accepted >= 2,
             what="the node to refuse the rogue auth server")
    log = node.log()
    assert "roles Node), not one with the Auth role" in log
    _assert_nothing_sent(rogue)
    assert node.daemon is not None and node.daemon.alive()
    # nothing learned from it: the node trusts the cluster's CAs as before
    assert (node.identity_dir() / "user_ca.pub").read_bytes() == user_ca
    assert (node.identity_dir() / "ca_certs.pem").read_bytes() == ca_certs


def test_a_proxy_never_sends_a_password_to_a_node_serving_the_auth_api(
    cluster: Cluster, rogue_cleanup: list[RogueAuth]
) -> None:
    proxy, web = cluster.start_proxy(cluster.add_token("proxy")["token"])
    rogue = _replace_auth_with_rogue(cluster)
    rogue_cleanup.append(rogue)

    host, _, port = web.rpartition(":")
    conn = http.client.HTTPSConnection(host, int(port), context=insecure_ssl_context(), timeout=60)
    body = {"user": "alice", "password": PASSWORD, "otp": "123456"}
    conn.request("POST", "/webapi/login", body=json.dumps(body), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    answer = json.loads(resp.read())
    conn.close()
    assert resp.status == 502, answer
    assert answer["error"]["code"] == "connection_problem"
    assert "is not the auth service" in answer["error"]["message"]
    assert "not one with the Auth role" in answer["error"]["message"]
    _assert_nothing_sent(rogue)
    assert PASSWORD.encode() not in bytes(rogue.received)
    assert "is not the auth service" in proxy.log()


def test_tctl_refuses_a_node_serving_the_auth_api(cluster: Cluster, rogue_cleanup: list[RogueAuth]) -> None:
    rogue = _replace_auth_with_rogue(cluster)
    rogue_cleanup.append(rogue)
    result = cluster.tctl("users", "add", "mallory", "--roles=editor", "--logins=root", check=False)
    assert result.returncode != 0
    assert "is not the auth service" in result.stderr
    assert "roles Node), not one with the Auth role" in result.stderr
    assert str(rogue.addr) in result.stderr  # names the peer
    _assert_nothing_sent(rogue)


def test_a_joining_host_never_sends_its_token_to_a_node_serving_the_auth_api(
    cluster: Cluster, rogue_cleanup: list[RogueAuth]
) -> None:
    pin = cluster.pin()
    token = cluster.add_token("node")["token"]
    auth = HostPort(cluster.host, cluster.port)
    cert, key = asyncio.run(_node_certificate(auth, cluster.add_token("node")["token"], [pin], cluster.data_dir))
    rogue = RogueAuth(cert, key, next_loopback_ip(), 0, ca_answer=asyncio.run(_fetch_cas(auth)))
    rogue_cleanup.append(rogue)

    # the pin matches what the rogue relays; the role in its certificate does not
    with pytest.raises(ConnectionProblem, match="not one with the Auth role"):
        asyncio.run(join_cluster(
            auth_servers=[rogue.addr], token=token, ca_pins=[pin], role="node", nodename="victim",
            uuid=str(uuid.uuid4()), addresses=[], warn=lambda _m: None,
        ))
    _assert_nothing_sent(rogue)

    # the reconnect after the pin check (verifying the CA) requires the role too
    ca_certs = [c.encode() for c in rogue.ca_answer["host_ca_certs"]]

    async def reconnect() -> None:
        async with AuthClient([rogue.addr], trusting_ssl_context(ca_certs)) as client:
            await client.request("POST", "/v1/join", {"token": token})

    with pytest.raises(ConnectionProblem, match="is not the auth service"):
        asyncio.run(reconnect())
    _assert_nothing_sent(rogue)
    # and the real auth service is accepted by the same client
    assert asyncio.run(_fetch_cas(auth))["host_ca_certs"] == rogue.ca_answer["host_ca_certs"]


# ---------------------------------------------------------------------------- in process


async def test_the_real_auth_service_is_accepted_and_a_proxy_certificate_is_not(
    local_cluster: LocalCluster, rogue_cleanup: list[RogueAuth]
) -> None:
    proxy_identity, _ = await local_cluster.join("proxy", "proxy1", ["127.0.0.1"])
    node_identity, _ = await local_cluster.join("node", "node1", ["127.0.0.1"])
    client = local_cluster.client(node_identity)
    assert await client.request("GET", "/v1/roles") is not None  # the auth service's own certificate passes

    host_ca = await local_cluster.auth.get_ca(CAType.HOST)
    cert = generate_tls_identity_cert(
        host_ca.active, _public_pem(proxy_identity.tls_key), parse_tls_identity(proxy_identity.tls_cert),
        ttl=timedelta(hours=1), dns_names=[API_SERVER_NAME], ip_addresses=["127.0.0.1"],
    )
    rogue = RogueAuth(cert, proxy_identity.tls_key, "127.0.0.1", 0)
    rogue_cleanup.append(rogue)
    victim = AuthClient.for_identity([rogue.addr], node_identity)
    try:
        with pytest.raises(ConnectionProblem, match=r"roles Proxy\), not one with the Auth role"):
            await victim.request("POST", "/v1/heartbeat", {"hostname": "node1"})
        # a new identity (rotation) keeps the check
        victim.set_ssl_context(node_identity.client_ssl_context())
        with pytest.raises(ConnectionProblem, match="is not the auth service"):
            await victim.request("GET", "/v1/authorities/watch")
    finally:
        await victim.close()
    assert rogue.accepted >= 2
    assert bytes(rogue.received) == b""


async def test_the_check_holds_for_blocking_clients_of_the_context_too(
    local_cluster: LocalCluster, rogue_cleanup: list[RogueAuth]
) -> None:
    """The role check is part of the TLS context, so a standard-library client using it (no
    aiohttp) is refused the same way, before its request is written."""
    node_identity, _ = await local_cluster.join("node", "node1", ["127.0.0.1"])
    host_ca = await local_cluster.auth.get_ca(CAType.HOST)
    cert = generate_tls_identity_cert(
        host_ca.active, _public_pem(node_identity.tls_key), parse_tls_identity(node_identity.tls_cert),
        ttl=timedelta(hours=1), dns_names=[API_SERVER_NAME], ip_addresses=["127.0.0.1"],
    )
    rogue = RogueAuth(cert, node_identity.tls_key, "127.0.0.1", 0)
    rogue_cleanup.append(rogue)
    ctx = require_server_role(node_identity.client_ssl_context(), "Auth")

    def post() -> None:
        conn = http.client.HTTPSConnection("127.0.0.1", rogue.port, context=ctx, timeout=10)
        conn.request("POST", "/v1/users/login", body=json.dumps({"password": PASSWORD}))

    with pytest.raises(WrongServer, match="not one with the Auth role"):
        await asyncio.to_thread(post)
    # the same context accepts the real auth service
    conn = http.client.HTTPSConnection("127.0.0.1", local_cluster.addr.port, context=ctx, timeout=10)
    await asyncio.to_thread(conn.connect)
    conn.close()
    assert rogue.accepted == 1
    assert bytes(rogue.received) == b""


async def test_another_clusters_auth_service_is_refused(local_cluster: LocalCluster, tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    other = LocalCluster(tmp_path / "other", cluster="other.test")
    await other.start()
    try:
        node_identity, _ = await local_cluster.join("node", "node1", ["127.0.0.1"])
        # trusting both clusters' host CAs: the cluster name in the certificate still decides
        both = Identity(
            tls_key=node_identity.tls_key, tls_cert=node_identity.tls_cert,
            ca_certs=node_identity.ca_certs + (await other.auth.get_ca(CAType.HOST)).trusted_tls_certs(),
        )
        async with AuthClient.for_identity([other.addr], both) as client:
            with pytest.raises(ConnectionProblem, match=r"cluster 'other\.test', not of 'proxy\.test'"):
                await client.request("GET", "/v1/ca")
    finally:
        await other.stop()


async def test_the_auth_client_refuses_paths_that_leave_their_route(local_cluster: LocalCluster) -> None:
    """Defence in depth: a call site that forgot validation cannot reach another route."""
    proxy_identity, _ = await local_cluster.join("proxy", "proxy1", ["127.0.0.1"])
    client = local_cluster.client(proxy_identity)
    for path in ("/v1/signup/../nodes", "/v1/signup/..%2Fnodes", "/v1/signup/..%2fnodes",
                 "/v1/signup/%2E%2E%2Fnodes", "/v1/signup/..%5Cnodes", "/v1/signup/..\\nodes",
                 "/v1/signup/./x", "/v1/signup//nodes", "/v1/signup/", "v1/nodes", "/v1/signup/a b",
                 "/v1/signup/a\nb", "/v1/signup/x#frag"):
        with pytest.raises(BadParameter, match="refusing to request"):
            await client.request("GET", path)
    assert isinstance(await client.request("GET", "/v1/nodes"), list)  # the check passes ordinary paths


# ---------------------------------------------------------------------------- the path builder


@pytest.mark.parametrize("value", ["..", ".", "", "../nodes", "..%2Fnodes", "a%2fb", "a%5Cb", "%2E%2E",
                                   "a/b", "a\\b", "a\nb", "a\x00b", "x" * 1025])
def test_the_path_builder_refuses_values_that_are_not_one_segment(value: str) -> None:
    with pytest.raises(BadParameter, match="invalid token"):
        api_path("/v1/tokens/{token}", token=value)
    with pytest.raises(BadParameter):
        check_path_param(value)


def test_the_path_builder_quotes_each_value_and_the_query() -> None:
    assert api_path("/v1/users/{name}/reset", name="alice") == "/v1/users/alice/reset"
    assert api_path("/v1/users/{name}", name="a?b#c%d e") == "/v1/users/a%3Fb%23c%25d%20e"
    assert api_path("/v1/tokens/{token}", token="x:y=z,w") == "/v1/tokens/x%3Ay%3Dz%2Cw"
    assert api_path("/v1/recordings", query={"since": "2024-01-01T00:00:00+00:00"}) == (
        "/v1/recordings?since=2024-01-01T00%3A00%3A00%2B00%3A00")
    assert api_path("/v1/authorities/watch", query={"revision": "", "wait": 30}) == (
        "/v1/authorities/watch?revision=&wait=30")
    with pytest.raises(ValueError):
        api_path("/v1/users/{name}", user="alice")
    with pytest.raises(BadParameter):
        api_path("/v1/../nodes")


def test_request_paths_are_checked_as_a_whole() -> None:
    assert check_request_path("/v1/audit?since=1h&type=a%2Cb") == "/v1/audit?since=1h&type=a%2Cb"
    assert check_request_path("/v1/recordings?since=..%2F") == "/v1/recordings?since=..%2F"  # query values
    for path in ("/v1/../nodes", "/v1/x/%2e%2e/nodes", "/v1//nodes", "/v1/nodes/", "/v1/x%2Fy"):
        with pytest.raises(BadParameter, match="refusing to request"):
            check_request_path(path)


def test_sign_up_tokens_are_url_safe() -> None:
    assert check_url_token("0123456789abcdef0123456789abcdef") == "0123456789abcdef0123456789abcdef"
    for value in ("", "../nodes", "..%2Fnodes", "a.b", "a b", "abc\n", "x" * 257):
        with pytest.raises(BadParameter, match="letters, digits"):
            check_url_token(value)
