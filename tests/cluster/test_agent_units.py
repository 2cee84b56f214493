"""Unit tests of agent and presence behaviour that the end-to-end tests cannot provoke
reliably: the heartbeat loop surviving any failure, and presence addresses (real SQLite)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from teleport_runtime.agent.heartbeat import Heartbeat
from teleport_runtime.api.types import HeartbeatAnswer, HeartbeatReport
from teleport_runtime.auth.presence import Presence, heartbeat_interval
from teleport_runtime.backend import open_backend
from teleport_runtime.errors import AccessDenied, BadParameter, ConnectionProblem

#: The names in the heartbeating node's certificate.
CERT_NAMES = ["n1", "10.0.0.5", "node1.example.com"]


class FlakyAuth:
    """Answers heartbeats after failing with each of ``failures`` in turn."""

    def __init__(self, failures):
        self.failures = list(failures)
        self.calls = 0

    async def heartbeat(self, report):
        self.calls += 1
        assert isinstance(report, HeartbeatReport)
        if self.failures:
            raise self.failures.pop(0)
        return HeartbeatAnswer(heartbeat_interval=0.01)


@pytest.mark.parametrize(
    "failure",
    [
        ConnectionProblem("cannot reach the auth server"),
        RuntimeError("an unexpected client error"),
        AttributeError("'NoneType' object has no attribute 'get'"),
    ],
)
async def test_heartbeat_survives_failures(failure):
    client = FlakyAuth([failure, failure])
    heartbeat = Heartbeat(client, lambda: {"hostname": "n1"})
    heartbeat.interval = 0.01  # retry at once
    heartbeat.start()
    try:
        await asyncio.wait_for(heartbeat.ok.wait(), timeout=10)
    finally:
        await heartbeat.stop()
    assert heartbeat.sent >= 1
    assert client.calls >= 3


@pytest.fixture
async def presence(tmp_path):
    backend = open_backend({"type": "sqlite"}, str(tmp_path))
    try:
        yield Presence(backend, timedelta(seconds=30))
    finally:
        await backend.close()


@pytest.mark.parametrize(
    ("reported", "remote", "expected"),
    [
        ("10.0.0.5:3022", "10.9.9.9", "10.0.0.5:3022"),
        ("0.0.0.0:3022", "10.0.0.7", "10.0.0.7:3022"),
        ("[::]:3022", "::1", "[::1]:3022"),
        ("[::]:4022", "fe80::2", "[fe80::2]:4022"),
        ("", "10.0.0.8", "10.0.0.8:3022"),
        ("node1.example.com:3022", "10.0.0.9", "node1.example.com:3022"),
    ],
)
async def test_presence_address(presence, reported, remote, expected):
    # the certificate names what the node may report besides the address it connects from
    await presence.heartbeat(role="Node", host_uuid="u1", report={"addr": reported},
                             remote_ip=remote, nodename="n1", cert_names=CERT_NAMES)
    [record] = await presence.list("Node")
    assert record["addr"] == expected


@pytest.mark.parametrize(
    ("report", "fragment"),
    [
        ({"addr": "10.0.0.6:3022"}, "not this host's address"),
        ({"addr": "other.example.com:3022"}, "not this host's address"),
        ({"hostname": "n2", "addr": "10.0.0.5:3022"}, "not this host's name"),
        ({"hostname": "n1\x1b[2J", "addr": "10.0.0.5:3022"}, "invalid host name"),
        ({"addr": "10.0.0.5:3025"}, "where the auth service or a proxy listens"),
    ],
)
async def test_presence_refuses_what_the_certificate_does_not_say(presence, report, fragment):
    with pytest.raises((AccessDenied, BadParameter)) as err:
        await presence.heartbeat(role="Node", host_uuid="u1", report=report, remote_ip="10.9.9.9",
                                 nodename="n1", cert_names=CERT_NAMES, forbidden={("10.0.0.5", 3025)})
    assert fragment in err.value.message
    assert await presence.list("Node") == []


async def test_presence_records(presence):
    answer = await presence.heartbeat(
        role="Node", host_uuid="u2",
        report={"hostname": "b-node", "addr": "10.0.0.2:3022", "labels": {"env": "prod"},
                "cmd_labels": {"arch": "x86_64", "env": "from-command"}},
        remote_ip="10.0.0.2", nodename="b-node", cert_names=[],
    )
    assert answer == {"heartbeat_interval": 3.0}
    await presence.heartbeat(role="Node", host_uuid="u1", report={"hostname": "a-node"},
                             remote_ip="10.0.0.1", nodename="a-node", cert_names=[])
    await presence.heartbeat(role="Proxy", host_uuid="p1", report={"hostname": "proxy"},
                             remote_ip="10.0.0.3", nodename="proxy", cert_names=[])
    nodes = await presence.list("Node")
    assert [n["hostname"] for n in nodes] == ["a-node", "b-node"]
    assert nodes[1]["labels"] == {"env": "from-command", "arch": "x86_64"}
    assert nodes[1]["static_labels"] == {"env": "prod"}
    assert nodes[1]["roles"] == ["Node"]
    assert [p["id"] for p in await presence.list("Proxy")] == ["p1"]
    with pytest.raises(BadParameter):
        await presence.heartbeat(role="Node", host_uuid="u3", report={"labels": {"bad key": 1}},
                                 remote_ip="10.0.0.4", nodename="u3", cert_names=[])
    with pytest.raises(BadParameter):
        await presence.heartbeat(role="Auth", host_uuid="a1", report={}, remote_ip="10.0.0.5",
                                 nodename="a1", cert_names=[])


@pytest.mark.parametrize(
    ("ttl", "interval"),
    [(timedelta(minutes=10), 60.0), (timedelta(seconds=2), 1.0), (timedelta(seconds=30), 3.0),
     (timedelta(hours=2), 60.0)],
)
def test_heartbeat_interval(ttl, interval):
    assert heartbeat_interval(ttl) == interval
