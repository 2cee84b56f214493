"""The CA rotation phase table: the phases, which moves between them are allowed (manual and
auto), where a rollback may start, which key signs, and what an agent does in each phase.

One table for everyone: the auth service's state machine (``auth/rotation.py``) stores and
enforces it, agents (``agent/rotation.py``) apply it, ``tctl`` shows it. It imports nothing of
the runtime but errors, so a client or agent loads it without loading ``auth/``. The Ansible
collection's copy (``plugins/module_utils/ca_rotation.py``) is held to it by
``tests/ansible/test_rules_match_runtime.py``.

::

    phase            signs with   trusted      agent serves             agent's client identity
    standby          current      {current}    one the signing key made one the signing key made
    init             old          {old, new}   the one it holds         the one it holds
    update_clients   new          {new, old}   the one it holds         one the new key made
    update_servers   new          {new, old}   one the new key made     one the new key made
    rollback         old          {old, new}   one the old key made     one the old key made

Agents trust exactly the key pairs the CA lists in every phase (both during a rotation), so an
agent that missed phases converges in one step to the phase it finds.

Moves::

    standby -> init -> update_clients -> update_servers -> standby      (manual, or auto on a timer)
    init | update_clients | update_servers -> rollback -> standby      (manual only)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from teleport_runtime.errors import BadParameter


class Phase(StrEnum):
    """A rotation phase (a str Enum: the values are what the rotation dict stores)."""

    STANDBY = "standby"
    INIT = "init"
    UPDATE_CLIENTS = "update_clients"
    UPDATE_SERVERS = "update_servers"
    ROLLBACK = "rollback"


class Mode(StrEnum):
    """How a rotation moves between phases."""

    MANUAL = "manual"
    AUTO = "auto"


#: The phases a CA may move to from each phase.
ALLOWED_NEXT: dict[Phase, tuple[Phase, ...]] = {
    Phase.STANDBY: (Phase.INIT,),
    Phase.INIT: (Phase.UPDATE_CLIENTS, Phase.ROLLBACK),
    Phase.UPDATE_CLIENTS: (Phase.UPDATE_SERVERS, Phase.ROLLBACK),
    Phase.UPDATE_SERVERS: (Phase.STANDBY, Phase.ROLLBACK),
    Phase.ROLLBACK: (Phase.STANDBY,),
}
#: A rotation's walk once started, in order; the auto schedule moves along it, one third of the
#: grace period per step.
WALK: tuple[Phase, ...] = (Phase.INIT, Phase.UPDATE_CLIENTS, Phase.UPDATE_SERVERS, Phase.STANDBY)
#: The phases a rotation can be rolled back from (a rollback is manual, and completes to standby).
ROLLBACK_FROM: tuple[Phase, ...] = (Phase.INIT, Phase.UPDATE_CLIENTS, Phase.UPDATE_SERVERS)
#: Phases in which the CA holds two key pairs (old and new).
ROTATING: tuple[Phase, ...] = (*ROLLBACK_FROM, Phase.ROLLBACK)
#: Phases in which the new key signs (the old one is still trusted).
NEW_KEY_SIGNS: tuple[Phase, ...] = (Phase.UPDATE_CLIENTS, Phase.UPDATE_SERVERS)


def next_in_walk(phase: Phase | str) -> Phase | None:
    """The phase after ``phase`` on a rotation's walk (None: standby, rollback)."""
    current = to_phase(phase)
    if current not in WALK[:-1]:
        return None
    return WALK[WALK.index(current) + 1]


class Held(StrEnum):
    """Which identity an agent uses in a phase of its host CA's rotation."""

    #: The identity it already has, whichever key signed it.
    CURRENT = "current"
    #: One the CA's signing key issued: the agent re-registers for it when it has none.
    SIGNED_NOW = "signed_now"


@dataclass(frozen=True)
class AgentStep:
    """What an agent does in one phase of its host CA's rotation."""

    #: The identity it serves (SSH host certificate, proxy web TLS) and keeps on disk.
    serves: Held
    #: The identity it calls the auth API with (a replacement is held while it differs).
    client: Held


AGENT_STEPS: dict[Phase, AgentStep] = {
    Phase.STANDBY: AgentStep(serves=Held.SIGNED_NOW, client=Held.SIGNED_NOW),
    Phase.INIT: AgentStep(serves=Held.CURRENT, client=Held.CURRENT),
    Phase.UPDATE_CLIENTS: AgentStep(serves=Held.CURRENT, client=Held.SIGNED_NOW),
    Phase.UPDATE_SERVERS: AgentStep(serves=Held.SIGNED_NOW, client=Held.SIGNED_NOW),
    Phase.ROLLBACK: AgentStep(serves=Held.SIGNED_NOW, client=Held.SIGNED_NOW),
}


def to_phase(value: Phase | str) -> Phase:
    """``value`` as a Phase; BadParameter naming the accepted phases otherwise."""
    try:
        return Phase(value)
    except ValueError:
        raise BadParameter(
            f"unknown rotation phase {value!r}: expected one of {', '.join(p.value for p in Phase)}"
        ) from None


def to_mode(value: Mode | str) -> Mode:
    """``value`` as a Mode; BadParameter otherwise."""
    try:
        return Mode(value)
    except ValueError:
        raise BadParameter(f"unknown rotation mode {value!r}: expected 'manual' or 'auto'") from None


def phase_names(phases: tuple[Phase, ...] | None = None) -> str:
    """``init, update_clients, ...``: for messages and CLI help."""
    return ", ".join(p.value for p in (Phase if phases is None else phases))
