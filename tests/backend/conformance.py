"""The conformance suite every backend must pass.

Use it by subclassing :class:`BackendConformance` in a ``test_*.py`` module, as a class whose name
starts with ``Test``, and implementing :meth:`BackendConformance.open_backend` (the ``backend``
fixture and a few tests call it). The backend must be built with the given ``clock`` and a short
``sweep_interval`` (the sweep tests wait for the background sweeper, with a generous timeout that
only guards against hangs)::

    class TestMyBackendConformance(BackendConformance):
        async def open_backend(self, clock, tmp_path):
            return MyBackend(..., clock=clock, sweep_interval=0.01)

Time is moved with ``clock.advance(...)``: no test sleeps to let an item expire.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from teleport_runtime.backend import Backend, Event, EventType, Item, Watcher, prefix_end
from teleport_runtime.errors import (
    AlreadyExists,
    BadParameter,
    CompareFailed,
    ConnectionProblem,
    NotFound,
)

#: Guard against hangs when waiting for an event; never a performance assertion.
EVENT_TIMEOUT = 30.0


class FakeClock:
    """A controllable UTC clock: call it for "now", move it with :meth:`advance`."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> None:
        self._now += delta


async def next_event(watcher: Watcher) -> Event:
    """The watcher's next event (fails the test instead of hanging)."""
    return await asyncio.wait_for(anext(watcher), EVENT_TIMEOUT)


async def next_events(watcher: Watcher, count: int) -> list[Event]:
    return [await next_event(watcher) for _ in range(count)]


async def new_watcher(backend: Backend, prefixes: list[str]) -> Watcher:
    """A watcher whose INIT event has been consumed."""
    watcher = await backend.new_watcher(prefixes)
    init = await next_event(watcher)
    assert init.type is EventType.INIT
    return watcher


class BackendConformance:
    """Backend-independent tests of the :class:`Backend` contract."""

    async def open_backend(self, clock: FakeClock, tmp_path: Path) -> Backend:
        """Return a fresh, empty backend using ``clock`` and a short sweep interval."""
        raise NotImplementedError

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    async def backend(self, clock, tmp_path):
        backend = await self.open_backend(clock, tmp_path)
        try:
            yield backend
        finally:
            await backend.close()

    # -- CRUD --------------------------------------------------------------------------------

    async def test_create_then_get(self, backend):
        created = await backend.create(Item("/a/1", b"one"))
        assert created.key == "/a/1"
        assert created.value == b"one"
        assert created.expires is None
        assert created.revision > 0
        got = await backend.get("/a/1")
        assert got == created

    async def test_values_are_binary_safe(self, backend):
        value = bytes(range(256)) * 4
        await backend.put(Item("/bin", value))
        assert (await backend.get("/bin")).value == value
        await backend.put(Item("/empty", b""))
        assert (await backend.get("/empty")).value == b""

    async def test_get_missing_raises_not_found(self, backend):
        with pytest.raises(NotFound):
            await backend.get("/missing")

    async def test_create_existing_raises_already_exists(self, backend):
        await backend.create(Item("/a", b"first"))
        with pytest.raises(AlreadyExists):
            await backend.create(Item("/a", b"second"))
        assert (await backend.get("/a")).value == b"first"

    async def test_put_creates_and_replaces(self, backend):
        first = await backend.put(Item("/p", b"1"))
        second = await backend.put(Item("/p", b"2"))
        assert second.revision > first.revision
        assert await backend.get("/p") == second

    async def test_put_many_stores_in_order_with_rising_revisions(self, backend):
        await backend.put(Item("/m/a", b"old"))
        watcher = await new_watcher(backend, ["/m/"])
        stored = await backend.put_many([Item("/m/a", b"1"), Item("/m/b", b"2")])
        events = await next_events(watcher, 2)
        watcher.close()
        assert [i.value for i in stored] == [b"1", b"2"]
        assert stored[0].revision < stored[1].revision
        assert [(e.type, e.item) for e in events] == [(EventType.PUT, i) for i in stored]
        assert [i.value for i in await backend.get_range("/m/", "/m0")] == [b"1", b"2"]
        assert await backend.put_many([]) == []

    async def test_put_can_clear_expiry(self, backend, clock):
        await backend.put(Item("/p", b"1", clock() + timedelta(seconds=5)))
        await backend.put(Item("/p", b"2"))
        clock.advance(timedelta(seconds=10))
        got = await backend.get("/p")
        assert got.value == b"2"
        assert got.expires is None

    async def test_update_existing(self, backend):
        created = await backend.create(Item("/u", b"old"))
        updated = await backend.update(Item("/u", b"new"))
        assert updated.value == b"new"
        assert updated.revision > created.revision
        assert await backend.get("/u") == updated

    async def test_update_missing_raises_not_found(self, backend):
        with pytest.raises(NotFound):
            await backend.update(Item("/u", b"new"))
        with pytest.raises(NotFound):
            await backend.get("/u")

    async def test_delete(self, backend):
        await backend.create(Item("/d", b"x"))
        await backend.delete("/d")
        with pytest.raises(NotFound):
            await backend.get("/d")
        with pytest.raises(NotFound):
            await backend.delete("/d")
        await backend.create(Item("/d", b"again"))
        assert (await backend.get("/d")).value == b"again"

    async def test_delete_missing_raises_not_found(self, backend):
        with pytest.raises(NotFound):
            await backend.delete("/never")

    async def test_invalid_arguments_raise_bad_parameter(self, backend):
        with pytest.raises(BadParameter):
            await backend.put(Item("", b"x"))
        with pytest.raises(BadParameter):
            await backend.put(Item("/k", "not bytes"))  # type: ignore[arg-type]
        with pytest.raises(BadParameter):
            await backend.put(Item("/k", b"x", datetime(2030, 1, 1)))  # naive
        with pytest.raises(BadParameter):
            await backend.get_range("/a", "/b", limit=-1)
        with pytest.raises(BadParameter):
            await backend.compare_and_swap(Item("/a", b"x"), Item("/b", b"y"))

    async def test_expires_is_returned_in_utc(self, backend, clock):
        tz = timezone(timedelta(hours=5))
        expires = (clock() + timedelta(hours=1)).astimezone(tz)
        stored = await backend.put(Item("/tz", b"x", expires))
        got = await backend.get("/tz")
        assert got.expires == expires
        assert got.expires.utcoffset() == timedelta(0)
        assert stored.expires == got.expires

    async def test_expires_keeps_microseconds(self, backend, clock):
        expires = clock() + timedelta(seconds=30, microseconds=123457)
        await backend.put(Item("/us", b"x", expires))
        assert (await backend.get("/us")).expires == expires

    # -- revisions ---------------------------------------------------------------------------

    async def test_revisions_strictly_increase(self, backend, clock):
        revisions = [
            (await backend.create(Item("/r/1", b"a"))).revision,
            (await backend.put(Item("/r/2", b"b"))).revision,
            (await backend.update(Item("/r/1", b"c"))).revision,
            (await backend.compare_and_swap(Item("/r/1", b"c"), Item("/r/1", b"d"))).revision,
            (await backend.keep_alive("/r/2", clock() + timedelta(minutes=1))).revision,
            (await backend.put(Item("/r/1", b"e"))).revision,
        ]
        assert revisions == sorted(set(revisions))
        assert (await backend.get("/r/1")).revision == revisions[-1]
        assert (await backend.get("/r/2")).revision == revisions[-2]

    async def test_failed_mutations_do_not_change_the_item(self, backend):
        created = await backend.create(Item("/f", b"v"))
        with pytest.raises(AlreadyExists):
            await backend.create(Item("/f", b"w"))
        with pytest.raises(CompareFailed):
            await backend.compare_and_swap(Item("/f", b"nope"), Item("/f", b"w"))
        assert await backend.get("/f") == created
        later = await backend.put(Item("/g", b"x"))
        assert later.revision > created.revision

    # -- ranges ------------------------------------------------------------------------------

    async def _fill(self, backend, keys):
        for key in keys:
            await backend.put(Item(key, key.encode()))

    async def test_get_range_bounds_and_order(self, backend):
        await self._fill(backend, ["/c", "/b/1", "/a", "/b", "/b/2", "/ba", "/d"])
        items = await backend.get_range("/b", "/c")
        assert [i.key for i in items] == ["/b", "/b/1", "/b/2", "/ba"]
        assert [i.value for i in items] == [b"/b", b"/b/1", b"/b/2", b"/ba"]
        # start inclusive, end exclusive
        assert [i.key for i in await backend.get_range("/a", "/b")] == ["/a"]
        assert [i.key for i in await backend.get_range("/a", "/b/1")] == ["/a", "/b"]
        # empty and inverted ranges
        assert await backend.get_range("/c", "/c") == []
        assert await backend.get_range("/d", "/a") == []
        assert await backend.get_range("/x", "/z") == []
        # open end
        assert [i.key for i in await backend.get_range("/ba", None)] == ["/ba", "/c", "/d"]

    async def test_get_range_with_prefix_end(self, backend):
        await self._fill(backend, ["/nodes/a", "/nodes/b", "/nodes0", "/node", "/nodesz/x"])
        items = await backend.get_range("/nodes/", prefix_end("/nodes/"))
        assert [i.key for i in items] == ["/nodes/a", "/nodes/b"]

    async def test_get_range_limit(self, backend):
        keys = [f"/l/{i:03d}" for i in range(20)]
        await self._fill(backend, reversed(keys))
        assert [i.key for i in await backend.get_range("/l/", "/l0", limit=5)] == keys[:5]
        assert len(await backend.get_range("/l/", "/l0", limit=0)) == 20
        assert len(await backend.get_range("/l/", "/l0", limit=100)) == 20

    async def test_get_range_limit_counts_only_live_items(self, backend, clock):
        await backend.put(Item("/l/0", b"x", clock() + timedelta(seconds=1)))
        await backend.put(Item("/l/1", b"x", clock() + timedelta(seconds=1)))
        await self._fill(backend, ["/l/2", "/l/3", "/l/4"])
        clock.advance(timedelta(seconds=2))
        items = await backend.get_range("/l/", "/l0", limit=2)
        assert [i.key for i in items] == ["/l/2", "/l/3"]

    async def test_delete_range(self, backend):
        await self._fill(backend, ["/a", "/b", "/b/1", "/b/2", "/c"])
        await backend.delete_range("/b", prefix_end("/b"))
        assert [i.key for i in await backend.get_range("/", None)] == ["/a", "/c"]
        await backend.delete_range("/x", "/y")  # nothing there: no error
        await backend.delete_range("/", None)
        assert await backend.get_range("/", None) == []

    # -- expiry ------------------------------------------------------------------------------

    async def test_expired_item_is_invisible(self, backend, clock):
        expires = clock() + timedelta(seconds=10)
        await backend.create(Item("/e/1", b"x", expires))
        await backend.create(Item("/e/2", b"y"))
        clock.advance(timedelta(seconds=9))
        assert (await backend.get("/e/1")).expires == expires
        clock.advance(timedelta(seconds=1))  # exactly at expiry: gone
        with pytest.raises(NotFound):
            await backend.get("/e/1")
        assert [i.key for i in await backend.get_range("/e/", "/e0")] == ["/e/2"]

    async def test_expired_item_cannot_be_changed(self, backend, clock):
        await backend.create(Item("/e", b"x", clock() + timedelta(seconds=1)))
        clock.advance(timedelta(seconds=2))
        with pytest.raises(NotFound):
            await backend.update(Item("/e", b"y"))
        with pytest.raises(NotFound):
            await backend.compare_and_swap(Item("/e", b"x"), Item("/e", b"y"))
        with pytest.raises(NotFound):
            await backend.keep_alive("/e", clock() + timedelta(minutes=1))
        with pytest.raises(NotFound):
            await backend.delete("/e")

    async def test_create_replaces_expired_item(self, backend, clock):
        await backend.create(Item("/e", b"old", clock() + timedelta(seconds=1)))
        clock.advance(timedelta(seconds=2))
        created = await backend.create(Item("/e", b"new"))
        assert await backend.get("/e") == created

    async def test_put_with_past_expiry_is_invisible(self, backend, clock):
        await backend.put(Item("/past", b"x", clock() - timedelta(seconds=1)))
        with pytest.raises(NotFound):
            await backend.get("/past")

    async def test_keep_alive_extends_expiry(self, backend, clock):
        created = await backend.create(Item("/k", b"v", clock() + timedelta(seconds=10)))
        clock.advance(timedelta(seconds=5))
        new_expiry = clock() + timedelta(seconds=10)
        kept = await backend.keep_alive("/k", new_expiry)
        assert kept.value == b"v"
        assert kept.expires == new_expiry
        assert kept.revision > created.revision
        clock.advance(timedelta(seconds=8))  # past the original expiry
        got = await backend.get("/k")
        assert got == kept
        clock.advance(timedelta(seconds=2))
        with pytest.raises(NotFound):
            await backend.get("/k")

    async def test_keep_alive_missing_raises_not_found(self, backend, clock):
        with pytest.raises(NotFound):
            await backend.keep_alive("/nope", clock() + timedelta(seconds=10))

    async def test_keep_alive_can_add_expiry(self, backend, clock):
        await backend.create(Item("/forever", b"v"))
        await backend.keep_alive("/forever", clock() + timedelta(seconds=1))
        clock.advance(timedelta(seconds=1))
        with pytest.raises(NotFound):
            await backend.get("/forever")

    # -- compare and swap --------------------------------------------------------------------

    async def test_compare_and_swap_success(self, backend, clock):
        created = await backend.create(Item("/cas", b"v1"))
        expires = clock() + timedelta(minutes=5)
        swapped = await backend.compare_and_swap(Item("/cas", b"v1"), Item("/cas", b"v2", expires))
        assert swapped.value == b"v2"
        assert swapped.expires == expires
        assert swapped.revision > created.revision
        assert await backend.get("/cas") == swapped

    async def test_compare_and_swap_mismatch(self, backend):
        await backend.create(Item("/cas", b"v1"))
        with pytest.raises(CompareFailed):
            await backend.compare_and_swap(Item("/cas", b"v0"), Item("/cas", b"v2"))
        assert (await backend.get("/cas")).value == b"v1"

    async def test_compare_and_swap_ignores_expected_revision_and_expiry(self, backend, clock):
        await backend.create(Item("/cas", b"v1", clock() + timedelta(minutes=1)))
        swapped = await backend.compare_and_swap(
            Item("/cas", b"v1", None, revision=12345), Item("/cas", b"v2")
        )
        assert swapped.value == b"v2"

    async def test_compare_and_swap_missing_raises_not_found(self, backend):
        with pytest.raises(NotFound):
            await backend.compare_and_swap(Item("/cas", b"v1"), Item("/cas", b"v2"))

    async def test_concurrent_compare_and_swap_increments(self, backend):
        await backend.create(Item("/counter", b"0"))

        async def increment():
            while True:
                current = await backend.get("/counter")
                new = str(int(current.value) + 1).encode()
                try:
                    await backend.compare_and_swap(current, Item("/counter", new))
                    return
                except CompareFailed:
                    await asyncio.sleep(0)

        await asyncio.gather(*(increment() for _ in range(25)))
        assert (await backend.get("/counter")).value == b"25"

    # -- concurrency -------------------------------------------------------------------------

    async def test_concurrent_creates_only_one_wins(self, backend):
        results = await asyncio.gather(
            *(backend.create(Item("/race", f"v{i}".encode())) for i in range(20)),
            return_exceptions=True,
        )
        winners = [r for r in results if isinstance(r, Item)]
        losers = [r for r in results if not isinstance(r, Item)]
        assert len(winners) == 1
        assert len(losers) == 19
        assert all(isinstance(r, AlreadyExists) for r in losers)
        assert await backend.get("/race") == winners[0]

    # -- watches -----------------------------------------------------------------------------

    async def test_watcher_starts_with_init(self, backend):
        watcher = await backend.new_watcher(["/w/"])
        event = await next_event(watcher)
        assert event.type is EventType.INIT
        watcher.close()

    async def test_watcher_sees_mutations_in_order(self, backend, clock):
        watcher = await new_watcher(backend, ["/w/"])
        expires = clock() + timedelta(minutes=1)
        done = [
            await backend.create(Item("/w/a", b"1")),
            await backend.put(Item("/w/b", b"2")),
            await backend.update(Item("/w/a", b"3")),
            await backend.compare_and_swap(Item("/w/a", b"3"), Item("/w/a", b"4")),
            await backend.keep_alive("/w/b", expires),
        ]
        await backend.delete("/w/a")
        events = await next_events(watcher, 6)
        assert [e.type for e in events] == [EventType.PUT] * 5 + [EventType.DELETE]
        assert [e.item for e in events[:5]] == done
        assert events[4].item.value == b"2"  # keep_alive events carry the value
        assert events[4].item.expires == expires
        assert events[5].item.key == "/w/a"
        revisions = [e.item.revision for e in events]
        assert revisions == sorted(set(revisions))
        watcher.close()

    async def test_failed_mutations_emit_nothing(self, backend):
        await backend.create(Item("/w/a", b"1"))
        watcher = await new_watcher(backend, ["/w/"])
        with pytest.raises(AlreadyExists):
            await backend.create(Item("/w/a", b"2"))
        with pytest.raises(NotFound):
            await backend.delete("/w/zzz")
        with pytest.raises(CompareFailed):
            await backend.compare_and_swap(Item("/w/a", b"x"), Item("/w/a", b"y"))
        await backend.put(Item("/w/marker", b""))
        event = await next_event(watcher)
        assert (event.type, event.item.key) == (EventType.PUT, "/w/marker")
        watcher.close()

    async def test_watcher_filters_by_prefix(self, backend):
        watcher = await new_watcher(backend, ["/nodes/", "/roles/"])
        for key in ["/tokens/t", "/nodes/n1", "/nodesX", "/roles/admin", "/users/u", "/nodes/n2"]:
            await backend.put(Item(key, b"x"))
        await backend.delete("/users/u")
        await backend.delete("/nodes/n1")
        events = await next_events(watcher, 4)
        assert [(e.type, e.item.key) for e in events] == [
            (EventType.PUT, "/nodes/n1"),
            (EventType.PUT, "/roles/admin"),
            (EventType.PUT, "/nodes/n2"),
            (EventType.DELETE, "/nodes/n1"),
        ]
        watcher.close()

    async def test_watcher_with_no_prefixes_sees_everything(self, backend):
        watcher = await new_watcher(backend, [])
        await backend.put(Item("/a", b"x"))
        await backend.put(Item("/zz/y", b"x"))
        assert [e.item.key for e in await next_events(watcher, 2)] == ["/a", "/zz/y"]
        watcher.close()

    async def test_several_watchers_each_get_events(self, backend):
        one = await new_watcher(backend, ["/a/"])
        two = await new_watcher(backend, ["/a/", "/b/"])
        await backend.put(Item("/b/1", b"x"))
        await backend.put(Item("/a/1", b"x"))
        assert [e.item.key for e in await next_events(one, 1)] == ["/a/1"]
        assert [e.item.key for e in await next_events(two, 2)] == ["/b/1", "/a/1"]
        one.close()
        two.close()

    async def test_delete_range_emits_deletes(self, backend):
        await self._fill(backend, ["/w/a", "/w/b", "/w/c", "/x/a"])
        watcher = await new_watcher(backend, ["/w/", "/x/"])
        await backend.delete_range("/w/", prefix_end("/w/"))
        events = await next_events(watcher, 3)
        assert [(e.type, e.item.key) for e in events] == [
            (EventType.DELETE, "/w/a"),
            (EventType.DELETE, "/w/b"),
            (EventType.DELETE, "/w/c"),
        ]
        watcher.close()

    async def test_closed_watcher_stops_iterating(self, backend):
        watcher = await new_watcher(backend, ["/w/"])
        watcher.close()
        await backend.put(Item("/w/a", b"x"))
        events = [e async for e in watcher]
        assert events == []
        assert watcher.closed

    async def test_watcher_close_wakes_a_waiting_reader(self, backend):
        watcher = await new_watcher(backend, ["/w/"])
        reader = asyncio.ensure_future(anext(watcher))
        await asyncio.sleep(0)
        watcher.close()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(reader, EVENT_TIMEOUT)

    async def test_backend_close_ends_watchers(self, clock, tmp_path):
        backend = await self.open_backend(clock, tmp_path)
        watcher = await new_watcher(backend, ["/w/"])
        await backend.put(Item("/w/a", b"x"))
        await backend.close()
        events = [e async for e in watcher]
        assert [e.item.key for e in events] == ["/w/a"]  # delivered, then the end
        with pytest.raises(ConnectionProblem):
            await backend.get("/w/a")
        await backend.close()  # idempotent

    # -- sweeper -----------------------------------------------------------------------------

    async def test_sweeper_emits_delete_for_expired_items(self, backend, clock):
        watcher = await new_watcher(backend, ["/s/"])
        await backend.put(Item("/s/short", b"x", clock() + timedelta(seconds=10)))
        await backend.put(Item("/s/long", b"x", clock() + timedelta(hours=1)))
        await backend.put(Item("/s/forever", b"x"))
        assert [e.type for e in await next_events(watcher, 3)] == [EventType.PUT] * 3
        clock.advance(timedelta(seconds=11))
        event = await next_event(watcher)  # from the background sweeper
        assert (event.type, event.item.key) == (EventType.DELETE, "/s/short")
        assert [i.key for i in await backend.get_range("/s/", "/s0")] == ["/s/forever", "/s/long"]
        watcher.close()

    async def test_sweep_removes_expired_items(self, backend, clock):
        for i in range(5):
            await backend.put(Item(f"/s/{i}", b"x", clock() + timedelta(seconds=i + 1)))
        watcher = await new_watcher(backend, ["/s/"])
        clock.advance(timedelta(seconds=3))
        await backend.sweep()  # may race the background sweeper: both are fine
        events = await next_events(watcher, 3)
        assert [(e.type, e.item.key) for e in events] == [
            (EventType.DELETE, "/s/0"),
            (EventType.DELETE, "/s/1"),
            (EventType.DELETE, "/s/2"),
        ]
        assert [i.key for i in await backend.get_range("/s/", "/s0")] == ["/s/3", "/s/4"]
        clock.advance(timedelta(hours=1))
        await backend.sweep()
        events = await next_events(watcher, 2)
        assert {e.item.key for e in events} == {"/s/3", "/s/4"}
        assert await backend.sweep() == 0
        watcher.close()

    async def test_swept_key_can_be_created_again(self, backend, clock):
        watcher = await new_watcher(backend, ["/s/"])
        await backend.create(Item("/s/k", b"1", clock() + timedelta(seconds=1)))
        clock.advance(timedelta(seconds=2))
        await backend.sweep()
        events = await next_events(watcher, 2)
        assert [e.type for e in events] == [EventType.PUT, EventType.DELETE]
        created = await backend.create(Item("/s/k", b"2"))
        assert created.revision > events[1].item.revision
        watcher.close()
