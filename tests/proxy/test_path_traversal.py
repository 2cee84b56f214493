"""Path traversal through the proxy's web API, replayed against real daemons.

The attack: aiohttp decodes ``%2F`` in a path parameter, so ``GET /webapi/signup/..%2Fnodes``
gave the sign-up handler the token ``../nodes``; put into ``/v1/signup/{token}`` and normalised
on the way out, that fetched ``/v1/nodes`` from the auth API with the proxy's identity, for
anyone, unauthenticated. Now the proxy validates every path parameter where it enters (400 and
an ``access.denied`` audit event), and the auth client refuses such paths whoever built them.
"""

from __future__ import annotations

import http.client
import json
from typing import Any

import pytest

from teleport_runtime.api.client import insecure_ssl_context
from tests.conftest import Cluster, wait_for

ATTACKS = [
    "/webapi/signup/..%2Fnodes",
    "/webapi/signup/..%2Froles",
    "/webapi/signup/..%2Fproxies",
    "/webapi/signup/..%2Fauthorities%2Frotation",
    "/webapi/signup/..%2fnodes",
    "/webapi/signup/%2E%2E%2Fnodes",
    "/webapi/signup/%2e%2e",
    "/webapi/signup/..",
    "/webapi/signup/..%5Cnodes",
    "/webapi/signup/..%252Fnodes",
    "/webapi/signup/..%2F..%2Fv1%2Fnodes",
    "/webapi/signup/x%0A",
    "/webapi/signup/../../v1/nodes",
    "/webapi/recordings/..%2F..%2Fnodes",
    "/webapi/recordings/..%2Fsessions%2Factive",
    "/webapi/recordings/abc%0A",
]


def raw_get(web: str, path: str) -> tuple[int, str]:
    """GET ``path`` exactly as given (no client-side normalisation), as an attacker sends it."""
    host, _, port = web.rpartition(":")
    conn = http.client.HTTPSConnection(host, int(port), context=insecure_ssl_context(), timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


@pytest.fixture
def proxied(cluster: Cluster) -> tuple[Cluster, str, list[str]]:
    """A cluster with a node and a proxy; the strings no unauthenticated answer may contain."""
    node = cluster.start_node("node1", token=cluster.add_token("node")["token"], pins=(cluster.pin(),))
    proxy, web = cluster.start_proxy(cluster.add_token("proxy")["token"])
    wait_for(lambda: node.host_uuid() in {n["id"] for n in cluster.nodes()}, what="node1 registered")
    secrets = [node.host_uuid(), "node1", proxy.host_uuid(), "auditor", "editor", "standby",
               "BEGIN CERTIFICATE", "update_clients"]
    return cluster, web, secrets


def test_path_parameters_cannot_reach_other_auth_routes(proxied: tuple[Cluster, str, list[str]]) -> None:
    cluster, web, secrets = proxied
    for path in ATTACKS:
        status, text = raw_get(web, path)
        assert 400 <= status < 500, (path, status, text)
        body: Any = json.loads(text)
        assert set(body) == {"error"}, (path, body)
        for secret in secrets:
            assert secret not in text, (path, secret, text)

    # the refusal names the problem and the fix
    status, text = raw_get(web, "/webapi/signup/..%2Fnodes")
    message = json.loads(text)["error"]["message"]
    assert status == 400
    assert "invalid sign-up token '../nodes'" in message
    assert "pass the token exactly as it was issued" in message

    # and is audited with what was sent
    def audited() -> list[dict[str, Any]]:
        events = cluster.tctl_json("audit", "ls", "--type=access.denied")
        return [e for e in events if e.get("resource") == "/webapi/signup/..%2Fnodes"]

    event = wait_for(audited, what="an access.denied event for the traversal")[0]
    assert event["verb"] == "GET"
    assert event["remote_addr"] == "127.0.0.1"


def test_a_sign_up_token_still_reaches_the_auth_service(proxied: tuple[Cluster, str, list[str]]) -> None:
    cluster, web, _ = proxied
    invite = cluster.tctl_json("users", "add", "bob", "--roles=access", "--logins=bob")
    status, text = raw_get(web, f"/webapi/signup/{invite['token']}")
    assert status == 200, text
    assert json.loads(text)["user"] == "bob"
    status, text = raw_get(web, "/webapi/signup/0123456789abcdef0123456789abcdef")
    assert status == 403, text  # well-formed, unknown: the auth service's answer
