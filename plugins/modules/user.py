#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: teleport-access maintainers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: user
short_description: Make a cluster user present with its roles and logins, or absent
version_added: 0.1.0
description:
  - Manages a user of the cluster through C(tctl users) on the auth host.
  - A new user gets no password. The module returns the sign-up token that C(tctl users add)
    prints; the person completes the sign-up with C(tsh signup --proxy=PROXY --token=TOKEN)
    (a password and a second factor) before C(tsh login) works.
extends_documentation_fragment:
  - teleport_access.cluster.tctl
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  idempotent:
    support: full
options:
  name:
    description: The user's name.
    type: str
    required: true
  state:
    description: Whether the user exists.
    type: str
    choices: [present, absent]
    default: present
  roles:
    description:
      - The cluster roles the user holds (exactly these). Required with O(state=present).
    type: list
    elements: str
  logins:
    description: OS logins the user may use on nodes (the C(logins) trait; exactly these).
    type: list
    elements: str
    default: []
seealso:
  - module: teleport_access.cluster.role
author:
  - teleport-access maintainers (@teleport-access)
"""

EXAMPLES = r"""
- name: Alice may log in as alice or ubuntu where the access role allows
  teleport_access.cluster.user:
    name: alice
    roles: [access]
    logins: [alice, ubuntu]
  become: true
  delegate_to: "{{ groups['teleport_auth'][0] }}"
  register: alice

- name: Bob has left
  teleport_access.cluster.user:
    name: bob
    state: absent
  become: true
  delegate_to: "{{ groups['teleport_auth'][0] }}"
"""

RETURN = r"""
name:
  description: The user's name.
  returned: always
  type: str
roles:
  description: The user's roles.
  returned: state is present
  type: list
  elements: str
logins:
  description: The user's OS logins.
  returned: state is present
  type: list
  elements: str
invite:
  description: The sign-up invite for a new user, as C(tctl users add --format=json) prints it
    (C(user), C(token), C(expires)). Treat the token as a secret.
  returned: when a user was created
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.teleport_access.cluster.plugins.module_utils.tctl import tctl_argument_spec
from ansible_collections.teleport_access.cluster.plugins.module_utils.users import UserManager


def main():
    module = AnsibleModule(
        argument_spec=tctl_argument_spec(
            name=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            roles=dict(type="list", elements="str"),
            logins=dict(type="list", elements="str", default=[]),
        ),
        required_if=[("state", "present", ["roles"])],
        supports_check_mode=True,
    )
    UserManager(module).execute()


if __name__ == "__main__":
    main()
