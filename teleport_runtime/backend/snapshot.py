"""Backup and restore of cluster state, on any :class:`~teleport_runtime.backend.Backend`.

A snapshot holds every durable item: the certificate authorities (with their private keys and
rotation state), the cluster name, users, roles, tokens and sign-up tokens, host bindings and
names, locks, and whatever durable prefix is added later. It leaves out what a running cluster
rebuilds by itself: presence (``/nodes/``, ``/proxies/``: heartbeats) and sessions in progress
(``/sessions/active/``); and, unless asked, the audit log (``/events/``), which is a record, not
state, and may be large.

Consistency: the items are read with one range query, which both backends answer from one
snapshot of the database (a single SQLite statement; a single PostgreSQL statement in READ
COMMITTED), so a backup taken while the cluster runs never mixes two states of it.

The file: JSON ``{"format": "teleport-backup", "version": 1, "sha256": ..., "snapshot": {...}}``
where ``sha256`` is over the canonical JSON of ``snapshot`` (sorted keys, no spaces), written
atomically with mode 0600. It holds the CA private keys: it is as sensitive as the database.

Restore writes every item in one transaction (``put_many``), and only into an EMPTY backend: a
restore never merges into a cluster's state. Items whose expiry has passed are skipped.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from teleport_runtime.backend.base import Backend, Item, utc_now
from teleport_runtime.durable import write_private
from teleport_runtime.errors import AlreadyExists, BadParameter, NotFound

FORMAT = "teleport-backup"
VERSION = 1
#: Rebuilt by the running cluster within a heartbeat or a keep-alive: never in a backup.
EPHEMERAL_PREFIXES = ("/nodes/", "/proxies/", "/sessions/active/")
AUDIT_PREFIX = "/events/"
#: Where the CAs live (auth/service.py): a backup without them is no cluster's backup.
AUTHORITIES_PREFIX = "/authorities/"
#: A backup file larger than this is refused before it is parsed.
MAX_BACKUP_BYTES = 1 << 30


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The durable items of a backend at one moment."""

    created: datetime
    source: str
    items: tuple[Item, ...]

    def counts(self) -> dict[str, int]:
        """Items per top-level prefix (``/users/`` -> 3), for a summary."""
        out: dict[str, int] = {}
        for item in self.items:
            top = "/" + item.key.lstrip("/").split("/", 1)[0] + "/"
            out[top] = out.get(top, 0) + 1
        return dict(sorted(out.items()))


def _excluded(key: str, with_audit: bool) -> bool:
    return key.startswith(EPHEMERAL_PREFIXES) or (not with_audit and key.startswith(AUDIT_PREFIX))


async def take(backend: Backend, *, with_audit: bool = False) -> Snapshot:
    """A consistent snapshot of ``backend``'s durable items (see the module doc)."""
    items = await backend.get_range("", None)
    kept = tuple(Item(i.key, i.value, i.expires) for i in items if not _excluded(i.key, with_audit))
    if not any(item.key.startswith(AUTHORITIES_PREFIX) for item in kept):
        raise NotFound(
            "the backend holds no certificate authority, so no cluster to back up: give tctl the "
            "auth server's config (-c) or data dir (--data-dir)"
        )
    return Snapshot(backend.now(), type(backend).__name__, kept)


def _canonical(snapshot: dict[str, Any]) -> bytes:
    return json.dumps(snapshot, sort_keys=True, separators=(",", ":")).encode()


def encode(snapshot: Snapshot) -> bytes:
    """The backup file's bytes."""
    body = {
        "created": snapshot.created.isoformat(),
        "source": snapshot.source,
        "items": [
            {
                "key": item.key,
                "value": base64.b64encode(item.value).decode("ascii"),
                "expires": item.expires.isoformat() if item.expires else None,
            }
            for item in snapshot.items
        ],
    }
    document = {
        "format": FORMAT,
        "version": VERSION,
        "sha256": hashlib.sha256(_canonical(body)).hexdigest(),
        "snapshot": body,
    }
    return json.dumps(document, indent=1).encode() + b"\n"


def decode(data: bytes, where: str = "backup") -> Snapshot:
    """Parse and verify a backup file's bytes; BadParameter naming the problem otherwise."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadParameter(f"{where} is not a teleport backup (not JSON: {exc})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise BadParameter(f"{where} is not a teleport backup (no \"format\": \"{FORMAT}\")")
    version = document.get("version")
    if version != VERSION:
        raise BadParameter(
            f"{where} has backup format version {version!r}; this program reads version {VERSION}: "
            "restore it with the teleport version that wrote it"
        )
    body = document.get("snapshot")
    if not isinstance(body, dict) or not isinstance(document.get("sha256"), str):
        raise BadParameter(f"{where} is damaged: no snapshot or checksum")
    if hashlib.sha256(_canonical(body)).hexdigest() != document["sha256"]:
        raise BadParameter(f"{where} is damaged or was edited: its sha256 checksum does not match")
    try:
        created = datetime.fromisoformat(body["created"])
        items = tuple(_item(entry) for entry in body["items"])
        source = str(body["source"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BadParameter(f"{where} is damaged: {exc}") from None
    return Snapshot(created, source, items)


def _item(entry: dict[str, Any]) -> Item:
    key = entry["key"]
    if not isinstance(key, str) or not key.startswith("/"):
        raise ValueError(f"bad key {key!r}")
    expires = datetime.fromisoformat(entry["expires"]) if entry["expires"] else None
    return Item(key, base64.b64decode(entry["value"], validate=True), expires)


def write(path: Path, snapshot: Snapshot) -> None:
    """Write the backup file atomically, mode 0600 (it holds the CA private keys)."""
    write_private(path, encode(snapshot))


def read(path: Path) -> Snapshot:
    """Read and verify a backup file."""
    try:
        size = os.stat(path).st_size
        if size > MAX_BACKUP_BYTES:
            raise BadParameter(f"{path} is {size} bytes: larger than any teleport backup ({MAX_BACKUP_BYTES})")
        data = path.read_bytes()
    except OSError as exc:
        raise BadParameter(f"cannot read backup {path}: {exc.strerror or exc}") from None
    return decode(data, str(path))


async def restore(backend: Backend, snapshot: Snapshot, *, now: datetime | None = None,
                  replace: bool = False) -> int:
    """Write ``snapshot`` into ``backend``, which must be empty (AlreadyExists naming what it
    holds otherwise); return how many items were written (expired ones are skipped).
    ``replace``: delete everything the backend holds first (every auth server on it must be
    stopped: the delete and the write are two steps)."""
    existing = await backend.get_range("", None, limit=1)
    if existing and not replace:
        raise AlreadyExists(
            f"the target backend is not empty (it holds {existing[0].key} and maybe more): restore only "
            "into a new, empty database or data dir, before any auth server has started on it; a "
            "restore never merges into a cluster's state (to replace it, stop every auth server on it "
            "and pass --force)"
        )
    now = now or utc_now()
    live = [item for item in snapshot.items if item.expires is None or item.expires > now]
    if existing:
        await backend.delete_range("", None)
    await backend.put_many(list(_sorted(live)))
    return len(live)


def _sorted(items: Iterable[Item]) -> list[Item]:
    return sorted(items, key=lambda item: item.key)
