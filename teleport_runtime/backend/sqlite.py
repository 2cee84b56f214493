"""The default backend: one SQLite file owned by the auth process.

Durability: WAL journal with ``synchronous=FULL``; every mutation is one ``BEGIN IMMEDIATE`` ..
``COMMIT`` transaction finished before the method returns, so whatever a method reported as done
survives ``kill -9`` and power loss. Revisions come from a counter stored in the same file and
bumped inside each mutation's transaction (never reset, never reused after a rollback).

Transactions are short and run inline on the event-loop thread (no thread per call); the cost of a
mutation is dominated by the WAL fsync. Watch events fan out in process, after the commit, in
commit order. Expiry times are stored as integer microseconds since the Unix epoch, with a partial
index for the sweeper.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from teleport_runtime.backend.base import (
    DEFAULT_SWEEP_INTERVAL,
    DEFAULT_WATCHER_CAPACITY,
    Backend,
    Clock,
    Event,
    EventType,
    Item,
    check_expires,
    check_item,
    check_key,
    from_micros,
    to_micros,
)
from teleport_runtime.errors import (
    AlreadyExists,
    BadParameter,
    CompareFailed,
    ConnectionProblem,
    NotFound,
    TeleportError,
)

SCHEMA_VERSION = 1
#: Items removed per sweeper transaction; the sweeper yields to the loop between batches.
SWEEP_BATCH = 1000
#: Milliseconds a writer waits for another connection's write lock before failing.
BUSY_TIMEOUT_MS = 5000

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS kv (
        key TEXT NOT NULL PRIMARY KEY,
        value BLOB NOT NULL,
        expires INTEGER,
        revision INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires) WHERE expires IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS meta (
        name TEXT NOT NULL PRIMARY KEY,
        value INTEGER NOT NULL
    )""",
    "INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 0)",
    "INSERT OR IGNORE INTO meta (name, value) VALUES ('schema_version', 1)",
)

# A row is live when it never expires or expires after "now" (the last parameter).
_SQL_GET = (
    "SELECT value, expires, revision FROM kv WHERE key = ? AND (expires IS NULL OR expires > ?)"
)
_SQL_RANGE = (
    "SELECT key, value, expires, revision FROM kv "
    "WHERE key >= ? AND key < ? AND (expires IS NULL OR expires > ?) ORDER BY key LIMIT ?"
)
_SQL_RANGE_OPEN = (
    "SELECT key, value, expires, revision FROM kv "
    "WHERE key >= ? AND (expires IS NULL OR expires > ?) ORDER BY key LIMIT ?"
)
_SQL_REVISION = "SELECT value FROM meta WHERE name = 'revision'"
_SQL_SET_REVISION = "UPDATE meta SET value = ? WHERE name = 'revision'"
_SQL_CREATE = (
    "INSERT INTO kv (key, value, expires, revision) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires, "
    "revision = excluded.revision WHERE kv.expires IS NOT NULL AND kv.expires <= ?"
)
_SQL_PUT = (
    "INSERT INTO kv (key, value, expires, revision) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires, "
    "revision = excluded.revision"
)
_SQL_UPDATE = (
    "UPDATE kv SET value = ?, expires = ?, revision = ? "
    "WHERE key = ? AND (expires IS NULL OR expires > ?)"
)
_SQL_GET_VALUE = "SELECT value FROM kv WHERE key = ? AND (expires IS NULL OR expires > ?)"
_SQL_DELETE = "DELETE FROM kv WHERE key = ? AND (expires IS NULL OR expires > ?)"
_SQL_KEYS_RANGE = "SELECT key FROM kv WHERE key >= ? AND key < ? ORDER BY key"
_SQL_KEYS_RANGE_OPEN = "SELECT key FROM kv WHERE key >= ? ORDER BY key"
_SQL_DELETE_RANGE = "DELETE FROM kv WHERE key >= ? AND key < ?"
_SQL_DELETE_RANGE_OPEN = "DELETE FROM kv WHERE key >= ?"
_SQL_KEEP_ALIVE = (
    "UPDATE kv SET expires = ?, revision = ? WHERE key = ? AND (expires IS NULL OR expires > ?)"
)
_SQL_EXPIRED = (
    "SELECT key FROM kv WHERE expires IS NOT NULL AND expires <= ? ORDER BY expires LIMIT ?"
)
_SQL_DELETE_KEY = "DELETE FROM kv WHERE key = ?"


def _micros(when: datetime | None) -> int | None:
    return None if when is None else to_micros(when)


def _expires(micros: int | None) -> datetime | None:
    return None if micros is None else from_micros(micros)


class _Tx:
    """State of one write transaction: its connection, revisions and events to emit."""

    __slots__ = ("conn", "events", "revision")

    def __init__(self, conn: sqlite3.Connection, revision: int) -> None:
        self.conn = conn
        self.revision = revision
        self.events: list[Event] = []

    def next_revision(self) -> int:
        self.revision += 1
        return self.revision


class SQLiteBackend(Backend):
    """Backend on one SQLite database file (``":memory:"`` works for throwaway tests).

    The file and its parent directory are created if missing (mode 0600 / 0700). Opening is
    synchronous; the other methods are async but never leave the loop thread.

    Args:
        path: the database file.
        clock, sweep_interval, watcher_capacity: see :class:`Backend`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        sweep_interval: float | None = DEFAULT_SWEEP_INTERVAL,
        watcher_capacity: int = DEFAULT_WATCHER_CAPACITY,
    ) -> None:
        super().__init__(
            clock=clock, sweep_interval=sweep_interval, watcher_capacity=watcher_capacity
        )
        self.path = str(path)
        self._lock = threading.Lock()
        memory = self.path == ":memory:"
        try:
            if not memory:
                _prepare_file(Path(self.path))
            self._conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, cached_statements=64
            )
        except (OSError, sqlite3.Error) as exc:
            raise ConnectionProblem(f"cannot open sqlite backend {self.path}: {exc}") from exc
        try:
            self._init_db(memory)
        except sqlite3.Error as exc:
            self._conn.close()
            raise ConnectionProblem(f"cannot open sqlite backend {self.path}: {exc}") from exc

    def _init_db(self, memory: bool) -> None:
        conn = self._conn
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if not memory and str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot enable WAL journal mode (got {mode!r})")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA:
                conn.execute(statement)
            row = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
            if row[0] > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"database schema version {row[0]} is newer than this program's "
                    f"({SCHEMA_VERSION})"
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # -- transactions ------------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._check_open()
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise _wrap(exc) from exc

    @contextmanager
    def _write(self) -> Iterator[_Tx]:
        """One write transaction; commits on success, then emits its events in order.

        The revision counter is read after the write lock is taken and stored back before the
        commit, so it stays right even if another connection wrote in between.
        """
        with self._lock:
            self._check_open()
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    tx = _Tx(conn, conn.execute(_SQL_REVISION).fetchone()[0])
                    start = tx.revision
                    yield tx
                    if tx.revision != start:
                        conn.execute(_SQL_SET_REVISION, (tx.revision,))
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise _wrap(exc) from exc
            for event in tx.events:
                self._emit(event)

    # -- reads -------------------------------------------------------------------------------

    async def get(self, key: str) -> Item:
        """The live item at ``key``; NotFound if missing or expired."""
        check_key(key)
        self._ensure_sweeper()
        now = to_micros(self.now())
        with self._read() as conn:
            row = conn.execute(_SQL_GET, (key, now)).fetchone()
        if row is None:
            raise NotFound(f"key {key!r} is not found")
        return Item(key, row[0], _expires(row[1]), row[2])

    async def get_range(self, start_key: str, end_key: str | None, limit: int = 0) -> list[Item]:
        """Live items with ``start_key <= key < end_key`` (None: unbounded), sorted by key.

        ``limit=0`` returns all of them.
        """
        _check_range(start_key, end_key)
        if not isinstance(limit, int) or limit < 0:
            raise BadParameter(f"limit must be a non-negative integer, got {limit!r}")
        self._ensure_sweeper()
        if end_key is not None and end_key <= start_key:
            return []
        now = to_micros(self.now())
        sql_limit = limit or -1
        with self._read() as conn:
            if end_key is None:
                rows = conn.execute(_SQL_RANGE_OPEN, (start_key, now, sql_limit)).fetchall()
            else:
                rows = conn.execute(_SQL_RANGE, (start_key, end_key, now, sql_limit)).fetchall()
        return [Item(row[0], row[1], _expires(row[2]), row[3]) for row in rows]

    # -- writes ------------------------------------------------------------------------------

    async def create(self, item: Item) -> Item:
        """Store a new item; AlreadyExists if a live item has the key."""
        item = check_item(item)
        self._ensure_sweeper()
        await _yield_to_loop()
        now = to_micros(self.now())
        with self._write() as tx:
            stored = Item(item.key, item.value, item.expires, tx.next_revision())
            cur = tx.conn.execute(
                _SQL_CREATE,
                (item.key, item.value, _micros(item.expires), stored.revision, now),
            )
            if cur.rowcount != 1:
                raise AlreadyExists(f"key {item.key!r} already exists")
            tx.events.append(Event(EventType.PUT, stored))
        return stored

    async def put(self, item: Item) -> Item:
        """Store an item, replacing any existing one."""
        item = check_item(item)
        self._ensure_sweeper()
        await _yield_to_loop()
        with self._write() as tx:
            stored = Item(item.key, item.value, item.expires, tx.next_revision())
            tx.conn.execute(
                _SQL_PUT, (item.key, item.value, _micros(item.expires), stored.revision)
            )
            tx.events.append(Event(EventType.PUT, stored))
        return stored

    async def put_many(self, items: list[Item]) -> list[Item]:
        """Store items, replacing existing ones, all in one transaction (one WAL flush)."""
        items = [check_item(item) for item in items]
        self._ensure_sweeper()
        await _yield_to_loop()
        stored = []
        with self._write() as tx:
            for item in items:
                done = Item(item.key, item.value, item.expires, tx.next_revision())
                tx.conn.execute(_SQL_PUT, (item.key, item.value, _micros(item.expires), done.revision))
                tx.events.append(Event(EventType.PUT, done))
                stored.append(done)
        return stored

    async def update(self, item: Item) -> Item:
        """Replace a live item; NotFound if missing or expired."""
        item = check_item(item)
        self._ensure_sweeper()
        await _yield_to_loop()
        now = to_micros(self.now())
        with self._write() as tx:
            stored = Item(item.key, item.value, item.expires, tx.next_revision())
            cur = tx.conn.execute(
                _SQL_UPDATE,
                (item.value, _micros(item.expires), stored.revision, item.key, now),
            )
            if cur.rowcount != 1:
                raise NotFound(f"key {item.key!r} is not found")
            tx.events.append(Event(EventType.PUT, stored))
        return stored

    async def compare_and_swap(self, expected: Item, replace_with: Item) -> Item:
        """Replace the item if its stored value equals ``expected.value``.

        NotFound if missing or expired, CompareFailed if the value differs, BadParameter if the
        two items' keys differ.
        """
        expected = check_item(expected)
        item = check_item(replace_with)
        if expected.key != item.key:
            raise BadParameter(f"compare_and_swap keys differ: {expected.key!r} != {item.key!r}")
        self._ensure_sweeper()
        await _yield_to_loop()
        now = to_micros(self.now())
        with self._write() as tx:
            row = tx.conn.execute(_SQL_GET_VALUE, (item.key, now)).fetchone()
            if row is None:
                raise NotFound(f"key {item.key!r} is not found")
            if row[0] != expected.value:
                raise CompareFailed(f"value of key {item.key!r} has changed")
            stored = Item(item.key, item.value, item.expires, tx.next_revision())
            tx.conn.execute(
                _SQL_UPDATE,
                (item.value, _micros(item.expires), stored.revision, item.key, now),
            )
            tx.events.append(Event(EventType.PUT, stored))
        return stored

    async def delete(self, key: str) -> None:
        """Delete a live item; NotFound if missing or expired."""
        check_key(key)
        self._ensure_sweeper()
        await _yield_to_loop()
        now = to_micros(self.now())
        with self._write() as tx:
            cur = tx.conn.execute(_SQL_DELETE, (key, now))
            if cur.rowcount != 1:
                raise NotFound(f"key {key!r} is not found")
            tx.events.append(Event(EventType.DELETE, Item(key, b"", None, tx.next_revision())))

    async def delete_range(self, start_key: str, end_key: str | None) -> None:
        """Delete every item (live or expired) with ``start_key <= key < end_key``.

        One DELETE event per removed key, in key order. ``end_key=None``: no upper bound.
        """
        _check_range(start_key, end_key)
        self._ensure_sweeper()
        await _yield_to_loop()
        if end_key is not None and end_key <= start_key:
            return
        with self._write() as tx:
            if end_key is None:
                keys = tx.conn.execute(_SQL_KEYS_RANGE_OPEN, (start_key,)).fetchall()
                tx.conn.execute(_SQL_DELETE_RANGE_OPEN, (start_key,))
            else:
                keys = tx.conn.execute(_SQL_KEYS_RANGE, (start_key, end_key)).fetchall()
                tx.conn.execute(_SQL_DELETE_RANGE, (start_key, end_key))
            for (key,) in keys:
                tx.events.append(Event(EventType.DELETE, Item(key, b"", None, tx.next_revision())))

    async def keep_alive(self, key: str, expires: datetime) -> Item:
        """Set a new expiry on a live item; NotFound if missing or expired.

        The item gets a new revision and watchers get a PUT event with the full item.
        """
        check_key(key)
        when = check_expires(expires)
        if when is None:
            raise BadParameter(f"keep_alive of {key!r} needs an expiry time")
        self._ensure_sweeper()
        await _yield_to_loop()
        now = to_micros(self.now())
        with self._write() as tx:
            row = tx.conn.execute(_SQL_GET_VALUE, (key, now)).fetchone()
            if row is None:
                raise NotFound(f"key {key!r} is not found")
            stored = Item(key, row[0], when, tx.next_revision())
            tx.conn.execute(_SQL_KEEP_ALIVE, (to_micros(when), stored.revision, key, now))
            tx.events.append(Event(EventType.PUT, stored))
        return stored

    async def sweep(self) -> int:
        """Remove expired items in batches of SWEEP_BATCH, emitting DELETE events."""
        total = 0
        while True:
            now = to_micros(self.now())
            with self._write() as tx:
                keys = tx.conn.execute(_SQL_EXPIRED, (now, SWEEP_BATCH)).fetchall()
                tx.conn.executemany(_SQL_DELETE_KEY, keys)
                for (key,) in keys:
                    tx.events.append(
                        Event(EventType.DELETE, Item(key, b"", None, tx.next_revision()))
                    )
            total += len(keys)
            if len(keys) < SWEEP_BATCH or self._closed:
                return total
            await asyncio.sleep(0)

    async def _close_storage(self) -> None:
        with self._lock:
            self._conn.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ConnectionProblem(f"sqlite backend {self.path} is closed")


async def _yield_to_loop() -> None:
    """Let other tasks (watch consumers, request handlers) run before a write.

    The write itself never suspends; without this, a task writing in a loop would starve the
    loop and its watchers would overflow. Yielding before (not after) the transaction keeps
    cancellation clean: a write whose caller is cancelled here has not happened.
    """
    await asyncio.sleep(0)


def _check_range(start_key: str, end_key: str | None) -> None:
    if not isinstance(start_key, str):
        raise BadParameter(f"start_key must be a string, got {start_key!r}")
    if end_key is not None and not isinstance(end_key, str):
        raise BadParameter(f"end_key must be a string or None, got {end_key!r}")


def _wrap(exc: sqlite3.Error) -> TeleportError:
    message = f"sqlite backend: {exc}"
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        return ConnectionProblem(message)
    return TeleportError(message)


def _prepare_file(path: Path) -> None:
    """Create the parent directory (0700) and an empty database file (0600) if missing."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
