"""CA rotation with real daemons: nodes and a proxy follow each phase (they report it in their
heartbeats), users keep access through the proxy at every phase, and the faults: the auth service
or a node restarting mid-rotation, a node away for (part of) a rotation, a rollback, and a node
joining mid-rotation. No timing assertions: waits are bounded polls."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from tests.conftest import wait_for
from tests.rotation.conftest import RotationEnv, fingerprint, signing_ca


def host_ca(env: RotationEnv, tmp: Path) -> str:
    """The fingerprint of the one host CA key `tctl auth export --type=host` prints."""
    lines = env.cluster.tctl("auth", "export", "--type=host").stdout.splitlines()
    assert len(lines) == 1, lines
    return fingerprint(" ".join(lines[0].split()[2:4]), tmp)


def test_manual_host_then_user_rotation_keeps_access_at_every_phase(
    rotation_env: Callable[..., RotationEnv], tmp_path: Path
) -> None:
    env = rotation_env("node1")
    node = env.nodes["node1"]
    old_pin = env.status()["ca_pins"]
    old_host_ca = host_ca(env, tmp_path)
    assert signing_ca(node.identity_dir() / "ssh_cert") == old_host_ca
    standby = env.wait_reported("host")
    assert standby["state"] == "standby"

    # init: the new host CA is trusted by everyone; tctl status prints both pins
    view = env.step("host", "init")
    assert (view["state"], view["phase"], view["mode"]) == ("in_progress", "init", "manual")
    pins = env.status()["ca_pins"]
    assert len(pins) == 2 and old_pin[0] in pins
    assert "CA pin" in env.cluster.tctl("status").stdout
    env.assert_access()
    env.login()  # clients pick up the new host CA (known_hosts) before servers switch to it

    # update_clients: agents hold a replacement identity from the new CA; still serve the old one
    env.step("host", "update_clients")
    assert (node.identity_dir() / "replacement" / "tls_cert.pem").exists()
    assert signing_ca(node.identity_dir() / "ssh_cert") == old_host_ca
    env.assert_access()
    # a node joining now needs both pins; with them it joins and follows the rotation
    env.start_node("node2", pins=tuple(pins))
    env.wait_reported("host")
    env.assert_access("node2", openssh=False)

    # update_servers: agents serve the new identity
    env.step("host", "update_servers")
    assert not (node.identity_dir() / "replacement").exists()
    assert signing_ca(node.identity_dir() / "ssh_cert") != old_host_ca
    env.assert_access()

    # standby: the old host CA is dropped; node host certs are signed by the new CA
    view = env.step("host", "standby")
    assert (view["state"], view["phase"]) == ("standby", "standby")
    status = env.status()
    assert len(status["ca_pins"]) == 1 and status["ca_pins"] != old_pin
    new_host_ca = host_ca(env, tmp_path)
    assert new_host_ca != old_host_ca
    for name in ("node1", "node2"):
        assert signing_ca(env.nodes[name].identity_dir() / "ssh_cert") == new_host_ca
    env.assert_access()

    # user CA: the certificate from before the rotation keeps working until it completes
    for phase in ("init", "update_clients", "update_servers"):
        env.step("user", phase)
        env.assert_access()
    env.step("user", "standby")
    refused = env.ssh("node1")
    assert refused.returncode != 0
    env.login()  # after the rotation: tsh login again
    env.assert_access()
    agents = env.agents()
    user_view = env.ca("user")["rotation"]
    assert {n: a["rotation"]["user"] for n, a in agents.items()} == {
        n: {"phase": "standby", "id": user_view["id"]} for n in ("node1", "node2", "proxy1")
    }


def test_auth_and_node_restart_mid_rotation(rotation_env: Callable[..., RotationEnv]) -> None:
    env = rotation_env("node1")
    node = env.nodes["node1"]
    env.step("host", "init")
    env.login()
    env.step("host", "update_clients")
    rotation_id = env.ca("host")["rotation"]["id"]

    # the auth service restarts: the rotation resumes where the stored CA says
    assert env.cluster.auth is not None
    env.cluster.auth.kill()
    env.cluster.start()
    view = env.ca("host")["rotation"]
    assert (view["phase"], view["id"]) == ("update_clients", rotation_id)
    env.wait_reported("host")
    env.assert_access(openssh=False)

    # the node restarts holding its replacement identity: it resumes with it
    node.restart(env.cluster.node_argv(node.name))
    assert (node.identity_dir() / "replacement" / "tls_cert.pem").exists()
    env.wait_reported("host")
    env.assert_access(openssh=False)

    # the agents converge on the next phases after both restarts
    env.step("host", "update_servers")
    env.step("host", "standby")
    env.assert_access()


def test_rollback_restores_access_with_the_old_ca(rotation_env: Callable[..., RotationEnv], tmp_path: Path) -> None:
    env = rotation_env("node1")
    old_host_ca = host_ca(env, tmp_path)
    old_pin = env.status()["ca_pins"]
    # a second user profile that only ever trusts the old host CA
    old_home = tmp_path / "old-home"
    env.login(home=old_home, pin=old_pin[0])
    env.step("host", "init")
    env.login()
    env.step("host", "update_clients")
    env.step("host", "update_servers")
    refused = env.ssh("node1", home=old_home)  # the proxy and node serve new-CA host certs
    assert refused.returncode != 0
    assert "tsh login" in refused.stderr and "host CA" in refused.stderr

    env.step("host", "rollback")
    assert signing_ca(env.nodes["node1"].identity_dir() / "ssh_cert") == old_host_ca
    env.assert_access(home=old_home)
    env.assert_access()
    view = env.step("host", "standby")
    assert view["state"] == "standby"
    assert env.status()["ca_pins"] == old_pin
    env.assert_access(home=old_home)


def test_nodes_away_during_a_rotation(rotation_env: Callable[..., RotationEnv]) -> None:
    env = rotation_env("node1", "away", "gone")
    away, gone = env.nodes["away"], env.nodes["gone"]
    gone.kill()  # down for the whole rotation
    env.step("host", "init")
    env.login()
    away.kill()  # down from init on
    env.step("host", "update_clients")
    env.step("host", "update_servers")

    # back mid-rotation: it catches up (re-registers with its old, still trusted identity)
    away.restart(env.cluster.node_argv(away.name))
    env.wait_reported("host")
    env.assert_access("away", openssh=False)
    env.step("host", "standby")
    env.assert_access()

    # back after the rotation completed: its identity is signed by the dropped CA; it stops
    # with a message telling the operator to re-join with a token
    daemon = gone.restart(env.cluster.node_argv(gone.name), wait=False)
    assert daemon.wait_exit() != 0
    assert "no longer trusts" in gone.log() and "new token" in gone.log()
    assert "tctl nodes rm" in gone.log()
    # re-joining as told works: its UUID is bound to its old key, so the host is removed first
    # (a token alone does not let a new key take over a host's UUID)
    shutil.rmtree(gone.identity_dir())
    token = env.cluster.add_token(roles="node")["token"]
    argv = env.cluster.node_argv(gone.name, token=token, pins=tuple(env.status()["ca_pins"]))
    daemon = gone.restart(argv, wait=False)
    assert daemon.wait_exit() != 0
    assert "tctl nodes rm gone" in gone.log()
    env.cluster.tctl("nodes", "rm", "gone")
    gone.restart(argv)
    wait_for(lambda: gone.host_uuid() in env.cluster.node_ids(), what="the re-joined node in tctl nodes ls")
    env.assert_access("gone", openssh=False)


def test_auto_rotation_with_a_short_grace_period(rotation_env: Callable[..., RotationEnv]) -> None:
    env = rotation_env("node1")
    env.cluster.tctl("auth", "rotate", "--type=user", "--grace-period=9s")
    view = env.ca("user")["rotation"]
    assert (view["mode"], view["phase"]) == ("auto", "init")

    def completed() -> bool:
        rotation = env.ca("user")["rotation"]
        return rotation["state"] == "standby" and rotation["id"] == view["id"]

    wait_for(completed, 90, 0.5, what="the auto rotation to complete")
    env.wait_reported("user")
    env.login()
    env.assert_access()
