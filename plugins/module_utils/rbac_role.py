# -*- coding: utf-8 -*-
# Copyright: teleport-access maintainers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""RBAC roles as declarative state (``tctl get roles``, ``tctl create --force``, ``tctl rm``)."""

from __future__ import annotations

import json
import os
import tempfile

from ansible_collections.teleport_access.cluster.plugins.module_utils.durations import duration_seconds
from ansible_collections.teleport_access.cluster.plugins.module_utils.tctl import TctlModule

ROLE_VERSION = "v1"


def prune(value):
    """Drop empty values (None, [], {}) recursively, so that an unset key and an empty one
    compare equal: the cluster may write either."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            item = prune(item)
            if item not in (None, [], {}):
                out[key] = item
        return out
    if isinstance(value, list):
        return [prune(item) for item in value]
    return value


def comparable_duration(value):
    """``"1h30m"`` -> 5400.0 (module_utils/durations.py); anything unparsable is returned as it is
    (the cluster will judge)."""
    seconds = duration_seconds(value)
    return value if seconds is None else seconds


def normalise_spec(spec):
    """The spec as the cluster stores it, for comparing: a label selector's values are lists
    (the cluster writes a single value as a scalar) and durations are seconds ("90m" == "1h30m")."""
    spec = prune(spec or {})
    for side in ("allow", "deny"):
        conditions = spec.get(side)
        if isinstance(conditions, dict) and isinstance(conditions.get("node_labels"), dict):
            conditions["node_labels"] = dict(
                (key, sorted(str(v) for v in (values if isinstance(values, list) else [values])))
                for key, values in conditions["node_labels"].items()
            )
    options = spec.get("options")
    if isinstance(options, dict) and "max_session_ttl" in options:
        options["max_session_ttl"] = comparable_duration(options["max_session_ttl"])
    if isinstance(options, dict) and options.get("create_host_user_mode") is False:
        options["create_host_user_mode"] = "off"  # YAML reads a bare off as false; the cluster stores "off"
    return spec


def role_resource(name, description, spec):
    """The role resource tctl creates from a task's options."""
    metadata = dict(name=name)
    if description:
        metadata["description"] = description
    return dict(kind="role", version=ROLE_VERSION, metadata=metadata, spec=spec or {})


def role_view(resource):
    """The declared part of a role (name, description, spec), normalised for comparing."""
    if resource is None:
        return {}
    metadata = resource.get("metadata") or {}
    return prune(dict(
        name=metadata.get("name"),
        description=metadata.get("description"),
        spec=normalise_spec(resource.get("spec")),
    ))


class RoleManager(TctlModule):
    """Make a role present with exactly this spec, or absent."""

    def run(self):
        params = self.module.params
        name = params["name"]
        existing = self.find(
            ["get", "roles"], lambda resource: (resource.get("metadata") or {}).get("name") == name
        )
        if params["state"] == "absent":
            return self.remove(existing, ["rm", "role/%s" % name], role_view, name=name)

        wanted = role_resource(name, params["description"], params["spec"])
        changed = role_view(existing) != role_view(wanted)
        result = dict(changed=changed, name=name, state="present", role=wanted)
        if changed and not self.check_mode:
            self.create(wanted)
        return self.diff(result, role_view(existing), role_view(wanted))

    def create(self, resource):
        # JSON is YAML: tctl create reads either. The file lives in the module's private tmpdir.
        fd, path = tempfile.mkstemp(prefix="role-", suffix=".json", dir=self.module.tmpdir)
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(resource, handle)
            self.tctl.run(["create", "--force", path], json_output=False)
        finally:
            os.unlink(path)
