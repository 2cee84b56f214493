"""The in-memory copy reads fall back on while PostgreSQL is down: a full read and the events that
overlap it merge by revision, whatever order they arrive in; it answers only for prefixes read in
full; expired items are not answered; after lost events it answers nothing until read again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from teleport_runtime.backend import Event, EventType, Item
from teleport_runtime.backend.mirror import Mirror

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def put(key: str, value: str, revision: int, expires: datetime | None = None) -> Event:
    return Event(EventType.PUT, Item(key, value.encode(), expires, revision))


def delete(key: str, revision: int) -> Event:
    return Event(EventType.DELETE, Item(key, b"", None, revision))


def test_a_full_read_and_overlapping_events_merge_by_revision() -> None:
    mirror = Mirror(["/roles/", "/nodes/"])
    assert mirror.get("/roles/a", NOW) is False  # not read yet: cannot tell
    # Events that arrived before the read's answer: one newer than the read, one older.
    mirror.apply(put("/roles/b", "b2", 12))
    mirror.apply(delete("/roles/c", 9))
    mirror.apply(put("/other/x", "x", 13))  # outside the copy
    # A read answered at revision 10 with b at 8, c at 5 and d at 7: b's newer event stands, c's
    # deletion (9) stands against the read's older copy, and d is deleted by a later event (11).
    mirror.load("/roles/", [Item("/roles/b", b"b1", None, 8), Item("/roles/c", b"c1", None, 5),
                            Item("/roles/d", b"d1", None, 7)], read_at=10)
    mirror.apply(delete("/roles/d", 11))
    assert mirror.get("/roles/b", NOW).value == b"b2"  # type: ignore[union-attr]
    assert mirror.get("/roles/c", NOW) is None
    assert mirror.get("/roles/d", NOW) is None
    assert mirror.get("/other/x", NOW) is False
    assert [i.key for i in mirror.range("/roles/", "/roles0", 0, NOW) or []] == ["/roles/b"]
    assert mirror.range("/nodes/", "/nodes0", 0, NOW) is None  # not read in full yet
    assert mirror.range("/roles/", None, 0, NOW) is None  # beyond the prefix


def test_a_key_deleted_before_the_read_is_dropped_and_expiry_holds() -> None:
    mirror = Mirror(["/nodes/"])
    mirror.apply(put("/nodes/gone", "g", 3))
    soon = NOW + timedelta(seconds=5)
    mirror.load("/nodes/", [Item("/nodes/n1", b"1", soon, 4), Item("/nodes/n2", b"2", None, 5)], read_at=6)
    assert mirror.get("/nodes/gone", NOW) is None  # at 3, not in a read at 6: deleted meanwhile
    assert [i.key for i in mirror.range("/nodes/", "/nodes0", 0, NOW) or []] == ["/nodes/n1", "/nodes/n2"]
    assert [i.key for i in mirror.range("/nodes/", "/nodes0", 1, NOW) or []] == ["/nodes/n1"]
    later = NOW + timedelta(seconds=10)
    assert mirror.get("/nodes/n1", later) is None
    assert [i.key for i in mirror.range("/nodes/", "/nodes0", 0, later) or []] == ["/nodes/n2"]
    mirror.apply(put("/nodes/n3", "3", 7))
    mirror.apply(delete("/nodes/n2", 8))
    assert [i.key for i in mirror.range("/nodes/", "/nodes0", 0, later) or []] == ["/nodes/n3"]
    mirror.forget()
    assert mirror.get("/nodes/n3", NOW) is False and not mirror.complete
