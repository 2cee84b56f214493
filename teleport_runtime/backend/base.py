"""The storage interface, in the shape of the reference's backend.

A backend stores :class:`Item` values under ``/``-separated string keys. Every mutation is given a
revision by the backend (strictly increasing per backend, persisted across restarts) and is
announced to in-process :class:`Watcher` objects as an :class:`Event`, in commit order.

Expiry: an item whose ``expires`` is at or before the backend clock's "now" is invisible to every
read and mutation at once (``get`` raises NotFound, ``get_range`` skips it, ``update``/``delete``/
``keep_alive``/``compare_and_swap`` raise NotFound, ``create`` may replace it). A background
sweeper then removes it physically and emits a DELETE event for it.

Backends are used from one asyncio event loop. Methods are ``async`` so that network backends fit
the same interface; the SQLite backend does its (short) transactions inline on the loop thread.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType

from teleport_runtime.errors import BadParameter, ConnectionProblem, LimitExceeded

log = logging.getLogger("teleport.backend")

Clock = Callable[[], datetime]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_MAX_CHAR = 0x10FFFF
_SURROGATES = range(0xD800, 0xE000)

#: Default number of undelivered events a watcher may hold before it is closed as too slow.
DEFAULT_WATCHER_CAPACITY = 16384
#: Default seconds between two runs of the expiry sweeper.
DEFAULT_SWEEP_INTERVAL = 1.0


def utc_now() -> datetime:
    """The default backend clock: the current time, UTC-aware."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Item:
    """One stored value.

    ``expires`` is a timezone-aware datetime (returned in UTC) or None for "never".
    ``revision`` is ignored on input and set by the backend on every returned item.
    """

    key: str
    value: bytes
    expires: datetime | None = None
    revision: int = 0


class EventType(enum.Enum):
    """What happened to a key.

    ``INIT`` is the first event of every watcher: the watch is established and every later
    mutation under its prefixes will be delivered.
    """

    INIT = "init"
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Event:
    """A change seen by a watcher.

    PUT carries the item as stored (value, expiry, new revision). DELETE carries the key and the
    revision of the deletion, with an empty value. INIT carries an empty item (key ``""``).
    """

    type: EventType
    item: Item


def prefix_end(prefix: str) -> str:
    """The smallest key greater than every key starting with ``prefix``.

    Use it as the exclusive end of a range: ``get_range(p, prefix_end(p))`` lists keys under
    ``p``. Raises BadParameter for a prefix with no finite end (empty, or made only of U+10FFFF);
    pass ``end_key=None`` to mean "no upper bound" instead.
    """
    chars = list(prefix)
    while chars:
        code = ord(chars[-1])
        if code < _MAX_CHAR:
            code += 1
            if code in _SURROGATES:
                code = _SURROGATES.stop
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    raise BadParameter(f"prefix {prefix!r} has no range end; use end_key=None for no upper bound")


def to_micros(when: datetime) -> int:
    """Microseconds since the Unix epoch for an aware datetime (exact)."""
    return (when - _EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    """The UTC datetime for microseconds since the Unix epoch (exact)."""
    return _EPOCH + timedelta(microseconds=micros)


def check_key(key: str) -> None:
    """Raise BadParameter unless ``key`` is a non-empty string storable as UTF-8 text."""
    if not isinstance(key, str) or not key:
        raise BadParameter(f"backend key must be a non-empty string, got {key!r}")
    if "\x00" in key:
        raise BadParameter(f"backend key {key!r} contains a NUL character")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadParameter(f"backend key {key!r} is not valid UTF-8 text") from exc


def check_expires(expires: datetime | None) -> datetime | None:
    """Validate an expiry: None or an aware datetime, returned converted to UTC."""
    if expires is None:
        return None
    if not isinstance(expires, datetime):
        raise BadParameter(f"expires must be a datetime or None, got {type(expires).__name__}")
    if expires.tzinfo is None or expires.utcoffset() is None:
        raise BadParameter(f"expires must be timezone-aware, got naive {expires.isoformat()}")
    return expires.astimezone(UTC)


def check_item(item: Item) -> Item:
    """Validate an item given to a mutation; return it with ``expires`` in UTC."""
    if not isinstance(item, Item):
        raise BadParameter(f"expected a backend Item, got {type(item).__name__}")
    check_key(item.key)
    if not isinstance(item.value, bytes):
        raise BadParameter(f"value of {item.key!r} must be bytes, got {type(item.value).__name__}")
    expires = check_expires(item.expires)
    if expires is not item.expires:
        return Item(item.key, item.value, expires, item.revision)
    return item


class Watcher:
    """An async iterator of :class:`Event` for keys under any of its prefixes.

    The first event is always ``EventType.INIT``. Events arrive in revision order. Iteration ends
    (StopAsyncIteration) after :meth:`close` or when the backend closes. A watcher that falls
    more than ``capacity`` events behind is closed by the backend: it yields the events it
    holds, then raises LimitExceeded; the caller must re-read state and start a new watcher.

    Usable as ``async with await backend.new_watcher([...]) as w: async for ev in w: ...``.
    """

    def __init__(
        self,
        prefixes: Iterable[str],
        capacity: int = DEFAULT_WATCHER_CAPACITY,
        on_close: Callable[[Watcher], None] | None = None,
    ) -> None:
        self.prefixes: tuple[str, ...] = tuple(prefixes)
        self._capacity = capacity
        self._on_close = on_close
        self._events: deque[Event] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._overflowed = False

    @property
    def closed(self) -> bool:
        """True once the watcher gets no more events (closed, overflowed or backend closed)."""
        return self._closed

    def matches(self, key: str) -> bool:
        """True if ``key`` is under one of the watcher's prefixes (no prefixes: every key)."""
        if not self.prefixes:
            return True
        return key.startswith(self.prefixes)

    def close(self) -> None:
        """Stop watching; pending events are dropped and iteration ends. Idempotent."""
        self._events.clear()
        self._finish()

    def _finish(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake()
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close(self)

    def _push(self, event: Event) -> None:
        """Queue an event (called by the backend)."""
        if self._closed:
            return
        if len(self._events) >= self._capacity:
            log.warning(
                "backend watcher on %s fell %d events behind; closing it",
                self.prefixes,
                self._capacity,
            )
            self._overflowed = True
            self._finish()
            return
        self._events.append(event)
        self._wake()

    def take_pending(self) -> list[Event]:
        """The events queued so far, without waiting (a cache checks this before each use: the
        backend queues a commit's events before the mutation returns)."""
        events = list(self._events)
        self._events.clear()
        return events

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> Watcher:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._events:
                return self._events.popleft()
            if self._closed:
                if self._overflowed:
                    self._overflowed = False
                    raise LimitExceeded(
                        f"backend watcher on {list(self.prefixes)} fell more than "
                        f"{self._capacity} events behind and was closed; re-read and re-watch"
                    )
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def __aenter__(self) -> Watcher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Backend(abc.ABC):
    """Abstract storage backend.

    Subclasses implement the storage methods and :meth:`sweep` / :meth:`_close_storage`, call
    :meth:`_ensure_sweeper` from their async methods and :meth:`_emit` after each commit. This
    base class owns the clock, the in-process watcher fan-out and the sweeper task.

    Args:
        clock: returns the current time (aware); inject a fake one in tests.
        sweep_interval: seconds between expiry sweeps; None disables the background sweeper
            (call :meth:`sweep` yourself).
        watcher_capacity: undelivered events a watcher may hold before it is closed.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        sweep_interval: float | None = DEFAULT_SWEEP_INTERVAL,
        watcher_capacity: int = DEFAULT_WATCHER_CAPACITY,
    ) -> None:
        if sweep_interval is not None and sweep_interval <= 0:
            raise BadParameter(f"sweep_interval must be positive or None, got {sweep_interval}")
        if watcher_capacity < 1:
            raise BadParameter(f"watcher_capacity must be at least 1, got {watcher_capacity}")
        self._clock: Clock = clock or utc_now
        self._sweep_interval = sweep_interval
        self._watcher_capacity = watcher_capacity
        self._watchers: set[Watcher] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False

    # -- storage methods ---------------------------------------------------------------------

    @abc.abstractmethod
    async def get(self, key: str) -> Item:
        """The live item at ``key``; NotFound if missing or expired."""

    @abc.abstractmethod
    async def get_range(self, start_key: str, end_key: str | None, limit: int = 0) -> list[Item]:
        """Live items with ``start_key <= key < end_key``, sorted by key.

        ``end_key=None`` means no upper bound; ``limit=0`` means no limit.
        """

    @abc.abstractmethod
    async def create(self, item: Item) -> Item:
        """Store a new item; AlreadyExists if a live item has the key.

        An expired item at the key is replaced.
        """

    @abc.abstractmethod
    async def put(self, item: Item) -> Item:
        """Store an item, replacing any existing one (upsert)."""

    async def put_many(self, items: list[Item]) -> list[Item]:
        """:meth:`put` each item, in order. A backend may store them in one transaction (one
        disk flush for many small records, such as a burst of heartbeats); this default does
        one put after another."""
        return [await self.put(item) for item in items]

    @abc.abstractmethod
    async def update(self, item: Item) -> Item:
        """Replace an existing live item; NotFound if missing or expired."""

    @abc.abstractmethod
    async def compare_and_swap(self, expected: Item, replace_with: Item) -> Item:
        """Replace the item if its current value equals ``expected.value``.

        Both items must have the same key (BadParameter otherwise). NotFound if the key is
        missing or expired, CompareFailed if the stored value differs.
        """

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Delete a live item; NotFound if missing or expired."""

    @abc.abstractmethod
    async def delete_range(self, start_key: str, end_key: str | None) -> None:
        """Delete every item with ``start_key <= key < end_key`` (None: no upper bound)."""

    @abc.abstractmethod
    async def keep_alive(self, key: str, expires: datetime) -> Item:
        """Set a new expiry on a live item (value unchanged, new revision, PUT event).

        NotFound if missing or expired. Returns the updated item.
        """

    @abc.abstractmethod
    async def sweep(self) -> int:
        """Remove expired items now, emitting a DELETE event for each; return how many."""

    @abc.abstractmethod
    async def _close_storage(self) -> None:
        """Release the storage (connection, files)."""

    # -- shared machinery --------------------------------------------------------------------

    def now(self) -> datetime:
        """The backend clock's current time, in UTC."""
        when = self._clock()
        if when.tzinfo is None:
            raise BadParameter("backend clock returned a naive datetime; it must be UTC-aware")
        return when.astimezone(UTC)

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ConnectionProblem("backend is closed")

    async def new_watcher(self, prefixes: list[str]) -> Watcher:
        """Watch keys under any of ``prefixes`` (an empty list watches every key).

        The watcher's first event is INIT; every mutation committed after this call returns is
        delivered after it.
        """
        self._check_open()
        self._ensure_sweeper()
        if isinstance(prefixes, str):
            raise BadParameter("new_watcher takes a list of prefixes, not a string")
        watcher = Watcher(prefixes, self._watcher_capacity, self._watchers.discard)
        watcher._push(Event(EventType.INIT, Item("", b"")))
        self._watchers.add(watcher)
        return watcher

    async def cache_reads(self, prefixes: list[str]) -> None:
        """Keep a copy of the items under ``prefixes`` to answer reads from while the storage
        does not answer. Local storage (SQLite) is never unreachable on its own: nothing to do."""
        return None

    def _wants(self, key: str) -> bool:
        """True if some watcher would receive an event for ``key``."""
        return any(w.matches(key) for w in self._watchers)

    def _emit(self, event: Event) -> None:
        """Deliver a committed change to every matching watcher."""
        if not self._watchers:
            return
        key = event.item.key
        for watcher in list(self._watchers):
            if watcher.matches(key):
                watcher._push(event)

    def _ensure_sweeper(self) -> None:
        """Start the expiry sweeper on the running loop if it is not running there yet."""
        if self._sweep_interval is None or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = self._sweeper
        if task is not None and not task.done() and task.get_loop() is loop:
            return
        self._sweeper = loop.create_task(self._sweep_loop(), name="backend-sweeper")

    async def _sweep_loop(self) -> None:
        assert self._sweep_interval is not None
        while not self._closed:
            await asyncio.sleep(self._sweep_interval)
            if self._closed:
                return
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("backend expiry sweep failed; retrying next interval")

    async def close(self) -> None:
        """Stop the sweeper, end every watcher and release the storage. Idempotent."""
        if self._closed:
            return
        self._closed = True
        task, self._sweeper = self._sweeper, None
        if task is not None and not task.done():
            try:
                task.cancel()
            except RuntimeError:  # its loop is already closed
                task = None
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                    if task.get_loop() is asyncio.get_running_loop():
                        await task
        for watcher in list(self._watchers):
            watcher._finish()
        self._watchers.clear()
        await self._close_storage()

    async def __aenter__(self) -> Backend:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
