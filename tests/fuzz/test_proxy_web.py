"""The proxy's public web API under malformed input: the sign-up token in the path cannot steer
the request the proxy makes to the auth service with its own identity (``..%2Fnodes`` used to
answer an unauthenticated caller with the node inventory), and fuzzed login and sign-up bodies
get a 4xx JSON error or a 2xx, never a 5xx."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from teleport_runtime.client.tsh_web import insecure_context
from teleport_runtime.proxy import ProxyService
from tests.fuzz.conftest import FUZZ, AuthServer, junk_json, junk_text, shaped_body

pytestmark = pytest.mark.fuzz


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AuthServer, ProxyService]]:
    """One auth service, one proxy and one registered node for the module."""
    server = AuthServer(tmp_path_factory.mktemp("fuzz-web"))
    server.start()
    try:
        proxy = server.run(server.cluster.start_proxy())
        server.run(server.cluster.add_node("inventory-node"))
        yield server, proxy
    finally:
        server.stop()


def web(proxy: ProxyService, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """Send ``path`` exactly as given, as an attacker does (tsh's own client refuses encoded
    separators before sending, so it cannot replay these)."""
    conn = http.client.HTTPSConnection(proxy.cfg.proxy.web_listen_addr.host, proxy.web_port,
                                       context=insecure_context(), timeout=30)
    try:
        payload = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=payload, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        text = resp.read().decode(errors="replace")
    finally:
        conn.close()
    try:
        return resp.status, json.loads(text)
    except ValueError:
        return resp.status, text


def assert_error_shape(status: int, answer: Any, what: str) -> None:
    assert status < 500, f"{what}: {status} {answer}"
    if status >= 400:
        assert isinstance(answer, dict) and isinstance(answer.get("error"), dict), f"{what}: {answer!r}"
        assert answer["error"].get("code") and answer["error"].get("message"), f"{what}: {answer!r}"


@pytest.mark.parametrize("token", ["..%2Fnodes", "..%2F..%2Fv1%2Fnodes", "%2E%2E%2Fnodes", "..%2Froles",
                                   "..%2Fproxies", "..%2Fauthorities%2Frotation", "..", "a%0A"])
def test_signup_token_cannot_reach_other_auth_endpoints(proxy: tuple[AuthServer, ProxyService], token: str) -> None:
    _, service = proxy
    status, answer = web(service, "GET", f"/webapi/signup/{token}")
    # refused as a bad token, or looked up as a (never existing) token: never another endpoint
    assert status in (400, 403, 404), answer
    assert "inventory-node" not in str(answer)
    assert answer["error"]["code"] in ("bad_parameter", "access_denied", "not_found")


def test_a_good_token_shape_still_reaches_signup(proxy: tuple[AuthServer, ProxyService]) -> None:
    _, service = proxy
    status, answer = web(service, "GET", "/webapi/signup/0123456789abcdef0123456789abcdef")
    assert status == 403 and "sign-up token is unknown or expired" in answer["error"]["message"], answer


@FUZZ
@given(token=st.one_of(junk_text.filter(lambda s: len(s) < 1000), st.text(max_size=20).map(lambda s: "../" + s)))
def test_fuzzed_signup_tokens(proxy: tuple[AuthServer, ProxyService], token: str) -> None:
    _, service = proxy
    path = "/webapi/signup/" + quote(token, safe="")
    status, answer = web(service, "GET", path)
    assert_error_shape(status, answer, path[:200])
    assert status != 200 and "inventory-node" not in str(answer)


@FUZZ
@given(path=st.sampled_from(["/webapi/login", "/webapi/signup"]),
       body=st.one_of(shaped_body(["user", "password", "otp", "ssh_public_key", "tls_public_key", "ttl", "token"]),
                      junk_json))
def test_fuzzed_login_and_signup_bodies(proxy: tuple[AuthServer, ProxyService], path: str, body: Any) -> None:
    _, service = proxy
    status, answer = web(service, "POST", path, body)
    assert_error_shape(status, answer, path)
    assert status >= 400  # nobody signed up: no junk logs in
