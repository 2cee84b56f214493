#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: teleport-access maintainers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: ca_rotation
short_description: Rotate a cluster CA when it is due, move it to a phase, or roll it back
version_added: 0.1.0
description:
  - Drives the rotation of the cluster's host or user CA through C(tctl auth rotate) on the auth
    host, from a desired state rather than a command.
  - A rotation walks C(standby) -> C(init) -> C(update_clients) -> C(update_servers) ->
    C(standby); from the three middle phases it can go to C(rollback) and then C(standby).
    Agents (nodes, proxies) follow each phase by themselves; wait until they have, for example
    with M(teleport_access.cluster.cluster_info) and the
    P(teleport_access.cluster.rotation_lagging#filter) filter, before the next step.
    C(playbooks/rotate_ca.yml) does the whole walk.
  - Give one of O(max_age), O(phase), or O(state=rollback).
extends_documentation_fragment:
  - teleport_access.cluster.tctl
attributes:
  check_mode:
    support: full
    details:
      - Reports the phase the CA would move to. A new host CA pin is made at C(init), so
        RV(ca_pins) shows the current pins in check mode.
  diff_mode:
    support: full
  idempotent:
    support: full
options:
  type:
    description: The CA to rotate.
    type: str
    choices: [host, user]
    required: true
  max_age:
    description:
      - Start a rotation (move to C(init)) when the CA is in C(standby) and its key is at least
        this old, counted from the CA's last completed rotation (or its creation), such as V(90d),
        V(12h) or V(1h30m). V(0s) starts one on every run.
      - A rotation already in progress is left as it is.
    type: str
  grace_period:
    description:
      - With O(max_age), start the rotation in auto mode with this grace period, such as V(30h).
        The auth service then moves the phases by itself, C(update_clients) after a third of it,
        C(update_servers) after two thirds and C(standby) at its end.
      - Without it the rotation is manual, and each phase is set with O(phase).
    type: str
  phase:
    description:
      - The phase the CA should be in. Nothing changes when it is in that phase already;
        otherwise the phase must be an allowed next one (the phases go one step at a time).
      - A step taken during an auto rotation makes it manual.
    type: str
    choices: [init, update_clients, update_servers, standby, rollback]
  state:
    description:
      - V(present) applies O(max_age) or O(phase).
      - V(rollback) rolls back a rotation in C(init), C(update_clients) or C(update_servers).
        The old key signs again and both stay trusted until the rollback is completed with
        O(phase=standby). In C(standby) or C(rollback) there is nothing to do.
    type: str
    choices: [present, rollback]
    default: present
notes:
  - A host CA rotation changes the CA pin(s) that joining hosts check; read the new ones from
    RV(ca_pins) (both during the rotation, the new one after it).
seealso:
  - module: teleport_access.cluster.cluster_info
author:
  - teleport-access maintainers (@teleport-access)
"""

EXAMPLES = r"""
- name: Start a host CA rotation when the CA is older than 90 days
  teleport_access.cluster.ca_rotation:
    type: host
    max_age: 90d
  become: true
  delegate_to: "{{ groups['teleport_auth'][0] }}"
  register: rotation

- name: Next phase, once every agent reports init
  teleport_access.cluster.ca_rotation:
    type: host
    phase: update_clients
  become: true
  delegate_to: "{{ groups['teleport_auth'][0] }}"
  when: rotation.phase == 'init'

- name: Give up and return to the old key
  teleport_access.cluster.ca_rotation:
    type: host
    state: rollback
  become: true
  delegate_to: "{{ groups['teleport_auth'][0] }}"
"""

RETURN = r"""
type:
  description: The CA type.
  returned: always
  type: str
  sample: host
phase:
  description: The CA's phase after the task (in check mode, the phase it would move to).
  returned: always
  type: str
  sample: init
previous_phase:
  description: The CA's phase before the task.
  returned: always
  type: str
  sample: standby
due:
  description: Whether the CA was due for a rotation under O(max_age).
  returned: when O(max_age) is given and O(state=present)
  type: bool
age_seconds:
  description: Seconds since the CA's key last changed (its last completed rotation or creation).
  returned: always
  type: float
last_changed:
  description: When the CA's key last changed (ISO 8601).
  returned: always
  type: str
rotation:
  description: The CA's rotation state as C(tctl status) reports it (state, phase, mode,
    current_id, started, grace_period, schedule, phase_changed, last_rotated); predicted in check mode.
  returned: always
  type: dict
  sample: {"state": "in_progress", "phase": "init", "mode": "manual"}
walk:
  description:
    - The phases still to walk for a manual rotation, the current one first (it may still need
      its wait for the agents), such as V([init, update_clients, update_servers, standby]) or
      V([rollback, standby]); empty in standby and for an auto rotation (the auth service moves it).
  returned: always
  type: list
  elements: str
  sample: [init, update_clients, update_servers, standby]
  version_added: 0.2.0
ca_pins:
  description: The host CA pin(s) joining hosts must check; both the old and the new one during
    a host CA rotation.
  returned: always
  type: list
  elements: str
  sample: ["sha256:1c2f..."]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.teleport_access.cluster.plugins.module_utils.ca_rotation import CARotation
from ansible_collections.teleport_access.cluster.plugins.module_utils.tctl import tctl_argument_spec


def main():
    module = AnsibleModule(
        argument_spec=tctl_argument_spec(
            type=dict(type="str", choices=["host", "user"], required=True),
            max_age=dict(type="str"),
            grace_period=dict(type="str"),
            phase=dict(type="str", choices=["init", "update_clients", "update_servers", "standby", "rollback"]),
            state=dict(type="str", choices=["present", "rollback"], default="present"),
        ),
        mutually_exclusive=[("max_age", "phase")],
        required_if=[("state", "present", ("max_age", "phase"), True)],
        required_by={"grace_period": "max_age"},
        supports_check_mode=True,
    )
    if module.params["state"] == "rollback" and (module.params["max_age"] or module.params["phase"]):
        module.fail_json(msg="state=rollback takes neither max_age nor phase: it rolls back the rotation in progress")
    CARotation(module).execute()


if __name__ == "__main__":
    main()
