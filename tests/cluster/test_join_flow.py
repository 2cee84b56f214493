"""Seed 004 end to end: ``tctl status``, ``tctl nodes add``, nodes joining with the printed
command, ``tctl nodes ls``, ``tctl tokens ls|rm|del``, and a deleted token no longer joining."""

from __future__ import annotations

import os
import re
import shlex
from datetime import UTC, datetime, timedelta

from tests.conftest import wait_for

PIN_RE = r"sha256:[0-9a-f]{64}"
EXPIRY_RE = r"\d\d [A-Z][a-z]{2} \d\d \d\d:\d\d UTC"


def parse_rows(text: str) -> list[list[str]]:
    """A tctl table's data rows (after the dashed rule), split on runs of 2+ spaces or 1 space
    between columns: callers look cells up by content, not position."""
    lines = text.strip().splitlines()
    rule = next(i for i, line in enumerate(lines) if set(line.replace(" ", "")) == {"-"})
    return [line.split() for line in lines[rule + 1:]]


def test_seed_004_flow(cluster_factory):
    cluster = cluster_factory(auth_service={
        "presence_ttl": "10s",
        "tokens": ["proxy,node:static-secret-value"],
    })

    # ---- tctl status: Cluster, Version, CA pin, Host CA / User CA state
    status = cluster.tctl("status").stdout
    assert re.search(r"^Cluster\s+test\.example\.com$", status, re.M), status
    assert re.search(r"^Version\s+\S+", status, re.M), status
    pin_match = re.search(rf"^CA pin\s+({PIN_RE})$", status, re.M)
    assert pin_match, status
    pin = pin_match.group(1)
    assert re.search(r"^Host CA\s+never updated$", status, re.M), status
    assert re.search(r"^User CA\s+never updated$", status, re.M), status
    status_json = cluster.tctl_json("status")
    assert status_json["cluster"] == "test.example.com"
    assert status_json["ca_pins"] == [pin]
    assert {ca["type"] for ca in status_json["cas"]} == {"host", "user"}
    assert all(ca["rotation"]["state"] == "standby" for ca in status_json["cas"])

    # ---- tctl nodes add --ttl=5m --roles=node: token, expiry, join command with the pin
    added = cluster.tctl("nodes", "add", "--ttl=5m", "--roles=node").stdout
    token_match = re.search(r"^The invite token: ([0-9a-f]{32})$", added, re.M)
    assert token_match, added
    token = token_match.group(1)
    assert re.search(rf"will expire in 5 minutes \({EXPIRY_RE}\)", added), added
    command_line = next(line for line in added.splitlines() if line.startswith("> "))
    command = shlex.split(command_line[2:])
    assert command[:3] == ["teleport", "start", "--roles=node"], command
    assert f"--token={token}" in command
    assert f"--ca-pin={pin}" in command
    assert f"--auth-server={cluster.addr}" in command

    # ---- two nodes join with the printed command
    prod = cluster.start_node("turing", [*command, "--labels=env=prod"])
    arch = cluster.start_node("dijkstra", command, config={
        "ssh_service": {"commands": [{"name": "arch", "command": ["uname", "-m"],
                                      "period": "1h"}]},
    })
    for node in (prod, arch):
        assert "without a CA pin" not in node.log()
        assert "joined the cluster" in node.log()
    machine = os.uname().machine

    def both_listed():
        records = {n["hostname"]: n for n in cluster.nodes()}
        return records if {"turing", "dijkstra"} <= set(records) else None

    records = wait_for(both_listed, what="both nodes in tctl nodes ls")
    assert records["turing"]["id"] == prod.host_uuid()
    assert records["turing"]["addr"] == prod.addr
    assert records["turing"]["labels"] == {"env": "prod"}
    assert records["turing"]["static_labels"] == {"env": "prod"}
    assert records["turing"]["command_labels"] == {}
    assert records["turing"]["roles"] == ["Node"]
    assert records["dijkstra"]["id"] == arch.host_uuid()
    assert records["dijkstra"]["addr"] == arch.addr
    assert records["dijkstra"]["labels"] == {"arch": machine}
    assert records["dijkstra"]["command_labels"] == {"arch": machine}
    assert records["dijkstra"]["static_labels"] == {}
    for record in records.values():
        assert set(record) >= {"id", "hostname", "addr", "labels", "static_labels",
                               "command_labels", "roles", "rotation", "expires", "version"}

    text = cluster.tctl("nodes", "ls").stdout
    header = text.splitlines()[0].split()
    assert header == ["Node", "Name", "Node", "ID", "Address", "Labels"], text
    rows = {row[0]: row for row in parse_rows(text)}
    assert rows["turing"] == ["turing", prod.host_uuid(), prod.addr, "env:prod"]
    assert rows["dijkstra"] == ["dijkstra", arch.host_uuid(), arch.addr, f"arch:{machine}"]

    # ---- tctl tokens ls: Token, Type, Expiry Time (UTC); static tokens expire "never"
    listing = cluster.tctl("tokens", "ls").stdout
    assert re.match(r"Token\s+Type\s+Expiry Time \(UTC\)\n", listing), listing
    rows = {row[0]: " ".join(row[1:]) for row in parse_rows(listing)}
    assert rows["static-secret-value"] == "Proxy,Node never"
    assert re.fullmatch(rf"Node {EXPIRY_RE}", rows[token]), rows
    listed = {t["token"]: t for t in cluster.tctl_json("tokens", "ls")}
    assert listed["static-secret-value"] == {"token": "static-secret-value",
                                             "roles": ["proxy", "node"], "expires": None,
                                             "static": True}
    assert listed[token]["roles"] == ["node"] and listed[token]["static"] is False
    expires = datetime.fromisoformat(listed[token]["expires"])
    now = datetime.now(UTC)
    assert now < expires <= now + timedelta(minutes=5)

    # ---- tctl tokens rm / del
    other = cluster.add_token()["token"]
    removed = cluster.tctl("tokens", "rm", token)
    assert removed.stdout.strip() == f"Token {token} has been deleted"
    deleted = cluster.tctl("tokens", "del", other)
    assert deleted.stdout.strip() == f"Token {other} has been deleted"
    remaining = {t["token"] for t in cluster.tctl_json("tokens", "ls")}
    assert remaining == {"static-secret-value"}
    again = cluster.tctl("tokens", "del", other, check=False)
    assert again.returncode != 0
    assert f"token {other} not found" in again.stderr

    # ---- a deleted token can no longer join
    late = cluster.start_node("late", command, wait=False)
    assert late.daemon.wait_exit() != 0
    assert "join token is not valid" in late.log()
    assert "late" not in {n["hostname"] for n in cluster.nodes()}

    # the nodes that joined are unaffected: their identity does not depend on the token
    assert {"turing", "dijkstra"} <= {n["hostname"] for n in cluster.nodes()}
    assert prod.daemon.alive() and arch.daemon.alive()


def test_static_token_joins_and_cannot_be_deleted(cluster_factory):
    cluster = cluster_factory(auth_service={
        "presence_ttl": "10s",
        "tokens": ["node:static-node-token"],
    })
    node = cluster.start_node("static1", token="static-node-token", pins=(cluster.pin(),))
    wait_for(lambda: node.host_uuid() in cluster.node_ids(), what="node listed")
    result = cluster.tctl("tokens", "rm", "static-node-token", check=False)
    assert result.returncode != 0
    assert "static token" in result.stderr
    assert "auth_service.tokens" in result.stderr


def test_token_from_file_as_in_the_seed(cluster):
    """``tctl tokens add --type=node | grep -oP '(?<=token:\\s).*' > token.file``, then
    ``teleport start --roles=node --token=/path/to/token.file --auth-server=...``."""
    out = cluster.tctl("tokens", "add", "--type=node").stdout
    found = re.findall(r"(?<=token:\s).*", out)
    assert len(found) == 1 and re.fullmatch(r"[0-9a-f]{32}", found[0]), out
    token_file = cluster.root / "token.file"
    token_file.write_text(found[0] + "\n")
    node = cluster.start_node("fromfile", cluster.node_argv(
        "fromfile", token=str(token_file), pins=(cluster.pin(),)))
    wait_for(lambda: node.host_uuid() in cluster.node_ids(), what="fromfile listed")


def test_tokens_add_with_value_and_json(cluster):
    token = cluster.tctl_json("tokens", "add", "--type=node,proxy", "--ttl=1h",
                              "--value=my-chosen-value")
    assert token["token"] == "my-chosen-value"
    assert token["roles"] == ["node", "proxy"]
    assert token["ca_pins"] == [cluster.pin()]
    assert token["auth_server"] == cluster.addr
    assert "--token=my-chosen-value" in token["join_command"]
    assert f"--ca-pin={cluster.pin()}" in token["join_command"]
    assert "my-chosen-value" in {t["token"] for t in cluster.tctl_json("tokens", "ls")}


def test_token_ttl_and_value_checks(cluster):
    zero = cluster.tctl("nodes", "add", "--ttl=0s", check=False)
    assert zero.returncode != 0, zero.stdout  # not silently the 30 min default
    assert "TTL must be positive" in zero.stderr
    bad = cluster.tctl("nodes", "add", "--ttl=soon", check=False)
    assert bad.returncode != 0 and "invalid duration 'soon'" in bad.stderr
    role = cluster.tctl("nodes", "add", "--roles=wizard", check=False)
    assert role.returncode != 0 and "unknown role 'wizard'" in role.stderr
    # every value a token can be created with can also be revoked by name
    for value in ("a?b", "a#b", "x%2Fy", "..", "with space"):
        refused = cluster.tctl("nodes", "add", f"--token={value}", check=False)
        assert refused.returncode != 0, value
        assert "invalid token value" in refused.stderr
    odd = "team-a.node_1~x+y=z@q:r,s"
    assert cluster.tctl_json("nodes", "add", f"--token={odd}")["token"] == odd
    assert cluster.tctl("tokens", "rm", odd).stdout.strip() == f"Token {odd} has been deleted"
    assert cluster.tctl_json("tokens", "ls") == []
