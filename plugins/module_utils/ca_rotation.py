# -*- coding: utf-8 -*-
# Copyright: teleport-access maintainers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""CA rotation as declarative state (``tctl status``, ``tctl auth rotate``), and the check of
which agents have not yet applied a CA's rotation phase (``tctl nodes ls`` and the proxies).

The phases, as the auth service walks them::

    standby -> init -> update_clients -> update_servers -> standby
    init | update_clients | update_servers -> rollback -> standby
"""

from __future__ import annotations

from datetime import datetime, timezone

from ansible_collections.teleport_access.cluster.plugins.module_utils.durations import (
    EXPECTED,
    duration_seconds,
)
from ansible_collections.teleport_access.cluster.plugins.module_utils.tctl import (
    TctlError,
    TctlModule,
)

CA_TYPES = ("host", "user")
PHASES = ("standby", "init", "update_clients", "update_servers", "rollback")
#: The phases a CA may move to from each phase (as the auth service allows them).
ALLOWED_NEXT = {
    "standby": ("init",),
    "init": ("update_clients", "rollback"),
    "update_clients": ("update_servers", "rollback"),
    "update_servers": ("standby", "rollback"),
    "rollback": ("standby",),
}
#: The phases a rotation can be rolled back from.
ROLLBACK_FROM = ("init", "update_clients", "update_servers")
#: The phases a rotation walks through, in order, once started.
ROTATION_WALK = ("init", "update_clients", "update_servers", "standby")
# The table above is the runtime's (teleport_runtime/rotation_phases.py), held to it by
# tests/ansible/test_rules_match_runtime.py.


def parse_duration(value):
    """Seconds in ``90d``, ``12h``, ``1h30m``, ``0s`` (or a plain number of seconds): the runtime's
    grammar (module_utils/durations.py)."""
    seconds = duration_seconds(value)
    if seconds is None:
        raise TctlError(
            "max_age: %r is not a duration (%s); write it as 90d, 12h, 1h30m, or 0s to rotate on "
            "every run" % (value, EXPECTED)
        )
    return seconds


def parse_time(value):
    """An ISO 8601 time from tctl as an aware datetime, or None."""
    if not value:
        return None
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise TctlError("tctl status printed a bad time %r" % (value,)) from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def find_ca(status, ca_type):
    """The ``cas`` entry of ``tctl status`` for ``ca_type``."""
    for ca in status.get("cas") or []:
        if ca.get("type") == ca_type:
            return ca
    raise TctlError("tctl status reports no %s CA (it lists %s)" % (
        ca_type, ", ".join(str(c.get("type")) for c in status.get("cas") or []) or "none"))


def current_phase(ca):
    return (ca.get("rotation") or {}).get("phase") or "standby"


def last_changed(ca):
    """When the CA's key last changed: its last completed rotation, else its creation."""
    times = [t for t in (parse_time(ca.get("created")), parse_time((ca.get("rotation") or {}).get("last_rotated")))
             if t is not None]
    return max(times) if times else None


def remaining_walk(phase):
    """The phases still to go for a rotation in ``phase`` (the current one first, as it may
    still need its wait): ``init`` -> init, update_clients, update_servers, standby;
    ``rollback`` -> rollback, standby; ``standby`` -> nothing."""
    if phase == "rollback":
        return ["rollback", "standby"]
    if phase in ROLLBACK_FROM:
        return list(ROTATION_WALK[ROTATION_WALK.index(phase):])
    return []


def agent_phase(agent, ca_type):
    """``{"phase", "id"}`` an agent reports for ``ca_type`` (the phase it has applied)."""
    rotation = agent.get("rotation") or {}
    report = rotation.get(ca_type)
    return report if isinstance(report, dict) else {}


def lagging_agents(info, ca_type, expected=(), phases=None):
    """One message per agent (node or proxy) that has not applied the CA's phase.

    ``info`` is what cluster_info returns (``rotation``, ``nodes``, ``proxies``). An agent is in
    step when it reports one of ``phases`` (default: the CA's current phase) for ``ca_type`` and,
    when it reports the CA's current phase, the CA's rotation id. ``expected`` names agents (an
    inventory's nodes and proxies) that must be online: a missing one lags too.
    """
    if ca_type not in CA_TYPES:
        raise TctlError("rotation_lagging: unknown CA type %r; use host or user" % (ca_type,))
    ca = (info.get("rotation") or {}).get(ca_type) or {}
    want = ca.get("phase") or "standby"
    want_id = ca.get("current_id") or ca.get("id")
    accepted = list(phases) if phases else [want]
    agents = list(info.get("proxies") or []) + list(info.get("nodes") or [])
    online = set()
    problems = []
    for agent in sorted(agents, key=lambda a: (str(a.get("hostname")), str(a.get("id")))):
        name = agent.get("hostname") or agent.get("id")
        online.add(name)
        report = agent_phase(agent, ca_type)
        phase = report.get("phase")
        if phase not in accepted:
            problems.append("%s is at %s, not %s" % (name, phase or "no reported phase", " or ".join(accepted)))
        elif phase == want and want_id and report.get("id") != want_id:
            problems.append("%s is at %s of another rotation (%s, not %s)"
                            % (name, phase, report.get("id") or "none", want_id))
    for name in sorted(set(expected or []) - online):
        problems.append("%s is offline (not heartbeating)" % name)
    return problems


def _view(rotation):
    """What a diff shows of a CA's rotation."""
    return dict(
        phase=rotation.get("phase") or "standby",
        state=rotation.get("state") or "standby",
        mode=rotation.get("mode") or "",
    )


class CARotation(TctlModule):
    """Move one CA (``type``) toward its desired rotation state, one phase at a time.

    - ``max_age``: start a rotation (``init``) when the CA is in standby and its key is at least
      that old; a rotation in progress is left to finish.
    - ``phase``: move to that phase when it is the current one (nothing to do) or an allowed next
      one; anything further away is refused, naming the allowed phases.
    - ``state=rollback``: roll an in-progress rotation back; in standby or rollback, nothing to do.
    """

    def status(self):
        return self.tctl.run(["status"])

    def run(self):
        params = self.module.params
        ca_type = params["type"]
        status = self.status()
        ca = find_ca(status, ca_type)
        before = dict(ca.get("rotation") or {})
        phase = current_phase(ca)
        now = datetime.now(timezone.utc)
        changed_at = last_changed(ca)
        age = (now - changed_at).total_seconds() if changed_at else None
        result = dict(type=ca_type, previous_phase=phase, age_seconds=age,
                      last_changed=changed_at.isoformat() if changed_at else None)

        target, mode = self.decide(params, phase, age, result)
        if target is None:
            result.update(changed=False, phase=phase, rotation=before, ca_pins=status.get("ca_pins") or [])
            # What a playbook walks from here: an auto rotation is the auth service's to move.
            result["walk"] = [] if before.get("mode") == "auto" else remaining_walk(phase)
            return self.diff(result, _view(before), _view(before))

        if self.check_mode:
            after = dict(before, phase=target, state="standby" if target == "standby" else "in_progress",
                         mode="" if target == "standby" else (mode or "manual"))
            pins = status.get("ca_pins") or []
        else:
            args = ["auth", "rotate", "--type=%s" % ca_type]
            if mode == "auto":
                args.append("--grace-period=%s" % params["grace_period"])
            else:
                args += ["--manual", "--phase=%s" % target]
            self.tctl.run(args)
            status = self.status()
            after = dict(find_ca(status, ca_type).get("rotation") or {})
            pins = status.get("ca_pins") or []
        result.update(changed=True, phase=target, rotation=after, ca_pins=pins)
        result["walk"] = [] if after.get("mode") == "auto" else remaining_walk(target)
        return self.diff(result, _view(before), _view(after))

    def decide(self, params, phase, age, result):
        """(target phase or None, mode to start with or None)."""
        if params["state"] == "rollback":
            return ("rollback" if phase in ROLLBACK_FROM else None), None
        if params["phase"]:
            target = params["phase"]
            if target == phase:
                return None, None
            if target not in ALLOWED_NEXT[phase]:
                raise TctlError(
                    "cannot move the %s CA from %s to %s: allowed next: %s. The phases go one at a "
                    "time (playbooks/rotate_ca.yml walks them and waits for the agents at each)."
                    % (params["type"], phase, target, ", ".join(ALLOWED_NEXT[phase]))
                )
            return target, None
        max_age = parse_duration(params["max_age"])
        due = phase == "standby" and (age is None or age >= max_age)
        result["due"] = due
        if not due:
            return None, None
        return "init", ("auto" if params["grace_period"] else "manual")
