# -*- coding: utf-8 -*-
# Copyright: teleport-access maintainers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Cluster users as declarative state (``tctl users ls|add|update|rm``)."""

from __future__ import annotations

from ansible_collections.teleport_access.cluster.plugins.module_utils.tctl import TctlError, TctlModule


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

    A new user has no password: tctl returns a sign-up invite (token and expiry) that the person
    completes with a password and a second factor. The module returns ``invite`` with the expiry;
    the token, which makes its holder that user, only with ``return_token`` from a ``no_log`` task.
    """

    def run(self):
        params = self.module.params
        name = params["name"]
        if params["state"] == "present" and params.get("return_token") and not self.module.no_log:
            raise TctlError(
                "return_token: true returns %s's sign-up token, a secret that would show in the output and "
                "logs: set no_log: true on this task (the registered result still holds the token)" % name
            )
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
                created = self.tctl.run(["users", "add", name, *flags])
                result["invite"] = dict(user=created.get("user", name), expires=created.get("expires"))
                if params.get("return_token"):
                    result["invite"]["token"] = created.get("token")
        elif user_view(existing) != wanted:
            result["changed"] = True
            if not self.check_mode:
                self.tctl.run(
                    ["users", "update", name] + ["--set-" + f.lstrip("-") for f in flags],
                    json_output=False,
                )
        return self.diff(result, user_view(existing), wanted)
