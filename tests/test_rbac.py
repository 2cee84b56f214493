"""Roles: parsing and validation, presets, RoleSet checks."""

from __future__ import annotations

from datetime import timedelta

import pytest

from teleport_runtime.errors import AccessDenied, BadParameter
from teleport_runtime.rbac import (
    Role,
    RoleSet,
    expand_logins,
    match_labels,
    parse_role,
    preset_roles,
    roles_from_yaml,
)


def role(name: str, allow: dict | None = None, deny: dict | None = None, **options) -> Role:
    return parse_role(
        {
            "kind": "role",
            "version": "v1",
            "metadata": {"name": name},
            "spec": {"allow": allow or {}, "deny": deny or {}, "options": options},
        }
    )


# ---------------------------------------------------------------------------- parsing


def test_parse_full_role_and_round_trip():
    data = {
        "kind": "role",
        "version": "v1",
        "metadata": {"name": "dev", "description": "developers"},
        "spec": {
            "allow": {
                "logins": ["{{internal.logins}}", "ubuntu"],
                "node_labels": {"env": ["dev", "staging"], "team": "web-*"},
                "rules": [{"resources": ["session"], "verbs": ["list", "read"]}],
            },
            "deny": {"logins": ["root"], "node_labels": {"env": "^prod-[0-9]+$"}},
            "options": {"max_session_ttl": "8h", "forward_agent": True, "port_forwarding": False},
        },
    }
    r = parse_role(data)
    assert r.name == "dev"
    assert r.allow.logins == ("{{internal.logins}}", "ubuntu")
    assert r.allow.node_labels == {"env": ("dev", "staging"), "team": ("web-*",)}
    assert r.options.max_session_ttl == timedelta(hours=8)
    assert r.to_dict() == data
    assert parse_role(r.to_dict()) == r


def test_round_trip_of_presets():
    for r in preset_roles():
        assert parse_role(r.to_dict()) == r


def test_yaml_documents():
    roles = roles_from_yaml(
        """
kind: role
version: v1
metadata: {name: a}
spec: {allow: {logins: [alice]}}
---
kind: role
version: v1
metadata: {name: b}
spec: {}
"""
    )
    assert [r.name for r in roles] == ["a", "b"]


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d.update(kind="user"), "kind: expected 'role'"),
        (lambda d: d.update(version="v9"), "version: expected 'v1'"),
        (lambda d: d["metadata"].update(name="bad name"), "metadata.name"),
        (lambda d: d["spec"]["allow"].update(logins="root"), "spec.allow.logins: expected a list"),
        (lambda d: d["spec"]["allow"].update(logins=["{{internal.logins"]), "trait template"),
        (lambda d: d["spec"]["allow"].update(logins=["{{foo.bar}}"]), "trait template"),
        (
            lambda d: d["spec"]["allow"].update(node_labels=["env"]),
            "node_labels: expected a mapping",
        ),
        (lambda d: d["spec"]["allow"].update(node_labels={"env": 3}), "node_labels.env"),
        (lambda d: d["spec"]["allow"].update(node_labels={"*": "prod"}), "wildcard key"),
        (lambda d: d["spec"]["allow"].update(node_labels={"env": "^(prod$"}), "regular expression"),
        (lambda d: d["spec"]["allow"].update(rules=[{"resources": ["x"]}]), "'resources' and"),
        (
            lambda d: d["spec"]["allow"].update(rules=[{"resources": ["x"], "verbs": ["eat"]}]),
            "unknown verb 'eat'",
        ),
        (lambda d: d["spec"]["allow"].update(login=["x"]), "unknown field 'login'"),
        (lambda d: d["spec"].update(options={"max_session_ttl": "forever"}), "max_session_ttl"),
        (lambda d: d["spec"].update(options={"max_session_ttl": "0s"}), "positive duration"),
        (lambda d: d["spec"].update(options={"forward_agent": "yes"}), "expected true or false"),
        (lambda d: d["spec"].update(options={"ttl": "1h"}), "unknown field 'ttl'"),
    ],
)
def test_validation_errors_name_the_field(mutate, needle):
    data = {
        "kind": "role",
        "version": "v1",
        "metadata": {"name": "r"},
        "spec": {"allow": {}, "deny": {}},
    }
    mutate(data)
    with pytest.raises(BadParameter) as info:
        parse_role(data)
    assert needle in str(info.value)


def test_errors_name_the_role():
    with pytest.raises(BadParameter, match=r'role "ops": spec.deny.logins'):
        role("ops", deny={"logins": [1]})


# ---------------------------------------------------------------------------- matching


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ({"*": ("*",)}, {}, True),
        ({"*": ("*",)}, {"env": "prod"}, True),
        ({"env": ("*",)}, {"env": "prod"}, True),
        ({"env": ("*",)}, {"team": "a"}, False),
        ({"env": ("prod",)}, {"env": "prod"}, True),
        ({"env": ("prod",)}, {"env": "production"}, False),
        ({"env": ("prod*",)}, {"env": "production"}, True),
        ({"env": ("dev", "prod")}, {"env": "prod"}, True),
        ({"env": ("^prod-[0-9]+$",)}, {"env": "prod-12"}, True),
        ({"env": ("^prod-[0-9]+$",)}, {"env": "prod-x"}, False),
        ({"env": ("prod",), "team": ("web",)}, {"env": "prod", "team": "db"}, False),
        ({"env": ("prod",), "team": ("web",)}, {"env": "prod", "team": "web"}, True),
        ({}, {"env": "prod"}, False),
    ],
)
def test_match_labels(selector, labels, expected):
    assert match_labels(selector, labels) is expected


def test_expand_logins():
    traits = {"logins": ["alice", "dev"], "team": "web"}
    assert expand_logins(["{{internal.logins}}", "root", "alice"], traits) == [
        "alice",
        "dev",
        "root",
    ]
    assert expand_logins(["{{external.team}}", "{{internal.missing}}"], traits) == ["web"]


# ---------------------------------------------------------------------------- RoleSet


def test_access_preset_uses_traits():
    roles = RoleSet([r for r in preset_roles() if r.name == "access"], {"logins": ["alice"]})
    assert roles.logins() == ["alice"]
    roles.check_access_to_node("alice", {"env": "prod"})
    roles.check_access_to_node("alice", {})
    with pytest.raises(AccessDenied, match="'root' is not allowed by any role"):
        roles.check_access_to_node("root", {})
    assert roles.can_forward_agent()
    assert roles.can_port_forward()
    assert roles.max_session_ttl() == timedelta(hours=30)


def test_logins_minus_denied():
    roles = RoleSet([role("a", allow={"logins": ["root", "ubuntu"]}), role("b", deny={"logins": ["root"]})])
    assert roles.logins() == ["ubuntu"]


def test_node_labels_must_match_for_the_login():
    roles = RoleSet(
        [
            role("prod", allow={"logins": ["ops"], "node_labels": {"env": "prod"}}),
            role("dev", allow={"logins": ["dev"], "node_labels": {"env": "dev"}}),
        ]
    )
    roles.check_access_to_node("ops", {"env": "prod"})
    with pytest.raises(AccessDenied, match="node_labels do not match") as info:
        roles.check_access_to_node("dev", {"env": "prod"})
    assert "env=prod" in str(info.value)


def test_deny_labels_win():
    roles = RoleSet(
        [
            role("access", allow={"logins": ["alice"], "node_labels": {"*": "*"}}),
            role("no-prod", deny={"node_labels": {"env": "prod*"}}),
        ]
    )
    roles.check_access_to_node("alice", {"env": "dev"})
    with pytest.raises(AccessDenied, match="denied by role 'no-prod'"):
        roles.check_access_to_node("alice", {"env": "production"})


def test_deny_login_wins_everywhere():
    roles = RoleSet(
        [
            role("access", allow={"logins": ["root"], "node_labels": {"*": "*"}}),
            role("no-root", deny={"logins": ["root"]}),
        ]
    )
    with pytest.raises(AccessDenied, match="'root' is denied by role 'no-root'"):
        roles.check_access_to_node("root", {})


def test_options():
    a = role("a", max_session_ttl="8h", forward_agent=True)
    b = role("b", max_session_ttl="2h")
    c = role("c", forward_agent=False, port_forwarding=False)
    assert RoleSet([a, b]).max_session_ttl() == timedelta(hours=2)
    assert RoleSet([]).max_session_ttl() == timedelta(hours=30)
    assert RoleSet([role("x")]).max_session_ttl() == timedelta(hours=30)
    assert RoleSet([a, b]).can_forward_agent()
    assert not RoleSet([b]).can_forward_agent()
    assert not RoleSet([a, c]).can_forward_agent()
    assert RoleSet([a, b]).can_port_forward()
    assert not RoleSet([a, c]).can_port_forward()
    assert not RoleSet([]).can_port_forward()


def test_rules():
    presets = {r.name: r for r in preset_roles()}
    editor = RoleSet([presets["editor"]])
    editor.check_rule("token", "create")
    editor.check_rule("cluster_auth_preference", "update")
    with pytest.raises(AccessDenied, match="'read' on 'session'"):
        editor.check_rule("session", "read")
    auditor = RoleSet([presets["auditor"]])
    auditor.check_rule("session", "read")
    auditor.check_rule("event", "list")
    with pytest.raises(AccessDenied):
        auditor.check_rule("event", "delete")
    star = role("star", allow={"rules": [{"resources": ["*"], "verbs": ["*"]}]})
    no_tokens = role("nt", deny={"rules": [{"resources": ["token"], "verbs": ["delete"]}]})
    roles = RoleSet([star, no_tokens])
    roles.check_rule("token", "create")
    with pytest.raises(AccessDenied, match="denied by role 'nt'"):
        roles.check_rule("token", "delete")
