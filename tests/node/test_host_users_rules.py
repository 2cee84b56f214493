"""The rules around host users and enhanced recording that need no account changes: role options,
their merging, the node's configuration, refusals made before anything is touched, and a node
where BPF cannot load (it starts, says why once, and sessions work as before)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from teleport_runtime.config import config_from_dict
from teleport_runtime.errors import BadParameter, ConfigError
from teleport_runtime.node import bpf
from teleport_runtime.node.bpf import EnhancedRecorder, EnhancedRecordingConfig, parse_enhanced_recording
from teleport_runtime.node.host_users import HostUserRefused, HostUsers
from teleport_runtime.rbac import HostUserPolicy, RoleSet, parse_role

from .conftest import RunningNode, make_role


def _role(name: str = "r", allow: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    return {"kind": "role", "version": "v1", "metadata": {"name": name},
            "spec": {"allow": allow or {}, "options": options}}


# ---------------------------------------------------------------------------- roles


def test_role_options_round_trip() -> None:
    role = parse_role(_role(
        allow={"logins": ["x"], "node_labels": {"env": "prod"}, "host_groups": ["wheel", "adm"],
               "host_sudoers": ["ALL=(ALL) NOPASSWD: ALL"]},
        create_host_user_mode="insecure-drop", enhanced_recording=["command", "disk"],
    ))
    assert role.allow.host_groups == ("wheel", "adm")
    assert role.options.create_host_user_mode == "insecure-drop"
    assert role.options.enhanced_recording == ("command", "disk")
    assert parse_role(role.to_dict()) == role


@pytest.mark.parametrize(("spec", "message"), [
    ({"options": {"create_host_user_mode": "always"}}, "create_host_user_mode: expected one of off, keep"),
    ({"options": {"enhanced_recording": ["command", "syscalls"]}}, "unknown event class(es) 'syscalls'"),
    ({"allow": {"host_groups": ["-o"]}}, "host_groups: invalid group name '-o'"),
    ({"allow": {"host_groups": ["Wheel Group"]}}, "invalid group name"),
    ({"allow": {"host_sudoers": ["ALL=(ALL) ALL\nmallory ALL=(ALL) ALL"]}}, "without line breaks"),
    ({"allow": {"host_sudoers": ["#include /tmp/evil"]}}, "include directives"),
    ({"allow": {"host_sudoers": ["@includedir /tmp"]}}, "include directives"),
    ({"deny": {"host_groups": ["wheel"]}}, "unknown field 'host_groups'"),
])
def test_bad_role_options_are_refused_naming_the_field(spec: dict[str, Any], message: str) -> None:
    doc = {"kind": "role", "version": "v1", "metadata": {"name": "r"}, "spec": spec}
    with pytest.raises(BadParameter) as exc:
        parse_role(doc)
    assert message in exc.value.message


def test_yaml_off_is_the_off_mode() -> None:
    from teleport_runtime.rbac import roles_from_yaml

    text = "kind: role\nversion: v1\nmetadata: {name: r}\nspec: {options: {create_host_user_mode: off}}"
    [role] = roles_from_yaml(text)
    assert role.options.create_host_user_mode == "off"


def test_host_user_policy_merges_the_roles_that_match_the_node() -> None:
    prod = {"env": "prod"}
    keep = make_role("keep", allow={"node_labels": {"env": "prod"}, "host_groups": ["a"],
                                    "host_sudoers": ["ALL=(ALL) ALL"]}, create_host_user_mode="keep")
    drop = make_role("drop", allow={"node_labels": {"*": "*"}, "host_groups": ["b", "a"]},
                     create_host_user_mode="insecure-drop")
    off = make_role("off", allow={"node_labels": {"env": "prod"}}, create_host_user_mode="off")
    elsewhere = make_role("elsewhere", allow={"node_labels": {"env": "dev"}}, create_host_user_mode="off")
    assert RoleSet([keep, drop]).host_user_policy(prod) == HostUserPolicy("keep", ("a", "b"), ("ALL=(ALL) ALL",))
    assert RoleSet([drop]).host_user_policy(prod) == HostUserPolicy("insecure-drop", ("b", "a"), ())
    assert RoleSet([keep, off]).host_user_policy(prod) is None  # off wins
    assert RoleSet([keep, elsewhere]).host_user_policy(prod) is not None  # a role for other nodes
    assert RoleSet([keep]).host_user_policy({"env": "dev"}) is None
    assert RoleSet([make_role("plain", allow={"node_labels": {"*": "*"}})]).host_user_policy(prod) is None


def test_enhanced_recording_is_the_union_with_the_default_for_roles_that_do_not_say() -> None:
    assert RoleSet([make_role("a", enhanced_recording=["disk"])]).enhanced_recording() == {"disk"}
    assert RoleSet([make_role("a", enhanced_recording=["disk"]), make_role("b")]).enhanced_recording() == {
        "disk", "command", "network"}
    assert RoleSet([make_role("a", enhanced_recording=[])]).enhanced_recording() == frozenset()


# ---------------------------------------------------------------------------- configuration


def test_enhanced_recording_configuration() -> None:
    section = {"enhanced_recording": {"enabled": True, "command_buffer_size": 16}}
    cfg = config_from_dict({"ssh_service": section}, check=False)
    assert cfg.ssh.enhanced_recording == EnhancedRecordingConfig(True, 16, 128, 8)
    assert config_from_dict({"ssh_service": {"enabled": True}}, check=False).ssh.enhanced_recording.enabled is False


@pytest.mark.parametrize(("value", "message"), [
    ({"enabled": "yes"}, "enabled: expected true or false"),
    ({"command_buffer_size": 3}, "power of two"),
    ({"disk_buffer_size": 0}, "power of two"),
    ({"network_buffer_size": "8"}, "power of two"),
    ({"cgroup_path": "/x"}, "unknown field 'cgroup_path'"),
])
def test_bad_enhanced_recording_configuration(value: dict[str, Any], message: str) -> None:
    with pytest.raises(BadParameter) as exc:
        parse_enhanced_recording(value)
    assert message in exc.value.message
    with pytest.raises(ConfigError) as cfg_exc:
        config_from_dict({"ssh_service": {"enhanced_recording": value}}, check=False)
    assert "ssh_service.enhanced_recording" in cfg_exc.value.message


# ---------------------------------------------------------------------------- refusals before any change


@pytest.mark.parametrize(("login", "policy", "message"), [
    ("-ohacker", HostUserPolicy("keep"), "invalid login"),
    ("root:x", HostUserPolicy("keep"), "invalid login"),
    ("newuser", HostUserPolicy("keep", groups=("teleport-system",)), "the node's own"),
    ("newuser", HostUserPolicy("keep", sudoers=("ALL=(ALL) ALL\nx ALL=(ALL) ALL",)), "without line breaks"),
])
def test_refusals_before_anything_is_touched(tmp_path: Path, login: str, policy: HostUserPolicy,
                                             message: str) -> None:
    events: list[dict[str, Any]] = []
    users = HostUsers(sudoers_dir=tmp_path / "sudoers.d")
    with pytest.raises(HostUserRefused) as exc:
        users.ensure(login, policy, events.append)
    assert message in exc.value.message
    assert events == [{"event": "host_user.rejected", "login": login, "reason": exc.value.message}]
    assert not (tmp_path / "sudoers.d").exists()


# ---------------------------------------------------------------------------- BPF cannot load


async def test_a_node_where_bpf_cannot_load_says_why_once_and_sessions_work(
    node: RunningNode, issue: Any, os_login: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(bpf, "BTF_PATH", tmp_path / "no-btf")
    recorder = EnhancedRecorder(EnhancedRecordingConfig(enabled=True), tmp_path / "objects")
    with caplog.at_level(logging.WARNING, logger="teleport_runtime.node.bpf"):
        assert await recorder.start() is False
    warnings = [r.getMessage() for r in caplog.records if "enhanced session recording is off" in r.getMessage()]
    assert len(warnings) == 1 and "no BTF" in warnings[0] and "CONFIG_DEBUG_INFO_BTF" in warnings[0]
    node.server.enhanced = recorder
    async with await node.connect(os_login, issue([os_login])) as conn:
        result = await conn.run("echo still-works", check=False)
    assert result.exit_status == 0 and result.stdout == "still-works\n"
    await node.wait_event("session.end")
    assert not [e for e in node.events if e["event"].startswith(("session.command", "session.enhanced"))]
    await recorder.stop()


def test_disabled_enhanced_recording_loads_nothing() -> None:
    recorder = EnhancedRecorder(EnhancedRecordingConfig(enabled=False), Path("/nonexistent"))
    assert recorder.open_session("s", frozenset({"command"}), lambda e: True) is None


def test_the_documented_on_call_role_is_valid() -> None:
    import ast

    import yaml

    # the module's EXAMPLES, read without importing it (it needs the Ansible collection path)
    source = (Path(__file__).parents[2] / "plugins" / "modules" / "role.py").read_text()
    [examples] = [ast.literal_eval(node.value) for node in ast.parse(source).body
                  if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "EXAMPLES"]
    tasks = [t["teleport_access.cluster.role"] for t in yaml.safe_load(examples)]
    [args] = [t for t in tasks if t["name"] == "oncall-prod"]
    spec = args["spec"]
    spec["allow"]["logins"] = ["{{internal.logins}}"]  # the example escapes it from Jinja
    role = parse_role({"kind": "role", "version": "v1", "metadata": {"name": args["name"]}, "spec": spec})
    policy = RoleSet([role]).host_user_policy({"env": "prod"})
    assert policy == HostUserPolicy("keep", ("oncall",), ("ALL=(ALL) NOPASSWD: ALL",))
    assert RoleSet([role]).host_user_policy({"env": "staging"}) is None
