# -*- coding: utf-8 -*-
# Copyright: teleport-access maintainers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Cluster users as declarative state (``tctl users ls|add|update|rm``)."""

from __future__ import annotations

from ansible_collections.teleport_access.cluster.plugins.module_utils.tctl import TctlModule


def user_logins(record):
    """A user's OS logins, whether tctl lists them flat or as the ``logins`` trait."""
    if record.get("logins") is not None:
        return list(record["logins"])
    return list((record.get("traits") or {}).get("logins") or [])


def user_view(record):
    """The part of a user a task declares, in a stable order for comparing and diffs."""
    if record is None:
        return {}
    return dict(
        name=record.get("name"),
        roles=sorted(record.get("roles") or []),
        logins=sorted(user_logins(record)),
    )


class UserManager(TctlModule):
    """Make a user present with exactly these roles and logins, or absent.

    A new user has no password: tctl returns a sign-up invite (URL and token) that the person
    completes with a password and a second factor; the module returns it as ``invite``.
    """

    def run(self):
        params = self.module.params
        name = params["name"]
        existing = self.find(["users", "ls"], lambda record: record.get("name") == name)
        if params["state"] == "absent":
            return self.remove(existing, ["users", "rm", name], user_view, name=name)

        wanted = dict(name=name, roles=sorted(params["roles"]), logins=sorted(params["logins"]))
        flags = ["--roles=%s" % ",".join(params["roles"]), "--logins=%s" % ",".join(params["logins"])]
        result = dict(changed=False, name=name, state="present",
                      roles=wanted["roles"], logins=wanted["logins"])
        if existing is None:
            result["changed"] = True
            if not self.check_mode:
                created = self.tctl.run(["users", "add", name] + flags)
                result["invite"] = dict(
                    (k, v) for k, v in created.items() if k not in ("name", "roles", "logins")
                )
        elif user_view(existing) != wanted:
            result["changed"] = True
            if not self.check_mode:
                self.tctl.run(
                    ["users", "update", name] + ["--set-" + f.lstrip("-") for f in flags],
                    json_output=False,
                )
        return self.diff(result, user_view(existing), wanted)
