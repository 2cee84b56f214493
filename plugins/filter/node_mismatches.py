# -*- coding: utf-8 -*-
# Copyright: teleport-access maintainers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
name: node_mismatches
short_description: What differs between the nodes online and the nodes an inventory expects
version_added: 0.1.0
description:
  - Compares the nodes C(tctl nodes ls) reports (for example
    RV(teleport_access.cluster.cluster_info#module:nodes)) with a mapping of expected node names
    to their static labels, and returns one message per difference; an empty list means every
    expected node is online with exactly its labels.
  - Label values compare as strings, as the cluster stores them.
positional: expected
options:
  _input:
    description: The nodes online, each with C(hostname) and C(static_labels) (or C(labels)).
    type: list
    elements: dict
    required: true
  expected:
    description: Expected node name -> static labels.
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Wait until node1 is online with env=dev
  teleport_access.cluster.cluster_info:
  register: cluster
  until: "cluster.nodes | teleport_access.cluster.node_mismatches({'node1': {'env': 'dev'}}) | length == 0"
  retries: 30
  delay: 2
"""

RETURN = r"""
_value:
  description: One message per missing node or label difference.
  type: list
  elements: str
"""


def _labels(node):
    labels = node.get("static_labels")
    if labels is None:
        labels = node.get("labels") or {}
    return dict((str(k), str(v)) for k, v in labels.items())


def node_mismatches(nodes, expected):
    """Messages for expected nodes that are offline or whose static labels differ."""
    online = dict((node.get("hostname"), node) for node in nodes or [])
    problems = []
    for name in sorted(expected or {}):
        want = dict((str(k), str(v)) for k, v in (expected[name] or {}).items())
        node = online.get(name)
        if node is None:
            problems.append("%s is not online in the cluster" % name)
            continue
        have = _labels(node)
        if have != want:
            problems.append("%s has labels %s, the inventory says %s" % (name, have, want))
    return problems


class FilterModule:
    def filters(self):
        return {"node_mismatches": node_mismatches}
