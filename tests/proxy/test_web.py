"""The proxy's web API over real TLS: discovery and pinning, login and sign-up forwarded to the
auth service, and the node list filtered by the user's roles."""

from __future__ import annotations

import asyncio
import ssl

import pyotp
import pytest

from teleport_runtime.ca import (
    CAType,
    check_ca_pins,
    generate_ssh_keypair,
    generate_tls_keypair,
    new_cert_authority,
    parse_tls_identity,
)
from teleport_runtime.client.tsh_web import ProxyWebClient, insecure_context, trusting_context
from teleport_runtime.config import HostPort
from teleport_runtime.errors import AccessDenied, ConnectionProblem
from tests.proxy.harness import CLUSTER, LocalCluster


class _Recorder(ProxyWebClient):
    peer: bytes | None = None

    def check_peer(self, der: bytes | None) -> None:
        self.peer = der


async def call(proxy, method: str, path: str, ctx: ssl.SSLContext, body=None):
    """(status, JSON body, the proxy's certificate) of one request."""
    client = _Recorder(HostPort(proxy.cfg.proxy.web_listen_addr.host, proxy.web_port), ctx)
    status, data = await asyncio.to_thread(client.request, method, path, body)
    return status, data, client.peer


@pytest.fixture
async def web(local_cluster: LocalCluster):
    proxy = await local_cluster.start_proxy()
    return local_cluster, proxy


async def test_ping_lets_a_client_pin_the_host_ca(web) -> None:
    cluster, proxy = web
    status, ping, peer = await call(proxy, "GET", "/webapi/ping", insecure_context())
    assert status == 200
    assert ping["cluster"] == CLUSTER
    ip = proxy.cfg.proxy.listen_addr.host
    assert ping["proxy"] == {"ssh_addr": f"{ip}:{proxy.ssh_port}", "web_addr": f"{ip}:{proxy.web_port}"}
    assert ping["auth"] == {"second_factor": "otp", "type": "local"}
    check_ca_pins([c.encode() for c in ping["host_ca_certs"]], await cluster.pins())
    # the proxy's TLS identity chains to those CA certs and says Proxy
    status, _, peer = await call(
        proxy, "GET", "/webapi/ping", trusting_context([c.encode() for c in ping["host_ca_certs"]])
    )
    identity = parse_tls_identity(peer)
    assert (identity.kind, identity.roles, identity.cluster) == ("host", ["Proxy"], CLUSTER)


async def test_ping_lists_every_host_ca_the_cluster_trusts_during_a_rotation(web) -> None:
    cluster, proxy = web
    _, ping, _ = await call(proxy, "GET", "/webapi/ping", insecure_context())
    assert len(ping["host_ca_keys"]) == 1
    assert ping["host_ca_keys"] == (await cluster.auth.public_cas())["host_ca_keys"]
    await cluster.auth.rotation.rotate("host", mode="manual", target_phase="init")
    wanted = await cluster.auth.public_cas()
    assert len(wanted["host_ca_keys"]) == len(wanted["host_ca_certs"]) == 2
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30  # the proxy's rotation watch answers at once; bounded poll
    while True:
        _, ping, _ = await call(proxy, "GET", "/webapi/ping", insecure_context())
        if (ping["host_ca_keys"], ping["host_ca_certs"]) == (wanted["host_ca_keys"], wanted["host_ca_certs"]):
            break
        assert loop.time() < deadline, f"the proxy's ping still lists {ping['host_ca_keys']}"
        await asyncio.sleep(0.1)


async def test_another_ca_does_not_verify_the_proxy(web) -> None:
    _, proxy = web
    other = new_cert_authority(CAType.HOST, CLUSTER)
    with pytest.raises(AccessDenied, match="not signed by the cluster's host CA"):
        await call(proxy, "GET", "/webapi/ping", trusting_context(other.trusted_tls_certs()))


async def test_nodes_need_a_user_certificate(web) -> None:
    cluster, proxy = web
    host_certs = (await cluster.auth.get_ca(CAType.HOST)).trusted_tls_certs()
    status, body, _ = await call(proxy, "GET", "/webapi/nodes", trusting_context(host_certs))
    assert status == 403
    assert body["error"]["code"] == "access_denied"
    assert "tsh login" in body["error"]["message"]


async def test_nodes_are_filtered_by_roles(web) -> None:
    cluster, proxy = web
    await cluster.auth.users.upsert_role(
        {"kind": "role", "version": "v1", "metadata": {"name": "prod-root"},
         "spec": {"allow": {"logins": ["root"], "node_labels": {"env": "prod"}}}},
        force=True,
    )
    await cluster.add_node("web1", {"env": "prod"})
    await cluster.add_node("dev1", {"env": "dev"})
    await proxy.directory.refresh()
    host_certs = (await cluster.auth.get_ca(CAType.HOST)).trusted_tls_certs()

    async def visible(roles: list[str], logins: list[str]) -> list[str]:
        keys = await cluster.user_keys("alice", logins, roles)
        ctx = trusting_context(host_certs, keys.tls_cert, keys.tls_key)
        status, body, _ = await call(proxy, "GET", "/webapi/nodes", ctx)
        assert status == 200, body
        return [n["hostname"] for n in body]

    assert await visible(["prod-root"], ["root"]) == ["web1"]
    assert await visible(["access"], ["root"]) == ["dev1", "web1"]
    assert await visible(["editor"], []) == []
    keys = await cluster.user_keys("a", ["root"], ["access"])
    _, nodes, _ = await call(proxy, "GET", "/webapi/nodes", trusting_context(host_certs, keys.tls_cert, keys.tls_key))
    assert set(nodes[0]) == {"id", "hostname", "addr", "labels"}


async def test_foreign_user_certificates_are_refused(web) -> None:
    cluster, proxy = web
    foreign = new_cert_authority(CAType.USER, CLUSTER).active
    keys = await cluster.user_keys("mallory", ["root"], ["access"], ca=foreign)
    host_certs = (await cluster.auth.get_ca(CAType.HOST)).trusted_tls_certs()
    with pytest.raises(ConnectionProblem):
        await call(proxy, "GET", "/webapi/nodes", trusting_context(host_certs, keys.tls_cert, keys.tls_key))


async def test_login_forwards_to_the_auth_service(web) -> None:
    cluster, proxy = web
    secret = await cluster.add_user("alice", ["access"], ["root"], "correct horse battery")
    _, ssh_public = generate_ssh_keypair()
    _, tls_public = generate_tls_keypair()
    body = {"user": "alice", "password": "correct horse battery", "otp": pyotp.TOTP(secret).now(),
            "ssh_public_key": ssh_public, "tls_public_key": tls_public.decode(), "ttl": "1h"}
    status, answer, _ = await call(proxy, "POST", "/webapi/login", insecure_context(), body)
    assert status == 200, answer
    assert answer["username"] == "alice"
    assert answer["cluster"] == CLUSTER
    assert "root" in answer["logins"]
    assert answer["ssh_cert"].startswith("ssh-ed25519-cert-v01@openssh.com ")
    assert parse_tls_identity(answer["tls_cert"].encode()).kind == "user"

    wrong = {**body, "password": "wrong password!"}
    status, answer, _ = await call(proxy, "POST", "/webapi/login", insecure_context(), wrong)
    assert status == 403
    assert answer["error"]["code"] == "access_denied"
    failures = [e for e in await cluster.audit_events("user.login") if not e.get("success")]
    assert failures and failures[-1]["remote_addr"] == "127.0.0.1"


async def test_signup_through_the_proxy(web) -> None:
    cluster, proxy = web
    invite = await cluster.auth.users.add_user("bob", ["access"], ["bob"])
    status, info, _ = await call(proxy, "GET", f"/webapi/signup/{invite['token']}", insecure_context())
    assert status == 200, info
    assert info["user"] == "bob"
    totp = pyotp.parse_uri(info["otpauth_uri"])
    body = {"token": invite["token"], "password": "a long enough password", "otp": totp.now()}
    status, answer, _ = await call(proxy, "POST", "/webapi/signup", insecure_context(), body)
    assert (status, answer) == (200, {"user": "bob"})
    status, answer, _ = await call(proxy, "GET", "/webapi/signup/not-a-token", insecure_context())
    assert status == 403


async def test_unknown_paths_answer_json_errors(web) -> None:
    _, proxy = web
    status, body, _ = await call(proxy, "GET", "/webapi/nope", insecure_context())
    assert status == 404
    assert body["error"]["code"] == "not_found"
