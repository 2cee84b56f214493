"""Join tokens: dynamic ones in the backend (expiring, multi-use until then) and static ones
from ``auth_service.tokens`` (never expire). A token admits only the roles it names."""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from teleport_runtime.backend import Backend, Item, prefix_end
from teleport_runtime.config import TOKEN_ROLES, StaticToken
from teleport_runtime.errors import AccessDenied, AlreadyExists, BadParameter, NotFound

DEFAULT_TOKEN_TTL = timedelta(minutes=30)
_PREFIX = "/tokens/"
_VALUE = re.compile(r"[A-Za-z0-9._~+=@:,-]{1,256}")


@dataclass(frozen=True)
class JoinToken:
    """A provisioning token: its value, the roles it admits and when it expires (None: static)."""

    value: str
    roles: tuple[str, ...]
    expires: datetime | None

    @property
    def static(self) -> bool:
        return self.expires is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "token": self.value,
            "roles": list(self.roles),
            "expires": self.expires.isoformat() if self.expires else None,
            "static": self.static,
        }


def mask(value: str) -> str:
    """A token as it may appear in logs: enough to recognise, not enough to use."""
    return value[:4] + "****" if len(value) > 8 else "****"


def normalise_roles(roles: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for role in roles:
        name = role.strip().lower()
        if name not in TOKEN_ROLES:
            raise BadParameter(f"unknown role {role!r}: a join token admits {', '.join(TOKEN_ROLES)}")
        if name not in out:
            out.append(name)
    if not out:
        raise BadParameter("a join token needs at least one role, such as --roles=node")
    return tuple(out)


class TokenStore:
    """Dynamic tokens under ``/tokens/`` plus the static tokens of the auth config."""

    def __init__(self, backend: Backend, static: list[StaticToken]) -> None:
        self.backend = backend
        self.static = [JoinToken(t.value, t.roles, None) for t in static]

    async def create(
        self, roles: list[str], ttl: timedelta | None = None, value: str | None = None
    ) -> JoinToken:
        roles_t = normalise_roles(roles)
        ttl = DEFAULT_TOKEN_TTL if ttl is None else ttl  # 0s is an error, not the default
        if ttl <= timedelta(0):
            raise BadParameter("token TTL must be positive, such as --ttl=5m")
        value = (value or secrets.token_hex(16)).strip()
        if not _VALUE.fullmatch(value) or value in (".", ".."):
            # The value is a path segment of DELETE /v1/tokens/<value>: a token that could not
            # be named there could not be revoked before it expires.
            raise BadParameter(
                f"invalid token value {value!r}: use 1-256 letters, digits and . _ - ~ + = @ : ,"
            )
        if any(t.value == value for t in self.static):
            raise AlreadyExists(f"token {mask(value)} is a static token from the auth config")
        expires = datetime.now(UTC) + ttl
        token = JoinToken(value, roles_t, expires)
        record = {"roles": list(roles_t), "expires": expires.isoformat()}
        await self.backend.put(Item(key=_PREFIX + value, value=json.dumps(record).encode(), expires=expires))
        return token

    async def list(self) -> list[JoinToken]:
        items = await self.backend.get_range(_PREFIX, prefix_end(_PREFIX))
        dynamic = [self._from_item(i) for i in items]
        return self.static + sorted(dynamic, key=lambda t: t.expires or datetime.max.replace(tzinfo=UTC))

    async def delete(self, value: str) -> None:
        if any(t.value == value for t in self.static):
            raise BadParameter(
                f"token {mask(value)} is a static token: remove it from auth_service.tokens "
                "in the auth server's config and restart it"
            )
        try:
            await self.backend.delete(_PREFIX + value)
        except NotFound:
            raise NotFound(f"token {value} not found (it may have expired); see `tctl tokens ls`") from None

    async def check(self, value: str, role: str) -> JoinToken:
        """The token if it admits ``role``; AccessDenied naming the cause and the fix otherwise."""
        token = next((t for t in self.static if secrets.compare_digest(t.value, value)), None)
        if token is None and value and "/" not in value:
            try:
                token = self._from_item(await self.backend.get(_PREFIX + value))
            except NotFound:
                token = None
        if token is None:
            raise AccessDenied(
                "the join token is not valid: it is unknown, expired or was deleted; "
                "create a new one on the auth server with `tctl nodes add` and use the printed command"
            )
        if role not in token.roles:
            raise AccessDenied(
                f"the join token does not allow the {role} role (it allows: {', '.join(token.roles)}); "
                f"create one with `tctl nodes add --roles={role}`"
            )
        return token

    @staticmethod
    def _from_item(item: Item) -> JoinToken:
        record = json.loads(item.value)
        return JoinToken(
            value=item.key[len(_PREFIX):],
            roles=tuple(record["roles"]),
            expires=datetime.fromisoformat(record["expires"]),
        )
