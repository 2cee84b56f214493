"""Trust boundaries of users, sign-up, login and audit writes, replayed against the real auth API
and proxy on loopback (mutual TLS): old sign-up tokens, forged agent audit events, user
enumeration by timing and lock-outs an attacker controls. No timing assertions."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pyotp
import pytest

from teleport_runtime.api.names import HEADER_FORWARDED_ADDR
from teleport_runtime.auth import users as users_module
from teleport_runtime.auth.audit import MAX_EVENT_BYTES
from teleport_runtime.auth.users import (
    BACKOFF_FORGET_SECONDS,
    BACKOFF_MAX_SECONDS,
    BCRYPT_ROUNDS,
    DUMMY_HASH,
    FREE_FAILURES,
    SIGNUP,
    LoginBackoff,
    login_source,
)
from teleport_runtime.backend import Item
from teleport_runtime.ca import generate_ssh_keypair
from teleport_runtime.client.tsh_web import insecure_context
from teleport_runtime.errors import AccessDenied, BadParameter, EventRefused, LimitExceeded
from teleport_runtime.node.audit import REJECTED_DIR, AuditSender, AuditSpool
from teleport_runtime.proxy import ProxyService
from tests.proxy.harness import LocalCluster

PASSWORD = "correct horse battery"
OTHER_PASSWORD = "another long password"


@pytest.fixture
async def web(local_cluster: LocalCluster) -> tuple[LocalCluster, ProxyService]:
    return local_cluster, await local_cluster.start_proxy()


async def post(proxy: ProxyService, path: str, body: dict[str, Any], source: str = "127.0.0.1",
               method: str = "POST") -> tuple[int, dict[str, Any]]:
    """One request to the proxy's web API from the loopback address ``source``."""
    host = proxy.cfg.proxy.web_listen_addr.host
    connector = aiohttp.TCPConnector(ssl=insecure_context(), local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.request(method, f"https://{host}:{proxy.web_port}{path}",
                                   json=body if method == "POST" else None) as resp:
            return resp.status, await resp.json()


async def stored_user(cluster: LocalCluster, name: str) -> dict[str, Any]:
    return json.loads((await cluster.backend.get(f"/users/{name}")).value)


async def events(cluster: LocalCluster, kind: str) -> list[dict[str, Any]]:
    """Events of ``kind`` of any date (a forged one could be dated years back)."""
    return await cluster.auth.audit.search(datetime(2000, 1, 1, tzinfo=UTC), types=[kind])


# ---------------------------------------------------------------------- sign-up tokens


async def test_an_old_signup_token_fails_after_a_reset_and_after_a_newer_signup(
    web: tuple[LocalCluster, ProxyService],
) -> None:
    cluster, proxy = web
    old = await cluster.auth.users.add_user("alice", ["access"], ["alice"])
    status, info = await post(proxy, f"/webapi/signup/{old['token']}", {}, method="GET")
    assert status == 200, info
    old_totp = pyotp.parse_uri(info["otpauth_uri"])  # what the holder of the first link learned
    old_record = (await cluster.backend.get(SIGNUP + old["token"])).value

    new = await cluster.auth.users.reset_user("alice")
    status, answer = await post(proxy, "/webapi/signup",
                                {"token": old["token"], "password": OTHER_PASSWORD, "otp": old_totp.now()})
    assert status == 403, answer
    assert "no longer valid" in answer["error"]["message"]
    assert "tctl users reset" in answer["error"]["message"]
    assert (await stored_user(cluster, "alice"))["password_hash"] == ""  # still pending, nothing stored

    # The user signs up with the newer link.
    status, info = await post(proxy, f"/webapi/signup/{new['token']}", {}, method="GET")
    assert status == 200, info
    totp = pyotp.parse_uri(info["otpauth_uri"])
    status, answer = await post(proxy, "/webapi/signup",
                                {"token": new["token"], "password": PASSWORD,
                                 "otp": totp.at(time.time() - totp.interval)})
    assert (status, answer) == (200, {"user": "alice"})
    signed_up = await stored_user(cluster, "alice")

    # The old link again, even if its record had survived (as older versions left it), and the
    # used one: refused, and the active user's password and TOTP are unchanged.
    await cluster.backend.put(Item(key=SIGNUP + old["token"], value=old_record,
                                   expires=datetime.now(UTC) + timedelta(hours=1)))
    for token, code in ((old["token"], old_totp.now()), (new["token"], totp.now())):
        status, answer = await post(proxy, "/webapi/signup",
                                    {"token": token, "password": OTHER_PASSWORD, "otp": code})
        assert status == 403, answer
        assert "tctl users reset" in answer["error"]["message"]
        status, _ = await post(proxy, f"/webapi/signup/{token}", {}, method="GET")
        assert status == 403
    after = await stored_user(cluster, "alice")
    assert (after["password_hash"], after["totp_secret"]) == (signed_up["password_hash"], signed_up["totp_secret"])
    assert bcrypt.checkpw(PASSWORD.encode(), after["password_hash"].encode())

    refused = [e for e in await events(cluster, "user.signup") if e.get("success") is False]
    assert len(refused) == 5 and all(e["code"] == "T1005W" for e in refused)  # 3 sign-ups, 2 link views
    assert all("no longer valid" in e["reason"] for e in refused)
    assert any(e["user"] == "alice" and e["remote_addr"] == "127.0.0.1" for e in refused)
    assert old["token"] not in json.dumps(refused)  # the audit log does not hand out tokens
    [accepted] = [e for e in await events(cluster, "user.signup") if e.get("success")]
    assert accepted["user"] == "alice" and accepted["remote_addr"] == "127.0.0.1"


async def test_a_reset_removes_the_older_tokens(local_cluster: LocalCluster) -> None:
    users = local_cluster.auth.users
    first = await users.add_user("carol", ["access"], ["carol"])
    second = await users.reset_user("carol")
    third = await users.reset_user("carol")
    tokens = [i.key for i in await local_cluster.backend.get_range(SIGNUP, SIGNUP + "~")]
    assert tokens == [SIGNUP + third["token"]]
    for invite in (first, second):
        with pytest.raises(AccessDenied, match="no longer valid"):
            await users.signup_info(invite["token"])
    await users.delete_user("carol")
    assert await local_cluster.backend.get_range(SIGNUP, SIGNUP + "~") == []


async def test_two_signups_racing_with_one_token_let_one_in(web: tuple[LocalCluster, ProxyService]) -> None:
    cluster, proxy = web
    invite = await cluster.auth.users.add_user("dave", ["access"], ["dave"])
    info = await cluster.auth.users.signup_info(invite["token"])
    code = pyotp.parse_uri(info["otpauth_uri"]).now()
    passwords = [f"racing password {n}" for n in range(2)]
    results = await asyncio.gather(*(
        post(proxy, "/webapi/signup", {"token": invite["token"], "password": p, "otp": code},
             source=f"127.0.0.{20 + n}")
        for n, p in enumerate(passwords)
    ))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 403], results
    winner = next(p for p, (status, _) in zip(passwords, results, strict=True) if status == 200)
    stored = (await stored_user(cluster, "dave"))["password_hash"].encode()
    assert bcrypt.checkpw(winner.encode(), stored)


# ---------------------------------------------------------------------- agents' audit events


async def _agent(cluster: LocalCluster, role: str, name: str) -> Any:
    identity, host_uuid = await cluster.join(role, name)
    return cluster.client(identity), host_uuid


async def test_a_node_cannot_write_a_user_login(local_cluster: LocalCluster) -> None:
    node, node_uuid = await _agent(local_cluster, "node", "node1")
    proxy, _ = await _agent(local_cluster, "proxy", "proxy1")
    forged = {"event": "user.login", "success": True, "user": "admin", "remote_addr": "203.0.113.7",
              "time": "2020-01-01T00:00:00+00:00", "id": "ab" * 16}
    for agent in (node, proxy):
        with pytest.raises(EventRefused, match=r"may not write 'user\.login'"):
            await agent.request("POST", "/v1/audit", forged)
    assert [e for e in await events(local_cluster, "user.login") if e.get("user") == "admin"] == []
    denied = [e for e in await events(local_cluster, "access.denied") if e["resource"] == "/v1/audit"]
    assert len(denied) == 2
    assert denied[0]["server_id"] == node_uuid and "user.login" in denied[0]["reason"]


async def test_a_node_event_out_of_the_time_window_is_refused(local_cluster: LocalCluster) -> None:
    node, node_uuid = await _agent(local_cluster, "node", "node1")
    now = datetime.now(UTC)
    for when, why in ((datetime(2020, 1, 1, tzinfo=UTC), "days before"), (now + timedelta(days=1), "ahead of")):
        event = {"event": "exec", "command": "true", "exit_status": 0, "id": when.strftime("%Y%m%d") * 2,
                 "time": when.isoformat()}
        with pytest.raises(EventRefused, match=why):
            await node.request("POST", "/v1/audit", event)
    # In the window: stored, but who sent it and when it arrived are the auth service's word.
    event = {"event": "exec", "command": "true", "exit_status": 0, "id": "cd" * 16,
             "time": (now - timedelta(hours=1)).isoformat(), "server_id": "someone-else",
             "nodename": "db-primary", "code": "T1000I", "received": "2020-01-01T00:00:00+00:00"}
    await node.request("POST", "/v1/audit", event)
    [stored] = [e for e in await events(local_cluster, "exec") if e["id"] == "cd" * 16]
    assert (stored["server_id"], stored["node"], stored["nodename"]) == (node_uuid, "node1", "node1")
    assert stored["code"] == "T3002I"
    assert datetime.fromisoformat(stored["received"]) >= now
    assert len([e for e in await events(local_cluster, "exec")]) == 1


async def test_oversized_or_odd_events_are_refused(local_cluster: LocalCluster) -> None:
    node, _ = await _agent(local_cluster, "node", "node1")
    with pytest.raises(EventRefused, match="bytes: at most"):
        await node.request("POST", "/v1/audit", {"event": "exec", "command": "x" * (MAX_EVENT_BYTES + 1)})
    with pytest.raises(EventRefused, match="invalid field name"):
        await node.request("POST", "/v1/audit", {"event": "exec", "Bad-Field\n": 1})
    assert await events(local_cluster, "exec") == []


async def test_the_node_spool_sets_a_refused_event_aside(local_cluster: LocalCluster, tmp_path: Path) -> None:
    node, _ = await _agent(local_cluster, "node", "node1")
    spool = AuditSpool(tmp_path / "audit")
    spool.append({"event": "user.login", "success": True, "user": "admin"})
    spool.append({"event": "exec", "command": "true", "exit_status": 0})
    sender = AuditSender(spool, lambda event: node.request("POST", "/v1/audit", event))
    assert await sender.drain() == 1  # the refused one did not hold up the next
    assert spool.pending() == 0
    rejected = sorted((tmp_path / "audit" / REJECTED_DIR).iterdir())
    assert [p.suffix for p in rejected] == [".json", ".reason"]
    assert "may not write 'user.login'" in rejected[1].read_text()
    assert len(await events(local_cluster, "exec")) == 1


# ---------------------------------------------------------------------- login


async def test_failures_from_one_source_do_not_lock_out_another(web: tuple[LocalCluster, ProxyService]) -> None:
    cluster, proxy = web
    secret = await cluster.add_user("erin", ["access"], ["erin"], PASSWORD)
    totp = pyotp.TOTP(secret)
    _, ssh_public = generate_ssh_keypair()
    attacker, user = "127.0.0.31", "127.0.0.32"
    for _ in range(FREE_FAILURES):
        status, answer = await post(proxy, "/webapi/login",
                                    {"user": "erin", "password": "guess guess", "otp": "000000"}, source=attacker)
        assert status == 403, answer
    # The attacker's source now waits, even with the right password...
    status, answer = await post(proxy, "/webapi/login",
                                {"user": "erin", "password": PASSWORD, "otp": totp.now()}, source=attacker)
    assert status == 429 and "try again in" in answer["error"]["message"]
    # ...while the user, elsewhere, logs in.
    status, answer = await post(proxy, "/webapi/login",
                                {"user": "erin", "password": PASSWORD, "otp": totp.now(), "ssh_public_key": ssh_public},
                                source=user)
    assert status == 200, answer
    failures = [e for e in await events(cluster, "user.login") if e.get("success") is False]
    assert len(failures) == FREE_FAILURES + 1
    assert {e["remote_addr"] for e in failures} == {attacker}
    assert "too many failed logins" in failures[-1]["reason"]


async def test_only_a_proxy_forwards_a_client_address(local_cluster: LocalCluster) -> None:
    node, _ = await _agent(local_cluster, "node", "node1")
    headers = {HEADER_FORWARDED_ADDR: "198.51.100.1", "Content-Type": "application/json"}
    with pytest.raises(AccessDenied, match="not allowed for role Node"):
        await node.request("POST", "/v1/users/login", data=b'{"user": "x"}', headers=headers)
    proxy, _ = await _agent(local_cluster, "proxy", "proxy1")
    with pytest.raises(BadParameter, match=HEADER_FORWARDED_ADDR):
        await proxy.request("POST", "/v1/users/login", {"user": "x", "remote_addr": "198.51.100.1"})
    with pytest.raises(BadParameter, match="invalid client address"):
        await proxy.request("POST", "/v1/users/login", data=b'{"user": "x"}',
                            headers={**headers, HEADER_FORWARDED_ADDR: "proxy.example.com"})


async def test_unknown_and_pending_users_cost_a_bcrypt_check(
    local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch,
) -> None:
    users = local_cluster.auth.users
    await local_cluster.add_user("frank", ["access"], ["frank"], PASSWORD)
    await users.add_user("pending", ["access"], ["pending"])
    checked: list[str] = []
    real_check = users_module._check

    async def counting(password: str, hashed: str) -> bool:
        checked.append(hashed)
        return await real_check(password, hashed)

    monkeypatch.setattr(users_module, "_check", counting)
    for name in ("nobody", "pending", "frank"):
        with pytest.raises(AccessDenied, match="invalid user name, password or one-time code"):
            await users.authenticate(name, "wrong password", "000000", "127.0.0.1")
    assert checked[:2] == [DUMMY_HASH, DUMMY_HASH] and checked[2] != DUMMY_HASH
    assert DUMMY_HASH.startswith(f"$2b${BCRYPT_ROUNDS:02d}$")  # the same cost as real hashes


async def test_parallel_guesses_do_not_get_past_the_backoff(local_cluster: LocalCluster) -> None:
    await local_cluster.add_user("gina", ["access"], ["gina"], PASSWORD)
    results = await asyncio.gather(
        *(local_cluster.auth.users.authenticate("gina", f"guess {n}", "000000", "192.0.2.7") for n in range(12)),
        return_exceptions=True,
    )
    refused_early = [r for r in results if isinstance(r, LimitExceeded)]
    checked = [r for r in results if type(r) is AccessDenied]
    assert (len(checked), len(refused_early)) == (FREE_FAILURES, 12 - FREE_FAILURES)


def test_the_backoff_grows_is_capped_and_forgets() -> None:
    now = [1000.0]
    backoff = LoginBackoff(clock=lambda: now[0])
    for _ in range(FREE_FAILURES):
        backoff.check("u", "192.0.2.1")
        backoff.record("u", "192.0.2.1")
    with pytest.raises(LimitExceeded):
        backoff.check("u", "192.0.2.1")
    backoff.check("u", "192.0.2.2")  # another source is free
    for _ in range(40):  # keeps failing: the wait doubles up to the cap
        backoff.record("u", "192.0.2.1")
    now[0] += BACKOFF_MAX_SECONDS + 1
    backoff.check("u", "192.0.2.1")
    now[0] += BACKOFF_FORGET_SECONDS
    backoff.check("other", "192.0.2.9")  # any use expires quiet pairs
    assert len(backoff) == 0


def test_the_backoff_is_bounded() -> None:
    backoff = LoginBackoff(max_entries=100, clock=lambda: 5.0)
    for n in range(1000):
        backoff.record(f"user{n}", "192.0.2.1")
    assert len(backoff) == 100
    backoff.check("user0", "192.0.2.1")  # the least recently failed went first
    backoff.clear("user999", "192.0.2.1")
    assert len(backoff) == 99


def test_login_source_is_the_address() -> None:
    assert login_source("192.0.2.1") == login_source("192.0.2.1:5555") == "192.0.2.1"
    assert login_source("2001:db8::1") == login_source("[2001:db8::2]:443") == "2001:db8::/64"
    assert login_source("::ffff:192.0.2.1") == "192.0.2.1"
    with pytest.raises(BadParameter, match="invalid client address"):
        login_source("example.com")


@pytest.mark.parametrize("name", [".", "..", "a/b", "a%2Fb", "x\n", "-rf", "a@b", "a b", "é", "a" * 129, ""])
def test_a_user_name_that_cannot_be_a_path_segment_or_login_is_refused(name):
    with pytest.raises(BadParameter, match="invalid user name"):
        users_module._validate_name(name)
