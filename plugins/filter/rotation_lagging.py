# -*- coding: utf-8 -*-
# Copyright: teleport-access maintainers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
name: rotation_lagging
short_description: The nodes and proxies that have not applied a CA's rotation phase yet
version_added: 0.1.0
description:
  - Reads what M(teleport_access.cluster.cluster_info) returns (the CAs' rotation state, the
    nodes and the proxies with the phase each reports for each CA) and returns one message per
    agent that is not at the CA's current phase (of the current rotation), and per expected agent
    that is not online. An empty list means every agent has applied the phase.
positional: ca_type
options:
  _input:
    description: A M(teleport_access.cluster.cluster_info) result (with C(nodes) and C(proxies)).
    type: dict
    required: true
  ca_type:
    description: The CA, V(host) or V(user).
    type: str
    required: true
  expected:
    description: Names of agents (nodenames) that must be online, such as the inventory's nodes
      and proxies.
    type: list
    elements: str
    default: []
  phases:
    description: Phases that count as in step; default, the CA's current phase.
    type: list
    elements: str
    default: []
"""

EXAMPLES = r"""
- name: Wait until every agent has applied the host CA's phase
  teleport_access.cluster.cluster_info:
  register: cluster
  until: "cluster | teleport_access.cluster.rotation_lagging('host', expected=['node1']) | length == 0"
  retries: 30
  delay: 2
"""

RETURN = r"""
_value:
  description: One message per lagging agent, such as C(node2 is at init, not update_clients).
  type: list
  elements: str
"""

from ansible.errors import AnsibleFilterError
from ansible_collections.teleport_access.cluster.plugins.module_utils.ca_rotation import lagging_agents
from ansible_collections.teleport_access.cluster.plugins.module_utils.tctl import TctlError


def rotation_lagging(info, ca_type, expected=None, phases=None):
    try:
        return lagging_agents(info or {}, ca_type, expected or [], phases or None)
    except TctlError as exc:
        raise AnsibleFilterError(exc.message) from None


class FilterModule:
    def filters(self):
        return {"rotation_lagging": rotation_lagging}
