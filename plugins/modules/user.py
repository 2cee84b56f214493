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
  - A new user gets no password. C(tctl users add) issues a sign-up token; the person completes
    the sign-up with C(tsh signup --proxy=PROXY --token=TOKEN) (a password and a second factor)
    before C(tsh login) works. Whoever holds the token until then can become that user.
  - The module returns the token only with O(return_token=true), and then only from a task with
    C(no_log=true), so it never shows in C(-v) output, callbacks or logs; the registered result
    still holds it for the next task (mail it, write it to a mode C(0600) file). Without it, the
    result says when the invite expires; run C(tctl users reset NAME) on the auth host to issue a
    new token when you need one.
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
    description:
      - OS logins the user may use on nodes (the C(logins) trait; exactly these).
      - A login need not exist on a node when one of the user's roles sets
        C(options.create_host_user_mode) for it (see M(teleport_access.cluster.role)); the node
        creates the account at the first login.
    type: list
    elements: str
    default: []
  return_token:
    description:
      - Return a new user's sign-up token in RV(invite.token). It is a secret, so the task must set
        C(no_log=true), or the module fails before it changes anything.
    type: bool
    default: false
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
    return_token: true
  become: true
  delegate_to: "{{ groups['teleport_auth'][0] }}"
  no_log: true
  register: alice

- name: Alice's sign-up command, for her eyes only
  ansible.builtin.copy:
    content: "tsh signup --proxy=proxy.example.com:3080 --token={{ alice.invite.token }}\n"
    dest: /root/alice-signup.txt
    mode: "0600"
  become: true
  delegate_to: "{{ groups['teleport_auth'][0] }}"
  no_log: true
  when: alice.invite.token is defined

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
  description: The sign-up invite of a new user.
  returned: when a user was created
  type: dict
  contains:
    user:
      description: The user's name.
      type: str
    expires:
      description: When the sign-up token expires (ISO 8601, UTC).
      type: str
    token:
      description:
        - The sign-up token, a secret. Only with O(return_token=true) (which needs C(no_log=true)).
      type: str
      returned: when O(return_token=true)
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
            return_token=dict(type="bool", default=False),
        ),
        required_if=[("state", "present", ["roles"])],
        supports_check_mode=True,
    )
    UserManager(module).execute()


if __name__ == "__main__":
    main()
