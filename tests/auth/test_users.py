"""Login with password and one-time code: each code is accepted once (no replay within its
30 s window), also when two logins race with the same code."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pyotp
import pytest

from teleport_runtime.auth.users import UserStore, totp_step
from teleport_runtime.backend import open_backend
from teleport_runtime.errors import AccessDenied

PASSWORD = "correct horse battery"


@pytest.fixture
async def users(tmp_path: Path) -> AsyncIterator[UserStore]:
    backend = open_backend(None, tmp_path, sweep_interval=None)
    try:
        store = UserStore(backend, "test.cluster")
        await store.ensure_presets()
        yield store
    finally:
        await backend.close()


async def signed_up(users: UserStore, name: str = "alice") -> pyotp.TOTP:
    """A user who signed up with the previous step's code; returns the authenticator."""
    invite = await users.add_user(name, ["access"], ["root"])
    totp = pyotp.parse_uri((await users.signup_info(invite["token"]))["otpauth_uri"])
    await users.complete_signup(invite["token"], PASSWORD, totp.at(time.time() - totp.interval))
    return totp


async def test_a_code_is_accepted_once(users: UserStore) -> None:
    totp = await signed_up(users)
    code = totp.now()
    await users.authenticate("alice", PASSWORD, code, "127.0.0.1")
    with pytest.raises(AccessDenied, match="invalid user name, password or one-time code"):
        await users.authenticate("alice", PASSWORD, code, "127.0.0.1")
    # The next step's code (within the window) is still good, and then the current one is too old.
    await users.authenticate("alice", PASSWORD, totp.at(time.time() + totp.interval), "127.0.0.1")
    with pytest.raises(AccessDenied):
        await users.authenticate("alice", PASSWORD, totp.now(), "127.0.0.1")


async def test_the_sign_up_code_cannot_log_in(users: UserStore) -> None:
    invite = await users.add_user("bob", ["access"], ["root"])
    totp = pyotp.parse_uri((await users.signup_info(invite["token"]))["otpauth_uri"])
    code = totp.now()
    await users.complete_signup(invite["token"], PASSWORD, code)
    with pytest.raises(AccessDenied):
        await users.authenticate("bob", PASSWORD, code, "127.0.0.1")


async def test_two_logins_racing_with_one_code_let_one_in(users: UserStore) -> None:
    totp = await signed_up(users)
    code = totp.now()
    results = await asyncio.gather(
        *(users.authenticate("alice", PASSWORD, code, f"127.0.0.{i}") for i in (1, 2)), return_exceptions=True
    )
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert sum(isinstance(r, AccessDenied) for r in results) == 1


async def test_a_wrong_password_does_not_use_up_the_code(users: UserStore) -> None:
    totp = await signed_up(users)
    code = totp.now()
    with pytest.raises(AccessDenied):
        await users.authenticate("alice", "wrong password", code, "127.0.0.1")
    await users.authenticate("alice", PASSWORD, code, "127.0.0.1")


def test_totp_step_window() -> None:
    totp = pyotp.TOTP(pyotp.random_base32())
    now = 1_800_000_000.0
    step = int(now // 30)
    assert totp_step(totp.secret, totp.at(now), after=0, now=now) == step
    assert totp_step(totp.secret, totp.at(now - 30), after=0, now=now) == step - 1
    assert totp_step(totp.secret, totp.at(now + 30), after=0, now=now) == step + 1
    assert totp_step(totp.secret, totp.at(now - 60), after=0, now=now) is None
    assert totp_step(totp.secret, totp.at(now), after=step, now=now) is None
    assert totp_step(totp.secret, "not a code", after=0, now=now) is None
