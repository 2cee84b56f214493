from __future__ import annotations

from ansible_collections.teleport_access.cluster.plugins.filter.node_mismatches import node_mismatches

NODES = [
    {"hostname": "node1", "static_labels": {"env": "dev", "n": "1"}, "labels": {"env": "dev", "n": "1", "arch": "x"}},
    {"hostname": "node2", "labels": {"env": "prod"}},
]


def test_all_online_with_labels():
    assert node_mismatches(NODES, {"node1": {"env": "dev", "n": 1}, "node2": {"env": "prod"}}) == []


def test_missing_node_and_label_difference_are_reported():
    problems = node_mismatches(NODES, {"node1": {"env": "prod"}, "node3": {}})
    assert problems[0].startswith("node1 has labels")
    assert problems[1] == "node3 is not online in the cluster"


def test_a_removed_label_is_a_difference():
    assert node_mismatches(NODES, {"node1": {"env": "dev"}}) != []
