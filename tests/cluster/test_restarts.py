"""State that survives restarts: a node's stored identity, the auth service's CA, tokens and
cluster name; and presence records that expire when a node stops heartbeating."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta

import yaml

from tests.conftest import TELEPORT, Daemon, wait_for

PRESENCE_TTL = timedelta(seconds=2)


def join_node(cluster, name, **kwargs):
    token = cluster.add_token()["token"]
    node = cluster.start_node(name, cluster.node_argv(name, token=token, pins=(cluster.pin(),)),
                              **kwargs)
    wait_for(lambda: node.host_uuid() in cluster.node_ids(), what=f"{name} in tctl nodes ls")
    return node


def test_presence_expires_after_sigkill(cluster_factory):
    cluster = cluster_factory(auth_service={"presence_ttl": "2s"})
    stays = join_node(cluster, "stays")
    goes = join_node(cluster, "goes")
    goes.kill(signal.SIGKILL)
    wait_for(lambda: goes.host_uuid() not in cluster.node_ids(), timeout=15,
             what="the killed node to leave tctl nodes ls")
    # the live node keeps its record: expiry is per node, renewed by its heartbeats
    assert stays.host_uuid() in cluster.node_ids()
    text = cluster.tctl("nodes", "ls").stdout
    assert "stays" in text and "goes" not in text


def test_node_restart_without_token_uses_stored_identity(cluster_factory):
    cluster = cluster_factory(auth_service={"presence_ttl": "2s"})
    node = join_node(cluster, "phoenix")
    uuid = node.host_uuid()
    cert = (node.identity_dir() / "tls_cert.pem").read_bytes()
    node.kill(signal.SIGKILL)
    wait_for(lambda: uuid not in cluster.node_ids(), timeout=15,
             what="the killed node's record to expire")

    # no --token, no --ca-pin: only where the auth service is
    node.restart(cluster.node_argv("phoenix"))
    assert node.host_uuid() == uuid
    assert "using the stored node identity" in node.log()
    assert "WARN" not in node.log(), "no join happened, so no pin warning"
    assert (node.identity_dir() / "tls_cert.pem").read_bytes() == cert
    records = wait_for(lambda: [n for n in cluster.nodes() if n["id"] == uuid],
                       what="the restarted node back in tctl nodes ls")
    assert records[0]["hostname"] == "phoenix"
    assert [n["hostname"] for n in cluster.nodes()].count("phoenix") == 1
    assert cluster.auth_log().count(f"({uuid}) joined") == 1, "joined once, not twice"


def test_node_first_start_without_token_fails_clearly(cluster):
    node = cluster.start_node("notoken", cluster.node_argv("notoken"), wait=False)
    assert node.daemon.wait_exit() != 0
    lines = node.log().strip().splitlines()
    assert len(lines) == 1, node.log()
    assert "has not joined the cluster yet" in lines[0]
    assert "--token" in lines[0]


def test_auth_restart_keeps_ca_tokens_and_cluster_name(cluster_factory):
    cluster = cluster_factory(auth_service={"presence_ttl": "2s"})
    node = join_node(cluster, "steady")
    other = join_node(cluster, "other")
    before = cluster.tctl_json("status")
    kept = cluster.tctl_json("nodes", "add", "--roles=node", "--ttl=1h",
                             "--token=survives-a-restart")
    assert kept["token"] == "survives-a-restart"

    cluster.auth.kill(signal.SIGKILL)
    # the node notices the auth service is gone, and keeps running on its stored identity
    wait_for(lambda: "heartbeat failed" in node.log(), what="a failed heartbeat")
    assert node.daemon.alive()
    # tctl says what is wrong in one line
    down = cluster.tctl("status", check=False)
    assert down.returncode != 0
    assert down.stderr.strip().splitlines() == [down.stderr.strip()]
    assert "cannot reach the auth server" in down.stderr and cluster.addr in down.stderr
    # a node that (re)starts while the auth service is away still starts from its identity
    other.kill(signal.SIGTERM)
    assert other.daemon.proc.returncode == 0, other.log()
    other.restart(cluster.node_argv("other"))
    assert "using the stored node identity" in other.log()

    cluster.start()
    back = datetime.now(UTC)
    after = cluster.tctl_json("status")
    assert after["cluster"] == before["cluster"] == "test.example.com"
    assert after["ca_pins"] == before["ca_pins"]
    assert [ca["created"] for ca in after["cas"]] == [ca["created"] for ca in before["cas"]]
    tokens = {t["token"]: t for t in cluster.tctl_json("tokens", "ls")}
    assert tokens["survives-a-restart"]["expires"] == kept["expires"]

    # heartbeats resume: a record renewed after the restart expires after back + TTL
    def renewed(uuid):
        for record in cluster.nodes():
            if record["id"] == uuid:
                return datetime.fromisoformat(record["expires"]) > back + PRESENCE_TTL
        return False

    for agent in (node, other):
        wait_for(lambda agent=agent: renewed(agent.host_uuid()),
                 what=f"a heartbeat from {agent.name} after the auth service returned")
    wait_for(lambda: "heartbeat delivered again" in node.log(), what="the node's recovery log")

    # the token created before the restart still joins
    late = cluster.start_node("late", cluster.node_argv("late", token="survives-a-restart",
                                                        pins=tuple(before["ca_pins"])))
    wait_for(lambda: late.host_uuid() in cluster.node_ids(), what="late in tctl nodes ls")


def test_auth_refuses_to_change_cluster_name(cluster_factory):
    cluster = cluster_factory()
    cluster.auth.kill(signal.SIGKILL)
    cluster.config["auth_service"]["cluster_name"] = "renamed.example.com"
    cluster.config_path.write_text(yaml.safe_dump(cluster.config))
    cluster.log_path.write_text("")
    daemon = Daemon("auth", [TELEPORT, "start", "-c", str(cluster.config_path)],
                    cluster.log_path, cluster.root)
    cluster.daemons.append(daemon)
    assert daemon.wait_exit() != 0
    errors = [line for line in cluster.auth_log().splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1, cluster.auth_log()
    assert "auth_service.cluster_name" in errors[0]
    assert "test.example.com" in errors[0]

    # without cluster_name in the config, the stored name is kept (not the hostname default)
    del cluster.config["auth_service"]["cluster_name"]
    cluster.config_path.write_text(yaml.safe_dump(cluster.config))
    cluster.start()
    assert cluster.tctl_json("status")["cluster"] == "test.example.com"
