"""The role definitions an agent needs to authorize users, cached from the auth service.

Kept in memory and on disk (``<data_dir>/cache/roles.json``) so a node keeps authorizing users
with the last known roles while the auth service is away, even across a restart.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from teleport_runtime.agent.client import AuthClient
from teleport_runtime.durable import write_private
from teleport_runtime.errors import AccessDenied, TeleportError
from teleport_runtime.rbac import Role, parse_role

log = logging.getLogger("teleport.roles")
REFRESH_SECONDS = 30.0


class RoleCache:
    def __init__(self, client: AuthClient, cache_file: Path) -> None:
        self.client = client
        self.cache_file = cache_file
        self._roles: dict[str, Role] = {}
        self._fetched = 0.0
        self._load_disk()

    def _load_disk(self) -> None:
        try:
            data = json.loads(self.cache_file.read_text())
            self._roles = {r["metadata"]["name"]: parse_role(r) for r in data}
        except (OSError, ValueError, KeyError, TeleportError):
            self._roles = {}

    async def refresh(self) -> None:
        data = await self.client.get("/v1/roles")
        self._roles = {r["metadata"]["name"]: parse_role(r) for r in data}
        self._fetched = time.monotonic()
        write_private(self.cache_file, json.dumps(data))

    async def lookup(self, names: list[str]) -> list[Role]:
        """The named roles; refreshed when stale or when one is unknown, cached otherwise."""
        stale = time.monotonic() - self._fetched > REFRESH_SECONDS
        if stale or any(n not in self._roles for n in names):
            try:
                await self.refresh()
            except TeleportError as exc:
                log.warning("cannot refresh roles from the auth service (%s); using the cache", exc.message)
        missing = [n for n in names if n not in self._roles]
        if missing:
            raise AccessDenied(f"unknown role(s) {', '.join(missing)}")
        return [self._roles[n] for n in names]
