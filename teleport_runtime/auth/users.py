"""Local users, their roles, sign-up and login with password + TOTP.

Passwords are kept as bcrypt hashes; TOTP secrets are enrolled at sign-up. A one-time code is
accepted once: the user record keeps the time step of the last accepted code, and a login moves it
forward with a compare-and-swap, so a replayed code (or two logins racing with one code) fails.
Failed logins are rate limited per user and per client address and audited.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import bcrypt
import pyotp

from teleport_runtime.backend import Backend, Item, prefix_end
from teleport_runtime.errors import (
    AccessDenied,
    AlreadyExists,
    BadParameter,
    CompareFailed,
    LimitExceeded,
    NotFound,
)
from teleport_runtime.rbac import Role, parse_role, preset_roles

USERS = "/users/"
ROLES = "/roles/"
SIGNUP = "/signup_tokens/"
SIGNUP_TTL = timedelta(hours=1)
MIN_PASSWORD = 8
MAX_FAILURES = 5
LOCKOUT_SECONDS = 60.0


@dataclass
class User:
    name: str
    roles: list[str]
    logins: list[str] = field(default_factory=list)
    password_hash: str = ""
    totp_secret: str = ""
    created: str = ""
    #: Time step (Unix time // 30) of the last accepted one-time code; older or equal steps are refused.
    totp_last_step: int = 0

    @property
    def status(self) -> str:
        return "active" if self.password_hash and self.totp_secret else "pending signup"

    def traits(self) -> dict[str, list[str]]:
        return {"logins": list(self.logins)}

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "roles": self.roles,
            "logins": self.logins,
            "status": self.status,
            "created": self.created,
        }


def _validate_name(name: str) -> str:
    if not name or len(name) > 128 or any(c in name for c in "/\\:@ \t\n"):
        raise BadParameter(f"invalid user name {name!r}: use 1-128 characters without / : @ or spaces")
    return name


class FailedLogins:
    """A sliding-window counter: MAX_FAILURES failures per key lock it for LOCKOUT_SECONDS."""

    def __init__(self) -> None:
        self._failures: dict[str, list[float]] = {}

    def check(self, *keys: str) -> None:
        now = time.monotonic()
        for key in keys:
            recent = [t for t in self._failures.get(key, []) if now - t < LOCKOUT_SECONDS]
            self._failures[key] = recent
            if len(recent) >= MAX_FAILURES:
                raise LimitExceeded(
                    f"too many failed logins for {key}; wait {int(LOCKOUT_SECONDS)}s and try again"
                )

    def record(self, *keys: str) -> None:
        now = time.monotonic()
        for key in keys:
            self._failures.setdefault(key, []).append(now)

    def clear(self, key: str) -> None:
        self._failures.pop(key, None)


class UserStore:
    """Users, roles and sign-up tokens in the backend."""

    def __init__(self, backend: Backend, cluster_name: str) -> None:
        self.backend = backend
        self.cluster_name = cluster_name
        self.failed = FailedLogins()

    # ------------------------------------------------------------------ roles

    async def ensure_presets(self) -> None:
        for role in preset_roles():
            try:
                await self.backend.create(self._role_item(role))
            except AlreadyExists:
                pass

    def _role_item(self, role: Role) -> Item:
        return Item(key=ROLES + role.name, value=json.dumps(role.to_dict()).encode())

    async def upsert_role(self, data: dict[str, Any], *, force: bool) -> tuple[Role, bool]:
        """Create (or with ``force`` replace) a role; returns it and whether it existed."""
        role = parse_role(data)
        item = self._role_item(role)
        if force:
            existed = await self._exists(item.key)
            await self.backend.put(item)
            return role, existed
        try:
            await self.backend.create(item)
        except AlreadyExists:
            raise AlreadyExists(
                f"role {role.name!r} already exists: use `tctl create -f` to overwrite it"
            ) from None
        return role, False

    async def get_role(self, name: str) -> Role:
        try:
            item = await self.backend.get(ROLES + name)
        except NotFound:
            raise NotFound(f"role {name!r} not found; see `tctl get roles`") from None
        return parse_role(json.loads(item.value))

    async def list_roles(self) -> list[Role]:
        items = await self.backend.get_range(ROLES, prefix_end(ROLES))
        return [parse_role(json.loads(i.value)) for i in items]

    async def delete_role(self, name: str) -> None:
        for user in await self.list_users():
            if name in user.roles:
                raise BadParameter(
                    f"role {name!r} is assigned to user {user.name!r}: change the user's roles first"
                )
        try:
            await self.backend.delete(ROLES + name)
        except NotFound:
            raise NotFound(f"role {name!r} not found; see `tctl get roles`") from None

    async def _exists(self, key: str) -> bool:
        try:
            await self.backend.get(key)
            return True
        except NotFound:
            return False

    # ------------------------------------------------------------------ users

    async def get_user(self, name: str) -> User:
        try:
            item = await self.backend.get(USERS + name)
        except NotFound:
            raise NotFound(f"user {name!r} not found; see `tctl users ls`") from None
        return User(**json.loads(item.value))

    async def list_users(self) -> list[User]:
        items = await self.backend.get_range(USERS, prefix_end(USERS))
        return [User(**json.loads(i.value)) for i in items]

    async def _save(self, user: User) -> None:
        await self.backend.put(Item(key=USERS + user.name, value=json.dumps(user.__dict__).encode()))

    async def add_user(self, name: str, roles: list[str], logins: list[str]) -> dict[str, Any]:
        """A pending user and a sign-up token; the user sets a password and enrols TOTP."""
        _validate_name(name)
        if not roles:
            raise BadParameter("a user needs at least one role: --roles=access")
        for role in roles:
            await self.get_role(role)
        user = User(name=name, roles=roles, logins=logins, created=datetime.now(UTC).isoformat())
        try:
            await self.backend.create(
                Item(key=USERS + name, value=json.dumps(user.__dict__).encode())
            )
        except AlreadyExists:
            raise AlreadyExists(f"user {name!r} already exists; see `tctl users ls`") from None
        return await self._signup_token(name)

    async def update_user(self, name: str, roles: list[str] | None, logins: list[str] | None) -> User:
        user = await self.get_user(name)
        if roles is not None:
            for role in roles:
                await self.get_role(role)
            user.roles = roles
        if logins is not None:
            user.logins = logins
        await self._save(user)
        return user

    async def reset_user(self, name: str) -> dict[str, Any]:
        """Clear the password and TOTP; a new sign-up token lets the user set them again."""
        user = await self.get_user(name)
        user.password_hash, user.totp_secret = "", ""
        await self._save(user)
        return await self._signup_token(name)

    async def delete_user(self, name: str) -> None:
        try:
            await self.backend.delete(USERS + name)
        except NotFound:
            raise NotFound(f"user {name!r} not found; see `tctl users ls`") from None

    async def _signup_token(self, name: str) -> dict[str, Any]:
        token = secrets.token_hex(16)
        expires = datetime.now(UTC) + SIGNUP_TTL
        record = {"user": name, "totp_secret": pyotp.random_base32(), "expires": expires.isoformat()}
        await self.backend.put(
            Item(key=SIGNUP + token, value=json.dumps(record).encode(), expires=expires)
        )
        return {"user": name, "token": token, "expires": expires.isoformat()}

    async def _signup_record(self, token: str) -> dict[str, Any]:
        try:
            return json.loads((await self.backend.get(SIGNUP + token)).value)
        except (NotFound, BadParameter):
            raise AccessDenied(
                "the sign-up token is unknown or expired: ask an admin for a new one "
                "(`tctl users reset NAME`)"
            ) from None

    async def signup_info(self, token: str) -> dict[str, Any]:
        record = await self._signup_record(token)
        uri = pyotp.TOTP(record["totp_secret"]).provisioning_uri(
            name=record["user"], issuer_name=self.cluster_name
        )
        return {"user": record["user"], "otpauth_uri": uri, "expires": record["expires"]}

    async def complete_signup(self, token: str, password: str, otp: str) -> User:
        record = await self._signup_record(token)
        if len(password) < MIN_PASSWORD:
            raise BadParameter(f"password too short: use at least {MIN_PASSWORD} characters")
        step = totp_step(record["totp_secret"], otp, after=0)
        if step is None:
            raise AccessDenied("the one-time code does not match the enrolled secret; try the next code")
        user = await self.get_user(record["user"])
        user.password_hash = await _hash(password)
        user.totp_secret = record["totp_secret"]
        user.totp_last_step = step
        await self._save(user)
        await self.backend.delete(SIGNUP + token)
        return user

    async def authenticate(self, name: str, password: str, otp: str, remote_addr: str) -> User:
        """Password and second factor; AccessDenied (without saying which failed) otherwise."""
        self.failed.check(f"user {name}", f"address {remote_addr}")
        try:
            user = await self.get_user(name)
        except NotFound:
            user = None
        ok = False
        if user is not None and user.password_hash and user.totp_secret:
            password_ok = await _check(password, user.password_hash)
            step = totp_step(user.totp_secret, otp, after=user.totp_last_step)
            ok = password_ok and await self._use_totp_step(user, step)
        if not ok or user is None:
            self.failed.record(f"user {name}", f"address {remote_addr}")
            raise AccessDenied("invalid user name, password or one-time code")
        self.failed.clear(f"user {name}")
        return user

    async def _use_totp_step(self, user: User, step: int | None) -> bool:
        """Record ``step`` as used; False when another login used this step (or a later one) first."""
        if step is None:
            return False
        key = USERS + user.name
        current = await self.backend.get(key)
        stored = User(**json.loads(current.value))
        if stored.totp_last_step >= step:
            return False
        stored.totp_last_step = step
        try:
            await self.backend.compare_and_swap(current, Item(key=key, value=json.dumps(stored.__dict__).encode()))
        except CompareFailed:
            return False
        user.totp_last_step = step
        return True


def totp_step(secret: str, code: str, *, after: int, now: float | None = None) -> int | None:
    """The time step whose code is ``code``, within one step of ``now``, if later than ``after``."""
    code = str(code).strip()
    totp = pyotp.TOTP(secret)
    current = int((time.time() if now is None else now) // totp.interval)
    for step in (current - 1, current, current + 1):
        if step > after and secrets.compare_digest(totp.at(step * totp.interval), code):
            return step
    return None


async def _hash(password: str) -> str:
    # bcrypt is deliberately slow: keep it off the event loop.
    return (
        await asyncio.to_thread(bcrypt.hashpw, password.encode()[:72], bcrypt.gensalt(rounds=12))
    ).decode()


async def _check(password: str, hashed: str) -> bool:
    return await asyncio.to_thread(bcrypt.checkpw, password.encode()[:72], hashed.encode())
