#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: teleport-access maintainers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: cluster_info
short_description: Read the cluster's name, CA pins, CA rotation state and nodes
version_added: 0.1.0
description:
  - Reads C(tctl status) (and C(tctl nodes ls)) on the auth host. Changes nothing.
extends_documentation_fragment:
  - teleport_access.cluster.tctl
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    support: full
    details:
      - Changes nothing.
options:
  nodes:
    description:
      - Also list the nodes and proxies online in the cluster, with their labels and the
        rotation phase each has applied per CA.
    type: bool
    default: true
seealso:
  - module: teleport_access.cluster.join_token
author:
  - teleport-access maintainers (@teleport-access)
"""

EXAMPLES = r"""
- name: Read the CA pin for joining hosts
  teleport_access.cluster.cluster_info:
    nodes: false
  become: true
  delegate_to: "{{ groups['teleport_auth'][0] }}"
  register: cluster

- name: Show the host CA's rotation phase
  ansible.builtin.debug:
    msg: "{{ cluster.rotation.host.phase | default('standby') }}"
"""

RETURN = r"""
cluster_name:
  description: The cluster's name.
  returned: always
  type: str
  sample: example.com
version:
  description: The auth service's version.
  returned: always
  type: str
ca_pins:
  description: The host CA pin(s); during a host CA rotation both the old and the new one.
  returned: always
  type: list
  elements: str
  sample: ["sha256:1c2f..."]
cas:
  description: Each CA as C(tctl status) reports it (type, created, rotation).
  returned: always
  type: list
  elements: dict
rotation:
  description: Rotation state per CA type (C(host), C(user)) with state, phase, mode, current_id
    (the rotation's id), started, grace_period, phase_changed and last_rotated.
  returned: always
  type: dict
  sample: {"host": {"state": "standby", "phase": "standby"}, "user": {"state": "standby"}}
nodes:
  description: Nodes online (C(tctl nodes ls)) with id, hostname, addr, labels, static_labels,
    command_labels, roles, rotation (per CA type, the C(phase) and rotation C(id) the node has
    applied), expires and version.
  returned: when O(nodes=true)
  type: list
  elements: dict
proxies:
  description: Proxies online (C(tctl get proxies)) with id, hostname, addr, rotation, expires and version.
  returned: when O(nodes=true)
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.teleport_access.cluster.plugins.module_utils.cluster_info import ClusterInfo
from ansible_collections.teleport_access.cluster.plugins.module_utils.tctl import tctl_argument_spec


def main():
    module = AnsibleModule(
        argument_spec=tctl_argument_spec(nodes=dict(type="bool", default=True)),
        supports_check_mode=True,
    )
    ClusterInfo(module).execute()


if __name__ == "__main__":
    main()
