"""The PostgreSQL backend: several auth servers share one database.

Tables (created on first use, in the conn string's database and default schema):

- ``teleport_kv``: the items (key in the "C" collation, so key order is code-point order as in
  SQLite; expiry in integer microseconds since the epoch; revision);
- ``teleport_kv_meta``: the revision counter and the schema version;
- ``teleport_kv_events``: one row per revision (PUT with the stored item, or DELETE), kept for
  :data:`EVENT_RETENTION`, so a watcher that lost its connection resynchronises from the last
  revision it saw.

Every mutation is one transaction that first locks the revision counter row (``FOR UPDATE``),
so writers are serialised: revisions are handed out in commit order, and the events any reader
sees form a prefix of the revision sequence without gaps. That is what makes watches lossless: a
watcher's catch-up reads ``revision > last seen`` and a gap can only mean the events were
pruned (the watcher is then closed as too slow, and the caller re-reads and re-watches, as after
an overflow). Compare-and-swap, create and the expiry sweep run under the same lock, so two
backends (two auth servers) never both win a create or both sweep one expired item.

Watches: a commit sends ``NOTIFY teleport_kv`` with its last revision; one listening
connection per backend (started with the first watcher) catches up from the event table on each
notification, and after a reconnect. A mutation made through this backend delivers its own events
(and any earlier ones from other servers it has not delivered yet) before it returns, as the
SQLite backend does.

Errors: a database that stops answering at runtime makes every call raise
:class:`~teleport_runtime.errors.ServiceUnavailable` (HTTP 503) until it is back; the pool then
reconnects by itself. Reads under the prefixes given to :meth:`PostgresBackend.cache_reads` are
answered meanwhile from a copy in memory that follows the events (:mod:`.mirror`); writes are
refused. Problems found when the backend is first opened (bad conn string, server not
reachable, missing database or role, a schema from a newer version) raise
:class:`~teleport_runtime.errors.ConfigError` naming the configuration key and the fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import urllib.parse
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import psycopg
import psycopg.conninfo
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from teleport_runtime.backend.base import (
    DEFAULT_SWEEP_INTERVAL,
    DEFAULT_WATCHER_CAPACITY,
    Backend,
    Clock,
    Event,
    EventType,
    Item,
    Watcher,
    check_expires,
    check_item,
    check_key,
    from_micros,
    prefix_end,
    to_micros,
)
from teleport_runtime.backend.mirror import Mirror
from teleport_runtime.errors import (
    AlreadyExists,
    BadParameter,
    CompareFailed,
    ConfigError,
    NotFound,
    ServiceUnavailable,
    TeleportError,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
#: Connections in the pool unless the conn string says ``pool_max_conns``.
DEFAULT_POOL_MAX = 10
#: Seconds a call waits for a pool connection (the database is down: fail, do not hang).
POOL_TIMEOUT = 5.0
#: A pooled connection idle longer than this (seconds) is checked before use.
IDLE_CHECK = 1.0
#: Seconds libpq waits for a new connection unless the conn string says ``connect_timeout``.
CONNECT_TIMEOUT = 5
#: How long committed events stay in the event table for watchers that reconnect.
EVENT_RETENTION = timedelta(minutes=10)
#: Items removed per sweeper transaction.
SWEEP_BATCH = 1000
#: Events read per catch-up query.
CATCH_UP_BATCH = 1000
#: Seconds between catch-ups the listener does even without a notification (belt and braces).
LISTEN_POLL = 5.0
#: Seconds between listener reconnection attempts.
LISTEN_RETRY = 0.5
CHANNEL = "teleport_kv"

_PUT, _DELETE = 1, 2
_URI_RE = re.compile(r"postgres(ql)?://.*", re.DOTALL)
_KW_POOL_RE = re.compile(r"(^|\s)pool_max_conns\s*=\s*(\S*)")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS teleport_kv (
        key TEXT COLLATE "C" NOT NULL PRIMARY KEY,
        value BYTEA NOT NULL,
        expires BIGINT,
        revision BIGINT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS teleport_kv_expires ON teleport_kv (expires) WHERE expires IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS teleport_kv_meta (
        name TEXT NOT NULL PRIMARY KEY,
        value BIGINT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS teleport_kv_events (
        revision BIGINT NOT NULL PRIMARY KEY,
        kind SMALLINT NOT NULL,
        key TEXT COLLATE "C" NOT NULL,
        value BYTEA NOT NULL,
        expires BIGINT,
        created TIMESTAMPTZ NOT NULL DEFAULT now()
    )""",
    "CREATE INDEX IF NOT EXISTS teleport_kv_events_created ON teleport_kv_events (created)",
    "INSERT INTO teleport_kv_meta (name, value) VALUES ('revision', 0) ON CONFLICT DO NOTHING",
    "INSERT INTO teleport_kv_meta (name, value) VALUES ('schema_version', 1) ON CONFLICT DO NOTHING",
)
#: Serialises schema creation when several servers start at once (an arbitrary fixed key).
_SCHEMA_LOCK = 0x7E1E9087

# A row is live when it never expires or expires after "now" (the last parameter).
_SQL_GET = "SELECT value, expires, revision FROM teleport_kv WHERE key = %s AND (expires IS NULL OR expires > %s)"
_SQL_RANGE = (
    "SELECT key, value, expires, revision FROM teleport_kv "
    "WHERE key >= %s AND key < %s AND (expires IS NULL OR expires > %s) ORDER BY key LIMIT %s"
)
_SQL_RANGE_OPEN = (
    "SELECT key, value, expires, revision FROM teleport_kv "
    "WHERE key >= %s AND (expires IS NULL OR expires > %s) ORDER BY key LIMIT %s"
)
_SQL_LOCK_REVISION = "SELECT value FROM teleport_kv_meta WHERE name = 'revision' FOR UPDATE"
_SQL_REVISION = "SELECT value FROM teleport_kv_meta WHERE name = 'revision'"
_SQL_SET_REVISION = "UPDATE teleport_kv_meta SET value = %s WHERE name = 'revision'"
_SQL_CREATE = (
    "INSERT INTO teleport_kv (key, value, expires, revision) VALUES (%s, %s, %s, %s) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires, "
    "revision = excluded.revision WHERE teleport_kv.expires IS NOT NULL AND teleport_kv.expires <= %s"
)
_SQL_PUT = (
    "INSERT INTO teleport_kv (key, value, expires, revision) VALUES (%s, %s, %s, %s) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires, "
    "revision = excluded.revision"
)
_SQL_UPDATE = (
    "UPDATE teleport_kv SET value = %s, expires = %s, revision = %s "
    "WHERE key = %s AND (expires IS NULL OR expires > %s)"
)
_SQL_GET_VALUE = "SELECT value FROM teleport_kv WHERE key = %s AND (expires IS NULL OR expires > %s)"
_SQL_DELETE = "DELETE FROM teleport_kv WHERE key = %s AND (expires IS NULL OR expires > %s)"
_SQL_DELETE_RANGE = "DELETE FROM teleport_kv WHERE key >= %s AND key < %s RETURNING key"
_SQL_DELETE_RANGE_OPEN = "DELETE FROM teleport_kv WHERE key >= %s RETURNING key"
_SQL_KEEP_ALIVE = (
    "UPDATE teleport_kv SET expires = %s, revision = %s WHERE key = %s AND (expires IS NULL OR expires > %s)"
)
_SQL_ANY_EXPIRED = "SELECT 1 FROM teleport_kv WHERE expires IS NOT NULL AND expires <= %s LIMIT 1"
_SQL_SWEEP = (
    "DELETE FROM teleport_kv WHERE key IN (SELECT key FROM teleport_kv "
    "WHERE expires IS NOT NULL AND expires <= %s ORDER BY expires LIMIT %s) RETURNING key, expires"
)
_SQL_ADD_EVENT = "INSERT INTO teleport_kv_events (revision, kind, key, value, expires) VALUES (%s, %s, %s, %s, %s)"
_SQL_EVENTS = (
    "SELECT revision, kind, key, value, expires FROM teleport_kv_events "
    "WHERE revision > %s AND revision <= %s ORDER BY revision LIMIT %s"
)
_SQL_PRUNE_EVENTS = "DELETE FROM teleport_kv_events WHERE created < now() - %s"
_SQL_NOTIFY = f"SELECT pg_notify('{CHANNEL}', %s)"


def split_conn_string(conn_string: str, key: str = "teleport.storage.conn_string") -> tuple[str, int]:
    """The conn string for libpq (without ``pool_max_conns``, which is ours, and with a
    ``connect_timeout`` when it has none) and the pool size. ConfigError naming ``key`` for a conn
    string libpq cannot parse or a bad pool size."""
    if not isinstance(conn_string, str) or not conn_string.strip():
        raise ConfigError(
            f"{key}: expected a PostgreSQL conn string such as "
            "postgresql://teleport@db.example.com:5432/teleport_backend?sslmode=verify-full"
        )
    pool_max: str | None = None
    if _URI_RE.fullmatch(conn_string):
        parts = urllib.parse.urlsplit(conn_string)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        kept = []
        for name, value in query:
            if name == "pool_max_conns":
                pool_max = value
            else:
                kept.append((name, value))
        libpq = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(kept)))
    else:
        match = _KW_POOL_RE.search(conn_string)
        if match:
            pool_max = match.group(2)
        libpq = _KW_POOL_RE.sub(" ", conn_string).strip()
    size = DEFAULT_POOL_MAX
    if pool_max is not None:
        if not re.fullmatch(r"[0-9]{1,4}", pool_max) or not 1 <= int(pool_max) <= 1000:
            raise ConfigError(f"{key}: pool_max_conns={pool_max!r}: expected a number of connections from 1 to 1000")
        size = int(pool_max)
    try:
        params = psycopg.conninfo.conninfo_to_dict(libpq)
    except psycopg.ProgrammingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid"
        raise ConfigError(
            f"{key}: not a valid PostgreSQL conn string ({reason}): use the libpq form "
            "postgresql://USER@HOST:5432/DATABASE?sslmode=verify-full"
        ) from None
    if "connect_timeout" not in params:
        libpq = psycopg.conninfo.make_conninfo(libpq, connect_timeout=CONNECT_TIMEOUT)
    return libpq, size


def describe_target(conninfo: str) -> str:
    """``user@host:port/database`` of a conn string, for messages (never the password)."""
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    host = params.get("host") or params.get("hostaddr") or "localhost"
    user, port, dbname = params.get("user") or "(default user)", params.get("port") or 5432, params.get("dbname")
    return f"{user}@{host}:{port}/{dbname or '(default)'}"


def startup_error(exc: Exception, conninfo: str, key: str) -> ConfigError:
    """The one-line ConfigError for a failure to connect or to set up the schema at start."""
    text = " ".join(str(exc).split())
    target = describe_target(conninfo)
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    user, dbname = params.get("user") or "", params.get("dbname") or ""
    if re.search(r'database "[^"]*" does not exist', text):
        fix = f"create it (createdb -O {user or 'ROLE'} {dbname or 'DATABASE'}) or fix the database name"
        return ConfigError(f"{key}: database {dbname!r} does not exist on {target}: {fix}")
    if re.search(r'role "[^"]*" does not exist', text):
        return ConfigError(
            f"{key}: role {user!r} does not exist on {target}: create it (createuser {user or 'ROLE'}) "
            "or fix the user name"
        )
    if "password authentication failed" in text or "no password supplied" in text:
        return ConfigError(f"{key}: PostgreSQL refused the password of {user!r} on {target}: fix the password")
    if "permission denied" in text:
        return ConfigError(
            f"{key}: role {user!r} may not create or use the teleport tables on {target} ({text}): "
            "make it the owner of the database (ALTER DATABASE ... OWNER TO ...)"
        )
    if isinstance(exc, psycopg.OperationalError):
        return ConfigError(
            f"{key}: cannot connect to PostgreSQL at {target} ({text}): start the server or fix host, "
            "port and the ssl settings"
        )
    return ConfigError(f"{key}: cannot use PostgreSQL at {target}: {text}")


class _Tx:
    """State of one write transaction: its connection, revisions and events to emit."""

    __slots__ = ("conn", "events", "revision")

    def __init__(self, conn: psycopg.AsyncConnection[Any], revision: int) -> None:
        self.conn = conn
        self.revision = revision
        self.events: list[Event] = []

    def next_revision(self) -> int:
        self.revision += 1
        return self.revision


def _micros(when: datetime | None) -> int | None:
    return None if when is None else to_micros(when)


def _expires(micros: int | None) -> datetime | None:
    return None if micros is None else from_micros(micros)


def _event_row(event: Event) -> tuple[int, int, str, bytes, int | None]:
    item = event.item
    kind = _PUT if event.type is EventType.PUT else _DELETE
    return (item.revision, kind, item.key, item.value, _micros(item.expires))


def _row_event(row: Sequence[Any]) -> Event:
    revision, kind, key, value, expires = row
    if kind == _PUT:
        return Event(EventType.PUT, Item(key, bytes(value), _expires(expires), revision))
    return Event(EventType.DELETE, Item(key, b"", None, revision))


class PostgresBackend(Backend):
    """Backend on a PostgreSQL database, shareable by several processes.

    Construction does no I/O; the first call (or :meth:`open`) connects and creates the schema.

    Args:
        conn_string: a libpq conn string (URI or key=value); ``pool_max_conns`` sets the pool
            size and is removed before libpq sees it. TLS client certificates and server
            verification come from libpq's own ``sslmode``/``sslcert``/``sslkey``/``sslrootcert``.
        config_key: the configuration key the conn string came from, for error messages.
        clock, sweep_interval, watcher_capacity: see :class:`Backend`.
    """

    def __init__(
        self,
        conn_string: str,
        *,
        config_key: str = "teleport.storage.conn_string",
        clock: Clock | None = None,
        sweep_interval: float | None = DEFAULT_SWEEP_INTERVAL,
        watcher_capacity: int = DEFAULT_WATCHER_CAPACITY,
    ) -> None:
        super().__init__(clock=clock, sweep_interval=sweep_interval, watcher_capacity=watcher_capacity)
        self._conninfo, self.pool_max = split_conn_string(conn_string, config_key)
        self.config_key = config_key
        self.target = describe_target(self._conninfo)
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._open_lock = asyncio.Lock()
        self._dispatch_lock = asyncio.Lock()
        #: The last revision delivered to the watchers (meaningful while there are watchers).
        self._delivered = 0
        self._listener: asyncio.Task[None] | None = None
        #: Backend PID of the listening connection (tests terminate it to simulate a drop).
        self.listener_pid: int | None = None
        self._pruned_at = 0.0
        self._idle_since: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], float] = (
            weakref.WeakKeyDictionary()
        )
        #: What reads fall back on while the database does not answer (see cache_reads).
        self._mirror: Mirror | None = None
        #: Set when a call found the database not answering, cleared by the next call that got
        #: an answer: meanwhile reads the mirror can answer do not wait for the pool's timeout.
        self.unavailable = False

    # -- connection --------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, check the server and create the schema; ConfigError (naming the key and the
        fix) if that fails. Idempotent; the other methods call it on first use."""
        if self._pool is not None:
            return
        async with self._open_lock:
            if self._pool is not None:
                return
            self._check_open()
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
            except psycopg.Error as exc:
                raise startup_error(exc, self._conninfo, self.config_key) from None
            try:
                await self._init_schema(conn)
            except psycopg.Error as exc:
                raise startup_error(exc, self._conninfo, self.config_key) from None
            finally:
                await conn.close()
            pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
                self._conninfo,
                min_size=1,
                max_size=self.pool_max,
                open=False,
                timeout=POOL_TIMEOUT,
                kwargs={"autocommit": True},
                check=self._check_connection,
                reset=self._returned,
                name=f"teleport-backend {self.target}",
            )
            await pool.open()
            self._pool = pool

    async def _check_connection(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Before a pooled connection is handed out: one that sat idle (it may have been cut
        while the database restarted) answers an empty query first; a busy one is used as is."""
        if time.monotonic() - self._idle_since.get(conn, 0.0) > IDLE_CHECK:
            await AsyncConnectionPool.check_connection(conn)

    async def _returned(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._idle_since[conn] = time.monotonic()

    async def _init_schema(self, conn: psycopg.AsyncConnection[Any]) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            version = await _schema_version(conn)
            if version is not None and version > SCHEMA_VERSION:
                raise ConfigError(
                    f"{self.config_key}: the database {self.target} has teleport schema version {version}, "
                    f"newer than this program's ({SCHEMA_VERSION}): upgrade teleport on this host to the "
                    "version the other auth servers run, or point it at another database"
                )
            for statement in _SCHEMA:
                await conn.execute(statement)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        self._check_open()
        await self.open()
        assert self._pool is not None
        try:
            async with self._pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            raise self._unavailable(exc) from None
        except psycopg.Error as exc:
            raise self._wrap(exc) from None
        self.unavailable = False

    def _unavailable(self, exc: Exception) -> ServiceUnavailable:
        if not self.unavailable:
            log.warning("postgresql backend %s is not answering: reads from the cached copy, writes refused",
                        self.target)
        self.unavailable = True
        text = " ".join(str(exc).split()) or type(exc).__name__
        return ServiceUnavailable(
            f"the PostgreSQL backend {self.target} is not answering ({text}); changes are refused "
            "until it is back: check the database server"
        )

    def _wrap(self, exc: psycopg.Error) -> TeleportError:
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            return self._unavailable(exc)
        return TeleportError(f"PostgreSQL backend {self.target}: {' '.join(str(exc).split())}")

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[_Tx]:
        """One write transaction under the revision lock; after the commit, deliver its events."""
        async with self._connection() as conn, conn.transaction():
            cur = await conn.execute(_SQL_LOCK_REVISION)
            row = await cur.fetchone()
            assert row is not None
            tx = _Tx(conn, int(row[0]))
            start = tx.revision
            yield tx
            if tx.revision != start:
                if len(tx.events) != tx.revision - start:
                    raise AssertionError("every revision of a transaction must have one event")
                await conn.execute(_SQL_SET_REVISION, (tx.revision,))
                async with conn.cursor() as cur:
                    await cur.executemany(_SQL_ADD_EVENT, [_event_row(e) for e in tx.events])
                await conn.execute(_SQL_NOTIFY, (str(tx.revision),))
        if tx.events:
            await self._deliver(tx.events)

    # -- watches -----------------------------------------------------------------------------

    async def new_watcher(self, prefixes: list[str]) -> Watcher:
        """Watch keys under ``prefixes``; see :meth:`Backend.new_watcher`. Events committed by
        other processes sharing the database are delivered too."""
        self._check_open()
        await self.open()
        async with self._dispatch_lock:
            if self._following:
                # While the database is down the new watcher starts where the others are: the
                # listener delivers what was committed meanwhile once it answers again.
                with contextlib.suppress(ServiceUnavailable):
                    await self._catch_up_locked(None)
            else:
                self._delivered = await self._current_revision()
            watcher = await super().new_watcher(prefixes)
        self._ensure_listener()
        return watcher

    @property
    def _following(self) -> bool:
        """True while something follows the events (a watcher or the mirror): ``_delivered``
        is then the last revision handed to them."""
        return bool(self._watchers) or self._mirror is not None

    async def cache_reads(self, prefixes: list[str]) -> None:
        """Keep a copy of the items under ``prefixes`` in memory, following the events, and
        answer reads under them from it while the database does not answer (writes are still
        refused). Reads the prefixes in full once now; again after events were lost."""
        self._check_open()
        await self.open()
        async with self._dispatch_lock:
            if self._following:
                await self._catch_up_locked(None)
            else:
                self._delivered = await self._current_revision()
            self._mirror = Mirror(prefixes)
        self._ensure_listener()
        await self._load_mirror()

    async def _load_mirror(self) -> None:
        mirror = self._mirror
        if mirror is None:
            return
        for prefix in mirror.prefixes:
            async with self._connection() as conn, conn.transaction():
                # One snapshot for the revision and the items: the mirror merges the read with
                # the events that overlap it by revision.
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                cur = await conn.execute(_SQL_REVISION)
                row = await cur.fetchone()
                read_at = int(row[0]) if row else 0
                cur = await conn.execute(_SQL_RANGE, (prefix, prefix_end(prefix), to_micros(self.now()), None))
                rows = await cur.fetchall()
            mirror.load(prefix, [Item(r[0], bytes(r[1]), _expires(r[2]), int(r[3])) for r in rows], read_at)

    def _emit(self, event: Event) -> None:
        if self._mirror is not None:
            self._mirror.apply(event)
        super()._emit(event)

    def _mirrored(self) -> Mirror | None:
        """The mirror, when reads should be answered from it now (the database is down)."""
        if self.unavailable and not self._closed:
            return self._mirror
        return None

    async def _current_revision(self) -> int:
        async with self._connection() as conn:
            cur = await conn.execute(_SQL_REVISION)
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def _deliver(self, events: list[Event]) -> None:
        """Deliver a local commit's events in revision order, first any earlier revisions (other
        servers' commits) not delivered yet."""
        async with self._dispatch_lock:
            if not self._following:
                return
            first, last = events[0].item.revision, events[-1].item.revision
            if last <= self._delivered:
                return  # the listener got here first
            if first > self._delivered + 1:
                try:
                    await self._catch_up_locked(first - 1)
                except ServiceUnavailable:
                    # Committed, but the earlier events cannot be read now: the listener
                    # delivers everything in order once the database answers.
                    return
            for event in events:
                if event.item.revision == self._delivered + 1:
                    self._emit(event)
                    self._delivered = event.item.revision

    async def catch_up(self, upto: int | None = None) -> None:
        """Deliver every committed event up to revision ``upto`` (None: all committed so far)."""
        async with self._dispatch_lock:
            await self._catch_up_locked(upto)

    async def _catch_up_locked(self, upto: int | None) -> None:
        if not self._following:
            return
        if upto is None:
            # Read before the events: every revision up to it is committed (commit order is
            # revision order), so a revision missing from the event table was pruned.
            upto = await self._current_revision()
        while self._following and self._delivered < upto:
            async with self._connection() as conn:
                cur = await conn.execute(_SQL_EVENTS, (self._delivered, upto, CATCH_UP_BATCH))
                rows = await cur.fetchall()
            if not rows or rows[0][0] != self._delivered + 1:
                self._drop_watchers(rows[0][0] if rows else upto + 1)
                return
            for row in rows:
                self._emit(_row_event(row))
                self._delivered = int(row[0])

    def _drop_watchers(self, found: int) -> None:
        """Events after the last delivered revision are gone (pruned): every watcher must re-read."""
        log.warning(
            "postgresql backend: events %d..%d were pruned before this server delivered them; "
            "closing the watchers so that they re-read", self._delivered + 1, found - 1,
        )
        for watcher in list(self._watchers):
            watcher._overflowed = True
            watcher._finish()
        self._watchers.clear()
        self._delivered = found - 1
        if self._mirror is not None:
            self._mirror.forget()  # read again in full by the listener

    def _ensure_listener(self) -> None:
        if self._closed:
            return
        task = self._listener
        loop = asyncio.get_running_loop()
        if task is not None and not task.done() and task.get_loop() is loop:
            return
        self._listener = loop.create_task(self._listen_loop(), name="backend-listener")

    async def _listen_loop(self) -> None:
        """LISTEN on a dedicated connection; catch up on each notification, every LISTEN_POLL
        seconds, and after every (re)connection: nothing committed meanwhile is missed."""
        while not self._closed:
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
            except psycopg.Error as exc:
                log.warning("postgresql backend: watch connection to %s failed: %s", self.target, exc)
                await asyncio.sleep(LISTEN_RETRY)
                continue
            try:
                self.listener_pid = conn.info.backend_pid
                await conn.execute(f"LISTEN {CHANNEL}")
                await self.catch_up()
                if self._mirror is not None and not self._mirror.complete:
                    await self._load_mirror()
                while not self._closed:
                    # Catch-ups run while the generator waits at a yield; notifications that
                    # arrive meanwhile are buffered and mostly found already delivered.
                    async for note in conn.notifies(timeout=LISTEN_POLL):
                        try:
                            upto = int(note.payload)
                        except ValueError:
                            upto = self._delivered + 1
                        if upto > self._delivered:
                            await self.catch_up()
                    await self.catch_up()
                    if self._mirror is not None and not self._mirror.complete:
                        await self._load_mirror()
            except (psycopg.Error, ServiceUnavailable) as exc:
                if not self._closed:
                    log.warning("postgresql backend: watch connection to %s lost (%s); resynchronising",
                                self.target, " ".join(str(exc).split()))
                    await asyncio.sleep(LISTEN_RETRY)
            finally:
                self.listener_pid = None
                with contextlib.suppress(Exception):
                    await conn.close()

    # -- reads -------------------------------------------------------------------------------

    async def get(self, key: str) -> Item:
        """The live item at ``key``; NotFound if missing or expired."""
        check_key(key)
        self._ensure_sweeper()
        known = self._mirror_get(key, self._mirrored())
        if known is not False:
            return self._found(key, known)
        now = to_micros(self.now())
        try:
            async with self._connection() as conn:
                cur = await conn.execute(_SQL_GET, (key, now))
                row = await cur.fetchone()
        except ServiceUnavailable:
            known = self._mirror_get(key, self._mirror)
            if known is False:
                raise
            return self._found(key, known)
        if row is None:
            raise NotFound(f"key {key!r} is not found")
        return Item(key, bytes(row[0]), _expires(row[1]), int(row[2]))

    async def get_range(self, start_key: str, end_key: str | None, limit: int = 0) -> list[Item]:
        """Live items with ``start_key <= key < end_key`` (None: unbounded), sorted by key."""
        _check_range(start_key, end_key)
        if not isinstance(limit, int) or limit < 0:
            raise BadParameter(f"limit must be a non-negative integer, got {limit!r}")
        self._ensure_sweeper()
        if end_key is not None and end_key <= start_key:
            return []
        mirror = self._mirrored()
        known = mirror.range(start_key, end_key, limit, self.now()) if mirror is not None else None
        if known is not None:
            return known
        now = to_micros(self.now())
        sql_limit = limit or None
        try:
            async with self._connection() as conn:
                if end_key is None:
                    cur = await conn.execute(_SQL_RANGE_OPEN, (start_key, now, sql_limit))
                else:
                    cur = await conn.execute(_SQL_RANGE, (start_key, end_key, now, sql_limit))
                rows = await cur.fetchall()
        except ServiceUnavailable:
            known = self._mirror.range(start_key, end_key, limit, self.now()) if self._mirror else None
            if known is None or self._closed:
                raise
            return known
        return [Item(row[0], bytes(row[1]), _expires(row[2]), int(row[3])) for row in rows]

    def _mirror_get(self, key: str, mirror: Mirror | None) -> Item | bool | None:
        if mirror is None or self._closed:
            return False
        return mirror.get(key, self.now())

    @staticmethod
    def _found(key: str, item: Item | bool | None) -> Item:
        if not isinstance(item, Item):
            raise NotFound(f"key {key!r} is not found")
        return item

    # -- writes ------------------------------------------------------------------------------

    async def create(self, item: Item) -> Item:
        """Store a new item; AlreadyExists if a live item has the key."""
        item = check_item(item)
        self._ensure_sweeper()
        now = to_micros(self.now())
        async with self._write() as tx:
            stored = Item(item.key, item.value, item.expires, tx.next_revision())
            cur = await tx.conn.execute(
                _SQL_CREATE, (item.key, item.value, _micros(item.expires), stored.revision, now)
            )
            if cur.rowcount != 1:
                raise AlreadyExists(f"key {item.key!r} already exists")
            tx.events.append(Event(EventType.PUT, stored))
        return stored

    async def put(self, item: Item) -> Item:
        """Store an item, replacing any existing one."""
        return (await self.put_many([item]))[0]

    async def put_many(self, items: list[Item]) -> list[Item]:
        """Store items, replacing existing ones, in one transaction."""
        items = [check_item(item) for item in items]
        self._ensure_sweeper()
        if not items:
            return []
        stored = []
        async with self._write() as tx:
            for item in items:
                done = Item(item.key, item.value, item.expires, tx.next_revision())
                stored.append(done)
                tx.events.append(Event(EventType.PUT, done))
            async with tx.conn.cursor() as cur:
                await cur.executemany(
                    _SQL_PUT, [(i.key, i.value, _micros(i.expires), i.revision) for i in stored]
                )
        return stored

    async def update(self, item: Item) -> Item:
        """Replace a live item; NotFound if missing or expired."""
        item = check_item(item)
        self._ensure_sweeper()
        now = to_micros(self.now())
        async with self._write() as tx:
            stored = Item(item.key, item.value, item.expires, tx.next_revision())
            cur = await tx.conn.execute(
                _SQL_UPDATE, (item.value, _micros(item.expires), stored.revision, item.key, now)
            )
            if cur.rowcount != 1:
                raise NotFound(f"key {item.key!r} is not found")
            tx.events.append(Event(EventType.PUT, stored))
        return stored

    async def compare_and_swap(self, expected: Item, replace_with: Item) -> Item:
        """Replace the item if its stored value equals ``expected.value`` (see :class:`Backend`)."""
        expected = check_item(expected)
        item = check_item(replace_with)
        if expected.key != item.key:
            raise BadParameter(f"compare_and_swap keys differ: {expected.key!r} != {item.key!r}")
        self._ensure_sweeper()
        now = to_micros(self.now())
        async with self._write() as tx:
            cur = await tx.conn.execute(_SQL_GET_VALUE, (item.key, now))
            row = await cur.fetchone()
            if row is None:
                raise NotFound(f"key {item.key!r} is not found")
            if bytes(row[0]) != expected.value:
                raise CompareFailed(f"value of key {item.key!r} has changed")
            stored = Item(item.key, item.value, item.expires, tx.next_revision())
            await tx.conn.execute(_SQL_UPDATE, (item.value, _micros(item.expires), stored.revision, item.key, now))
            tx.events.append(Event(EventType.PUT, stored))
        return stored

    async def delete(self, key: str) -> None:
        """Delete a live item; NotFound if missing or expired."""
        check_key(key)
        self._ensure_sweeper()
        now = to_micros(self.now())
        async with self._write() as tx:
            cur = await tx.conn.execute(_SQL_DELETE, (key, now))
            if cur.rowcount != 1:
                raise NotFound(f"key {key!r} is not found")
            tx.events.append(Event(EventType.DELETE, Item(key, b"", None, tx.next_revision())))

    async def delete_range(self, start_key: str, end_key: str | None) -> None:
        """Delete every item (live or expired) with ``start_key <= key < end_key``; one DELETE
        event per removed key, in key order."""
        _check_range(start_key, end_key)
        self._ensure_sweeper()
        if end_key is not None and end_key <= start_key:
            return
        async with self._write() as tx:
            if end_key is None:
                cur = await tx.conn.execute(_SQL_DELETE_RANGE_OPEN, (start_key,))
            else:
                cur = await tx.conn.execute(_SQL_DELETE_RANGE, (start_key, end_key))
            for key in sorted(row[0] for row in await cur.fetchall()):
                tx.events.append(Event(EventType.DELETE, Item(key, b"", None, tx.next_revision())))

    async def keep_alive(self, key: str, expires: datetime) -> Item:
        """Set a new expiry on a live item; NotFound if missing or expired."""
        check_key(key)
        when = check_expires(expires)
        if when is None:
            raise BadParameter(f"keep_alive of {key!r} needs an expiry time")
        self._ensure_sweeper()
        now = to_micros(self.now())
        async with self._write() as tx:
            cur = await tx.conn.execute(_SQL_GET_VALUE, (key, now))
            row = await cur.fetchone()
            if row is None:
                raise NotFound(f"key {key!r} is not found")
            stored = Item(key, bytes(row[0]), when, tx.next_revision())
            await tx.conn.execute(_SQL_KEEP_ALIVE, (to_micros(when), stored.revision, key, now))
            tx.events.append(Event(EventType.PUT, stored))
        return stored

    async def sweep(self) -> int:
        """Remove expired items in batches, emitting one DELETE event each. Safe to run on every
        server at once: the deletes happen under the revision lock, so each expired item is
        deleted (and announced) exactly once. Also prunes old rows of the event table."""
        total = 0
        while True:
            now = to_micros(self.now())
            async with self._connection() as conn:
                cur = await conn.execute(_SQL_ANY_EXPIRED, (now,))
                found = await cur.fetchone()
            if found is None:
                break
            async with self._write() as tx:
                cur = await tx.conn.execute(_SQL_SWEEP, (now, SWEEP_BATCH))
                rows = sorted(await cur.fetchall(), key=lambda r: (r[1], r[0]))
                for key, _expires_at in rows:
                    tx.events.append(Event(EventType.DELETE, Item(key, b"", None, tx.next_revision())))
            total += len(rows)
            if len(rows) < SWEEP_BATCH or self._closed:
                break
        await self._prune_events()
        return total

    async def _prune_events(self) -> None:
        if time.monotonic() - self._pruned_at < EVENT_RETENTION.total_seconds() / 10:
            return
        self._pruned_at = time.monotonic()
        async with self._connection() as conn:
            await conn.execute(_SQL_PRUNE_EVENTS, (EVENT_RETENTION,))

    async def _close_storage(self) -> None:
        task, self._listener = self._listener, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                if task.get_loop() is asyncio.get_running_loop():
                    await task
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ServiceUnavailable(f"postgresql backend {self.target} is closed")


async def _schema_version(conn: psycopg.AsyncConnection[Any]) -> int | None:
    cur = await conn.execute("SELECT to_regclass('teleport_kv_meta') IS NOT NULL")
    row = await cur.fetchone()
    if not row or not row[0]:
        return None
    cur = await conn.execute("SELECT value FROM teleport_kv_meta WHERE name = 'schema_version'")
    row = await cur.fetchone()
    return int(row[0]) if row else None


def _check_range(start_key: str, end_key: str | None) -> None:
    if not isinstance(start_key, str):
        raise BadParameter(f"start_key must be a string, got {start_key!r}")
    if end_key is not None and not isinstance(end_key, str):
        raise BadParameter(f"end_key must be a string or None, got {end_key!r}")
