"""The web UI as a person uses it, in chromium: log in, list nodes, a terminal on node1 running
`hostname`, resize, log out; the auditor plays that session; and each refusal (a wrong password, a
forged CSRF token, a websocket from another origin, a login the roles deny, an oversized frame)
shown on the page or answered with the reason, and audited. axe-core finds nothing serious or
critical on any page."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import pyotp
import pytest

from tests.conftest import wait_for
from tests.webui.conftest import PASSWORD, User, WebUIEnv

AXE = Path(__file__).resolve().parents[2] / "frontend" / "node_modules" / "axe-core" / "axe.min.js"


def axe_findings(page: Any) -> list[str]:
    """Serious and critical axe-core findings on the page as it is now."""
    if not AXE.is_file():
        pytest.fail(f"{AXE} is missing: run `npm ci` in frontend/ (scripts/setup does)")
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        # evaluated by the devtools protocol, outside the page's Content-Security-Policy
        page.evaluate(AXE.read_text() + "\n;0")
    return list(page.evaluate(
        """async () => (await axe.run(document)).violations
             .filter(v => v.impact === 'serious' || v.impact === 'critical')
             .map(v => `${v.id}: ${v.help} (${v.nodes.map(n => n.target.join(' ')).join('; ')})`)"""
    ))


def docs_screenshot(page: Any, name: str) -> None:
    """With WEBUI_SCREENSHOT_DIR set (docs/ for the README), keep a picture of the page."""
    target = os.environ.get("WEBUI_SCREENSHOT_DIR")
    if target:
        page.screenshot(path=str(Path(target) / name))


def watch_csp(page: Any) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text)
            if msg.type == "error" and "Content Security Policy" in msg.text else None)
    return errors


def log_in(page: Any, env: WebUIEnv, user: str, password: str = PASSWORD) -> None:
    page.goto(env.url + "/")
    page.get_by_test_id("login-username").fill(user)
    page.get_by_test_id("login-password").fill(password)
    page.get_by_test_id("login-otp").fill(env.users[user].otp() if password == PASSWORD else "000000")
    page.get_by_test_id("login-submit").click()


def terminal_text(page: Any) -> str:
    return str(page.locator(".xterm-rows").inner_text())


def session_cookie(page: Any) -> dict[str, str]:
    return {c["name"]: c["value"] for c in page.context.cookies() if c["name"].startswith("__Host-")}


def test_sign_up_from_the_printed_link_then_log_in(page: Any, env: WebUIEnv) -> None:
    csp = watch_csp(page)
    printed = env.cluster.tctl("users", "add", "bob", "--roles=access", "--logins=root").stdout
    link = re.search(r"https://\S+/web/signup#\S+", printed)
    assert link, printed
    assert link.group(0).startswith(env.url + "/web/signup#")
    page.goto(link.group(0))
    page.get_by_test_id("signup-qr").wait_for()
    assert axe_findings(page) == []
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Confirm password").fill(PASSWORD)
    totp = pyotp.TOTP(page.get_by_test_id("signup-secret").inner_text())
    bob = env.users["bob"] = User("bob", totp)
    page.get_by_label("One-time code from the app").fill(bob.otp())
    page.get_by_test_id("signup-submit").click()
    page.get_by_test_id("signup-done").wait_for()
    env.wait_audit("user.signup", lambda e: e.get("user") == "bob", "bob's sign-up")
    log_in(page, env, "bob")
    page.get_by_test_id("node-row").first.wait_for()
    assert sorted(page.get_by_test_id("node-row").evaluate_all("rs => rs.map(r => r.dataset.nodeName)")) == [
        "node1", "node2"]
    assert csp == []


def test_wrong_password_is_shown_and_audited(page: Any, env: WebUIEnv) -> None:
    csp = watch_csp(page)
    page.goto(env.url + "/")
    assert axe_findings(page) == []
    log_in(page, env, "alice", password="not the password")
    error = page.get_by_test_id("error")
    error.wait_for()
    assert re.search(r"password|one-time code|invalid", error.inner_text(), re.IGNORECASE)
    assert page.get_by_test_id("login-submit").is_visible()
    env.wait_audit("user.login", lambda e: e.get("user") == "alice" and e.get("success") is False,
                   "the failed web login in the audit log")
    assert csp == []


def test_log_in_nodes_terminal_resize_log_out(page: Any, auditor_page: Any, env: WebUIEnv) -> None:
    csp = watch_csp(page)
    log_in(page, env, "alice")
    page.get_by_test_id("node-row").first.wait_for()
    rows = page.get_by_test_id("node-row")
    assert sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.nodeName)")) == ["node1", "node2"]
    node1 = page.locator('[data-testid="node-row"][data-node-name="node1"]')
    assert env.nodes["node1"].addr in node1.inner_text()
    assert "env=prod" in node1.inner_text()
    assert axe_findings(page) == []
    docs_screenshot(page, "webui-nodes.png")
    # the cookie: HttpOnly, Secure, SameSite=Strict; the page's script cannot read it
    cookie = next(c for c in page.context.cookies() if c["name"].startswith("__Host-"))
    assert (cookie["httpOnly"], cookie["secure"], cookie["sameSite"]) == (True, True, "Strict")
    assert "__Host-" not in page.evaluate("() => document.cookie")
    env.wait_audit("web.session.start", lambda e: e.get("user") == "alice", "the web session start")

    # search and label filter
    page.get_by_test_id("label-filter").fill("env=dev")
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.nodeName)") == ["node2"]
    page.get_by_test_id("label-filter").fill("")
    page.get_by_test_id("node-search").fill("node1")
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.nodeName)") == ["node1"]

    # a terminal on node1 as root: type a command, read its output
    node1.get_by_test_id("node-login").select_option("root")
    node1.get_by_test_id("node-connect").click()
    page.get_by_test_id("terminal").wait_for()
    page.get_by_text("Connected to root@").wait_for()
    page.get_by_test_id("terminal").click()
    page.keyboard.type("hostname; echo done-$((6*7))\n")
    wait_for(lambda: "done-42" in terminal_text(page), what="the command's output in the terminal")
    assert socket.gethostname() in terminal_text(page)
    docs_screenshot(page, "webui-terminal.png")
    # UTF-8 both ways (inserted as a paste or an input method would)
    page.keyboard.insert_text("echo 'ünïcödé ✓'")
    page.keyboard.press("Enter")
    wait_for(lambda: terminal_text(page).count("ünïcödé ✓") >= 2, what="UTF-8 output in the terminal")
    assert axe_findings(page) == []

    # resize: the window shrinks, the terminal fits it, and the remote side sees the new size
    page.keyboard.type("stty size\n")
    wait_for(lambda: re.search(r"^\d+ \d+$", terminal_text(page), re.MULTILINE) is not None,
             what="the first stty size")
    before = re.findall(r"^(\d+) (\d+)$", terminal_text(page), re.MULTILINE)[-1]
    page.set_viewport_size({"width": 700, "height": 500})
    page.wait_for_function(f"() => document.querySelector('.xterm-rows').children.length < {before[0]}")
    page.keyboard.type("clear; stty size\n")
    wait_for(lambda: (m := re.findall(r"^(\d+) (\d+)$", terminal_text(page), re.MULTILINE)) and m[-1] != before,
             what="stty size to change after the resize")
    after = re.findall(r"^(\d+) (\d+)$", terminal_text(page), re.MULTILINE)[-1]
    assert int(after[0]) < int(before[0]) and int(after[1]) < int(before[1])
    # the auditor sees the session in progress: who, as which login, on which node, since when
    auditor_page.goto(env.url + "/web/sessions")
    row = auditor_page.locator('[data-testid="session-row"]', has_text="alice").first
    row.wait_for()
    assert "root" in row.inner_text() and "node1" in row.inner_text()
    assert axe_findings(auditor_page) == []
    page.get_by_test_id("terminal").click()
    page.keyboard.type("exit\n")
    page.get_by_text(re.compile("session on node1 ended")).wait_for()

    # log out: back at the form, and the old cookie is dead on the server
    old = session_cookie(page)
    page.get_by_test_id("logout").click()
    page.get_by_test_id("login-submit").wait_for()
    answer = off_loop(_get, env, "/web/api/session", old)
    assert answer[0] == 401, answer
    env.wait_audit("web.session.end", lambda e: e.get("user") == "alice", "the logout")
    assert csp == []


def test_auditor_plays_the_recording(auditor_page: Any, env: WebUIEnv) -> None:
    page = auditor_page
    # the auditor's roles reach no node
    page.goto(env.url + "/web/nodes")
    page.get_by_test_id("node-table").wait_for()
    assert page.get_by_test_id("node-row").count() == 0

    def listed() -> bool:
        page.goto(env.url + "/web/recordings")
        page.locator('[data-testid="recording-table"], [data-testid="error"]:not(:empty)').first.wait_for()
        assert not page.get_by_test_id("error").inner_text(), page.get_by_test_id("error").inner_text()
        return page.locator('[data-testid="recording-row"]', has_text="alice").count() > 0

    wait_for(listed, what="alice's session among the recordings")
    assert axe_findings(page) == []
    row = page.locator('[data-testid="recording-row"]', has_text="alice").first
    row.get_by_test_id("recording-play").click()
    player = page.get_by_test_id("player")
    player.wait_for()
    page.locator(".ap-player").wait_for()
    wait_for(lambda: "done-42" in player.inner_text(), what="the recorded output in the player")

    # the audit log, filtered by type and user
    page.get_by_test_id("nav-audit").click()
    page.get_by_test_id("audit-type").fill("session.start")
    page.get_by_test_id("audit-user").fill("alice")
    page.get_by_test_id("audit-apply").click()
    page.get_by_test_id("audit-row").first.wait_for()
    texts = page.get_by_test_id("audit-row").all_inner_texts()
    assert texts and all("session.start" in t and "alice" in t for t in texts)
    assert axe_findings(page) == []


@pytest.fixture(scope="module")
def auditor_page(browser: Any, env: WebUIEnv) -> Any:
    """The auditor, logged in once for the module, in a browser context of their own."""
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1200, "height": 800})
    context.set_default_timeout(20_000)
    page = context.new_page()
    log_in(page, env, "auditor")
    page.get_by_test_id("node-table").wait_for()
    yield page
    context.close()


def test_forged_csrf_token_is_refused_and_audited(page: Any, env: WebUIEnv) -> None:
    log_in(page, env, "alice")
    page.get_by_test_id("node-row").first.wait_for()
    answer = page.evaluate(
        """async () => { const r = await fetch('/web/api/logout', {method: 'POST',
                             headers: {'X-CSRF-Token': 'forged'}});
                         return [r.status, await r.json()]; }"""
    )
    assert answer[0] == 403
    assert "CSRF" in answer[1]["error"]["message"]
    env.wait_audit("access.denied", lambda e: "CSRF" in e.get("reason", "") and e.get("user") == "alice",
                   "the forged CSRF token in the audit log")
    # the session was not touched: the page still works
    page.reload()
    page.get_by_test_id("node-row").first.wait_for()


def test_denied_login_is_shown_and_audited(page: Any, env: WebUIEnv) -> None:
    log_in(page, env, "alice")
    page.get_by_test_id("node-row").first.wait_for()
    page.goto(env.url + "/web/terminal?node=node1&login=daemon")
    error = page.get_by_test_id("terminal-error")
    error.wait_for()
    assert "daemon" in error.inner_text() and "refused" in error.inner_text()
    env.wait_audit("access.denied", lambda e: e.get("login") == "daemon" and e.get("user") == "alice",
                   "the denied terminal in the audit log")
    # alice's roles may not read the audit log: the page says so
    page.goto(env.url + "/web/audit")
    page.locator('[data-testid="error"]:not(:empty)').wait_for()
    assert "denied" in page.get_by_test_id("error").inner_text().lower()


def test_other_origin_and_oversized_websocket_frames(page: Any, env: WebUIEnv) -> None:
    log_in(page, env, "alice")
    page.get_by_test_id("node-row").first.wait_for()
    cookies = session_cookie(page)
    status, body = off_loop(_websocket, env, cookies, origin="https://evil.example")
    assert status == 403, body
    env.wait_audit("access.denied", lambda e: "evil.example" in e.get("reason", ""),
                   "the other-origin websocket in the audit log")
    status, body = off_loop(_websocket, env, cookies, origin=env.url, oversized=True)
    # the proxy drops the connection (1009, or 1006 when it closed the transport first)
    assert status in (1006, 1009), body
    env.wait_audit("access.denied", lambda e: "websocket message" in e.get("reason", ""),
                   "the oversized frame in the audit log")


def off_loop(func: Any, *args: Any, **kwargs: Any) -> Any:
    """Run the coroutine function in a thread of its own (Playwright's sync API holds an event
    loop in this one)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(func(*args, **kwargs))).result(timeout=60)


def _ssl() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _cookie_header(cookies: dict[str, str]) -> dict[str, str]:
    return {"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())}


async def _get(env: WebUIEnv, path: str, cookies: dict[str, str]) -> tuple[int, Any]:
    async with aiohttp.ClientSession(headers=_cookie_header(cookies)) as http, \
            http.get(env.url + path, ssl=_ssl()) as resp:
        return resp.status, await resp.json()


async def _websocket(env: WebUIEnv, cookies: dict[str, str], *, origin: str,
                     oversized: bool = False) -> tuple[int, str]:
    """(HTTP status of a refused handshake, its body) or (the close code, what came before it)."""
    url = env.url + "/web/api/terminal?node=node1&login=root&cols=80&rows=24"
    async with aiohttp.ClientSession(headers=_cookie_header(cookies)) as http:
        try:
            async with http.ws_connect(url, ssl=_ssl(), origin=origin) as ws:
                if oversized:
                    await ws.send_str(json.dumps({"type": "input", "data": "x" * 200_000}))
                seen = []
                async for msg in ws:
                    seen.append(str(msg.data)[:200])
                return ws.close_code or 0, " ".join(seen)
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status, exc.message


def test_a_watcher_joins_a_session_from_the_active_sessions_page(page: Any, browser: Any, env: WebUIEnv) -> None:
    if "watcher" not in env.users:
        env.add_user("watcher", "access,auditor", "root")  # may read sessions, and has a login there
    log_in(page, env, "alice")
    node1 = page.locator('[data-testid="node-row"][data-node-name="node1"]')
    node1.get_by_test_id("node-login").select_option("root")
    node1.get_by_test_id("node-connect").click()
    page.get_by_text("Connected to root@").wait_for()
    page.get_by_test_id("terminal").click()
    page.keyboard.type("echo join-$((40+2))-before\n")
    wait_for(lambda: "join-42-before" in terminal_text(page), what="alice's output")

    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1200, "height": 800})
    context.set_default_timeout(20_000)
    try:
        watcher = context.new_page()
        log_in(watcher, env, "watcher")
        watcher.get_by_test_id("node-table").wait_for()
        watcher.goto(env.url + "/web/sessions")
        row = watcher.locator('[data-testid="session-row"]', has_text="alice").last
        row.wait_for()
        assert axe_findings(watcher) == []
        row.get_by_test_id("session-join").click()
        watcher.get_by_text("Watching session").wait_for()
        # the recent screen, then the live output
        wait_for(lambda: "join-42-before" in terminal_text(watcher), what="the replayed screen")
        page.keyboard.type("echo join-$((6*7))-live\n")
        wait_for(lambda: "join-42-live" in terminal_text(watcher), what="the live output")
        assert axe_findings(watcher) == []
        # the watcher's keystrokes do not reach alice's shell
        watcher.get_by_test_id("terminal").click()
        watcher.keyboard.type("echo typed-by-$((1+1))-watcher\n")
        page.get_by_test_id("terminal").click()
        page.keyboard.type("echo after-$((3+4))\n")
        wait_for(lambda: "after-7" in terminal_text(watcher), what="alice's next output at the watcher")
        assert "after-7" in terminal_text(page)
        assert "typed-by" not in terminal_text(page) and "typed-by" not in terminal_text(watcher)
        # the session's end ends the watch
        page.keyboard.type("exit\n")
        watcher.get_by_text(re.compile("session on node1 ended")).wait_for()
        env.wait_audit("session.join", lambda e: e.get("user") == "watcher", "the watcher's join")
        env.wait_audit("session.leave", lambda e: e.get("user") == "watcher", "the watcher's leave")
    finally:
        context.close()
