"""The PostgreSQL backend against a real server: the conformance suite, watches across servers
and reconnections, expiry with two backends, bad configuration and a crash of the server."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from datetime import timedelta

import psycopg.conninfo
import pytest
import yaml

from teleport_runtime.backend import (
    EventType,
    Item,
    check_storage_config,
    open_audit_backend,
    open_backend,
    prefix_end,
)
from teleport_runtime.backend.postgres import DEFAULT_POOL_MAX, PostgresBackend, split_conn_string
from teleport_runtime.config import load_config_file
from teleport_runtime.errors import AlreadyExists, ConfigError, LimitExceeded, ServiceUnavailable
from tests.conftest import TELEPORT, free_port
from tests.postgres_server import PostgresServer

from .conformance import EVENT_TIMEOUT, BackendConformance, FakeClock, new_watcher, next_event, next_events


class TestPostgresConformance(BackendConformance):
    @pytest.fixture(autouse=True)
    def _database(self, pg_database):
        self.conn_string = pg_database

    async def open_backend(self, clock, tmp_path):
        return PostgresBackend(self.conn_string, clock=clock, sweep_interval=0.01)


# -- several backends on one database ------------------------------------------------------------


async def wait_until(predicate, what: str, limit: float = EVENT_TIMEOUT) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_watcher_sees_other_backends_commits_in_order(pg_database):
    one, two = PostgresBackend(pg_database), PostgresBackend(pg_database)
    try:
        watcher = await new_watcher(one, ["/w/"])
        done = [await two.put(Item(f"/w/{i}", str(i).encode())) for i in range(5)]
        await two.delete("/w/0")
        events = await next_events(watcher, 6)
        assert [e.item for e in events[:5]] == done
        assert (events[5].type, events[5].item.key) == (EventType.DELETE, "/w/0")
        # Local and remote commits interleaved: still one order, the revisions'.
        mixed = []
        for i in range(10):
            mixed.append(await (one if i % 2 else two).put(Item(f"/w/m{i}", b"x")))
        assert [e.item for e in await next_events(watcher, 10)] == mixed
        watcher.close()
    finally:
        await one.close()
        await two.close()


async def test_watcher_resynchronises_after_its_connection_is_terminated(pg_server, pg_database):
    """pg_terminate_backend on the listening connection, writes meanwhile from another server:
    after the reconnect the watcher still delivers every event, in order."""
    watched, writer = PostgresBackend(pg_database), PostgresBackend(pg_database)
    try:
        watcher = await new_watcher(watched, ["/r/"])
        await wait_until(lambda: watched.listener_pid is not None, "the watch connection")
        first_pid = watched.listener_pid
        written = [await writer.put(Item("/r/before", b"0"))]
        pg_server.sql(f"SELECT pg_terminate_backend({first_pid})")
        for i in range(20):
            written.append(await writer.put(Item(f"/r/{i:02d}", str(i).encode())))
        await writer.delete("/r/05")
        events = await next_events(watcher, 22)
        assert [e.item for e in events[:21]] == written
        assert (events[21].type, events[21].item.key) == (EventType.DELETE, "/r/05")
        revisions = [e.item.revision for e in events]
        assert revisions == list(range(revisions[0], revisions[0] + 22))
        await wait_until(lambda: watched.listener_pid not in (None, first_pid), "a new watch connection")
        later = await writer.put(Item("/r/after", b"x"))
        assert (await next_event(watcher)).item == later
        watcher.close()
    finally:
        await watched.close()
        await writer.close()


async def test_two_backends_sweeping_one_database_delete_each_item_once(pg_database):
    clock = FakeClock()
    one = PostgresBackend(pg_database, clock=clock, sweep_interval=None)
    two = PostgresBackend(pg_database, clock=clock, sweep_interval=None)
    try:
        keys = [f"/s/{i:03d}" for i in range(60)]
        await one.put_many([Item(k, b"x", clock() + timedelta(seconds=1 + i % 3)) for i, k in enumerate(keys)])
        await one.put(Item("/s/forever", b"x"))
        watchers = [await new_watcher(one, ["/s/"]), await new_watcher(two, ["/s/"])]
        clock.advance(timedelta(seconds=5))
        counts = await asyncio.gather(one.sweep(), two.sweep(), one.sweep(), two.sweep())
        assert sum(counts) == len(keys)
        for watcher in watchers:
            events = await next_events(watcher, len(keys))
            assert all(e.type is EventType.DELETE for e in events)
            assert sorted(e.item.key for e in events) == keys  # each exactly once
            watcher.close()
        assert [i.key for i in await two.get_range("/s/", prefix_end("/s/"))] == ["/s/forever"]
    finally:
        await one.close()
        await two.close()


async def test_background_sweepers_of_two_backends_announce_each_expiry_once(pg_database):
    clock = FakeClock()
    one = PostgresBackend(pg_database, clock=clock, sweep_interval=0.01)
    two = PostgresBackend(pg_database, clock=clock, sweep_interval=0.01)
    try:
        watcher = await new_watcher(one, ["/e/"])
        await two.new_watcher(["/e/"])  # starts two's sweeper too
        for i in range(10):
            await (one if i % 2 else two).put(Item(f"/e/{i}", b"x", clock() + timedelta(seconds=1)))
        assert len(await next_events(watcher, 10)) == 10
        clock.advance(timedelta(seconds=2))
        events = await next_events(watcher, 10)
        assert sorted(e.item.key for e in events) == [f"/e/{i}" for i in range(10)]
        assert all(e.type is EventType.DELETE for e in events)
        await one.put(Item("/e/marker", b""))
        assert (await next_event(watcher)).item.key == "/e/marker"  # no second DELETE before it
        watcher.close()
    finally:
        await one.close()
        await two.close()


async def test_two_backends_racing_one_create_only_one_wins(pg_database):
    one, two = PostgresBackend(pg_database), PostgresBackend(pg_database)
    try:
        results = await asyncio.gather(
            *((one if i % 2 else two).create(Item("/race", f"v{i}".encode())) for i in range(20)),
            return_exceptions=True,
        )
        winners = [r for r in results if isinstance(r, Item)]
        assert len(winners) == 1
        assert all(isinstance(r, AlreadyExists) for r in results if not isinstance(r, Item))
        assert await two.get("/race") == winners[0]
    finally:
        await one.close()
        await two.close()


async def test_pruned_events_close_a_watcher_that_fell_behind(pg_server, pg_database):
    watched, writer = PostgresBackend(pg_database), PostgresBackend(pg_database)
    try:
        watcher = await new_watcher(watched, ["/p/"])
        await wait_until(lambda: watched.listener_pid is not None, "the watch connection")
        pid = watched.listener_pid
        # The listener is gone and the events it would resynchronise from are pruned.
        async with watched._dispatch_lock:
            pg_server.sql(f"SELECT pg_terminate_backend({pid})")
            await writer.put(Item("/p/1", b"x"))
            database = pg_database.rsplit("/", 1)[1]
            pg_server.sql("DELETE FROM teleport_kv_events", database)
        with pytest.raises(LimitExceeded):
            while True:
                await next_event(watcher)
    finally:
        await watched.close()
        await writer.close()


# -- configuration -------------------------------------------------------------------------------


def test_pool_max_conns_sets_the_pool_size_and_is_not_given_to_libpq():
    conninfo, size = split_conn_string(
        "postgresql://teleport@db.example.com:5432/tb?sslmode=verify-full&pool_max_conns=20"
        "&sslcert=/etc/teleport/pg.crt&sslkey=/etc/teleport/pg.key&sslrootcert=/etc/teleport/ca.crt"
    )
    assert size == 20
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    assert "pool_max_conns" not in params
    assert params["sslmode"] == "verify-full"
    assert (params["sslcert"], params["sslkey"], params["sslrootcert"]) == (
        "/etc/teleport/pg.crt", "/etc/teleport/pg.key", "/etc/teleport/ca.crt")
    assert params["connect_timeout"] == "5"
    conninfo, size = split_conn_string("host=db dbname=tb pool_max_conns=3 connect_timeout=9")
    assert size == 3
    assert psycopg.conninfo.conninfo_to_dict(conninfo) == {"host": "db", "dbname": "tb", "connect_timeout": "9"}
    assert split_conn_string("postgresql://u@h/d")[1] == DEFAULT_POOL_MAX


@pytest.mark.parametrize(("storage", "key", "fix"), [
    ({"type": "postgresql"}, "teleport.storage.conn_string", "postgresql://"),
    ({"type": "postgresql", "conn_string": 5}, "teleport.storage.conn_string", "postgresql://"),
    ({"type": "postgresql", "conn_string": "postgresql://u@h/d?pool_max_conns=0"},
     "teleport.storage.conn_string", "from 1 to 1000"),
    ({"type": "postgresql", "conn_string": "host=db nonsense"}, "teleport.storage.conn_string", "libpq form"),
    ({"type": "postgresql", "conn_string": "postgresql://u@h/d?bogus_option=1"},
     "teleport.storage.conn_string", "libpq form"),
    ({"type": "sqlite", "audit_events_uri": ["file:///var/log/audit"]}, "teleport.storage.audit_events_uri",
     "postgresql://"),
    ({"type": "mysql"}, "teleport.storage.type", "postgresql"),
])
def test_bad_storage_config_names_the_key_and_the_fix(storage, key, fix):
    with pytest.raises(ConfigError) as info:
        check_storage_config(storage)
    assert key in info.value.message
    assert fix in info.value.message


def test_storage_config_in_the_reference_format(tmp_path):
    path = tmp_path / "teleport.yaml"
    path.write_text(
        "teleport:\n"
        "  storage:\n"
        "    type: postgresql\n"
        "    conn_string: postgresql://teleport@db.example.com:5432/teleport_backend?sslmode=verify-full&pool_max_conns=20\n"
        '    audit_events_uri: ["postgresql://teleport@db.example.com:5432/teleport_audit?sslmode=verify-full"]\n'
        "auth_service:\n  enabled: true\n"
    )
    cfg = load_config_file(str(path))
    backend = open_backend(cfg.storage, str(tmp_path))  # no I/O until first use
    assert isinstance(backend, PostgresBackend)
    assert backend.pool_max == 20
    audit = open_audit_backend(cfg.storage)
    assert isinstance(audit, PostgresBackend)
    assert audit.target == "teleport@db.example.com:5432/teleport_audit"
    assert open_audit_backend({"type": "sqlite"}) is None
    path.write_text("teleport:\n  storage:\n    type: postgresql\n")
    with pytest.raises(ConfigError, match=r"teleport\.yaml: teleport\.storage\.conn_string: required"):
        load_config_file(str(path))


# -- startup problems against the real server ---------------------------------------------------


def _bad_conn_strings(pg_server) -> dict[str, tuple[str, str]]:
    """case -> (conn string, what the one line must say)."""
    unused = free_port()
    return {
        "unreachable": (f"postgresql://postgres@127.0.0.1:{unused}/x", "start the server or fix host, port"),
        "missing database": (pg_server.conn_string("no_such_db"), "createdb"),
        "missing role": (pg_server.conn_string("postgres", user="no_such_role"), "createuser no_such_role"),
    }


async def test_open_fails_with_the_key_and_the_fix(pg_server, pg_database):
    for case, (conn, fix) in _bad_conn_strings(pg_server).items():
        backend = PostgresBackend(conn)
        with pytest.raises(ConfigError) as info:
            await backend.get("/x")
        assert info.value.message.startswith("teleport.storage.conn_string: "), case
        assert fix in info.value.message, case
        await backend.close()
    # A schema written by a newer version.
    backend = PostgresBackend(pg_database)
    await backend.put(Item("/a", b"x"))
    await backend.close()
    pg_server.sql("UPDATE teleport_kv_meta SET value = 99 WHERE name = 'schema_version'",
                  pg_database.rsplit("/", 1)[1])
    backend = PostgresBackend(pg_database)
    with pytest.raises(ConfigError, match=r"schema version 99, newer than this program's \(1\): upgrade"):
        await backend.open()
    await backend.close()


def _teleport_start(tmp_path, storage: dict) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "teleport.yaml"
    config.write_text(yaml.safe_dump({
        "version": "v1",
        "teleport": {"nodename": "auth-host", "data_dir": str(tmp_path / "data"), "storage": storage},
        "auth_service": {"enabled": True, "listen_addr": f"127.0.0.1:{free_port()}",
                         "cluster_name": "pg.example.com"},
    }))
    return subprocess.run([TELEPORT, "start", "-c", str(config)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)


@pytest.mark.parametrize("case", ["wrong conn string", "unreachable", "missing database", "missing role",
                                  "newer schema", "audit database missing"])
def test_teleport_start_exits_with_one_line(pg_server, tmp_path, case):
    bad = _bad_conn_strings(pg_server)
    storage: dict = {"type": "postgresql"}
    key = "teleport.storage.conn_string"
    if case == "newer schema":
        database = pg_server.create_database()
        storage["conn_string"] = pg_server.conn_string(database)
        pg_server.sql("CREATE TABLE teleport_kv_meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL);"
                      "INSERT INTO teleport_kv_meta VALUES ('schema_version', 7), ('revision', 0)", database)
        fix = "upgrade teleport"
    elif case == "wrong conn string":
        storage["conn_string"] = pg_server.conn_string("postgres") + "?bogus_option=1"
        fix = "libpq form"
        key = f"{tmp_path / 'teleport.yaml'}: {key}"  # found while the config is read: its file first
    elif case == "audit database missing":
        storage["conn_string"] = pg_server.conn_string(pg_server.create_database())
        storage["audit_events_uri"] = [pg_server.conn_string("no_audit_db")]
        key, fix = "teleport.storage.audit_events_uri", "createdb"
    else:
        storage["conn_string"], fix = bad[case]
    result = _teleport_start(tmp_path, storage)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"ERROR: {key}: "), lines[0]
    assert fix in lines[0]


# -- the server crashes at runtime ---------------------------------------------------------------


async def test_server_killed_during_a_burst_of_writes_loses_nothing_acknowledged(pg_server, pg_database):
    """SIGKILL PostgreSQL while writers put items: writes fail with a 503-class error while it is
    down, succeed again once it is restarted (same backend object, no restart), and every write
    that was acknowledged is stored and was announced to a watcher on another backend."""
    backend, observer = PostgresBackend(pg_database), PostgresBackend(pg_database)
    acked: dict[str, bytes] = {}
    refused: list[ServiceUnavailable] = []
    stop = asyncio.Event()

    async def writer(n: int) -> None:
        i = 0
        while not stop.is_set():
            key, value = f"/hb/{n}/{i:05d}", f"{n}-{i}".encode()
            try:
                await backend.put(Item(key, value))
                acked[key] = value
            except ServiceUnavailable as exc:
                refused.append(exc)
                await asyncio.sleep(0.05)
            i += 1

    watcher = await new_watcher(observer, ["/hb/"])
    seen: set[str] = set()

    async def observe() -> None:
        with contextlib.suppress(LimitExceeded):
            async for event in watcher:
                seen.add(event.item.key)

    observing = asyncio.create_task(observe())
    # Only the burst's WAL to replay after the kill (each test database's creation is in it too).
    pg_server.sql("CHECKPOINT")
    writers = [asyncio.create_task(writer(n)) for n in range(6)]
    killed = False
    try:
        await wait_until(lambda: len(acked) >= 200, "writes before the crash")
        killed = True
        await asyncio.to_thread(pg_server.kill)
        before_restart = len(acked)
        await wait_until(lambda: len(refused) >= 6, "writes refused while the server is down")
        with pytest.raises(ServiceUnavailable) as info:
            await backend.get("/hb/0/00000")
        assert info.value.http_status == 503
        assert "not answering" in info.value.message
        await asyncio.to_thread(pg_server.start)
        killed = False
        await wait_until(lambda: len(acked) >= before_restart + 200, "writes after the restart", 120)
    finally:
        stop.set()
        await asyncio.gather(*writers)
        if killed:  # the session's other tests need the server
            pg_server.start()
    try:
        stored = {i.key: i.value for i in await backend.get_range("/hb/", prefix_end("/hb/"))}
        lost = [k for k, v in acked.items() if stored.get(k) != v]
        assert lost == []
        await wait_until(lambda: set(acked) <= seen, "the watcher to see every acknowledged write", 60)
    finally:
        watcher.close()
        await observing
        await backend.close()
        await observer.close()


# -- TLS client certificates from the conn string ------------------------------------------------


def _openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_certs(directory) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate for the role teleport;
    and a second CA the server does not trust."""
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-days", "2", "-subj", f"/CN=test {ca}", cwd=directory)
    for name, subject, ext in (("server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1"),
                               ("client", "/CN=teleport", "keyUsage=digitalSignature")):
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", "-subj", subject, cwd=directory)
        (directory / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=directory)
    for key in directory.glob("*.key"):
        key.chmod(0o600)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """A second server that lets the role teleport in only with a client certificate (hostssl
    ... cert) signed by its CA."""
    server = PostgresServer()
    try:
        server.init(start=False)
        certs = server.data / "certs"
        certs.mkdir()
        _make_certs(certs)
        for path in [certs, *certs.iterdir()]:
            server.give(path)
        with open(server.data / "postgresql.conf", "a") as conf:
            conf.write(f"ssl = on\nssl_cert_file = '{certs}/server.crt'\nssl_key_file = '{certs}/server.key'\n"
                       f"ssl_ca_file = '{certs}/ca.crt'\n")
        (server.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "hostssl all teleport 127.0.0.1/32 cert\n"
            f"host all {server.superuser} 127.0.0.1/32 trust\n"
        )
        server.start()
        server.sql("CREATE ROLE teleport LOGIN")
        server.sql("CREATE DATABASE teleport_backend OWNER teleport")
        client = tmp_path_factory.mktemp("client-certs")
        for name in ("ca.crt", "other-ca.crt", "client.crt", "client.key"):
            (client / name).write_bytes((certs / name).read_bytes())
        (client / "client.key").chmod(0o600)
        server.client_certs = client
        yield server
    finally:
        server.destroy()


async def test_client_certificate_from_the_conn_string(tls_server):
    certs = tls_server.client_certs
    base = f"postgresql://teleport@127.0.0.1:{tls_server.port}/teleport_backend?sslmode=verify-full"
    good = f"{base}&sslcert={certs}/client.crt&sslkey={certs}/client.key&sslrootcert={certs}/ca.crt&pool_max_conns=2"
    backend = PostgresBackend(good)
    try:
        stored = await backend.put(Item("/tls", b"x"))
        assert await backend.get("/tls") == stored
        async with backend._connection() as conn:
            cur = await conn.execute("SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            assert await cur.fetchone() == (True, "/CN=teleport")
    finally:
        await backend.close()
    cases = {
        "no client certificate": f"{base}&sslrootcert={certs}/ca.crt",
        "server not trusted": f"{base}&sslcert={certs}/client.crt&sslkey={certs}/client.key"
                              f"&sslrootcert={certs}/other-ca.crt",
    }
    for case, conn in cases.items():
        backend = PostgresBackend(conn)
        with pytest.raises(ConfigError) as info:
            await backend.open()
        await backend.close()
        assert info.value.message.startswith("teleport.storage.conn_string: cannot connect"), case
        assert "ssl settings" in info.value.message, case
