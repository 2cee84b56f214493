from __future__ import annotations

from datetime import UTC, datetime

import pytest
from ansible_collections.teleport_access.cluster.plugins.filter.rotation_lagging import rotation_lagging
from ansible_collections.teleport_access.cluster.plugins.module_utils.ca_rotation import (
    parse_duration,
    remaining_walk,
)
from ansible_collections.teleport_access.cluster.plugins.module_utils.tctl import TctlError
from ansible_collections.teleport_access.cluster.plugins.modules import ca_rotation

from .conftest import NEW_PIN, PIN


def rotations(cluster):
    return [argv[argv.index("rotate") + 1:-1] for argv in cluster.mutations()]


# ------------------------------------------------------------------------------ max_age


def test_an_old_ca_is_due_and_starts_a_manual_rotation(run_module, cluster):
    result, failed = run_module(ca_rotation, {"type": "host", "max_age": "90d"})
    assert not failed, result
    assert result["changed"] is True and result["due"] is True
    assert (result["previous_phase"], result["phase"]) == ("standby", "init")
    assert rotations(cluster) == [["--type=host", "--manual", "--phase=init"]]
    assert result["ca_pins"] == [PIN, NEW_PIN]  # read back after the step
    assert result["rotation"]["state"] == "in_progress"


def test_a_young_ca_is_not_due(run_module, cluster):
    cluster.ca("host")["rotation"]["last_rotated"] = "2999-01-01T00:00:00+00:00"
    result, failed = run_module(ca_rotation, {"type": "host", "max_age": "90d"})
    assert not failed and result["changed"] is False and result["due"] is False
    assert cluster.mutations() == []


def test_age_counts_from_the_last_rotation_or_creation_whichever_is_later(run_module, cluster):
    cluster.ca("host")["created"] = "2999-01-01T00:00:00+00:00"
    result, _failed = run_module(ca_rotation, {"type": "host", "max_age": "1d"})
    assert result["due"] is False
    assert result["last_changed"].startswith("2999-01-01")


def test_zero_max_age_is_always_due_in_standby(run_module, cluster):
    cluster.ca("host")["created"] = datetime.now(UTC).isoformat()
    result, _failed = run_module(ca_rotation, {"type": "host", "max_age": "0s"})
    assert result["changed"] is True and result["phase"] == "init"


def test_a_rotation_in_progress_is_not_started_again(run_module, cluster):
    result, failed = run_module(ca_rotation, {"type": "user", "max_age": "0s"})
    assert not failed and result["changed"] is False and result["due"] is False
    assert result["phase"] == "init"
    assert cluster.mutations() == []


def test_grace_period_starts_an_auto_rotation(run_module, cluster):
    result, _failed = run_module(ca_rotation, {"type": "host", "max_age": "0s", "grace_period": "30h"})
    assert rotations(cluster) == [["--type=host", "--grace-period=30h"]]
    assert result["rotation"]["mode"] == "auto"


def test_second_run_after_a_completed_rotation_changes_nothing(run_module, cluster):
    cluster.ca("host")["created"] = "2000-01-01T00:00:00+00:00"
    for phase in ("init", "update_clients", "update_servers", "standby"):
        cluster.auth_rotate(["auth", "rotate", "--type=host", "--manual", f"--phase={phase}"])
    cluster.ca("host")["rotation"]["last_rotated"] = "2999-01-01T00:00:00+00:00"
    cluster.calls.clear()
    result, _failed = run_module(ca_rotation, {"type": "host", "max_age": "90d"})
    assert result["changed"] is False and cluster.mutations() == []
    assert result["ca_pins"] == [NEW_PIN]


# ------------------------------------------------------------------------------ check and diff


def test_check_mode_predicts_the_phase_without_rotating(run_module, cluster):
    result, failed = run_module(ca_rotation, {"type": "host", "max_age": "0s"}, check=True, diff=True)
    assert not failed and result["changed"] is True
    assert result["phase"] == "init" and result["rotation"]["mode"] == "manual"
    assert result["diff"] == {"before": {"phase": "standby", "state": "standby", "mode": ""},
                              "after": {"phase": "init", "state": "in_progress", "mode": "manual"}}
    assert cluster.mutations() == []
    assert result["ca_pins"] == [PIN]


def test_check_mode_prediction_matches_the_real_run(run_module, cluster):
    predicted, _failed = run_module(ca_rotation, {"type": "user", "phase": "update_clients"}, check=True, diff=True)
    real, _failed = run_module(ca_rotation, {"type": "user", "phase": "update_clients"}, diff=True)
    assert (predicted["changed"], predicted["phase"]) == (real["changed"], real["phase"])
    assert predicted["diff"] == real["diff"]


def test_unchanged_run_has_an_empty_diff(run_module, cluster):
    result, _failed = run_module(ca_rotation, {"type": "user", "phase": "init"}, diff=True)
    assert result["changed"] is False
    assert result["diff"]["before"] == result["diff"]["after"]


# ------------------------------------------------------------------------------ phase


def test_phase_moves_one_allowed_step(run_module, cluster):
    result, failed = run_module(ca_rotation, {"type": "user", "phase": "update_clients"})
    assert not failed and result["changed"] is True
    assert rotations(cluster) == [["--type=user", "--manual", "--phase=update_clients"]]


def test_phase_already_reached_is_unchanged(run_module, cluster):
    result, _failed = run_module(ca_rotation, {"type": "user", "phase": "init"})
    assert result["changed"] is False and cluster.mutations() == []


def test_phase_further_away_is_refused_naming_the_allowed_ones(run_module, cluster):
    result, failed = run_module(ca_rotation, {"type": "user", "phase": "standby"})
    assert failed
    assert "cannot move the user CA from init to standby" in result["msg"]
    assert "allowed next: update_clients, rollback" in result["msg"]
    assert cluster.mutations() == []


def test_standby_completes_and_drops_the_old_pin(run_module, cluster):
    for phase in ("init", "update_clients", "update_servers"):
        run_module(ca_rotation, {"type": "host", "phase": phase})
    result, _failed = run_module(ca_rotation, {"type": "host", "phase": "standby"})
    assert result["changed"] is True and result["rotation"]["state"] == "standby"
    assert result["ca_pins"] == [NEW_PIN]


# ------------------------------------------------------------------------------ rollback


def test_rollback_from_a_middle_phase(run_module, cluster):
    result, failed = run_module(ca_rotation, {"type": "user", "state": "rollback"})
    assert not failed and result["changed"] is True and result["phase"] == "rollback"
    assert rotations(cluster) == [["--type=user", "--manual", "--phase=rollback"]]
    again, _failed = run_module(ca_rotation, {"type": "user", "state": "rollback"})
    assert again["changed"] is False


def test_rollback_in_standby_has_nothing_to_do(run_module, cluster):
    result, failed = run_module(ca_rotation, {"type": "host", "state": "rollback"})
    assert not failed and result["changed"] is False and cluster.mutations() == []


def test_completed_rollback_restores_the_old_pin(run_module, cluster):
    run_module(ca_rotation, {"type": "host", "phase": "init"})
    run_module(ca_rotation, {"type": "host", "state": "rollback"})
    result, _failed = run_module(ca_rotation, {"type": "host", "phase": "standby"})
    assert result["ca_pins"] == [PIN]


# ------------------------------------------------------------------------------ arguments


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"type": "host"}, "state is present but any of the following are missing: max_age, phase"),
        ({"type": "host", "max_age": "1d", "phase": "init"}, "mutually exclusive"),
        ({"type": "host", "phase": "init", "grace_period": "30h"}, "missing parameter(s) required by 'grace_period'"),
        ({"type": "host", "state": "rollback", "phase": "init"}, "state=rollback takes neither"),
        ({"type": "host", "max_age": "ninety days"}, "max_age: 'ninety days' is not a duration"),
        ({"type": "host", "phase": "sideways"}, "value of phase must be one of"),
    ],
)
def test_bad_arguments_fail_naming_the_problem(run_module, cluster, args, message):
    result, failed = run_module(ca_rotation, args)
    assert failed and message in result["msg"]
    assert cluster.mutations() == []


def test_tctl_refusal_is_reported(run_module, cluster):
    cluster.fail_with = (1, "cannot reach the auth service")
    result, failed = run_module(ca_rotation, {"type": "host", "max_age": "0s"})
    assert failed and "cannot reach the auth service" in result["msg"]


@pytest.mark.parametrize(("text", "seconds"), [("90d", 7776000), ("1h30m", 5400), ("0s", 0), ("2w", 1209600),
                                               ("45", 45), (10, 10), ("500ms", 0.5)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1y", "-1s", "1h 30m", "d"])
def test_bad_durations(text):
    with pytest.raises(TctlError):
        parse_duration(text)


def test_remaining_walk_resumes_where_the_ca_is():
    assert remaining_walk("standby") == []
    assert remaining_walk("init") == ["init", "update_clients", "update_servers", "standby"]
    assert remaining_walk("update_servers") == ["update_servers", "standby"]
    assert remaining_walk("rollback") == ["rollback", "standby"]


# ------------------------------------------------------------------------------ lagging agents


def info(host_phase="update_clients", rotation_id="r2", nodes=(), proxies=()):
    return {"rotation": {"host": {"phase": host_phase, "current_id": rotation_id},
                         "user": {"phase": "standby", "current_id": None}},
            "nodes": list(nodes), "proxies": list(proxies)}


def agent(name, phase, rotation_id="r2", ca_type="host"):
    return {"hostname": name, "id": name + "-uuid", "rotation": {ca_type: {"phase": phase, "id": rotation_id}}}


def test_every_agent_at_the_phase_is_in_step():
    state = info(nodes=[agent("node1", "update_clients")], proxies=[agent("proxy1", "update_clients")])
    assert rotation_lagging(state, "host", expected=["node1", "proxy1"]) == []


def test_agents_behind_or_offline_are_named():
    state = info(nodes=[agent("node1", "update_clients"), agent("node2", "init")],
                 proxies=[{"hostname": "proxy1", "rotation": {}}])
    assert rotation_lagging(state, "host", expected=["node1", "node2", "node3", "proxy1"]) == [
        "node2 is at init, not update_clients",
        "proxy1 is at no reported phase, not update_clients",
        "node3 is offline (not heartbeating)",
    ]


def test_a_phase_of_another_rotation_does_not_count():
    state = info(host_phase="standby", rotation_id="r2", nodes=[agent("node1", "standby", rotation_id="r1")])
    assert rotation_lagging(state, "host") == ["node1 is at standby of another rotation (r1, not r2)"]


def test_an_agent_that_slept_through_the_rotation_is_not_at_its_standby():
    state = info(host_phase="standby", rotation_id="r2", nodes=[agent("node1", "standby", rotation_id="")])
    assert rotation_lagging(state, "host") == ["node1 is at standby of another rotation (none, not r2)"]


def test_before_any_rotation_standby_without_id_is_in_step():
    state = info(host_phase="standby", rotation_id="", nodes=[agent("node1", "standby", rotation_id="")])
    assert rotation_lagging(state, "host") == []


def test_accepted_phases_for_completing_a_rollback():
    state = info(host_phase="rollback", nodes=[agent("node1", "rollback"), agent("node2", "standby", "r1"),
                                               agent("node3", "update_servers")])
    assert rotation_lagging(state, "host", phases=["rollback", "init", "standby"]) == [
        "node3 is at update_servers, not rollback or init or standby"]


def test_each_ca_type_is_checked_on_its_own():
    state = info(nodes=[agent("node1", "update_clients")])
    assert rotation_lagging(state, "user") == ["node1 is at no reported phase, not standby"]


def test_the_result_names_the_phases_to_walk(run_module, cluster):
    """The playbook walks what the module returns instead of recomputing the phases itself."""
    started, _failed = run_module(ca_rotation, {"type": "host", "max_age": "0s"})
    assert started["walk"] == ["init", "update_clients", "update_servers", "standby"]
    resumed, _failed = run_module(ca_rotation, {"type": "user", "max_age": "0s"})  # found at init
    assert resumed["changed"] is False and resumed["walk"] == ["init", "update_clients", "update_servers", "standby"]
    rolled, _failed = run_module(ca_rotation, {"type": "host", "state": "rollback"})
    assert rolled["walk"] == ["rollback", "standby"]
    checked, _failed = run_module(ca_rotation, {"type": "host", "max_age": "0s"}, check=True)
    assert checked["walk"] == ["rollback", "standby"]


def test_an_auto_rotation_has_nothing_to_walk(run_module, cluster):
    result, _failed = run_module(ca_rotation, {"type": "host", "max_age": "0s", "grace_period": "30h"})
    assert result["walk"] == []
