"""Growing and changing the cluster: check mode on a fresh host, a join against an unreachable
auth service, a join with --limit, decommissioning, a host added to the inventory joining alone,
and a change rolled out in batches that stops at a failing batch and rolls that host back.

Runs after test_default.py (file order): it starts a fifth container, node3, on the scenario's
network and runs the playbooks with the scenario's inventory plus node3. The tests build on each
other in file order.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import testinfra
import yaml

REPO = Path(__file__).resolve().parents[3]
INVENTORY = os.environ.get("MOLECULE_INVENTORY_FILE", "")
SCENARIO = yaml.safe_load((Path(__file__).resolve().parents[1] / "molecule.yml").read_text())
PLATFORM = SCENARIO["platforms"][0]
OLD_HOSTS = ("auth1", "proxy1", "node1", "node2")


def host(name: str):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


def started_at(name: str) -> str:
    """When the host's teleport service last started: changes on every (re)start."""
    # node3 is not in the scenario's inventory: reach it through podman.
    h = testinfra.get_host("podman://node3") if name == "node3" else host(name)
    return h.check_output("systemctl show --property ActiveEnterTimestampMonotonic --value teleport")


def site(extra_inventory: Path, *args: str, playbook: str = "site.yml") -> subprocess.CompletedProcess:
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0")
    cmd = ["ansible-playbook", "-i", str(Path(INVENTORY).parent), "-i", str(extra_inventory),
           str(REPO / "playbooks" / playbook), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)


def recap(output: str) -> dict[str, dict[str, int]]:
    out = {}
    for line in output.splitlines():
        match = re.match(r"^(\S+)\s+:\s+(.*)$", line)
        if match and "changed=" in match.group(2):
            out[match.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))}
    return out


@pytest.fixture(scope="module")
def node3(tmp_path_factory):
    if not INVENTORY:
        pytest.skip("runs under molecule verify")
    subprocess.run(["podman", "rm", "-f", "node3"], capture_output=True, check=False)
    subprocess.run(
        ["podman", "run", "-d", "--name", "node3", "--hostname", "node3", "--network", PLATFORM["network"],
         "--systemd=always", PLATFORM["image"], "/sbin/init"],
        check=True, capture_output=True,
    )
    try:
        yield tmp_path_factory.mktemp("node3")
    finally:
        subprocess.run(["podman", "rm", "-f", "node3"], capture_output=True, check=False)


def inventory_with_node3(directory: Path, **host_vars) -> Path:
    path = directory / "node3.yml"
    node3_vars = {"ansible_connection": "containers.podman.podman", "ansible_python_interpreter": "/usr/bin/python3",
                  "node_labels": {"env": "dev", "tier": "cache"}, **host_vars}
    path.write_text(yaml.safe_dump({"all": {"children": {"teleport_node": {"hosts": {"node3": node3_vars}}}}}))
    return path


def dynamic_tokens() -> list:
    tokens = json.loads(host("auth1").check_output("tctl tokens ls --format=json"))
    return [t for t in tokens if not t.get("static")]


def test_check_mode_on_a_fresh_host_passes_changes_nothing_and_shows_no_static_token(node3):
    before = {name: started_at(name) for name in OLD_HOSTS}
    secret = "static-token-value-for-the-diff-check"
    done = site(inventory_with_node3(node3), "--check", "--diff",
                "-e", json.dumps({"auth_static_tokens": [f"node:{secret}"]}))
    assert done.returncode == 0, done.stdout[-3000:]
    assert secret not in done.stdout + done.stderr
    h = testinfra.get_host("podman://node3")
    assert not h.file("/etc/teleport.yaml").exists and not h.file("/opt/teleport/venv").exists
    assert {name: started_at(name) for name in OLD_HOSTS} == before
    assert secret not in host("auth1").file("/etc/teleport.yaml").content_string
    assert dynamic_tokens() == []


def test_unreachable_auth_fails_the_join_with_the_cause_and_leaves_nothing_running(node3):
    done = site(inventory_with_node3(node3, runtime_auth_servers=["auth1:3999"]),
                "-e", "teleport_site_node_wait_retries=1")
    output = " ".join((done.stdout + done.stderr).split())
    assert done.returncode != 0
    assert "node3 cannot reach the auth service at auth1:3999 (runtime_auth_servers)" in output, output[-3000:]
    h = testinfra.get_host("podman://node3")  # not in the scenario's inventory
    assert not h.service("teleport").is_running
    assert not h.file("/etc/teleport.yaml").exists
    assert not h.file("/var/lib/teleport/join_token").exists
    assert recap(done.stdout)["node1"]["changed"] == 0


def test_limit_newhost_joins_with_the_pin_read_from_the_cluster_and_revokes_its_token(node3):
    """--limit skips the auth play: the pin comes from the cluster, and the batch's token is
    revoked at the end (it used to stay live until it expired)."""
    done = site(inventory_with_node3(node3), "--limit", "node3")
    assert done.returncode == 0, done.stdout[-3000:]
    assert "auth1" not in recap(done.stdout) and recap(done.stdout)["node3"]["changed"] > 0
    pins = json.loads(host("auth1").check_output("tctl status --format=json"))["ca_pins"]
    config = yaml.safe_load(testinfra.get_host("podman://node3").file("/etc/teleport.yaml").content_string)
    assert config["teleport"]["ca_pin"] == pins
    assert "node3" in {n["hostname"] for n in json.loads(host("auth1").check_output("tctl nodes ls --format=json"))}
    assert dynamic_tokens() == []


def test_decommission_removes_the_node_and_leaves_no_key_or_token(node3):
    done = site(inventory_with_node3(node3), "--limit", "node3", playbook="decommission.yml")
    assert done.returncode == 0, done.stdout[-3000:]
    assert "node3" not in {n["hostname"] for n in json.loads(host("auth1").check_output("tctl nodes ls --format=json"))}
    h = testinfra.get_host("podman://node3")
    assert not h.service("teleport").is_running
    for path in ("/etc/teleport.yaml", "/var/lib/teleport", "/opt/teleport", "/usr/local/bin/teleport",
                 "/etc/systemd/system/teleport.service"):
        assert not h.file(path).exists, path
    assert h.run("ls /etc/teleport.yaml.*~").rc != 0
    refused = site(inventory_with_node3(node3), playbook="decommission.yml")
    assert refused.returncode != 0 and "Name the hosts to decommission with --limit" in " ".join(refused.stdout.split())


def test_a_host_added_to_the_inventory_joins_alone(node3):
    before = {name: started_at(name) for name in OLD_HOSTS}
    done = site(inventory_with_node3(node3))
    assert done.returncode == 0, done.stdout[-3000:]
    changes = recap(done.stdout)
    assert changes["node3"]["changed"] > 0
    assert changes["node1"]["changed"] == 0 and changes["node2"]["changed"] == 0
    # The short-lived token is made (proxy1's token task, delegated) and revoked (auth1) for node3;
    # no service elsewhere is touched.
    assert {name: started_at(name) for name in OLD_HOSTS} == before
    assert "3 node(s) online with their inventory labels" in done.stdout


def test_upgrade_to_the_installed_version_changes_nothing_and_another_version_is_refused(node3):
    before = {name: started_at(name) for name in (*OLD_HOSTS, "node3")}
    refused = site(inventory_with_node3(node3), "-e", "teleport_upgrade_version=9.9.9", playbook="upgrade.yml")
    assert refused.returncode != 0
    assert "teleport_upgrade_version=9.9.9 but the runtime source" in " ".join(refused.stdout.split())
    version = re.search(r'(?m)^version\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    done = site(inventory_with_node3(node3), "-e", f"teleport_upgrade_version={version}", playbook="upgrade.yml")
    assert done.returncode == 0, done.stdout[-3000:]
    assert all(counts["changed"] == 0 for counts in recap(done.stdout).values()), recap(done.stdout)
    assert {name: started_at(name) for name in (*OLD_HOSTS, "node3")} == before


def test_a_change_rolls_out_in_batches_and_stops_at_a_failing_batch_which_rolls_back(node3):
    """node1 gets a config change (its log level), node2 a listen address that passes
    `configure --test` but cannot be bound: node1 (batch 1) restarts with its new config, node2
    (batch 2) fails and is back on its previous config, and node3 (batch 3) is never touched.
    The changes are host vars of an extra inventory file, which the scenario's host_vars files
    would override: so no label (host_vars/node1.yml sets node_labels)."""
    before = {name: started_at(name) for name in ("node1", "node3")}
    extra = inventory_with_node3(node3)
    extra.write_text(yaml.safe_dump({"all": {"children": {"teleport_node": {"hosts": {
        "node3": yaml.safe_load(extra.read_text())["all"]["children"]["teleport_node"]["hosts"]["node3"],
        "node1": {"runtime_log_severity": "DEBUG"},
        "node2": {"node_listen_addr": "203.0.113.7:3022"},
    }}}}}))
    done = site(extra, "-e", "runtime_health_timeout=20")
    output = " ".join(done.stdout.split())
    assert done.returncode != 0
    assert "The new config failed at runtime; the previous one" in output, output[-3000:]
    assert "is back in place and the service runs with it again" in output
    assert output.count("PLAY [Nodes]") >= 2  # one header per batch
    node2 = host("node2")
    assert "203.0.113.7" not in node2.file("/etc/teleport.yaml").content_string
    assert node2.run("curl -fsS http://127.0.0.1:3000/readyz").rc == 0
    assert started_at("node3") == before["node3"]
    node1 = host("node1")
    assert "DEBUG" in node1.file("/etc/teleport.yaml").content_string
    assert started_at("node1") != before["node1"]
    assert node1.run("curl -fsS http://127.0.0.1:3000/readyz").rc == 0
