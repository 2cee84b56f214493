# -*- coding: utf-8 -*-
# Copyright: teleport-access maintainers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Join tokens as declarative state (``tctl tokens ls|add|rm``)."""

from __future__ import annotations

import hashlib

from ansible_collections.teleport_access.cluster.plugins.module_utils.tctl import (
    TctlError,
    TctlModule,
)

#: Roles a join token can admit, as tctl writes them.
TOKEN_ROLES = ("node", "proxy", "auth")


def normalise_roles(roles):
    """Lower case, no duplicates, order kept: ``["Node", "proxy", "node"]`` -> node, proxy."""
    out = []
    for role in roles or []:
        name = str(role).strip().lower()
        if name and name not in out:
            out.append(name)
    return out


def mask(value):
    """A token as it may appear in a diff or a message: enough to recognise, not to use."""
    if not value:
        return value
    return value[:4] + "****" if len(value) > 8 else "****"


def token_name(value):
    """A token's name: a digest of its value, safe to show and to pass on (Ansible masks every
    string equal to a ``no_log`` value, so the value itself cannot come back from a task)."""
    if not value:
        return value
    return "jt-" + hashlib.sha256(value.encode("utf-8")).hexdigest()[:24]


def public_view(token):
    """What a diff shows of a token record."""
    if token is None:
        return {}
    return dict(
        token=mask(token.get("token")),
        roles=sorted(token.get("roles") or []),
        expires=token.get("expires"),
        static=bool(token.get("static")),
    )


class JoinTokenManager(TctlModule):
    """Make a join token present (with these roles) or absent.

    A token is identified by its value. With ``state=present`` and no ``value`` a new token is
    generated on every run (so the task always reports changed); give a ``value`` for a task that
    is idempotent. An existing token with the same roles is left as it is (its expiry is not
    extended); one with other roles is replaced, which restarts its TTL.
    """

    def ca_pins(self):
        return self.tctl.run(["status"]).get("ca_pins", [])

    def run(self):
        params = self.module.params
        state = params["state"]
        value = params["value"]
        roles = normalise_roles(params["roles"])
        unknown = [r for r in roles if r not in TOKEN_ROLES]
        if unknown:
            raise TctlError(
                "roles: unknown role(s) %s; a join token admits %s"
                % (", ".join(unknown), ", ".join(TOKEN_ROLES))
            )
        name = params.get("name")
        if name and state != "absent":
            raise TctlError("name: a token is revoked by name (state=absent); to create one, give value or nothing")
        if name and not value:
            # Revoke by name: the value is looked up on the auth server.
            existing = self.find(["tokens", "ls"], lambda token: token_name(token.get("token")) == name)
            value = existing["token"] if existing else None
        else:
            existing = self.find(["tokens", "ls"], lambda token: token.get("token") == value) if value else None
        secrets = [value] if value else []

        if state == "absent":
            result = self.absent(existing, value, secrets)
            result["name"] = name or token_name(value)
            return result
        if not roles:
            raise TctlError("roles: a join token needs at least one role, such as [node]")
        return self.present(existing, value, roles, secrets)

    def absent(self, existing, value, secrets):
        if existing is not None and existing.get("static"):
            raise TctlError(
                "token %s is a static token from auth_service.tokens in the auth server's "
                "config; remove it there" % mask(value)
            )
        # The value goes on stdin, never on tctl's argv.
        return self.remove(existing, ["tokens", "rm", "--value-file=-"], public_view, secrets=secrets, stdin=value)

    def present(self, existing, value, roles, secrets):
        if existing is not None and sorted(existing.get("roles") or []) == sorted(roles):
            result = dict(
                changed=False,
                state="present",
                token=existing["token"],
                name=token_name(existing["token"]),
                roles=existing.get("roles"),
                expires=existing.get("expires"),
                static=bool(existing.get("static")),
                ca_pins=self.ca_pins(),
            )
            return self.diff(result, public_view(existing), public_view(existing))
        if existing is not None and existing.get("static"):
            raise TctlError(
                "token %s is a static token from auth_service.tokens with roles %s; change its "
                "roles in the auth server's config"
                % (mask(value), ",".join(existing.get("roles") or []))
            )
        if self.check_mode:
            planned = dict(token=value, roles=roles, expires=None, static=False)
            result = dict(changed=True, state="present", name=token_name(value), ca_pins=self.ca_pins(), **planned)
            return self.diff(result, public_view(existing), public_view(planned))
        args = ["tokens", "add", "--type=%s" % ",".join(roles), "--ttl=%s" % self.module.params["ttl"]]
        if value:
            # On stdin, not as --value: an argv is readable by every local user (ps).
            args.append("--value-file=-")
        created = self.tctl.run(args, secrets=secrets, stdin=value or None)
        result = dict(
            changed=True,
            state="present",
            token=created.get("token"),
            name=token_name(created.get("token")),
            roles=created.get("roles", roles),
            expires=created.get("expires"),
            static=False,
            ca_pins=created.get("ca_pins", []),
            auth_server=created.get("auth_server"),
            join_command=created.get("join_command"),
        )
        return self.diff(result, public_view(existing), public_view(created))
