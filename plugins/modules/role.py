#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: teleport-access maintainers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: role
short_description: Make an access role present with a given spec, or absent
version_added: 0.1.0
description:
  - Manages a role (allow/deny rules, logins, node labels, options) through C(tctl get roles),
    C(tctl create --force) and C(tctl rm role/NAME) on the auth host.
  - The role ends up with exactly O(spec); keys left out are removed.
extends_documentation_fragment:
  - teleport_access.cluster.tctl
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  idempotent:
    support: full
    details:
      - Empty values (null, empty lists and mappings) compare equal to absent keys, a single
        label value equals a one-element list, and durations compare by length (V(90m) = V(1h30m)).
options:
  name:
    description: The role's name.
    type: str
    required: true
  state:
    description: Whether the role exists.
    type: str
    choices: [present, absent]
    default: present
  description:
    description: A human-readable description stored in the role's metadata.
    type: str
  spec:
    description:
      - The role's spec, with C(allow) and C(deny) (each with C(logins), C(node_labels),
        C(rules)) and C(options) (C(max_session_ttl), C(forward_agent), C(port_forwarding)).
      - "Host users: C(options.create_host_user_mode) (V(keep), V(insecure-drop) or V(off)) lets
        nodes matching C(allow.node_labels) create a login that does not exist at login, with the
        supplementary groups C(allow.host_groups) and the sudoers entries C(allow.host_sudoers)
        (each one line, as in the example below, no include directives; nodes check them with
        C(visudo)). V(insecure-drop) removes the account when its last session ends.
        Nodes never change accounts they did not create."
      - "BPF enhanced session recording: C(options.enhanced_recording), a list of V(command),
        V(network), V(disk) (a role without it records V(command) and V(network) on nodes with
        C(ssh_service.enhanced_recording.enabled))."
    type: dict
    default: {}
seealso:
  - module: teleport_access.cluster.user
author:
  - teleport-access maintainers (@teleport-access)
"""

EXAMPLES = r"""
- name: Developers may log in to staging nodes as their own user
  teleport_access.cluster.role:
    name: dev-staging
    description: Staging access for developers
    spec:
      allow:
        logins: ["{{ '{{internal.logins}}' }}"]
        node_labels:
          env: [staging]
      deny:
        logins: [root]
      options:
        max_session_ttl: 8h
  become: true
  delegate_to: "{{ groups['teleport_auth'][0] }}"

- name: On-call engineers get sudo on prod nodes, without any account there beforehand
  teleport_access.cluster.role:
    name: oncall-prod
    description: On-call sudo on env=prod nodes; accounts made at login and kept
    spec:
      allow:
        logins: ["{{ '{{internal.logins}}' }}"]
        node_labels:
          env: [prod]
        host_groups: [oncall]
        host_sudoers: ["ALL=(ALL) NOPASSWD: ALL"]
      options:
        create_host_user_mode: keep
        enhanced_recording: [command, network]
        max_session_ttl: 8h
  become: true
  delegate_to: "{{ groups['teleport_auth'][0] }}"
"""

RETURN = r"""
name:
  description: The role's name.
  returned: always
  type: str
role:
  description: The role resource as sent to the cluster.
  returned: state is present
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.teleport_access.cluster.plugins.module_utils.rbac_role import RoleManager
from ansible_collections.teleport_access.cluster.plugins.module_utils.tctl import tctl_argument_spec


def main():
    module = AnsibleModule(
        argument_spec=tctl_argument_spec(
            name=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            description=dict(type="str"),
            spec=dict(type="dict", default={}),
        ),
        supports_check_mode=True,
    )
    RoleManager(module).execute()


if __name__ == "__main__":
    main()
