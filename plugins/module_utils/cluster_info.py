# -*- coding: utf-8 -*-
# Copyright: teleport-access maintainers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Read-only cluster facts: ``tctl status`` and ``tctl nodes ls``."""

from __future__ import annotations

from ansible_collections.teleport_access.cluster.plugins.module_utils.tctl import TctlModule


def rotation_by_type(cas):
    """``{"host": {...rotation...}, "user": {...}}`` from the ``cas`` list of ``tctl status``."""
    return dict((ca.get("type"), ca.get("rotation") or {}) for ca in cas or [])


class ClusterInfo(TctlModule):
    """Cluster name, version, CA pins, rotation state per CA and (optionally) the agents online:
    nodes and proxies, each with the rotation phase it has applied per CA."""

    def run(self):
        status = self.tctl.run(["status"])
        cas = status.get("cas") or []
        result = dict(
            changed=False,
            cluster_name=status.get("cluster"),
            version=status.get("version"),
            ca_pins=status.get("ca_pins") or [],
            cas=cas,
            rotation=rotation_by_type(cas),
        )
        if self.module.params["nodes"]:
            result["nodes"] = self.tctl.run(["nodes", "ls"])
            result["proxies"] = self.tctl.run(["get", "proxies"])
        return result
