"""The audit log: structured events with a code and time, kept by the auth service in the
backend under ``/events/<time>/<id>`` so a time range is a key range."""

from __future__ import annotations

import json
import logging
import secrets
from datetime import UTC, datetime
from typing import Any

from teleport_runtime.backend import Backend, Item

log = logging.getLogger("teleport.audit")
_PREFIX = "/events/"


class AuditLog:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def emit(self, event: dict[str, Any]) -> dict[str, Any]:
        """Record ``event`` (must name ``event``); adds ``time`` and ``id``."""
        now = datetime.now(UTC)
        record = {"time": now.isoformat(), "id": secrets.token_hex(8), **event}
        key = f"{_PREFIX}{now.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}/{record['id']}"
        await self.backend.put(Item(key=key, value=json.dumps(record).encode()))
        log.info("%s", json.dumps(record, sort_keys=True))
        return record

    async def search(
        self, since: datetime, until: datetime | None = None, types: list[str] | None = None
    ) -> list[dict[str, Any]]:
        start = f"{_PREFIX}{since.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S.%fZ')}"
        end = f"{_PREFIX}{until.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S.%fZ')}" if until else _PREFIX + "~"
        events = [json.loads(i.value) for i in await self.backend.get_range(start, end)]
        if types:
            events = [e for e in events if e.get("event") in types]
        return events
