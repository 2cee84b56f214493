"""Backup and restore: the snapshot format, restore only into an empty backend, and a SQLite
cluster backed up while it runs and restored into PostgreSQL, where its node still connects."""

from __future__ import annotations

import json
import stat
from datetime import timedelta

import pytest
import yaml

from teleport_runtime.backend import Item, snapshot
from teleport_runtime.backend.postgres import PostgresBackend
from teleport_runtime.backend.sqlite import SQLiteBackend
from teleport_runtime.errors import AlreadyExists, BadParameter, NotFound
from tests.conftest import wait_for

from .conformance import FakeClock

STATE = {
    "/authorities/host": b'{"keys": "secret"}',
    "/cluster_configuration/name": b"example.com",
    "/users/alice": b"{}",
    "/roles/admin": b"{}",
    "/hosts/0a1b": b"{}",
    "/locks/hosts/0a1b": b"{}",
}


async def _fill(backend, clock):
    for key, value in STATE.items():
        await backend.put(Item(key, value))
    await backend.put(Item("/tokens/abc", b"{}", clock() + timedelta(hours=1)))
    await backend.put(Item("/tokens/old", b"{}", clock() + timedelta(seconds=1)))
    await backend.put(Item("/nodes/0a1b", b"heartbeat", clock() + timedelta(minutes=10)))
    await backend.put(Item("/proxies/p", b"heartbeat", clock() + timedelta(minutes=10)))
    await backend.put(Item("/sessions/active/s1", b"{}", clock() + timedelta(minutes=2)))
    await backend.put(Item("/events/2026-01-01T00:00:00.000000Z/ab", b"{}"))


async def test_round_trip_sqlite_to_postgresql(tmp_path, pg_database):
    clock = FakeClock()
    source = SQLiteBackend(tmp_path / "sqlite.db", clock=clock, sweep_interval=None)
    await _fill(source, clock)
    snap = await snapshot.take(source)
    await source.close()
    keys = [i.key for i in snap.items]
    assert keys == sorted([*STATE, "/tokens/abc", "/tokens/old"])  # no presence, sessions, audit
    path = tmp_path / "backup.json"
    snapshot.write(path, snap)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    clock.advance(timedelta(seconds=2))  # /tokens/old has expired by the restore
    target = PostgresBackend(pg_database, clock=clock, sweep_interval=None)
    try:
        assert await snapshot.restore(target, snapshot.read(path), now=clock()) == len(STATE) + 1
        stored = {i.key: i for i in await target.get_range("", None)}
        assert {k: v.value for k, v in stored.items() if k in STATE} == STATE
        assert stored["/tokens/abc"].expires == next(i.expires for i in snap.items if i.key == "/tokens/abc")
        assert "/tokens/old" not in stored
        with pytest.raises(AlreadyExists, match=r"not empty .* /authorities/host"):
            await snapshot.restore(target, snap)
    finally:
        await target.close()


async def test_audit_events_only_when_asked(tmp_path):
    clock = FakeClock()
    backend = SQLiteBackend(tmp_path / "sqlite.db", clock=clock, sweep_interval=None)
    try:
        await _fill(backend, clock)
        snap = await snapshot.take(backend, with_audit=True)
        assert [i.key for i in snap.items if i.key.startswith("/events/")] == ["/events/2026-01-01T00:00:00.000000Z/ab"]
    finally:
        await backend.close()


async def test_restore_refuses_a_non_empty_backend_and_changes_nothing(tmp_path):
    backend = SQLiteBackend(tmp_path / "sqlite.db", sweep_interval=None)
    try:
        await backend.put(Item("/cluster_configuration/name", b"other.example.com"))
        snap = snapshot.Snapshot(backend.now(), "SQLiteBackend", (Item("/users/bob", b"{}"),))
        with pytest.raises(AlreadyExists, match="restore only into a new, empty database"):
            await snapshot.restore(backend, snap)
        assert [i.key for i in await backend.get_range("", None)] == ["/cluster_configuration/name"]
    finally:
        await backend.close()


def test_damaged_edited_or_foreign_files_are_refused(tmp_path):
    snap = snapshot.Snapshot(FakeClock()(), "SQLiteBackend", (Item("/users/alice", b"{}"),))
    good = snapshot.encode(snap)
    assert snapshot.decode(good).items == snap.items
    document = json.loads(good)
    document["snapshot"]["items"][0]["key"] = "/users/mallory"
    with pytest.raises(BadParameter, match="checksum does not match"):
        snapshot.decode(json.dumps(document).encode())
    document = json.loads(good)
    document["version"] = 2
    with pytest.raises(BadParameter, match="format version 2; this program reads version 1"):
        snapshot.decode(json.dumps(document).encode())
    with pytest.raises(BadParameter, match="not a teleport backup"):
        snapshot.decode(b'{"hello": 1}')
    with pytest.raises(BadParameter, match="not JSON"):
        snapshot.decode(good[:-20])
    with pytest.raises(BadParameter, match="cannot read backup"):
        snapshot.read(tmp_path / "missing.json")


# -- the CLI on real clusters --------------------------------------------------------------------


def test_sqlite_cluster_backed_up_while_running_restores_into_postgresql(cluster, pg_server, tmp_path):
    """A node joins a SQLite cluster; `tctl backup create` while it runs; the auth host is lost
    (killed, data dir gone); `tctl backup restore` into PostgreSQL; the auth server started on it
    has the same CA pin, and the node that joined before connects and heartbeats again."""
    pin = cluster.pin()
    token = cluster.add_token("node")["token"]
    node = cluster.start_node("node1", token=token, pins=(pin,))
    wait_for(lambda: node.host_uuid() in cluster.node_ids(), 60, what="node1 in tctl nodes ls")
    backup = tmp_path / "backup.json"
    result = cluster.tctl("backup", "create", str(backup))
    assert f"wrote {backup}" in result.stdout
    assert "CA private keys" in result.stdout
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600

    cluster.auth.kill()
    database = pg_server.create_database()
    cluster.config["teleport"]["data_dir"] = str(cluster.root / "auth-restored")
    cluster.config["teleport"]["storage"] = {"type": "postgresql", "conn_string": pg_server.conn_string(database)}
    cluster.config_path.write_text(yaml.safe_dump(cluster.config))
    result = cluster.tctl("backup", "restore", str(backup))
    assert "restored" in result.stdout
    again = cluster.tctl("backup", "restore", str(backup), check=False)
    assert again.returncode == 1
    assert "not empty" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1

    cluster.start()
    assert cluster.pin(fresh=True) == pin
    hosts = pg_server.sql("SELECT count(*) FROM teleport_kv WHERE key LIKE '/hosts/%'", database)
    assert int(hosts) >= 1
    wait_for(lambda: node.host_uuid() in cluster.node_ids(), 90, what="node1 back in tctl nodes ls")
    # Restarted without a token, the node connects with the identity it got before the backup.
    node.restart(cluster.node_argv("node1", pins=(pin,)))
    assert node.host_uuid() in cluster.node_ids()


async def test_round_trip_postgresql_to_sqlite(tmp_path, pg_database):
    clock = FakeClock()
    source = PostgresBackend(pg_database, clock=clock, sweep_interval=None)
    try:
        await _fill(source, clock)
        snap = snapshot.decode(snapshot.encode(await snapshot.take(source)))
    finally:
        await source.close()
    target = SQLiteBackend(tmp_path / "restored" / "sqlite.db", clock=clock, sweep_interval=None)
    try:
        assert await snapshot.restore(target, snap, now=clock()) == len(STATE) + 2
        restored = await target.get_range("", None)
        assert [(i.key, i.value, i.expires) for i in restored] == [(i.key, i.value, i.expires) for i in snap.items]
    finally:
        await target.close()


async def test_a_backend_without_a_cluster_is_not_backed_up(tmp_path):
    backend = SQLiteBackend(tmp_path / "sqlite.db", sweep_interval=None)
    try:
        await backend.put(Item("/users/alice", b"{}"))
        with pytest.raises(NotFound, match=r"no certificate authority.*auth server's config"):
            await snapshot.take(backend)
    finally:
        await backend.close()
