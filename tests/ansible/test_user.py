from __future__ import annotations

import json

from ansible_collections.teleport_access.cluster.plugins.modules import user

from .conftest import SIGNUP_TOKEN


def test_creates_user_and_returns_invite_without_the_token(run_module, cluster):
    """The sign-up token makes its holder the new user: it stays out of the result (and so out of
    -v output, callbacks and --diff) unless asked for."""
    result, failed = run_module(user, {"name": "alice", "roles": ["access"], "logins": ["alice", "root"]},
                                diff=True)
    assert not failed and result["changed"] is True
    assert result["invite"] == {"user": "alice", "expires": "2030-01-01T01:00:00+00:00"}
    assert SIGNUP_TOKEN not in json.dumps(result)
    assert cluster.users[0]["logins"] == ["alice", "root"]


def test_return_token_needs_no_log_and_changes_nothing_without_it(run_module, cluster):
    args = {"name": "alice", "roles": ["access"], "return_token": True}
    result, failed = run_module(user, args)
    assert failed and "no_log: true" in result["msg"]
    assert cluster.users == [] and cluster.mutations() == []
    result, failed = run_module(user, args, no_log=True, diff=True)
    assert not failed and result["changed"] is True
    assert result["invite"]["token"] == SIGNUP_TOKEN
    assert SIGNUP_TOKEN not in json.dumps(result["diff"])


def test_same_roles_and_logins_in_any_order_is_unchanged(run_module, cluster):
    run_module(user, {"name": "alice", "roles": ["access"], "logins": ["alice", "root"]})
    cluster.calls.clear()
    result, _failed = run_module(user, {"name": "alice", "roles": ["access"], "logins": ["root", "alice"]})
    assert result["changed"] is False and cluster.mutations() == []


def test_traits_form_is_understood(run_module, cluster):
    cluster.users = [{"name": "alice", "roles": ["access"], "traits": {"logins": ["alice"]}}]
    result, _failed = run_module(user, {"name": "alice", "roles": ["access"], "logins": ["alice"]})
    assert result["changed"] is False


def test_updates_roles_and_logins(run_module, cluster):
    run_module(user, {"name": "alice", "roles": ["access"], "logins": ["alice"]})
    args = {"name": "alice", "roles": ["access", "editor"], "logins": ["alice"]}
    result, _failed = run_module(user, args, diff=True)
    assert result["changed"] is True
    assert result["diff"]["after"]["roles"] == ["access", "editor"]
    assert cluster.users[0]["roles"] == ["access", "editor"]


def test_roles_are_required_when_present(run_module, cluster):
    result, failed = run_module(user, {"name": "alice", "logins": ["alice"]})
    assert failed and "roles" in result["msg"]


def test_check_mode_and_absent(run_module, cluster):
    result, _failed = run_module(user, {"name": "bob", "roles": ["access"]}, check=True)
    assert result["changed"] is True and cluster.users == []
    run_module(user, {"name": "bob", "roles": ["access"], "logins": ["bob"]})
    result, _failed = run_module(user, {"name": "bob", "state": "absent"}, check=True)
    assert result["changed"] is True and len(cluster.users) == 1
    result, _failed = run_module(user, {"name": "bob", "state": "absent"})
    assert result["changed"] is True and cluster.users == []
    result, _failed = run_module(user, {"name": "bob", "state": "absent"})
    assert result["changed"] is False
