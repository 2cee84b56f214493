from __future__ import annotations

from ansible_collections.teleport_access.cluster.plugins.modules import role

SPEC = {"allow": {"logins": ["{{internal.logins}}"], "node_labels": {"env": ["dev"]}},
        "deny": {"logins": ["root"]}}


def test_creates_role_from_spec(run_module, cluster):
    result, failed = run_module(role, {"name": "dev", "description": "Developers", "spec": SPEC})
    assert not failed and result["changed"] is True
    assert cluster.roles[0]["metadata"] == {"name": "dev", "description": "Developers"}
    assert cluster.roles[0]["spec"] == SPEC
    assert ["create", "--force"] == cluster.mutations()[0][1:3]


def test_same_spec_is_unchanged_and_empty_values_compare_equal(run_module, cluster):
    run_module(role, {"name": "dev", "spec": SPEC})
    cluster.roles[0]["spec"]["options"] = {}
    cluster.calls.clear()
    result, _failed = run_module(role, {"name": "dev", "spec": SPEC})
    assert result["changed"] is False and cluster.mutations() == []


def test_changed_spec_is_replaced_with_diff(run_module, cluster):
    run_module(role, {"name": "dev", "spec": SPEC})
    new = {"allow": {"logins": ["dev"], "node_labels": {"*": "*"}}}
    result, _failed = run_module(role, {"name": "dev", "spec": new}, diff=True)
    assert result["changed"] is True
    assert result["diff"]["before"]["spec"]["deny"] == {"logins": ["root"]}
    assert "deny" not in result["diff"]["after"]["spec"]
    assert cluster.roles[0]["spec"] == new


def test_check_mode_changes_nothing(run_module, cluster):
    result, _failed = run_module(role, {"name": "dev", "spec": SPEC}, check=True)
    assert result["changed"] is True and cluster.roles == []


def test_absent(run_module, cluster):
    run_module(role, {"name": "dev", "spec": SPEC})
    result, _failed = run_module(role, {"name": "dev", "state": "absent"})
    assert result["changed"] is True and cluster.roles == []
    assert cluster.mutations()[-1][1:] == ["rm", "role/dev"]


def test_cluster_normal_form_compares_equal(run_module, cluster):
    spec = {"allow": {"logins": ["dev"], "node_labels": {"env": ["dev"], "tier": ["b", "a"]}},
            "options": {"max_session_ttl": "90m"}}
    run_module(role, {"name": "dev", "spec": spec})
    # what the cluster prints back: single label values as scalars, durations reformatted
    cluster.roles[0]["spec"] = {"allow": {"logins": ["dev"], "node_labels": {"env": "dev", "tier": ["a", "b"]}},
                                "deny": {}, "options": {"max_session_ttl": "1h30m"}}
    cluster.calls.clear()
    result, _failed = run_module(role, {"name": "dev", "spec": spec})
    assert result["changed"] is False and cluster.mutations() == []


def test_host_user_and_enhanced_recording_options(run_module, cluster):
    spec = {"allow": {"logins": ["{{internal.logins}}"], "node_labels": {"env": ["prod"]},
                      "host_groups": ["oncall"], "host_sudoers": ["ALL=(ALL) NOPASSWD: ALL"]},
            "options": {"create_host_user_mode": False, "enhanced_recording": ["command", "network"]}}
    result, failed = run_module(role, {"name": "oncall", "spec": spec})
    assert not failed and result["changed"] is True
    assert cluster.roles[0]["spec"]["allow"]["host_sudoers"] == ["ALL=(ALL) NOPASSWD: ALL"]
    # the cluster stores the mode a bare YAML `off` (false) means as "off": no change next time
    cluster.roles[0]["spec"]["options"]["create_host_user_mode"] = "off"
    cluster.calls.clear()
    result, _failed = run_module(role, {"name": "oncall", "spec": spec})
    assert result["changed"] is False and cluster.mutations() == []
