"""Local users, their roles, sign-up and login with password + TOTP.

Passwords are kept as bcrypt hashes; TOTP secrets are enrolled at sign-up. A one-time code is
accepted once: the user record keeps the time step of the last accepted code, and a login moves it
forward with a compare-and-swap, so a replayed code (or two logins racing with one code) fails.

Sign-up: a user has at most one live sign-up token. ``tctl users add`` and ``tctl users reset``
make a new one, record its hash in the user (``signup_token``) and delete the older ones; a
sign-up needs that token while the user is pending (never signed up, or reset), and stores the
password and TOTP secret with a compare-and-swap of the user record, so of two sign-ups racing
with one token exactly one wins, and a token used once, replaced or from before a reset is refused.

Login does the same work for every name (bcrypt against a fixed dummy hash and a TOTP check with
a dummy secret when the user is unknown or has not signed up), so the answer's timing does not
tell which users exist. Failures back off per (user, source address) (:class:`LoginBackoff`):
who guesses from one address waits longer and longer, while the right password from another
address still works; the counters are bounded in number and expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
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
from teleport_runtime.netaddr import split_host
from teleport_runtime.rbac import Role, parse_role, preset_roles

USERS = "/users/"
ROLES = "/roles/"
SIGNUP = "/signup_tokens/"
SIGNUP_TTL = timedelta(hours=1)
MIN_PASSWORD = 8
#: bcrypt cost of stored password hashes (and of :data:`DUMMY_HASH`, which must match it).
BCRYPT_ROUNDS = 12
#: The hash of a random password no one kept: checked when the user is unknown or pending, so
#: such a login costs what a real one does.
DUMMY_HASH = "$2b$12$JWBVODRmD0GY6Ls5ygoPkezy/lzWjzbEPXWKEVUfLhQLxuNXiL27C"
DUMMY_TOTP_SECRET = pyotp.random_base32()
#: Failed logins from one source before it backs off, the first wait, and the longest.
FREE_FAILURES = 5
BACKOFF_FIRST_SECONDS = 5.0
BACKOFF_MAX_SECONDS = 300.0
#: A (user, source) without a failure for this long starts again from zero.
BACKOFF_FORGET_SECONDS = 900.0
#: Bound on the (user, source) pairs tracked; the least recently failed ones go first.
BACKOFF_MAX_ENTRIES = 10000
_TOKEN_RE = re.compile(r"[0-9a-f]{32}")
INVALID_SIGNUP = (
    "this sign-up link is no longer valid (the sign-up token is unknown or expired, was used, or was "
    "replaced by a newer one): ask an admin for a new one with `tctl users reset NAME`"
)


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
    #: SHA-256 of the one live sign-up token while the user is pending; "" otherwise.
    signup_token: str = ""

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


#: A user name: it becomes a path segment of the API, a certificate's key ID and a file name in
#: tsh's home, so only characters that are safe in all three (no ``.``/``..``, ``%``, separators,
#: ``@`` which ``user@host`` targets split on, or control characters).
_USER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def _validate_name(name: str) -> str:
    if not _USER_NAME_RE.fullmatch(name):
        raise BadParameter(
            f"invalid user name {name[:130]!r}: use 1-128 letters, digits, '.', '_', '+' or '-', "
            "starting with a letter or digit"
        )
    return name


def login_source(remote_addr: str) -> str:
    """The source a login's failures are counted for: the client's IP address (an IPv6 client's
    /64, which one host controls whole); the port is ignored."""
    host = split_host(remote_addr)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise BadParameter(
            f"invalid client address {remote_addr[:64]!r}: expected an IP address such as 192.0.2.1"
        ) from None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass
class _Failures:
    count: int
    last: float
    until: float


class LoginBackoff:
    """Failed logins per (user, source): after :data:`FREE_FAILURES` failures, each further
    attempt from that source must wait, twice as long after each failure, up to
    :data:`BACKOFF_MAX_SECONDS`. Other sources are not affected (a guesser cannot lock the user
    out), a success clears the pair, and a pair quiet for :data:`BACKOFF_FORGET_SECONDS` is
    forgotten. At most ``max_entries`` pairs are kept (least recently failed dropped first)."""

    def __init__(self, max_entries: int = BACKOFF_MAX_ENTRIES, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], _Failures] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def check(self, user: str, source: str) -> None:
        """LimitExceeded (with the wait) while ``source`` must wait before trying ``user`` again."""
        now = self._clock()
        self._expire(now)
        entry = self._entries.get((user, source))
        if entry is not None and now < entry.until:
            wait = int(entry.until - now) + 1
            raise LimitExceeded(
                f"too many failed logins for {user[:128]} from {source}: try again in {wait}s"
            )

    def record(self, user: str, source: str) -> None:
        now = self._clock()
        self._expire(now)
        key = (user, source)
        entry = self._entries.pop(key, None) or _Failures(0, now, now)
        entry.count += 1
        entry.last = now
        over = entry.count - FREE_FAILURES
        if over >= 0:
            entry.until = now + min(BACKOFF_FIRST_SECONDS * 2 ** min(over, 32), BACKOFF_MAX_SECONDS)
        self._entries[key] = entry  # most recently failed last
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self, user: str, source: str) -> None:
        self._entries.pop((user, source), None)

    def _expire(self, now: float) -> None:
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if now - entry.last < BACKOFF_FORGET_SECONDS or now < entry.until:
                return
            del self._entries[key]


class UserStore:
    """Users, roles and sign-up tokens in the backend."""

    def __init__(self, backend: Backend, cluster_name: str) -> None:
        self.backend = backend
        self.cluster_name = cluster_name
        self.failed = LoginBackoff()

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
        token = _new_signup_token()
        user = User(name=name, roles=roles, logins=logins, created=datetime.now(UTC).isoformat(),
                    signup_token=_token_hash(token))
        try:
            await self.backend.create(
                Item(key=USERS + name, value=json.dumps(user.__dict__).encode())
            )
        except AlreadyExists:
            raise AlreadyExists(f"user {name!r} already exists; see `tctl users ls`") from None
        return await self._replace_signup_tokens(name, token)

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
        token = _new_signup_token()
        user = await self.get_user(name)
        user.password_hash, user.totp_secret = "", ""
        user.signup_token = _token_hash(token)
        await self._save(user)
        return await self._replace_signup_tokens(name, token)

    async def delete_user(self, name: str) -> None:
        try:
            await self.backend.delete(USERS + name)
        except NotFound:
            raise NotFound(f"user {name!r} not found; see `tctl users ls`") from None
        await self._replace_signup_tokens(name, None)

    async def _replace_signup_tokens(self, name: str, token: str | None) -> dict[str, Any]:
        """Store ``token`` as ``name``'s sign-up token (with the TOTP secret to enrol), deleting
        the older ones; returns what ``tctl users add|reset`` shows. The user record's
        ``signup_token`` is what decides; the deletion keeps old tokens from lingering."""
        for item in await self.backend.get_range(SIGNUP, prefix_end(SIGNUP)):
            try:
                owner = json.loads(item.value).get("user")
            except ValueError:
                owner = None
            if owner == name:
                with contextlib.suppress(NotFound):
                    await self.backend.delete(item.key)
        if token is None:
            return {}
        expires = datetime.now(UTC) + SIGNUP_TTL
        record = {"user": name, "totp_secret": pyotp.random_base32(), "expires": expires.isoformat()}
        await self.backend.put(Item(key=SIGNUP + token, value=json.dumps(record).encode(), expires=expires))
        return {"user": name, "token": token, "expires": expires.isoformat()}

    async def _live_signup(self, token: str) -> tuple[dict[str, Any], Item, User]:
        """The token's record, the user's stored item and the user, if ``token`` is the user's
        live sign-up token and the user is pending; AccessDenied (:data:`INVALID_SIGNUP`) otherwise."""
        if not _TOKEN_RE.fullmatch(token):
            raise AccessDenied(INVALID_SIGNUP)
        try:
            record = json.loads((await self.backend.get(SIGNUP + token)).value)
            item = await self.backend.get(USERS + str(record["user"]))
        except (NotFound, BadParameter, ValueError, KeyError, TypeError):
            raise AccessDenied(INVALID_SIGNUP) from None
        user = User(**json.loads(item.value))
        if user.status != "pending signup" or not secrets.compare_digest(
            user.signup_token, _token_hash(token)
        ):
            raise AccessDenied(INVALID_SIGNUP.replace("NAME", user.name))
        return record, item, user

    async def signup_user(self, token: str) -> str:
        """The user a sign-up token was made for ("" when unknown), for the audit log."""
        if not _TOKEN_RE.fullmatch(token):
            return ""
        try:
            return str(json.loads((await self.backend.get(SIGNUP + token)).value).get("user") or "")
        except (NotFound, BadParameter, ValueError):
            return ""

    async def signup_info(self, token: str) -> dict[str, Any]:
        record, _, _ = await self._live_signup(token)
        uri = pyotp.TOTP(record["totp_secret"]).provisioning_uri(
            name=record["user"], issuer_name=self.cluster_name
        )
        return {"user": record["user"], "otpauth_uri": uri, "expires": record["expires"]}

    async def complete_signup(self, token: str, password: str, otp: str) -> User:
        """Set the password and TOTP secret of the pending user ``token`` is live for; the token
        is used up with the user record's compare-and-swap (a racing sign-up or reset loses)."""
        record, item, user = await self._live_signup(token)
        if len(password) < MIN_PASSWORD:
            raise BadParameter(f"password too short: use at least {MIN_PASSWORD} characters")
        step = totp_step(record["totp_secret"], otp, after=0)
        if step is None:
            raise AccessDenied("the one-time code does not match the enrolled secret; try the next code")
        user.password_hash = await _hash(password)
        user.totp_secret = record["totp_secret"]
        user.totp_last_step = step
        user.signup_token = ""
        try:
            await self.backend.compare_and_swap(
                item, Item(key=item.key, value=json.dumps(user.__dict__).encode())
            )
        except (CompareFailed, NotFound):
            raise AccessDenied(INVALID_SIGNUP.replace("NAME", user.name)) from None
        with contextlib.suppress(NotFound):
            await self.backend.delete(SIGNUP + token)
        return user

    async def authenticate(self, name: str, password: str, otp: str, remote_addr: str) -> User:
        """Password and second factor; AccessDenied (without saying which failed) otherwise.
        LimitExceeded while this source backs off for this user (:class:`LoginBackoff`)."""
        source = login_source(remote_addr)
        key = name[:128]  # no user name is longer: bounds what a counter holds
        self.failed.check(key, source)
        # Counted as a failure until it succeeds, so attempts sent in parallel (before the first
        # answers) cannot get past the back-off.
        self.failed.record(key, source)
        try:
            user: User | None = await self.get_user(name)
        except (NotFound, BadParameter):
            user = None
        active = user if user is not None and user.password_hash and user.totp_secret else None
        # The same work whether or not the user exists and signed up (no timing oracle for names).
        password_ok = await _check(password, active.password_hash if active else DUMMY_HASH)
        step = totp_step(active.totp_secret if active else DUMMY_TOTP_SECRET, otp,
                         after=active.totp_last_step if active else 0)
        if active is None or not password_ok or not await self._use_totp_step(active, step):
            raise AccessDenied("invalid user name, password or one-time code")
        self.failed.clear(key, source)
        return active

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


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _new_signup_token() -> str:
    return secrets.token_hex(16)


async def _hash(password: str) -> str:
    # bcrypt is deliberately slow: keep it off the event loop.
    return (
        await asyncio.to_thread(bcrypt.hashpw, password.encode()[:72], bcrypt.gensalt(rounds=BCRYPT_ROUNDS))
    ).decode()


async def _check(password: str, hashed: str) -> bool:
    return await asyncio.to_thread(bcrypt.checkpw, password.encode()[:72], hashed.encode())
