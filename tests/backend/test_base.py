"""Backend-independent pieces: prefix_end, item validation, watcher buffering."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from teleport_runtime.backend import Event, EventType, Item, Watcher, prefix_end
from teleport_runtime.backend.base import check_item, from_micros, to_micros
from teleport_runtime.backend.sqlite import SQLiteBackend
from teleport_runtime.errors import BadParameter, LimitExceeded

from .conformance import FakeClock, next_event


def test_fake_clock_advances():
    clock = FakeClock()
    start = clock()
    clock.advance(timedelta(seconds=5))
    assert clock() - start == timedelta(seconds=5)
    assert clock().tzinfo is not None


def test_prefix_end_increments_last_character():
    assert prefix_end("/nodes/") == "/nodes0"
    assert prefix_end("a") == "b"
    assert "/nodes/" < "/nodes/\U0010ffff" < prefix_end("/nodes/")


def test_prefix_end_carries_and_skips_surrogates():
    assert prefix_end("a\U0010ffff") == "b"
    assert prefix_end("\ud7ff") == "\ue000"


def test_prefix_end_without_end():
    with pytest.raises(BadParameter):
        prefix_end("")
    with pytest.raises(BadParameter):
        prefix_end("\U0010ffff")


def test_micros_round_trip():
    when = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    assert from_micros(to_micros(when)) == when
    assert to_micros(datetime(1970, 1, 1, tzinfo=UTC)) == 0


@pytest.mark.parametrize(
    "item",
    [
        Item("", b"x"),
        Item("/a\x00b", b"x"),
        Item("/\ud800", b"x"),
        Item("/a", bytearray(b"x")),
        Item("/a", b"x", datetime(2030, 1, 1)),
    ],
)
def test_check_item_rejects(item):
    with pytest.raises(BadParameter):
        check_item(item)


def test_item_is_frozen():
    item = Item("/a", b"x")
    with pytest.raises(AttributeError):
        item.value = b"y"  # type: ignore[misc]


async def test_watcher_overflow_raises_limit_exceeded():
    watcher = Watcher(["/"], capacity=3)
    for i in range(5):
        watcher._push(Event(EventType.PUT, Item(f"/{i}", b"")))
    assert watcher.closed
    assert [(await next_event(watcher)).item.key for _ in range(3)] == ["/0", "/1", "/2"]
    with pytest.raises(LimitExceeded):
        await next_event(watcher)
    with pytest.raises(StopAsyncIteration):
        await anext(watcher)


async def test_slow_watcher_is_dropped_by_the_backend(tmp_path):
    backend = SQLiteBackend(tmp_path / "sqlite.db", watcher_capacity=3, sweep_interval=None)
    try:
        slow = await backend.new_watcher(["/"])  # holds INIT
        for i in range(5):
            await backend.put(Item(f"/{i}", b"x"))
        assert slow.closed
        assert not backend._watchers
        events = [await next_event(slow) for _ in range(3)]
        assert [e.type for e in events] == [EventType.INIT, EventType.PUT, EventType.PUT]
        with pytest.raises(LimitExceeded):
            await next_event(slow)
        fresh = await backend.new_watcher(["/"])
        assert (await next_event(fresh)).type is EventType.INIT
        fresh.close()
    finally:
        await backend.close()


async def test_watcher_context_manager_closes(tmp_path):
    backend = SQLiteBackend(tmp_path / "sqlite.db", sweep_interval=None)
    try:
        async with await backend.new_watcher(["/"]) as watcher:
            assert (await next_event(watcher)).type is EventType.INIT
        assert watcher.closed
        assert not backend._watchers
    finally:
        await backend.close()
