"""Presence: the heartbeats nodes and proxies send, kept in the backend with an expiry.

A record lives ``presence_ttl`` (10 min by default) after the last heartbeat; a host that stops
reporting drops out of ``tctl nodes ls`` when its record expires.

Heartbeats are written in groups: the ones that arrive within ``FLUSH_WINDOW`` of each other are
stored in one backend transaction (one disk flush for all of them), and each is answered only
after that transaction committed. With thousands of nodes the flush, not the request, would
otherwise bound the heartbeats per second.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from teleport_runtime.backend import Backend, Item, prefix_end
from teleport_runtime.config import validate_labels
from teleport_runtime.errors import BadParameter

_KINDS = {"Node": "/nodes/", "Proxy": "/proxies/"}
#: How long a heartbeat waits for others to share its write (seconds).
FLUSH_WINDOW = 0.005


def heartbeat_interval(presence_ttl: timedelta) -> float:
    """How often agents report: a tenth of the presence TTL (1 min for 10 min), at least 1 s."""
    return max(1.0, min(60.0, presence_ttl.total_seconds() / 10))


def _rotation_report(value: Any) -> dict[str, dict[str, str]]:
    """The CA rotation phases a host says it has applied: ``{"host": {"phase", "id"}, "user":
    {...}}`` (standby with no id for what it does not report)."""
    given = value if isinstance(value, dict) else {}
    out = {}
    for ca_type in ("host", "user"):
        entry = given.get(ca_type) if isinstance(given.get(ca_type), dict) else {}
        out[ca_type] = {"phase": str(entry.get("phase") or "standby"), "id": str(entry.get("id") or "")}
    return out


class Presence:
    """Node and proxy records keyed by host UUID."""

    def __init__(self, backend: Backend, ttl: timedelta) -> None:
        self.backend = backend
        self.ttl = ttl
        #: Cluster-wide settings every heartbeat answer carries (``session_recording``).
        self.cluster_settings: dict[str, Any] = {}
        self._pending: list[tuple[Item, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def heartbeat(
        self, *, role: str, host_uuid: str, report: dict[str, Any], remote_ip: str
    ) -> dict[str, Any]:
        """Store a host's report. The host UUID comes from its certificate, never the body."""
        prefix = _KINDS.get(role)
        if prefix is None:
            raise BadParameter(f"role {role} does not heartbeat")
        addr = str(report.get("addr") or "")
        host, _, port = addr.rpartition(":")
        if host in ("", "0.0.0.0", "[::]", "::"):  # noqa: S104 - wildcard: use what we saw
            seen = f"[{remote_ip}]" if ":" in remote_ip else remote_ip  # IPv6 needs brackets
            addr = f"{seen}:{port or 3022}"
        static = validate_labels(dict(report.get("labels") or {}), "heartbeat labels")
        commands = validate_labels(dict(report.get("cmd_labels") or {}), "heartbeat command labels")
        now = datetime.now(UTC)
        expires = now + self.ttl
        record = {
            "id": host_uuid,
            "hostname": str(report.get("hostname") or host_uuid),
            "addr": addr,
            "static_labels": static,
            "command_labels": commands,
            "roles": [role],
            "rotation": _rotation_report(report.get("rotation")),
            "version": str(report.get("version") or ""),
            # proxies also report where clients reach them (tctl prints it in sign-up commands)
            "web_addr": str(report.get("web_addr") or ""),
            "ssh_addr": str(report.get("ssh_addr") or ""),
            "last_heartbeat": now.isoformat(),
            "expires": expires.isoformat(),
        }
        await self._store(Item(key=prefix + host_uuid, value=json.dumps(record).encode(), expires=expires))
        return {"heartbeat_interval": heartbeat_interval(self.ttl), **self.cluster_settings}

    async def _store(self, item: Item) -> None:
        """Queue ``item`` for the next group write and wait until it is committed."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((item, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush(), name="presence-flush")
        # Each caller waits on its own future: one that gives up cancels only that future, and
        # its item is still written with the others.
        await done

    async def _flush(self) -> None:
        while self._pending:
            await asyncio.sleep(FLUSH_WINDOW)
            batch, self._pending = self._pending, []
            try:
                await self.backend.put_many([item for item, _ in batch])
            except Exception as exc:  # every waiting heartbeat gets the error
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)

    async def list(self, role: str = "Node") -> list[dict[str, Any]]:
        """Live records, sorted by hostname, with static and command labels merged."""
        prefix = _KINDS[role]
        items = await self.backend.get_range(prefix, prefix_end(prefix))
        records = []
        for item in items:
            record = json.loads(item.value)
            record["labels"] = {**record["static_labels"], **record["command_labels"]}
            records.append(record)
        return sorted(records, key=lambda r: (r["hostname"], r["id"]))
