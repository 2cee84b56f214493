"""The inventory plugin against a stand-in tsh that prints what the real one does."""

from __future__ import annotations

import json
import os
import stat
import textwrap

import pytest
from ansible.errors import AnsibleParserError
from ansible.inventory.data import InventoryData
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import inventory_loader
from ansible.template import Templar

NODES = [
    {"id": "u1", "hostname": "node1", "addr": "10.0.0.1:3022", "labels": {"env": "dev", "tier": "web"}},
    {"id": "u2", "hostname": "node2", "addr": "10.0.0.2:3022", "labels": {"env": "prod", "tier": "db"}},
]
SSH_CONFIG = "Host *.example.test proxy1\n    IdentitiesOnly yes\n"


@pytest.fixture
def fake_tsh(tmp_path):
    """A tsh that answers status, ls [k=v...] and config, and records its arguments."""
    script = tmp_path / "tsh"
    script.write_text(textwrap.dedent(f"""\
        #!/usr/bin/env python3
        import json, os, sys
        with open({str(tmp_path / 'calls')!r}, "a") as f:
            f.write(json.dumps([sys.argv[1:], os.environ.get("TELEPORT_HOME")]) + "\\n")
        if os.environ.get("FAKE_TSH_FAIL"):
            sys.stderr.write("ERROR: not logged in\\n")
            sys.exit(1)
        cmd = sys.argv[1]
        if cmd == "status":
            print(json.dumps({{"cluster": "example.test", "user": "alice", "expired": False,
                               "valid_until": "2030-01-01T00:00:00+00:00"}}))
        elif cmd == "ls":
            sel = dict(a.split("=", 1) for a in sys.argv[2:] if "=" in a and not a.startswith("-"))
            nodes = {json.dumps(NODES)}
            print(json.dumps([n for n in nodes if all(n["labels"].get(k) == v for k, v in sel.items())]))
        elif cmd == "config":
            sys.stdout.write({SSH_CONFIG!r})
        """))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def parse(tmp_path, fake_tsh, config, name="cluster.yml"):
    path = tmp_path / name
    path.write_text(json.dumps(dict({"plugin": "teleport_access.cluster.nodes", "tsh_path": str(fake_tsh),
                                     "teleport_home": str(tmp_path / "home")}, **config)))
    inventory = InventoryData()
    loader = DataLoader()
    plugin = inventory_loader.get("teleport_access.cluster.nodes")
    plugin.templar = Templar(loader=loader)
    assert plugin.verify_file(str(path))
    plugin.parse(inventory, loader, str(path), cache=False)
    return inventory


def test_nodes_become_hosts_reached_through_the_proxy(tmp_path, fake_tsh):
    inventory = parse(tmp_path, fake_tsh, {"login": "root"})
    node1 = inventory.get_host("node1").get_vars()
    ssh_config = tmp_path / "home" / "ansible_ssh_config"
    assert node1["ansible_host"] == "node1.example.test"
    assert node1["ansible_user"] == "root"
    assert node1["ansible_ssh_common_args"] == f"-F {ssh_config}"
    assert node1["teleport_labels"] == {"env": "dev", "tier": "web"}
    assert ssh_config.read_text() == SSH_CONFIG
    assert stat.S_IMODE(os.stat(ssh_config).st_mode) == 0o600
    assert sorted(h.name for h in inventory.groups["teleport_nodes"].get_hosts()) == ["node1", "node2"]


def test_keyed_groups_compose_and_groups(tmp_path, fake_tsh):
    inventory = parse(tmp_path, fake_tsh, {
        "keyed_groups": [{"key": "teleport_labels.env", "prefix": "env"}],
        "groups": {"databases": "teleport_labels.tier == 'db'"},
        "compose": {"tier": "teleport_labels.tier"},
    })
    assert [h.name for h in inventory.groups["env_dev"].get_hosts()] == ["node1"]
    assert [h.name for h in inventory.groups["env_prod"].get_hosts()] == ["node2"]
    assert [h.name for h in inventory.groups["databases"].get_hosts()] == ["node2"]
    assert inventory.get_host("node2").get_vars()["tier"] == "db"


def test_label_filter_is_passed_to_tsh_ls(tmp_path, fake_tsh):
    inventory = parse(tmp_path, fake_tsh, {"labels": {"env": "prod"}})
    assert list(inventory.hosts) == ["node2"]
    calls = [json.loads(line) for line in (tmp_path / "calls").read_text().splitlines()]
    assert ["ls", "--format=json", "env=prod"] in [c[0] for c in calls]
    assert {c[1] for c in calls} == {str(tmp_path / "home")}


def test_not_logged_in_explains_what_to_do(tmp_path, fake_tsh, monkeypatch):
    monkeypatch.setenv("FAKE_TSH_FAIL", "1")
    with pytest.raises(AnsibleParserError, match=r"not logged in.*tsh login"):
        parse(tmp_path, fake_tsh, {})


def test_file_names_it_claims(tmp_path):
    plugin = inventory_loader.get("teleport_access.cluster.nodes")
    for name, ok in [("cluster.yml", True), ("prod.teleport.yaml", True), ("hosts.yml", False)]:
        path = tmp_path / name
        path.write_text("plugin: teleport_access.cluster.nodes\n")
        assert plugin.verify_file(str(path)) is ok
