"""Target resolution: which registered node a name a client typed means."""

from __future__ import annotations

import asyncio
import re

import pytest

from teleport_runtime.config import HostPort
from teleport_runtime.errors import BadParameter, NotFound
from teleport_runtime.proxy.directory import NodeDirectory, NodeRecord, match_nodes, pick
from teleport_runtime.proxy.ssh import parse_proxy_subsystem

CLUSTER = "example.com"
U1 = "8f1c2a6e-0000-4000-8000-000000000001"
U2 = "8f1c2a6e-0000-4000-8000-000000000002"
NODES = [
    NodeRecord(U1, "node1", HostPort("10.0.0.5", 3022), {"env": "prod"}),
    NodeRecord(U2, "node2", HostPort("db.internal", 4022), {"env": "dev"}),
]


@pytest.mark.parametrize(
    "target, expected",
    [
        ("node1", U1),
        ("NODE1", U1),
        (U1, U1),
        ("node1.example.com", U1),
        (f"{U2}.example.com", U2),
        ("10.0.0.5", U1),
        ("db.internal", U2),
        ("DB.internal.", U2),
    ],
)
def test_names_a_node(target: str, expected: str) -> None:
    assert [n.id for n in match_nodes(NODES, target, CLUSTER)] == [expected]


@pytest.mark.parametrize("target", ["node3", "node1.other.com", "10.0.0.6", "", "example.com", ".example.com"])
def test_unknown_names_match_nothing(target: str) -> None:
    assert match_nodes(NODES, target, CLUSTER) == []


def test_a_name_beats_an_address() -> None:
    # a node *named* 10.0.0.5 wins over a node at address 10.0.0.5
    named = NodeRecord("u3", "10.0.0.5", HostPort("10.0.0.9", 3022))
    assert [n.id for n in match_nodes([*NODES, named], "10.0.0.5", CLUSTER)] == ["u3"]


def test_ipv6_address() -> None:
    node = NodeRecord("u6", "v6", HostPort("fd00::5", 3022))
    assert match_nodes([node], "[fd00:0::5]", CLUSTER) == [node]


def test_same_name_same_address_is_one_node_latest_wins() -> None:
    old = NodeRecord("old", "node1", HostPort("10.0.0.5", 3022), last_heartbeat="2030-01-01T00:00:00")
    new = NodeRecord("new", "node1", HostPort("10.0.0.5", 3022), last_heartbeat="2030-01-01T00:05:00")
    assert pick([old, new], "node1").id == "new"


def test_same_name_different_addresses_is_ambiguous() -> None:
    a = NodeRecord("a", "web", HostPort("10.0.0.5", 3022))
    b = NodeRecord("b", "web", HostPort("10.0.0.6", 3022))
    with pytest.raises(BadParameter, match=r"ambiguous.*connect by node UUID"):
        pick([a, b], "web")


def test_record_from_heartbeat() -> None:
    record = NodeRecord.from_dict({"id": U1, "hostname": "node1", "addr": "[fd00::1]:3022", "labels": {"a": 1}})
    assert record.addr == HostPort("fd00::1", 3022)
    assert record.labels == {"a": "1"}
    assert record.to_dict()["addr"] == "[fd00::1]:3022"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("proxy:node1:3022@example.com", ("node1", 3022, "example.com")),
        ("proxy:node1.example.com:22@example.com", ("node1.example.com", 22, "example.com")),
        ("proxy:node1", ("node1", None, None)),
        ("proxy:[fd00::1]:3022@c", ("fd00::1", 3022, "c")),
    ],
)
def test_parse_subsystem(name: str, expected: tuple) -> None:
    assert parse_proxy_subsystem(name) == expected


@pytest.mark.parametrize("name", ["sftp", "proxy:", "proxy:a:b:c", "proxysomething"])
def test_parse_subsystem_refuses(name: str) -> None:
    with pytest.raises(ValueError):
        parse_proxy_subsystem(name)


async def test_directory_refreshes_on_a_miss_and_shares_requests() -> None:
    calls = 0
    records = [{"id": U1, "hostname": "node1", "addr": "10.0.0.5:3022"}]

    async def fetch() -> list[dict]:
        nonlocal calls
        calls += 1
        return list(records)

    directory = NodeDirectory(fetch, CLUSTER, refresh_interval=3600, miss_refresh_interval=0)
    await directory.start()
    try:
        assert calls == 1
        assert (await directory.resolve("node1")).id == U1
        assert calls == 1  # a hit costs no round trip
        records.append({"id": U2, "hostname": "node2", "addr": "10.0.0.6:3022"})
        assert (await directory.resolve("node2.example.com")).id == U2  # a miss refreshes
        assert calls == 2
        message = "node nosuch.invalid is not registered in cluster example.com; see `tsh ls`"
        with pytest.raises(NotFound, match=re.escape(message)):
            await directory.resolve("nosuch.invalid")
    finally:
        await directory.stop()


async def test_concurrent_misses_share_one_refresh() -> None:
    calls = 0

    async def fetch() -> list[dict]:
        nonlocal calls
        calls += 1
        return []

    directory = NodeDirectory(fetch, CLUSTER, refresh_interval=3600, miss_refresh_interval=0)
    await directory.start()
    try:
        results = await asyncio.gather(*(directory.resolve("10.9.9.9") for _ in range(5)), return_exceptions=True)
        assert all(isinstance(r, NotFound) for r in results)
        assert calls == 2  # the initial load and one shared refresh
    finally:
        await directory.stop()
