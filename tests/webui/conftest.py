"""The web UI in Debian's chromium, headless, driven by Playwright (the system browser: nothing is
downloaded), against real daemons on loopback: `teleport start` auth, proxy and two nodes.

One browser and one cluster for the module (CI time); each test gets a fresh page in its own
browser context, and a failing test leaves a screenshot (its path is printed) in the
``webui-artifacts`` directory under pytest's tmp path."""

from __future__ import annotations

import json
import os
import ssl
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyotp
import pytest

from teleport_runtime.proxy.webui import assets_dir
from tests.conftest import Cluster, Node, wait_for

CHROMIUM = "/usr/bin/chromium"
CLUSTER = "webui.test"
PASSWORD = "correct horse battery staple"

playwright_sync = pytest.importorskip("playwright.sync_api")


@dataclass
class User:
    name: str
    totp: pyotp.TOTP
    #: The last time step whose code was used: each code logs in once.
    last_step: int = -1

    def otp(self) -> str:
        """A one-time code not used before (waits for the next step when the current one was)."""
        while int(time.time()) // self.totp.interval <= self.last_step:
            time.sleep(0.5)
        self.last_step = int(time.time()) // self.totp.interval
        return self.totp.now()


@dataclass
class WebUIEnv:
    root: Path
    cluster: Cluster
    proxy: Node
    web: str
    nodes: dict[str, Node]
    users: dict[str, User] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"https://{self.web}"

    def webapi(self, method: str, path: str, body: Any = None) -> Any:
        """A JSON request to the proxy's web API (loopback: the test trusts it without a pin)."""
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
            return json.loads(resp.read())

    def add_user(self, name: str, roles: str, logins: str) -> User:
        """``tctl users add``, then the sign-up through the proxy with the previous step's code
        (accepted within the window), so the current code is still good for a login."""
        invite = self.cluster.tctl_json("users", "add", name, f"--roles={roles}", f"--logins={logins}")
        info = self.webapi("GET", f"/webapi/signup/{invite['token']}")
        totp = pyotp.parse_uri(info["otpauth_uri"])
        assert isinstance(totp, pyotp.TOTP)
        self.webapi("POST", "/webapi/signup", {"token": invite["token"], "password": PASSWORD,
                                               "otp": totp.at(time.time() - totp.interval)})
        user = User(name, totp)
        self.users[name] = user
        return user

    def audit(self, types: str) -> list[dict[str, Any]]:
        return self.cluster.tctl_json("audit", "ls", "--since=1h", f"--type={types}")

    def wait_audit(self, types: str, match: Any, what: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [e for e in self.audit(types) if match(e)]
            return bool(found)

        wait_for(seen, what=what)
        return found[-1]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebUIEnv]:
    if not (assets_dir() / "index.html").is_file():
        pytest.fail("the web UI is not built: run `npm ci && npm run build` in frontend/ (scripts/setup does)")
    root = tmp_path_factory.mktemp("webui")
    cluster = Cluster(root, CLUSTER, {"presence_ttl": "10s"})
    try:
        cluster.start()
        token = cluster.add_token(roles="node,proxy", ttl="10m")["token"]
        pin = cluster.pin()
        proxy, web = cluster.start_proxy(token)
        nodes = {
            name: cluster.start_node(name, config={"ssh_service": {"labels": labels}}, token=token, pins=(pin,))
            for name, labels in (("node1", {"env": "prod"}), ("node2", {"env": "dev"}))
        }
        env = WebUIEnv(root, cluster, proxy, web, nodes)
        env.add_user("alice", "access", "root,nobody")
        env.add_user("auditor", "auditor", "")
        wait_for(lambda: {n["hostname"] for n in cluster.nodes()} >= {"node1", "node2"},
                 what="both nodes to register")
        yield env
    finally:
        cluster.kill_all()


@pytest.fixture(scope="module")
def browser(env: WebUIEnv) -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup installs Debian's chromium")
    with playwright_sync.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture
def page(request: pytest.FixtureRequest, browser: Any, env: WebUIEnv,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    # The proxy's certificate is from the cluster's own CA, which the browser does not know.
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1200, "height": 800})
    context.set_default_timeout(20_000)
    page = context.new_page()
    yield page
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        artifacts = tmp_path_factory.getbasetemp() / "webui-artifacts"
        artifacts.mkdir(exist_ok=True)
        shot = artifacts / f"{request.node.name}.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"\nscreenshot of the failed page: {shot}")
    context.close()
