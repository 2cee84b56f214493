"""Web sessions at the proxy, without a browser: the in-process cluster (the real auth service and
proxy on loopback) and HTTP requests as a browser would send them, or as an attacker would."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pyotp
import pytest

from teleport_runtime.proxy.webui import COOKIE, CSP, CSRF_HEADER
from tests.proxy.harness import LocalCluster

PASSWORD = "correct horse battery staple"


class Browser:
    def __init__(self, proxy: Any) -> None:
        self.proxy = proxy
        self.origin = f"https://{proxy.cfg.proxy.web_listen_addr.host}:{proxy.web_port}"
        self.cookie = ""

    async def call(self, method: str, path: str, body: Any = None, *, origin: str | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any, aiohttp.ClientResponse]:
        sent = {"Origin": origin if origin is not None else self.origin, **(headers or {})}
        if self.cookie:
            sent["Cookie"] = f"{COOKIE}={self.cookie}"
        async with aiohttp.ClientSession() as http, http.request(
            method, self.origin + path, json=body, headers=sent, ssl=False,
        ) as resp:
            if COOKIE in resp.cookies:
                self.cookie = resp.cookies[COOKIE].value
            data = await resp.json() if resp.content_type == "application/json" else await resp.text()
            return resp.status, data, resp


@pytest.fixture
async def setup(tmp_path) -> Any:
    cluster = LocalCluster(tmp_path / "cluster")
    await cluster.start()
    try:
        proxy = await cluster.start_proxy()
        secret = await cluster.add_user("alice", ["access"], ["root"], PASSWORD)
        yield cluster, proxy, pyotp.TOTP(secret)
    finally:
        await cluster.stop()


async def denied(cluster: LocalCluster, reason_part: str) -> list[dict[str, Any]]:
    for _ in range(50):
        found = [e for e in await cluster.audit_events("access.denied") if reason_part in e.get("reason", "")]
        if found:
            return found
        await asyncio.sleep(0.1)
    pytest.fail(f"no access.denied event with {reason_part!r}")


async def test_login_session_csrf_expiry_logout(setup) -> None:
    cluster, proxy, totp = setup
    browser = Browser(proxy)
    status, body, resp = await browser.call("POST", "/web/api/login",
                                            {"user": "alice", "password": PASSWORD, "otp": totp.now()})
    assert status == 200, body
    assert body["user"] == "alice" and body["logins"] == ["root"]
    cookie = resp.headers["Set-Cookie"]
    for flag in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/"):
        assert flag in cookie
    # the cookie holds an opaque id: no certificate or key leaves the proxy
    assert body["csrf_token"] not in cookie and len(browser.cookie) >= 40
    assert resp.headers["Content-Security-Policy"] == CSP
    assert resp.headers["X-Frame-Options"] == "DENY"
    csrf = body["csrf_token"]

    status, body, _ = await browser.call("GET", "/web/api/session")
    assert status == 200 and body["user"] == "alice"

    # state-changing requests: without the token, with a forged one, from another origin
    status, body, _ = await browser.call("POST", "/web/api/logout")
    assert status == 403 and "CSRF" in body["error"]["message"]
    status, body, _ = await browser.call("POST", "/web/api/logout", headers={CSRF_HEADER: csrf + "x"})
    assert status == 403
    status, body, _ = await browser.call("POST", "/web/api/logout", headers={CSRF_HEADER: csrf},
                                         origin="https://evil.example")
    assert status == 403 and "evil.example" in body["error"]["message"]
    await denied(cluster, "CSRF")
    await denied(cluster, "evil.example")
    assert (await browser.call("GET", "/web/api/session"))[0] == 200  # none of that ended the session

    # the session lasts no longer than the certificate: past its end it is refused and dropped
    session = next(iter(proxy.web.webui.sessions.values()))
    assert session.expires <= time.time() + 30 * 3600 + 5
    session.expires = time.time() - 1
    status, body, _ = await browser.call("GET", "/web/api/nodes")
    assert status == 401 and "expired" in body["error"]["message"]
    await denied(cluster, "expired")
    assert proxy.web.webui.sessions == {}


async def test_logout_ends_the_session_on_the_server(setup) -> None:
    cluster, proxy, totp = setup
    browser = Browser(proxy)
    status, body, _ = await browser.call("POST", "/web/api/login",
                                         {"user": "alice", "password": PASSWORD, "otp": totp.now()})
    assert status == 200
    old = browser.cookie
    status, _, _ = await browser.call("POST", "/web/api/logout", headers={CSRF_HEADER: body["csrf_token"]})
    assert status == 200
    assert proxy.web.webui.sessions == {}
    # a copy of the old cookie is worth nothing now
    browser.cookie = old
    status, body, _ = await browser.call("GET", "/web/api/session")
    assert status == 401 and "log in again" in body["error"]["message"]
    await denied(cluster, "not logged in")


async def test_wrong_login_stores_nothing(setup) -> None:
    cluster, proxy, totp = setup
    browser = Browser(proxy)
    status, body, resp = await browser.call("POST", "/web/api/login",
                                            {"user": "alice", "password": "wrong", "otp": totp.now()})
    assert status in (400, 401, 403), body
    assert COOKIE not in resp.cookies and proxy.web.webui.sessions == {}
    failures = [e for e in await cluster.audit_events("user.login") if e.get("success") is False]
    assert failures and failures[-1]["user"] == "alice"
    # a login from another origin is refused before the auth service sees it
    status, body, _ = await browser.call("POST", "/web/api/login",
                                         {"user": "alice", "password": PASSWORD, "otp": totp.now()},
                                         origin="https://evil.example")
    assert status == 403 and proxy.web.webui.sessions == {}


async def test_app_and_assets(setup) -> None:
    _, proxy, _ = setup
    browser = Browser(proxy)
    for path in ("/", "/web/nodes", "/web/login"):
        status, text, resp = await browser.call("GET", path)
        assert status == 200 and '<script type="module" src="/web/assets/app.js">' in text
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
        assert "<script>" not in text  # no inline script
    assert (await browser.call("GET", "/web/assets/app.js"))[0] == 200
    for path in ("/web/assets/..%2F__init__.py", "/web/assets/.hidden", "/web/assets/nothere.js"):
        assert (await browser.call("GET", path))[0] == 404, path
    # the reads need a session
    for path in ("/web/api/nodes", "/web/api/recordings", "/web/api/sessions"):
        assert (await browser.call("GET", path))[0] == 401, path
