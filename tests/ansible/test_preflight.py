"""Bad inventories fail in site.yml's preflight play, naming the host and the variable, before
any host is changed. The hosts use the local connection: preflight only asserts, and
``--tags teleport_preflight`` keeps every other play from running."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"

pytestmark = pytest.mark.skipif(not PLAYBOOK.exists(), reason="ansible-playbook is not installed")


def run_preflight(tmp_path, groups, host_vars=None):
    hosts = {}
    for group, members in groups.items():
        hosts[group] = {"hosts": {m: (host_vars or {}).get(m, {}) for m in members}}
    inventory = {"all": {"vars": {"ansible_connection": "local",
                                  "ansible_python_interpreter": sys.executable},
                         "children": hosts}}
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(inventory))
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    done = subprocess.run(
        [str(PLAYBOOK), "-i", str(path), str(REPO / "playbooks" / "site.yml"), "--tags", "teleport_preflight",
         # The host checks (systemd, ports, an existing install) are about real hosts, not this machine.
         "--skip-tags", "teleport_preflight_host"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )
    # Ansible wraps long messages: compare with whitespace collapsed.
    return done.returncode, " ".join((done.stdout + done.stderr).split())


GOOD = {"teleport_auth": ["auth1"], "teleport_proxy": ["proxy1"], "teleport_node": ["node1", "node2"]}


def test_a_good_inventory_passes_preflight(tmp_path):
    rc, out = run_preflight(tmp_path, GOOD, {"node1": {"node_labels": {"env": "dev", "k8s.io/zone": "a"}}})
    assert rc == 0, out
    assert "changed=1" not in out and "Build the wheelhouse" not in out


def test_no_auth_host(tmp_path):
    rc, out = run_preflight(tmp_path, {"teleport_proxy": ["proxy1"], "teleport_node": ["node1"]})
    assert rc != 0
    assert "No auth host" in out and "teleport_auth" in out and "node1" in out


def test_two_auth_hosts(tmp_path):
    rc, out = run_preflight(tmp_path, dict(GOOD, teleport_auth=["auth1", "auth2"]))
    assert rc != 0
    assert "teleport_auth has 2 hosts (auth1, auth2)" in out


def test_two_auth_hosts_on_a_shared_postgresql(tmp_path):
    rc, out = run_preflight(tmp_path, dict(GOOD, teleport_auth=["auth1", "auth2"], teleport_backend=["db1"]))
    assert rc == 0, out


def test_two_backend_hosts(tmp_path):
    rc, out = run_preflight(tmp_path, dict(GOOD, teleport_auth=["auth1", "auth2"], teleport_backend=["db1", "db2"]))
    assert rc != 0
    assert "teleport_backend has 2 hosts (db1, db2)" in out


def test_tunnel_node_without_a_proxy_address(tmp_path):
    rc, out = run_preflight(tmp_path, dict(GOOD, teleport_proxy=[]), {"node1": {"node_tunnel": True}})
    assert rc != 0
    assert "node1: node_tunnel is true but node_proxy_server" in out


def test_host_in_two_service_groups(tmp_path):
    rc, out = run_preflight(tmp_path, dict(GOOD, teleport_node=["node1", "proxy1"]))
    assert rc != 0
    assert "proxy1 is in the groups teleport_proxy and teleport_node" in out


def test_invalid_label_key(tmp_path):
    rc, out = run_preflight(tmp_path, GOOD, {"node2": {"node_labels": {"bad key!": "x"}}})
    assert rc != 0
    assert 'node2: node_labels has an invalid key "bad key!"' in out


def test_a_label_key_with_a_trailing_newline_is_invalid(tmp_path):
    rc, out = run_preflight(tmp_path, GOOD, {"node2": {"node_labels": {"env\n": "x"}}})
    assert rc != 0
    assert "node2: node_labels has an invalid key" in out


@pytest.mark.parametrize("token", ["node:short-token", "proxy,node:fifteen-chars-x"])
def test_a_guessable_static_token_is_refused(tmp_path, token):
    rc, out = run_preflight(tmp_path, GOOD, {"auth1": {"auth_static_tokens": [token]}})
    assert rc != 0
    assert "with a value of at least 16 characters" in out
    assert token.split(":")[1] not in out  # the task is no_log


@pytest.mark.parametrize("token", ["node:sixteen-chars-ok", "node:/etc/teleport/node-token"])
def test_a_long_or_file_static_token_passes(tmp_path, token):
    rc, out = run_preflight(tmp_path, GOOD, {"auth1": {"auth_static_tokens": [token]}})
    assert rc == 0, out


def test_invalid_command_label(tmp_path):
    commands = [{"name": "arch", "command": [], "period": "1h"}]
    rc, out = run_preflight(tmp_path, GOOD, {"node1": {"node_commands": commands}})
    assert rc != 0
    assert "node1: node_commands[0]" in out


def test_labels_of_the_wrong_type(tmp_path):
    rc, out = run_preflight(tmp_path, GOOD, {"node1": {"node_labels": ["env=dev"]}})
    assert rc != 0
    assert "node1" in out and "node_labels" in out


def test_empty_proxy_public_addrs_pass(tmp_path):
    rc, out = run_preflight(tmp_path, GOOD, {"proxy1": {"proxy_public_addr": "", "proxy_ssh_public_addr": ""}})
    assert rc == 0, out


def test_proxy_public_addr_without_port(tmp_path):
    rc, out = run_preflight(tmp_path, GOOD, {"proxy1": {"proxy_ssh_public_addr": "proxy.example.com"}})
    assert rc != 0
    assert 'proxy1: proxy_ssh_public_addr="proxy.example.com" is not HOST:PORT' in out
