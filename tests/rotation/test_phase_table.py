"""The rotation phase table (teleport_runtime/rotation_phases.py) is consistent with itself and
is what the auth service enforces and tctl offers."""

from __future__ import annotations

from itertools import pairwise

import pytest

from teleport_runtime.client.tctl import ROTATION_PHASES
from teleport_runtime.errors import BadParameter
from teleport_runtime.rotation_phases import (
    AGENT_STEPS,
    ALLOWED_NEXT,
    ROLLBACK_FROM,
    WALK,
    Held,
    Phase,
    next_in_walk,
    to_phase,
)


def test_the_walk_is_made_of_allowed_moves_from_standby_back_to_standby() -> None:
    assert WALK[0] in ALLOWED_NEXT[Phase.STANDBY] and WALK[-1] is Phase.STANDBY
    for here, there in pairwise(WALK):
        assert there in ALLOWED_NEXT[here]
        assert next_in_walk(here) is there
    assert next_in_walk(Phase.STANDBY) is None and next_in_walk("rollback") is None


def test_rollback_is_allowed_from_exactly_the_rollback_phases_and_ends_in_standby() -> None:
    assert {p for p, nexts in ALLOWED_NEXT.items() if Phase.ROLLBACK in nexts} == set(ROLLBACK_FROM)
    assert ALLOWED_NEXT[Phase.ROLLBACK] == (Phase.STANDBY,)


def test_every_phase_says_what_an_agent_does() -> None:
    assert set(AGENT_STEPS) == set(Phase) == set(ALLOWED_NEXT)
    # Only update_clients splits the two: a client identity from the new key, the old one served.
    split = [p for p, step in AGENT_STEPS.items() if step.serves is not step.client]
    assert split == [Phase.UPDATE_CLIENTS]
    assert AGENT_STEPS[Phase.UPDATE_CLIENTS].client is Held.SIGNED_NOW
    assert AGENT_STEPS[Phase.INIT] == AGENT_STEPS[Phase.INIT].__class__(Held.CURRENT, Held.CURRENT)


def test_tctl_offers_every_phase_a_move_can_target() -> None:
    targets = {p.value for nexts in ALLOWED_NEXT.values() for p in nexts}
    assert set(ROTATION_PHASES.choices) == targets == {p.value for p in Phase}


def test_an_unknown_phase_is_refused_naming_the_phases() -> None:
    with pytest.raises(BadParameter) as err:
        to_phase("update_all")
    assert "expected one of standby, init, update_clients, update_servers, rollback" in err.value.message
