"""What `molecule test -s rotation` checks once side_effect.yml has rotated the host CA, then the
user CA, with playbooks/rotate_ca.yml while an SSH loop ran through the proxy.

The loop ran on rot-auth1 (as a client that fetches the trusted host CA keys and a user
certificate from the cluster before each round); its log and the cluster's state before the
rotation are kept there (/root/ssh-loop/log, /root/rotation-before.json).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest
import testinfra
import yaml

REPO = Path(__file__).resolve().parents[3]
INVENTORY = os.environ.get("MOLECULE_INVENTORY_FILE", "")
EPHEMERAL = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/tmp/teleport-molecule-rotation"))
PINS_FILE = EPHEMERAL / "joins" / "group_vars" / "all" / "ca_pins.yml"
SCENARIO = yaml.safe_load((Path(__file__).resolve().parents[1] / "molecule.yml").read_text())
PLATFORM = SCENARIO["platforms"][0]
AUTH, PROXY, NODES = "rot-auth1", "rot-proxy1", ("rot-node1", "rot-node2")
CLUSTER = yaml.safe_load((REPO / "inventory/podman-rotation/group_vars/all.yml").read_text())["auth_cluster_name"]
IDENTITY = {PROXY: "proxy", "rot-node1": "node", "rot-node2": "node"}


def host(name: str):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


def tctl_json(*args: str):
    return json.loads(host(AUTH).check_output("tctl " + " ".join(args) + " --format=json"))


def fingerprint(h, public_key: str) -> str:
    """SHA256 fingerprint of an OpenSSH public key line (ssh-keygen -l)."""
    return h.check_output(f"printf '%s\\n' '{public_key}' | ssh-keygen -l -f - | awk '{{print $2}}'")


def ca_key(line: str) -> str:
    """The key of a `tctl auth export` line (host lines start with @cert-authority PATTERNS)."""
    return " ".join(line.split()[-2:]) if line.startswith("@cert-authority") else line.strip()


def playbook(name: str, *args: str, inventory: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    cmd = ["ansible-playbook", "-i", inventory or str(Path(INVENTORY).parent), str(REPO / "playbooks" / name), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)


def recap(output: str) -> dict[str, dict[str, int]]:
    out = {}
    for line in output.splitlines():
        match = re.match(r"^(\S+)\s+:\s+(.*)$", line)
        if match and "changed=" in match.group(2):
            out[match.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))}
    return out


@pytest.fixture(scope="module")
def before():
    if not INVENTORY:
        pytest.skip("runs under molecule verify")
    return json.loads(host(AUTH).check_output("cat /root/rotation-before.json"))


@pytest.fixture(scope="module")
def status(before):
    return tctl_json("status")


# ------------------------------------------------------------------------------ the CAs


def test_both_cas_completed_a_rotation(before, status):
    for ca in status["cas"]:
        rotation = ca["rotation"]
        assert rotation["state"] == "standby" and rotation["phase"] == "standby", ca
        assert rotation["last_rotated"], f"the {ca['type']} CA never completed a rotation"
        assert rotation["id"] and rotation["id"] != before["rotation"][ca["type"]].get("id"), ca


def test_host_ca_rotated_before_user_ca(status):
    rotated = {ca["type"]: datetime.fromisoformat(ca["rotation"]["last_rotated"]) for ca in status["cas"]}
    started = {ca["type"]: datetime.fromisoformat(ca["created"]) for ca in status["cas"]}
    assert rotated["host"] <= started["user"]


def test_the_pin_changed_and_is_the_only_one(before, status):
    assert len(status["ca_pins"]) == 1
    assert status["ca_pins"] != before["ca_pins"]


def test_user_ca_key_changed(before):
    keys = host(AUTH).check_output("tctl auth export --type=user").splitlines()
    assert len(keys) == 1 and keys != before["user_ca_keys"]


@pytest.mark.parametrize("name", [PROXY, *NODES])
def test_host_certs_are_signed_by_the_new_host_ca(before, name):
    auth = host(AUTH)
    (new_line,) = auth.check_output("tctl auth export --type=host").splitlines()
    new_ca = fingerprint(auth, ca_key(new_line))
    old_cas = {fingerprint(auth, ca_key(line)) for line in before["host_ca_keys"]}
    assert new_ca not in old_cas
    h = host(name)
    cert = h.check_output(f"ssh-keygen -L -f /var/lib/teleport/identity/{IDENTITY[name]}/ssh_cert")
    signing = re.search(r"Signing CA: \S+ (SHA256:\S+)", cert)
    assert signing, cert
    assert signing.group(1) == new_ca, f"{name}'s host cert is signed by {signing.group(1)}, not the new CA {new_ca}"


@pytest.mark.parametrize("name", [PROXY, *NODES])
def test_agents_report_the_completed_rotations(status, name):
    ids = {ca["type"]: ca["rotation"]["id"] for ca in status["cas"]}
    agents = tctl_json("get", "proxies") + tctl_json("nodes", "ls")
    (agent,) = [a for a in agents if a["hostname"] == name]
    for ca_type, rotation_id in ids.items():
        assert agent["rotation"][ca_type] == {"phase": "standby", "id": rotation_id}


# ------------------------------------------------------------------------------ pins for joins


@pytest.mark.parametrize("name", [PROXY, *NODES])
def test_agent_configs_carry_the_new_pin(status, name):
    config = yaml.safe_load(host(name).file("/etc/teleport.yaml").content_string)
    assert config["teleport"]["ca_pin"] == status["ca_pins"]
    assert host(name).run("teleport configure --test /etc/teleport.yaml").rc == 0


def test_pins_file_for_future_joins_has_the_new_pin(status):
    assert yaml.safe_load(PINS_FILE.read_text()) == {"runtime_ca_pins": status["ca_pins"]}


# ------------------------------------------------------------------------------ access


@pytest.fixture(scope="module")
def loop_log(before):
    lines = host(AUTH).check_output("cat /root/ssh-loop/log").splitlines()
    return [line.split(" ", 3) for line in lines]


def test_ssh_loop_through_the_proxy_never_failed(loop_log):
    failures = [" ".join(entry) for entry in loop_log if entry[1] != "OK"]
    assert failures == []
    for node in NODES:
        assert sum(1 for entry in loop_log if entry[2] == node) >= 4


def test_ssh_loop_ran_during_the_whole_rotation(loop_log, status):
    """It reached the nodes before the host CA rotation started and after the user CA's ended."""
    times = [datetime.fromisoformat(entry[0].replace("Z", "+00:00")[:26] + "+00:00") for entry in loop_log]
    cas = {ca["type"]: ca for ca in status["cas"]}
    assert min(times) < datetime.fromisoformat(cas["host"]["created"])  # the new host key: made at init
    assert max(times) > datetime.fromisoformat(cas["user"]["rotation"]["last_rotated"])


# ------------------------------------------------------------------------------ schedule


def test_a_second_scheduled_run_changes_nothing(status):
    done = playbook("rotate_ca.yml", "-e", f"teleport_rotation_pins_file={PINS_FILE}")
    assert done.returncode == 0, done.stdout[-3000:]
    changes = recap(done.stdout)
    assert set(changes) >= {AUTH, PROXY, *NODES}
    assert all(counts["changed"] == 0 for counts in changes.values()), changes
    assert "Not due" in done.stdout
    assert tctl_json("status")["ca_pins"] == status["ca_pins"]


def test_check_mode_predicts_a_due_rotation_without_starting_it(status):
    done = playbook("rotate_ca.yml", "--check", "-e", "teleport_rotation_max_age=0s",
                    "-e", '{"teleport_rotation_types": ["host"]}')
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Would walk init -> update_clients -> update_servers -> standby" in done.stdout
    assert recap(done.stdout)[AUTH]["changed"] == 1
    after = tctl_json("status")
    assert after["ca_pins"] == status["ca_pins"]
    assert all(ca["rotation"]["phase"] == "standby" for ca in after["cas"])


def test_a_second_run_waits_for_the_lock_of_the_first(status):
    """Two scheduled runs at once: the second finds the first's lock and changes nothing."""
    auth = host(AUTH)
    auth.check_output("mkdir -m 0700 /var/lib/teleport/rotate_ca.lock")
    try:
        done = playbook("rotate_ca.yml", "-e", "teleport_rotation_max_age=0s")
    finally:
        auth.run("rmdir /var/lib/teleport/rotate_ca.lock")
    output = " ".join(done.stdout.split())
    assert done.returncode != 0
    assert "Another rotate_ca.yml run holds" in output, output[-3000:]
    assert tctl_json("status")["ca_pins"] == status["ca_pins"]


def test_a_rotation_is_not_started_while_an_inventory_agent_is_gone(status, tmp_path):
    """A host decommissioned but left in the inventory: the due rotation is not started (it
    used to start, wait, roll back and fail on every scheduled run)."""
    extra = tmp_path / "gone.yml"
    extra.write_text(yaml.safe_dump({"all": {"children": {"teleport_node": {"hosts": {"rot-gone": {}}}}}}))
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    done = subprocess.run(["ansible-playbook", "-i", str(Path(INVENTORY).parent), "-i", str(extra),
                           str(REPO / "playbooks" / "rotate_ca.yml"), "-e", "teleport_rotation_max_age=0s"],
                          env=env, capture_output=True, text=True, timeout=900, check=False)
    output = " ".join(done.stdout.split())
    assert done.returncode != 0
    assert "the rotation was not started (nothing changed): rot-gone is offline" in output, output[-3000:]
    after = tctl_json("status")
    assert after["ca_pins"] == status["ca_pins"]
    assert all(ca["rotation"]["phase"] == "standby" for ca in after["cas"])
    assert not host(AUTH).file("/var/lib/teleport/rotate_ca.lock").exists


# ------------------------------------------------------------------------------ a node down


@pytest.fixture
def node2_down():
    node = host("rot-node2")
    node.run("systemctl stop teleport")
    try:
        yield "rot-node2"
    finally:
        node.run("systemctl start teleport")
        node.run("for i in $(seq 60); do curl -fsS http://127.0.0.1:3000/readyz && break; sleep 1; done")


def test_a_node_down_stops_the_rotation_which_is_rolled_back(status, node2_down):
    done = playbook("rotate_ca.yml", "-e", "teleport_rotation_max_age=0s",
                    "-e", '{"teleport_rotation_types": ["host"]}', "-e", "teleport_rotation_wait_retries=5")
    output = " ".join(done.stdout.split())
    assert done.returncode != 0
    assert f"The host CA rotation stopped at init: after 5 checks, {node2_down} is at standby, not init" in output, \
        output[-3000:]
    assert "Rolled back: the host CA is back on its old key." in output
    after = tctl_json("status")
    (host_ca,) = [ca for ca in after["cas"] if ca["type"] == "host"]
    assert host_ca["rotation"]["phase"] == "standby"
    assert after["ca_pins"] == status["ca_pins"]
    (before_host,) = [ca for ca in status["cas"] if ca["type"] == "host"]
    assert host_ca["rotation"]["last_rotated"] == before_host["rotation"]["last_rotated"]


def test_access_after_the_rollback(status):
    """The rolled-back cluster still serves every node with certs from the CA it kept."""
    auth = host(AUTH)
    (line,) = auth.check_output("tctl auth export --type=host").splitlines()
    current = fingerprint(auth, ca_key(line))
    for name in NODES:
        cert = host(name).check_output("ssh-keygen -L -f /var/lib/teleport/identity/node/ssh_cert")
        assert f" {current} " in cert + " ", f"{name}: {cert}"
    script = (
        "rm -rf /root/ssh-after; LOOP_DIR=/root/ssh-after timeout 120 /root/ssh-loop.sh "
        f"{CLUSTER} {PROXY} rotation-loop {' '.join(NODES)} & pid=$!; "
        "for i in $(seq 90); do [ \"$(grep -c ' OK ' /root/ssh-after/log 2>/dev/null)\" -ge 2 ] 2>/dev/null && break; "
        "sleep 1; done; kill $pid; cat /root/ssh-after/log"
    )
    done = auth.run(script)
    assert " FAIL " not in done.stdout and done.stdout.count(" OK ") >= 2, done.stdout


# ------------------------------------------------------------------------------ a new node


@pytest.fixture(scope="module")
def node3(status):
    name = "rot-node3"
    subprocess.run(["podman", "rm", "-f", name], capture_output=True, check=False)
    subprocess.run(
        ["podman", "run", "-d", "--name", name, "--hostname", name, "--network", PLATFORM["network"],
         "--systemd=always", PLATFORM["image"], "/sbin/init"],
        check=True, capture_output=True,
    )
    try:
        yield name
    finally:
        subprocess.run(["podman", "rm", "-f", name], capture_output=True, check=False)


def test_a_new_node_joins_with_the_pin_from_the_pins_file(status, node3):
    """The node role alone, with a token from tctl and runtime_ca_pins from the file
    rotate_ca.yml wrote (the inventory's group_vars/all), as a later join would run."""
    inventory = PINS_FILE.parents[2]
    (inventory / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {
        "teleport_auth": {"hosts": {AUTH: {"ansible_connection": "containers.podman.podman"}}},
        "teleport_node": {"hosts": {node3: {
            "ansible_connection": "containers.podman.podman",
            "ansible_python_interpreter": "/usr/bin/python3",
            # the scenario's wheelhouse (inventory/podman-rotation/group_vars/all.yml)
            "runtime_build_dir": str(Path.home() / ".cache" / "teleport_access" / f"{REPO.name}-rotation"),
            "runtime_source": str(EPHEMERAL / "runtime-source"),  # molecule/rotation/prepare.yml
            "node_labels": {"env": "rotation", "tier": "new"},
        }}},
    }}}))
    token = tctl_json("tokens", "add", "--type=node", "--ttl=5m")["token"]
    join = inventory / "join.yml"
    join.write_text(yaml.safe_dump([{
        "name": "Join a node", "hosts": node3, "gather_facts": False, "become": True,
        "roles": [{"role": "teleport_access.cluster.node"}],
    }]))
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    done = subprocess.run(["ansible-playbook", "-i", str(inventory), str(join), "-e", f"runtime_join_token={token}"],
                          env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:]
    online = {n["hostname"] for n in tctl_json("nodes", "ls")}
    assert node3 in online
    h = testinfra.get_host(f"podman://{node3}")
    config = yaml.safe_load(h.file("/etc/teleport.yaml").content_string)
    assert config["teleport"]["ca_pin"] == status["ca_pins"]
    cert = h.check_output("ssh-keygen -L -f /var/lib/teleport/identity/node/ssh_cert")
    assert "Signing CA" in cert


# ------------------------------------------------------------------------------ later runs


def user_ca(state: dict) -> dict:
    (ca,) = [ca for ca in state["cas"] if ca["type"] == "user"]
    return ca["rotation"]


def test_an_interrupted_rotation_is_finished_by_the_next_run(status):
    """A manual rotation left in update_clients (a run that died) is walked to the end by a
    scheduled run, although no CA is due."""
    auth = host(AUTH)
    auth.check_output("tctl auth rotate --type=user --manual --phase=init")
    auth.check_output("tctl auth rotate --type=user --manual --phase=update_clients")
    started = user_ca(tctl_json("status"))
    done = playbook("rotate_ca.yml")
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Move the CA to the phase: user CA, update_servers" in done.stdout
    after = user_ca(tctl_json("status"))
    assert after["phase"] == "standby" and after["id"] == started["id"]
    assert after["last_rotated"] > user_ca(status)["last_rotated"]


def test_proceed_with_lagging_goes_on_and_the_node_follows_when_back(node2_down):
    done = playbook("rotate_ca.yml", "-e", "teleport_rotation_max_age=0s",
                    "-e", '{"teleport_rotation_types": ["user"]}', "-e", "teleport_rotation_wait_retries=3",
                    "-e", "teleport_rotation_proceed_with_lagging=true")
    output = " ".join(done.stdout.split())
    assert done.returncode == 0, output[-3000:]
    assert f"going on although {node2_down} is at standby, not init" in output
    rotation = user_ca(tctl_json("status"))
    assert rotation["phase"] == "standby"
    host(node2_down).run("systemctl start teleport")
    for _attempt in range(60):
        (node,) = [n for n in tctl_json("nodes", "ls") if n["hostname"] == node2_down]
        if node["rotation"]["user"] == {"phase": "standby", "id": rotation["id"]}:
            break
        time.sleep(2)
    assert node["rotation"]["user"] == {"phase": "standby", "id": rotation["id"]}
