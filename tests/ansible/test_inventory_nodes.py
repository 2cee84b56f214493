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

try:  # ansible-core 2.19+: only templates a playbook or a test marks as trusted are rendered
    from ansible.template import trust_as_template as trusted
except ImportError:  # earlier releases render any string
    def trusted(text):
        return text

U1 = "11111111-aaaa-4aaa-8aaa-000000000001"
U2 = "22222222-bbbb-4bbb-8bbb-000000000002"
U3 = "33333333-cccc-4ccc-8ccc-000000000003"
NODES = [
    {"id": U1, "hostname": "node1", "addr": "10.0.0.1:3022", "labels": {"env": "dev", "tier": "web"}},
    {"id": U2, "hostname": "node2", "addr": "10.0.0.2:3022", "labels": {"env": "prod", "tier": "db"}},
]
SSH_CONFIG = "Host *.example.test proxy1\n    IdentitiesOnly yes\n"


@pytest.fixture
def fake_tsh(tmp_path):
    """A tsh that answers status, ls [k=v...] and config, and records its arguments. ``ls`` prints
    NODES, or what a test wrote to ``nodes.json`` (what the nodes reported)."""
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
            if os.path.exists({str(tmp_path / 'nodes.json')!r}):
                nodes = json.load(open({str(tmp_path / 'nodes.json')!r}))
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
    # By UUID: the proxy routes UUID.CLUSTER to exactly this node, whatever names others report.
    assert node1["ansible_host"] == f"{U1}.example.test"
    assert node1["teleport_node_name"] == "node1"
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


@pytest.fixture
def warnings(monkeypatch):
    """The warnings the plugin shows."""
    from ansible.utils.display import Display

    shown = []
    monkeypatch.setattr(Display, "warning", lambda self, msg, *args, **kwargs: shown.append(msg))
    return shown


def reported(tmp_path, nodes):
    (tmp_path / "nodes.json").write_text(json.dumps(nodes))


def test_a_node_name_that_is_an_ssh_option_is_skipped(tmp_path, fake_tsh, warnings):
    """A node that reports ``-oProxyCommand=...`` as its name would have that passed to ssh (as
    ansible_host, and as %h in tsh config's ProxyCommand): it is left out, with a warning."""
    evil = [
        {"id": U1, "hostname": "-oProxyCommand=touch /tmp/pwned", "addr": "10.0.0.1:3022", "labels": {"env": "prod"}},
        {"id": U2, "hostname": "node2;id", "addr": "10.0.0.2:3022", "labels": {"env": "prod"}},
        {"id": U3, "hostname": "ok.-oProxyCommand", "addr": "10.0.0.3:3022", "labels": {"env": "prod"}},
        {"id": "not-a-uuid -oProxyCommand=x", "hostname": "node4", "addr": "10.0.0.4:3022", "labels": {}},
        {"id": "44444444-dddd-4ddd-8ddd-000000000004", "hostname": "node5", "addr": "10.0.0.5:3022",
         "labels": {"env": "prod"}},
    ]
    reported(tmp_path, evil)
    inventory = parse(tmp_path, fake_tsh, {"keyed_groups": [{"key": "teleport_labels.env", "prefix": "env"}]})
    assert list(inventory.hosts) == ["node5"]
    assert [h.name for h in inventory.groups["env_prod"].get_hosts()] == ["node5"]
    for host in inventory.hosts.values():
        assert not str(host.get_vars()["ansible_host"]).startswith("-")
    for uuid in (U1, U2, U3):
        assert any(uuid in w and "not a DNS host name" in w for w in warnings), warnings
    assert any("is not a UUID" in w for w in warnings)


def test_two_nodes_with_one_name_stay_two_hosts_each_in_its_own_groups(tmp_path, fake_tsh):
    """A dev node that reports a prod node's name must not turn into that host (or merge with it):
    both get their UUID prefix, and a play aimed at env_prod reaches only the prod node."""
    reported(tmp_path, [
        {"id": U1, "hostname": "db1", "addr": "10.0.0.1:3022", "labels": {"env": "prod"}},
        {"id": U2, "hostname": "DB1", "addr": "10.0.0.2:3022", "labels": {"env": "dev"}},
        {"id": U3, "hostname": "web1", "addr": "10.0.0.3:3022", "labels": {"env": "dev"}},
    ])
    inventory = parse(tmp_path, fake_tsh, {"keyed_groups": [{"key": "teleport_labels.env", "prefix": "env"}]})
    assert sorted(inventory.hosts) == ["DB1-22222222", "db1-11111111", "web1"]
    assert [h.name for h in inventory.groups["env_prod"].get_hosts()] == ["db1-11111111"]
    assert sorted(h.name for h in inventory.groups["env_dev"].get_hosts()) == ["DB1-22222222", "web1"]
    prod = inventory.get_host("db1-11111111").get_vars()
    dev = inventory.get_host("DB1-22222222").get_vars()
    assert prod["ansible_host"] == f"{U1}.example.test" and prod["teleport_labels"] == {"env": "prod"}
    assert dev["ansible_host"] == f"{U2}.example.test" and dev["teleport_labels"] == {"env": "dev"}


def test_a_name_chosen_to_look_like_a_derived_one_falls_back_to_uuids(tmp_path, fake_tsh):
    reported(tmp_path, [
        {"id": U1, "hostname": "db1", "addr": "10.0.0.1:3022", "labels": {}},
        {"id": U2, "hostname": "db1", "addr": "10.0.0.2:3022", "labels": {}},
        {"id": U3, "hostname": "db1-11111111", "addr": "10.0.0.3:3022", "labels": {}},
        {"id": "44444444-dddd-4ddd-8ddd-000000000004", "hostname": U2, "addr": "10.0.0.4:3022", "labels": {}},
    ])
    inventory = parse(tmp_path, fake_tsh, {})
    # node4 named itself after node2's UUID: it gets its own UUID, so a --limit by UUID is exact.
    assert sorted(inventory.hosts) == sorted([U1, U3, "db1-22222222", "44444444-dddd-4ddd-8ddd-000000000004"])
    assert inventory.get_host("db1-22222222").get_vars()["teleport_node_id"] == U2
    assert inventory.get_host(U1).get_vars()["ansible_host"] == f"{U1}.example.test"
    assert inventory.get_host(U3).get_vars()["ansible_host"] == f"{U3}.example.test"


def test_label_values_in_group_names_are_sanitised(tmp_path, fake_tsh):
    reported(tmp_path, [
        {"id": U1, "hostname": "node1", "addr": "10.0.0.1:3022", "labels": {"env": "prod eu;rm -rf /", "tier": "1st"}},
        {"id": U2, "hostname": "node2", "addr": "10.0.0.2:3022", "labels": {"env": "pr\u00f8d", "tier": "{{ 7*7 }}"}},
    ])
    inventory = parse(tmp_path, fake_tsh, {"keyed_groups": [{"key": "teleport_labels.env", "prefix": "env"},
                                                            {"key": "teleport_labels.tier", "prefix": ""}]})
    groups = set(inventory.groups)
    assert {"env_prod_eu_rm__rf__", "env_pr_d", "_1st", "____7_7___"} <= groups
    for name in groups:
        assert name.isascii() and (name.replace("_", "").isalnum() or name.strip("_") == ""), name
    # Label values stay data: not templated into variables.
    assert inventory.get_host("node2").get_vars()["teleport_labels"]["tier"] == "{{ 7*7 }}"


def test_without_the_cluster_suffix_clashing_names_connect_by_address(tmp_path, fake_tsh, warnings):
    reported(tmp_path, [
        {"id": U1, "hostname": "db1", "addr": "10.0.0.1:3022", "labels": {}},
        {"id": U2, "hostname": "db1", "addr": "-oProxyCommand=x:3022", "labels": {}},
        {"id": U3, "hostname": "web1", "addr": "10.0.0.3:3022", "labels": {}},
    ])
    inventory = parse(tmp_path, fake_tsh, {"use_cluster_suffix": False})
    assert sorted(inventory.hosts) == ["db1-11111111", "web1"]
    assert inventory.get_host("web1").get_vars()["ansible_host"] == "web1"
    assert inventory.get_host("db1-11111111").get_vars()["ansible_host"] == "10.0.0.1"
    assert any(U2 in w for w in warnings)


def test_a_template_in_a_label_stays_data(tmp_path, fake_tsh):
    """A node chooses its labels: a Jinja expression in one must never be evaluated on the controller."""
    (tmp_path / "nodes.json").write_text(json.dumps([
        {"id": U1, "hostname": "node1", "addr": "10.0.0.1:3022", "labels": {"env": "{{ 7 * 7 }}"}},
    ]))
    inventory = parse(tmp_path, fake_tsh, {"compose": {"env_copy": "teleport_labels.env"}})
    variables = inventory.get_host("node1").get_vars()
    assert variables["env_copy"] == "{{ 7 * 7 }}"
    templar = Templar(loader=DataLoader(), variables=variables)
    assert templar.template(trusted("{{ env_copy }}")) == "{{ 7 * 7 }}"
    assert templar.template(trusted("{{ teleport_labels.env }}")) == "{{ 7 * 7 }}"
    assert templar.template(trusted("{{ 7 * 7 }}")) in (49, "49")  # the playbook's own templates still work
