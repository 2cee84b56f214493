"""A copy in memory of the items under a few prefixes, kept up to date from a backend's events, so
that reads can be answered while a networked backend (PostgreSQL) does not answer.

The copy is only a fallback: while the database answers, every read goes to it. A prefix counts as
*complete* once it was read in full after the copy started following the events; from then on
the copy can say both what is there and what is not (NotFound). Each key remembers the revision
it was last seen at (deletions too, until every prefix is read), so a full read and the events
that overlap it merge in revision order whatever order they arrive in.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from teleport_runtime.backend.base import Event, EventType, Item, prefix_end


class Mirror:
    """The items under ``prefixes`` as last seen (see the module docstring)."""

    def __init__(self, prefixes: Iterable[str]) -> None:
        self.prefixes: tuple[str, ...] = tuple(prefixes)
        self._items: dict[str, Item] = {}
        self._deleted: dict[str, int] = {}
        self._complete: set[str] = set()

    def prefix_of(self, key: str) -> str | None:
        return next((p for p in self.prefixes if key.startswith(p)), None)

    @property
    def complete(self) -> bool:
        return self._complete == set(self.prefixes)

    def apply(self, event: Event) -> None:
        """A committed change, in revision order (or overlapping a full read: see :meth:`load`)."""
        item = event.item
        if event.type is EventType.INIT or self.prefix_of(item.key) is None:
            return
        if item.revision <= self._seen(item.key):
            return
        if event.type is EventType.PUT:
            self._items[item.key] = item
            self._deleted.pop(item.key, None)
        else:
            self._items.pop(item.key, None)
            if not self.complete:  # only a full read still to merge can bring back an older value
                self._deleted[item.key] = item.revision

    def load(self, prefix: str, items: list[Item], read_at: int) -> None:
        """Everything under ``prefix`` as one read found it at revision ``read_at``; the events
        that followed the copy meanwhile stay where they are newer."""
        found = {item.key for item in items}
        for item in items:
            if item.revision > self._seen(item.key):
                self._items[item.key] = item
                self._deleted.pop(item.key, None)
        # A key the read did not find was deleted (or expired) at or before the read; a newer
        # write of it came as an event and has a revision above the read's.
        for key in [k for k in self._items if k.startswith(prefix) and k not in found]:
            if self._items[key].revision <= read_at:
                del self._items[key]
        self._complete.add(prefix)
        if self.complete:
            self._deleted.clear()  # from now on events come in revision order only

    def forget(self) -> None:
        """Events were lost (pruned before they were delivered): nothing here can be trusted until
        each prefix is read again in full."""
        self._items.clear()
        self._deleted.clear()
        self._complete.clear()

    def get(self, key: str, now: datetime) -> Item | bool | None:
        """The live item at ``key``; None when the copy knows there is none; False when it cannot
        tell (the key is outside the copy or its prefix was never read in full)."""
        prefix = self.prefix_of(key)
        if prefix is None or prefix not in self._complete:
            return False
        item = self._items.get(key)
        if item is None or (item.expires is not None and item.expires <= now):
            return None
        return item

    def range(self, start_key: str, end_key: str | None, limit: int, now: datetime) -> list[Item] | None:
        """Live items with ``start_key <= key < end_key``, sorted; None when the range is not
        inside one complete prefix."""
        prefix = self.prefix_of(start_key)
        if prefix is None or prefix not in self._complete:
            return None
        if end_key is None or end_key > prefix_end(prefix):
            return None
        out: list[Item] = []
        for key in sorted(k for k in self._items if start_key <= k < end_key):
            item = self._items[key]
            if item.expires is not None and item.expires <= now:
                continue
            out.append(item)
            if limit and len(out) >= limit:
                break
        return out

    def _seen(self, key: str) -> int:
        item = self._items.get(key)
        return max(item.revision if item is not None else 0, self._deleted.get(key, 0))
