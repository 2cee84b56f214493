#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: teleport-access maintainers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: join_token
short_description: Make a join token present or absent in the cluster
version_added: 0.1.0
description:
  - Creates, replaces or revokes a dynamic join token through C(tctl tokens) on the auth host.
  - A token admits hosts that present it to join as one of its O(roles), until it expires.
    New nodes and proxies join with a token and the cluster's CA pin(s).
  - The token is identified by its O(value), or for a revoke by its O(name) (a digest of the
    value that the module returns as RV(name)). Without O(value) a new token with a generated
    value is created on each run.
extends_documentation_fragment:
  - teleport_access.cluster.tctl
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  idempotent:
    support: partial
    details:
      - Idempotent when O(value) is given. Without O(value) every run creates a new token.
      - An existing token with the same roles is kept as is; its expiry is not extended.
options:
  state:
    description:
      - V(present) makes a token with O(value) admit exactly O(roles); a token with other roles
        is replaced (which restarts its TTL).
      - V(absent) revokes the token O(value), or the token O(name).
    type: str
    choices: [present, absent]
    default: present
  name:
    description:
      - The token's name, as RV(name) returned it, to revoke it with O(state=absent) without
        knowing its value. The name is not secret; the value is.
      - Mutually exclusive with O(value); only with O(state=absent).
    type: str
    version_added: 0.2.0
  value:
    description:
      - The token's value (1-256 characters, no C(/)). With O(state=absent), O(value) or O(name)
        is required.
      - When omitted with O(state=present), the auth service generates one (32 hex digits).
      - The module hands the value to C(tctl) on standard input (C(--value-file=-)), never on its
        command line, which every local user of the auth host can read.
    type: str
  roles:
    description:
      - Roles the token admits.
    type: list
    elements: str
    choices: [node, proxy, auth]
    default: [node]
  ttl:
    description:
      - How long a new token is valid, such as V(5m), V(1h) or V(1h30m).
    type: str
    default: 30m
seealso:
  - module: teleport_access.cluster.cluster_info
author:
  - teleport-access maintainers (@teleport-access)
"""

EXAMPLES = r"""
- name: A short-lived token for the hosts joining in this run
  teleport_access.cluster.join_token:
    value: "{{ lookup('ansible.builtin.password', '/dev/null', chars=['hexdigits'], length=32) }}"
    roles: [node, proxy]
    ttl: 15m
  become: true
  delegate_to: "{{ groups['teleport_auth'][0] }}"
  register: join

# join.token comes back masked (the value is no_log); the name is not secret.
- name: Revoke it once every host has joined
  teleport_access.cluster.join_token:
    name: "{{ join.name }}"
    state: absent
  become: true
  delegate_to: "{{ groups['teleport_auth'][0] }}"
"""

RETURN = r"""
token:
  description:
    - The token's value. When O(value) was given Ansible hides it in the output, as it does every
      value of a C(no_log) option; use your own copy.
    - A generated value (no O(value)) is shown like any other result, here and in RV(join_command);
      set C(no_log=true) on such a task, or give O(value).
  returned: state is present
  type: str
  sample: 4f8b7c1e9a0d2b3c5e6f7a8b9c0d1e2f
name:
  description:
    - The token's name, C(jt-) and a digest of its value. It is not secret; pass it to O(name) to
      revoke the token (RV(token) is masked when O(value) was given).
  returned: always
  type: str
  sample: jt-5d41402abc4b2a76b9719d91
  version_added: 0.2.0
roles:
  description: Roles the token admits.
  returned: state is present
  type: list
  elements: str
  sample: [node, proxy]
expires:
  description: When the token expires (ISO 8601, UTC); null for static tokens and in check mode.
  returned: state is present
  type: str
  sample: "2025-05-20T12:30:00+00:00"
static:
  description: Whether the token comes from C(auth_service.tokens) in the auth config.
  returned: state is present
  type: bool
ca_pins:
  description: The cluster's CA pin(s) that joining hosts check the auth server against.
  returned: state is present
  type: list
  elements: str
  sample: ["sha256:1c2f..."]
auth_server:
  description: Auth API address as tctl reports it, for the join command.
  returned: when a token was created
  type: str
join_command:
  description: A C(teleport start) command line that joins a host with this token.
  returned: when a token was created
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.teleport_access.cluster.plugins.module_utils.join_token import JoinTokenManager
from ansible_collections.teleport_access.cluster.plugins.module_utils.tctl import tctl_argument_spec


def main():
    module = AnsibleModule(
        argument_spec=tctl_argument_spec(
            state=dict(type="str", choices=["present", "absent"], default="present"),
            value=dict(type="str", no_log=True),
            name=dict(type="str"),
            roles=dict(type="list", elements="str", choices=["node", "proxy", "auth"], default=["node"]),
            ttl=dict(type="str", default="30m"),
        ),
        required_if=[("state", "absent", ["value", "name"], True)],
        mutually_exclusive=[("value", "name")],
        supports_check_mode=True,
    )
    JoinTokenManager(module).execute()


if __name__ == "__main__":
    main()
