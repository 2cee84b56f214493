"""Growing the cluster: a host added to the inventory joins alone on the next site.yml run, and
a join against an unreachable auth service fails with the cause and leaves nothing running.

Runs after test_default.py (file order): it starts a fifth container, node3, on the scenario's
network and runs site.yml twice with the scenario's inventory plus node3.
"""

from __future__ import annotations

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
    return host(name).check_output("systemctl show --property ActiveEnterTimestampMonotonic --value teleport")


def site(extra_inventory: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0")
    cmd = ["ansible-playbook", "-i", str(Path(INVENTORY).parent), "-i", str(extra_inventory),
           str(REPO / "playbooks" / "site.yml"), *args]
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
