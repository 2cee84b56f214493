"""PostgreSQL killed (SIGKILL) under an auth server during a burst of joins and heartbeats: what the
auth server can answer from memory keeps working (status, the CAs, the CA watch, roles, the node
list, a joined host's requests are still verified), writes are refused with a 503 that names the
database and the fix, and after PostgreSQL is restarted on the same data directory the auth server
recovers without a restart and every acknowledged join and heartbeat is stored."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from teleport_runtime.agent.join import join_cluster
from teleport_runtime.api.client import AuthClient
from teleport_runtime.api.types import HeartbeatReport, TokenRequest
from teleport_runtime.auth.server import AuthServer
from teleport_runtime.config import AuthConfig, HostPort
from teleport_runtime.errors import ServiceUnavailable, TeleportError
from teleport_runtime.identity import Identity
from tests.conftest import async_wait_for
from tests.postgres_server import PostgresServer


@pytest.fixture
async def auth(tmp_path: Path, pg_server: PostgresServer) -> AsyncIterator[AuthServer]:
    database = pg_server.create_database()
    config = AuthConfig(enabled=True, listen_addr=HostPort("127.0.0.1", 0), cluster_name="down.test",
                        presence_ttl=timedelta(minutes=10))
    conn = pg_server.conn_string(database, pool_max_conns="4")
    server = AuthServer(config, tmp_path / "auth", storage={"type": "postgresql", "conn_string": conn},
                        sweep_interval=None)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_postgresql_killed_during_joins_and_heartbeats(auth: AuthServer, pg_server: PostgresServer) -> None:
    admin = AuthClient.for_identity([auth.addr], Identity.load(auth.data_dir / "admin"))
    pins = await auth.service.ca_pins()
    token = (await admin.create_token(TokenRequest(roles=("node",), ttl="30m"))).token
    clients: list[AuthClient] = [admin]
    joined: dict[str, str] = {}  # host UUID -> nodename, acknowledged joins
    identities: dict[str, Identity] = {}
    beats: dict[str, int] = {}  # host UUID -> the last acknowledged heartbeat's sequence number
    refused: list[TeleportError] = []
    stop = asyncio.Event()

    async def join(name: str) -> AuthClient:
        host_uuid = str(uuid.uuid4())
        identity = await join_cluster(auth_servers=[auth.addr], token=token, ca_pins=pins, role="node",
                                      nodename=name, uuid=host_uuid, addresses=[])
        joined[host_uuid] = name
        identities[name] = identity
        client = AuthClient.for_identity([auth.addr], identity)
        clients.append(client)
        return client

    async def heartbeats(client: AuthClient, name: str, host_uuid: str) -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            try:
                await client.heartbeat(HeartbeatReport(hostname=name, addr="127.0.0.1:3022",
                                                       labels={"seq": str(seq)}))
                beats[host_uuid] = seq
            except TeleportError as exc:
                refused.append(exc)
                await asyncio.sleep(0.1)

    async def joins() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                await join(f"burst{n}")
            except TeleportError as exc:
                refused.append(exc)
                await asyncio.sleep(0.1)

    nodes = []
    for i in range(3):
        client = await join(f"node{i}")
        nodes.append((client, f"node{i}", next(u for u, n in joined.items() if n == f"node{i}")))
    node_client = nodes[0][0]
    pg_server.sql("CHECKPOINT")  # only the burst's WAL to replay after the kill
    tasks = [asyncio.create_task(heartbeats(*node)) for node in nodes] + [asyncio.create_task(joins())]
    killed = False
    try:
        await async_wait_for(lambda: len(joined) >= 8 and min(beats.values(), default=0) >= 5, 60,
                             what="joins and heartbeats before the crash")
        killed = True
        await asyncio.to_thread(pg_server.kill)
        await async_wait_for(lambda: len(refused) >= 4, 60, what="writes refused while PostgreSQL is down")
        unavailable = [e for e in refused if isinstance(e, ServiceUnavailable)]
        assert unavailable, refused
        assert all("PostgreSQL" in e.message and "check the database server" in e.message for e in unavailable)

        # What the auth server holds in memory answers meanwhile.
        status = await admin.status()
        assert status.cluster == "down.test" and list(status.ca_pins) == pins
        assert (await admin.ca()).cluster == "down.test"
        listed = {n.id for n in await admin.nodes()}
        assert {host_uuid for _c, _n, host_uuid in nodes} <= listed
        assert {"access", "auditor"} <= {r.name for r in await admin.roles()}
        state = await node_client.watch_authorities()
        assert state.rotation["host"].phase == "standby"
        # A host that joined before the crash, on a new connection: its certificate is checked
        # against the cached CAs, binding and locks.
        late = AuthClient.for_identity([auth.addr], identities["node1"])
        clients.append(late)
        assert (await late.watch_authorities()).revision == state.revision
        # Writes are refused with the database named and the fix.
        with pytest.raises(ServiceUnavailable, match=r"PostgreSQL backend .* check the database server") as info:
            await admin.create_token(TokenRequest(roles=("node",), ttl="5m"))
        assert info.value.http_status == 503

        await asyncio.to_thread(pg_server.start)
        killed = False
        before = dict(beats)

        async def recovered() -> bool:
            try:
                await admin.create_token(TokenRequest(roles=("node",), ttl="5m"))
                return True
            except ServiceUnavailable:
                return False

        await async_wait_for(recovered, 120, what="writes accepted after PostgreSQL is back")
        await async_wait_for(lambda: all(beats.get(u, 0) > before.get(u, 0) + 2 for _c, _n, u in nodes), 60,
                             what="heartbeats after the restart")
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        if killed:  # the session's other tests need the server
            pg_server.start()
    try:
        # Nothing acknowledged is lost: every join's binding, every node's last heartbeat.
        for host_uuid, name in joined.items():
            binding = await auth.service.hosts.binding(host_uuid)
            assert binding is not None and binding.nodename == name, host_uuid
        records = {r.id: r for r in await admin.nodes()}
        for host_uuid, seq in beats.items():
            assert int(records[host_uuid].labels["seq"]) >= seq, host_uuid
    finally:
        for client in clients:
            await client.close()
