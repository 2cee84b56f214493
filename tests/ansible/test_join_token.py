from __future__ import annotations

import json

from ansible_collections.teleport_access.cluster.plugins.modules import join_token

from .conftest import PIN, FakeTctlError

VALUE = "0123456789abcdef0123456789abcdef"


def test_creates_missing_token_and_returns_it(run_module, cluster):
    result, failed = run_module(join_token, {"value": VALUE, "roles": ["node", "proxy"], "ttl": "15m"})
    assert not failed
    assert result["changed"] is True
    assert result["roles"] == ["node", "proxy"]
    assert result["ca_pins"] == [PIN]
    add = cluster.mutations()[0]
    assert add[1:3] == ["tokens", "add"]
    assert "--type=node,proxy" in add and "--ttl=15m" in add and "--value-file=-" in add
    assert [t["token"] for t in cluster.tokens] == [VALUE]


def test_the_token_value_never_reaches_tctls_argv(run_module, cluster):
    """Every local user on the auth host can read a process's argv (ps): the value goes on stdin."""
    run_module(join_token, {"value": VALUE, "roles": ["node"]})
    run_module(join_token, {"value": VALUE, "roles": ["node", "proxy"]})  # replaced
    result, failed = run_module(join_token, {"value": VALUE, "state": "absent"})
    assert not failed and result["changed"] is True
    assert cluster.tokens == []
    assert cluster.calls and not any(VALUE in arg for argv in cluster.calls for arg in argv)
    writes = (["tokens", "add"], ["tokens", "rm"])
    adds_and_removals = [i for i, argv in enumerate(cluster.calls) if argv[1:3] in writes]
    assert len(adds_and_removals) == 3
    assert all(cluster.stdin[i] == VALUE and "--value-file=-" in cluster.calls[i] for i in adds_and_removals)


def test_a_failure_does_not_show_the_value(run_module, cluster, monkeypatch):
    def refuse(words):
        raise FakeTctlError(f"token {cluster.stdin[-1]} is not valid")

    monkeypatch.setattr(cluster, "tokens_add", refuse)
    result, failed = run_module(join_token, {"value": VALUE, "roles": ["node"]})
    assert failed
    assert VALUE not in json.dumps(result)


def test_second_run_is_unchanged(run_module, cluster):
    run_module(join_token, {"value": VALUE, "roles": ["node", "proxy"]})
    cluster.calls.clear()
    result, failed = run_module(join_token, {"value": VALUE, "roles": ["proxy", "node"]})
    assert not failed and result["changed"] is False
    assert cluster.mutations() == []
    assert result["expires"] == "2030-01-01T00:30:00+00:00"


def test_other_roles_replace_the_token(run_module, cluster):
    run_module(join_token, {"value": VALUE, "roles": ["node"]})
    result, _failed = run_module(join_token, {"value": VALUE, "roles": ["node", "proxy"]}, diff=True)
    assert result["changed"] is True
    assert result["diff"]["before"]["roles"] == ["node"]
    assert result["diff"]["after"]["roles"] == ["node", "proxy"]
    assert VALUE not in str(result["diff"])  # the diff masks the secret
    assert [t["roles"] for t in cluster.tokens] == [["node", "proxy"]]


def test_check_mode_predicts_without_creating(run_module, cluster):
    result, failed = run_module(join_token, {"value": VALUE, "roles": ["node"]}, check=True)
    assert not failed and result["changed"] is True
    assert cluster.mutations() == [] and cluster.tokens == []


def test_generated_token_is_returned(run_module, cluster):
    result, _failed = run_module(join_token, {"roles": ["node"]})
    assert result["changed"] is True
    assert result["token"] == "f" * 32
    assert result["join_command"].startswith("teleport start")


def test_absent_removes_and_is_then_unchanged(run_module, cluster):
    run_module(join_token, {"value": VALUE})
    result, _failed = run_module(join_token, {"value": VALUE, "state": "absent"})
    assert result["changed"] is True and cluster.tokens == []
    result, _failed = run_module(join_token, {"value": VALUE, "state": "absent"})
    assert result["changed"] is False


def test_absent_needs_a_value(run_module, cluster):
    result, failed = run_module(join_token, {"state": "absent"})
    assert failed and "value" in result["msg"]


def test_static_token_cannot_be_removed(run_module, cluster):
    cluster.tokens = [{"token": VALUE, "roles": ["node"], "expires": None, "static": True}]
    result, failed = run_module(join_token, {"value": VALUE, "state": "absent"})
    assert failed and "static token" in result["msg"]
    assert VALUE not in result["msg"]


def test_tctl_error_fails_with_its_message_and_masks_the_value(run_module, cluster):
    cluster.fail_with = (1, "cannot reach the auth service at 10.0.0.1:3025: connection refused")
    result, failed = run_module(join_token, {"value": VALUE, "roles": ["node"]})
    assert failed
    assert "connection refused" in result["msg"]
    assert result["rc"] == 1
    assert VALUE not in result["msg"]


def test_the_name_comes_back_unmasked_and_revokes_the_token(run_module, cluster):
    """A no_log value is masked in every result that contains it: revoking with the returned
    token did nothing. The name is a digest, not the value, and revokes the token."""
    created, failed = run_module(join_token, {"value": VALUE, "roles": ["node"]})
    assert not failed and created["name"].startswith("jt-") and VALUE not in created["name"]
    result, failed = run_module(join_token, {"name": created["name"], "state": "absent"})
    assert not failed and result["changed"] is True and result["name"] == created["name"]
    assert cluster.tokens == []
    assert not any(VALUE in arg for argv in cluster.calls for arg in argv)
    again, failed = run_module(join_token, {"name": created["name"], "state": "absent"})
    assert not failed and again["changed"] is False


def test_a_name_creates_nothing(run_module, cluster):
    result, failed = run_module(join_token, {"name": "jt-0123", "roles": ["node"]})
    assert failed and "state=absent" in result["msg"]
    assert cluster.tokens == []
