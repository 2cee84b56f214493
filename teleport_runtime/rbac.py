"""Roles and role-based access control, in the reference's resource shape.

A role is a YAML/JSON resource::

    kind: role
    version: v1
    metadata: {name: access, description: "..."}
    spec:
      allow:
        logins: ["{{internal.logins}}", ubuntu]
        node_labels: {env: [prod, staging], "*": "*"}
        rules: [{resources: [session, event], verbs: [list, read]}]
      deny: {logins: [root]}             # same keys as allow
      options: {max_session_ttl: 30h, forward_agent: true, port_forwarding: true}

Semantics (one page, so the node, the auth service and tctl agree):

- **Labels.** A ``node_labels`` selector matches a node when *every* key matches, and a key
  matches when *any* of its values matches the node's value for that key. A value is ``*`` (any
  value; the node must have the key), a glob (``prod-*``, ``db-?``), or a regular expression
  written ``^...$``. The key ``*`` is allowed only with the value ``*`` and matches every node,
  even one without labels. An empty selector matches nothing.
- **Logins.** ``{{internal.NAME}}`` (and ``{{external.NAME}}``) expand to the user's trait
  ``NAME`` (a list of strings); ``{{internal.logins}}`` is the usual one. A trait the user
  lacks expands to nothing. Other logins are literal.
- **Node access** (:meth:`RoleSet.check_access_to_node`): deny rules are greedy and win — a
  role denies when its deny ``node_labels`` match the node *or* its deny ``logins`` contain the
  login. Otherwise access needs one role whose allow ``node_labels`` match the node *and* whose
  allow ``logins`` contain the login.
- **Rules** (:meth:`RoleSet.check_rule`): a rule matches when the resource and the verb are in
  its lists (``*`` matches anything). A matching deny rule wins; otherwise an allow rule must
  match.
- **Host users** (:meth:`RoleSet.host_user_policy`): only the roles whose allow ``node_labels``
  match the node count. ``create_host_user_mode`` ``off`` in any of them disables creation;
  otherwise ``keep`` wins over ``insecure-drop`` (the account outlives its sessions); no mode
  means no creation. ``allow.host_groups`` and ``allow.host_sudoers`` are the union over those
  roles. Group names are POSIX account names; a sudoers entry is one line without ``#include``.
- **Enhanced recording** (:meth:`RoleSet.enhanced_recording`): the union of the roles'
  ``options.enhanced_recording`` (``command``, ``network``, ``disk``); a role that does not set
  it counts as ``[command, network]`` (the reference's default).
- **Options.** ``max_session_ttl`` of a role set is the minimum over its roles (a role without
  one counts as 30h). ``forward_agent`` and ``port_forwarding`` are tri-state per role (true,
  false or unset): agent forwarding is allowed when some role sets it to true and no role sets it
  to false; port forwarding is allowed unless some role sets it to false (unset means allowed,
  as in the reference).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from typing import Any

import yaml

from teleport_runtime.durations import format_duration, parse_duration
from teleport_runtime.errors import AccessDenied, BadParameter

#: Session TTL cap when no role sets one (the reference's default ``max_session_ttl``).
DEFAULT_MAX_SESSION_TTL = timedelta(hours=30)
#: Verbs a rule may name.
VERBS = ("*", "list", "read", "create", "update", "delete")
#: Wildcard for label keys/values, rule resources and verbs.
WILDCARD = "*"

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")
_TEMPLATE_RE = re.compile(r"\{\{\s*(internal|external)\.([A-Za-z0-9_.-]+)\s*\}\}")
_CONDITION_KEYS = ("logins", "node_labels", "rules")
_ALLOW_ONLY_KEYS = ("host_groups", "host_sudoers")
_OPTION_KEYS = ("max_session_ttl", "forward_agent", "port_forwarding", "create_host_user_mode", "enhanced_recording")
#: ``options.create_host_user_mode`` values.
HOST_USER_MODES = ("off", "keep", "insecure-drop")
#: ``options.enhanced_recording`` event classes, and what a role that does not say gets.
ENHANCED_RECORDING_EVENTS = ("command", "network", "disk")
DEFAULT_ENHANCED_RECORDING = ("command", "network")
#: An OS account or group name a node may create (shadow's useradd rules, lower case, no
#: leading dash so it can never be taken for an option).
POSIX_NAME_RE = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
#: Bound on one sudoers entry.
MAX_SUDOERS_LINE = 1024


def check_posix_name(name: str, what: str) -> str:
    """``name`` when it is a valid account/group name, else BadParameter naming the rule."""
    if not isinstance(name, str) or not POSIX_NAME_RE.fullmatch(name):
        raise BadParameter(
            f"invalid {what} {name!r}: expected 1-32 of lower-case letters, digits, '_', '.', '-', "
            "starting with a letter or '_'"
        )
    return name


def check_sudoers_line(line: str, where: str) -> str:
    """One sudoers entry (the part after the user name): a single line, no include directive."""
    if not isinstance(line, str) or not line.strip():
        raise BadParameter(f"{where}: expected a non-empty sudoers entry such as 'ALL=(ALL) NOPASSWD: ALL'")
    if any(c in line for c in "\n\r\0") or len(line) > MAX_SUDOERS_LINE:
        raise BadParameter(
            f"{where}: invalid sudoers entry {line[:80]!r}: expected one line of at most "
            f"{MAX_SUDOERS_LINE} characters without line breaks"
        )
    if "include" in line.lower() and ("#" in line or "@" in line):
        raise BadParameter(
            f"{where}: invalid sudoers entry {line[:80]!r}: include directives (#include, @include) "
            "are not allowed; give the rule itself, such as 'ALL=(ALL) NOPASSWD: ALL'"
        )
    return line


# ---------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Rule:
    """Permission to apply ``verbs`` to ``resources`` (resource kinds such as ``token``)."""

    resources: tuple[str, ...]
    verbs: tuple[str, ...]

    def matches(self, resource: str, verb: str) -> bool:
        """True when this rule covers ``verb`` on ``resource``."""
        return (WILDCARD in self.resources or resource in self.resources) and (
            WILDCARD in self.verbs or verb in self.verbs
        )

    def to_dict(self) -> dict[str, list[str]]:
        """The resource form."""
        return {"resources": list(self.resources), "verbs": list(self.verbs)}


@dataclass(frozen=True)
class RoleConditions:
    """The ``allow`` or ``deny`` half of a role."""

    logins: tuple[str, ...] = ()
    node_labels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    rules: tuple[Rule, ...] = ()
    #: Allow only: supplementary groups and sudoers entries of host users the node creates.
    host_groups: tuple[str, ...] = ()
    host_sudoers: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The resource form; empty fields are left out."""
        out: dict[str, Any] = {}
        if self.logins:
            out["logins"] = list(self.logins)
        if self.node_labels:
            out["node_labels"] = {
                key: values[0] if len(values) == 1 else list(values) for key, values in self.node_labels.items()
            }
        if self.rules:
            out["rules"] = [rule.to_dict() for rule in self.rules]
        if self.host_groups:
            out["host_groups"] = list(self.host_groups)
        if self.host_sudoers:
            out["host_sudoers"] = list(self.host_sudoers)
        return out


@dataclass(frozen=True)
class RoleOptions:
    """Per-role options; None means the role does not say (see the module docstring)."""

    max_session_ttl: timedelta | None = None
    forward_agent: bool | None = None
    port_forwarding: bool | None = None
    create_host_user_mode: str | None = None
    enhanced_recording: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The resource form; unset options are left out."""
        out: dict[str, Any] = {}
        if self.max_session_ttl is not None:
            out["max_session_ttl"] = format_duration(self.max_session_ttl)
        if self.forward_agent is not None:
            out["forward_agent"] = self.forward_agent
        if self.port_forwarding is not None:
            out["port_forwarding"] = self.port_forwarding
        if self.create_host_user_mode is not None:
            out["create_host_user_mode"] = self.create_host_user_mode
        if self.enhanced_recording is not None:
            out["enhanced_recording"] = list(self.enhanced_recording)
        return out


@dataclass(frozen=True)
class Role:
    """A parsed, validated role (build one with :func:`parse_role`)."""

    name: str
    allow: RoleConditions = field(default_factory=RoleConditions)
    deny: RoleConditions = field(default_factory=RoleConditions)
    options: RoleOptions = field(default_factory=RoleOptions)
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The resource form; ``parse_role(role.to_dict()) == role``."""
        metadata: dict[str, Any] = {"name": self.name}
        if self.description:
            metadata["description"] = self.description
        return {
            "kind": "role",
            "version": "v1",
            "metadata": metadata,
            "spec": {
                "allow": self.allow.to_dict(),
                "deny": self.deny.to_dict(),
                "options": self.options.to_dict(),
            },
        }


@dataclass(frozen=True)
class HostUserPolicy:
    """How a node creates a host user for a login: ``mode`` (``keep`` or ``insecure-drop``),
    supplementary ``groups`` and ``sudoers`` entries."""

    mode: str
    groups: tuple[str, ...] = ()
    sudoers: tuple[str, ...] = ()


# ---------------------------------------------------------------------------- parsing


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadParameter(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _check_keys(data: dict[str, Any], allowed: Iterable[str], where: str) -> None:
    allowed = tuple(allowed)
    for key in data:
        if key not in allowed:
            raise BadParameter(f"{where}: unknown field {key!r}: expected one of {', '.join(allowed)}")


def _strings(value: Any, where: str, *, allow_scalar: bool = False) -> tuple[str, ...]:
    if value is None:
        return ()
    if allow_scalar and isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise BadParameter(f"{where}: expected a list of non-empty strings, got {value!r}")
    return tuple(value)


def _parse_login(login: str, where: str) -> str:
    if "{{" in login or "}}" in login:
        if not _TEMPLATE_RE.fullmatch(login):
            raise BadParameter(
                f"{where}: invalid trait template {login!r}: expected "
                "'{{internal.NAME}}' or '{{external.NAME}}', such as '{{internal.logins}}'"
            )
    elif any(c.isspace() for c in login):
        raise BadParameter(f"{where}: invalid login {login!r}: expected no whitespace")
    return login


def _parse_label_value(value: str, where: str) -> str:
    if value.startswith("^") and value.endswith("$"):
        try:
            re.compile(value)
        except re.error as exc:
            raise BadParameter(f"{where}: invalid regular expression {value!r}: {exc}") from exc
    return value


def _parse_node_labels(value: Any, where: str) -> dict[str, tuple[str, ...]]:
    labels: dict[str, tuple[str, ...]] = {}
    for key, values in _mapping(value, where).items():
        if not isinstance(key, str) or not key:
            raise BadParameter(f"{where}: label keys must be non-empty strings, got {key!r}")
        here = f"{where}.{key}"
        parsed = tuple(_parse_label_value(v, here) for v in _strings(values, here, allow_scalar=True))
        if not parsed:
            raise BadParameter(f"{here}: expected a value or a list of values, got none")
        if key == WILDCARD and parsed != (WILDCARD,):
            raise BadParameter(f"{here}: the wildcard key '*' only accepts the value '*', got {list(parsed)}")
        labels[key] = parsed
    return labels


def _parse_rules(value: Any, where: str) -> tuple[Rule, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BadParameter(f"{where}: expected a list of rules, got {type(value).__name__}")
    rules = []
    for index, item in enumerate(value):
        here = f"{where}[{index}]"
        item = _mapping(item, here)
        _check_keys(item, ("resources", "verbs"), here)
        resources = _strings(item.get("resources"), f"{here}.resources")
        verbs = _strings(item.get("verbs"), f"{here}.verbs")
        if not resources or not verbs:
            raise BadParameter(f"{here}: expected non-empty 'resources' and 'verbs' lists")
        for verb in verbs:
            if verb not in VERBS:
                raise BadParameter(f"{here}.verbs: unknown verb {verb!r}: expected one of {', '.join(VERBS)}")
        rules.append(Rule(resources=resources, verbs=verbs))
    return tuple(rules)


def _parse_conditions(value: Any, where: str, *, allow: bool = False) -> RoleConditions:
    data = _mapping(value, where)
    _check_keys(data, _CONDITION_KEYS + (_ALLOW_ONLY_KEYS if allow else ()), where)
    logins = tuple(_parse_login(login, f"{where}.logins") for login in _strings(data.get("logins"), f"{where}.logins"))
    groups = _strings(data.get("host_groups"), f"{where}.host_groups")
    for group in groups:
        try:
            check_posix_name(group, "group name")
        except BadParameter as exc:
            raise BadParameter(f"{where}.host_groups: {exc.message}") from None
    sudoers = _strings(data.get("host_sudoers"), f"{where}.host_sudoers")
    for index, line in enumerate(sudoers):
        check_sudoers_line(line, f"{where}.host_sudoers[{index}]")
    return RoleConditions(
        logins=logins,
        node_labels=_parse_node_labels(data.get("node_labels"), f"{where}.node_labels"),
        rules=_parse_rules(data.get("rules"), f"{where}.rules"),
        host_groups=groups,
        host_sudoers=sudoers,
    )


def _parse_bool(value: Any, where: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise BadParameter(f"{where}: expected true or false, got {value!r}")


def _parse_options(value: Any, where: str) -> RoleOptions:
    data = _mapping(value, where)
    _check_keys(data, _OPTION_KEYS, where)
    ttl = None
    if data.get("max_session_ttl") is not None:
        raw = data["max_session_ttl"]
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            raise BadParameter(f"{where}.max_session_ttl: expected a duration such as 30h, got {raw!r}")
        try:
            ttl = parse_duration(raw)
        except BadParameter as exc:
            raise BadParameter(f"{where}.max_session_ttl: {exc.message}") from None
        if ttl <= timedelta(0):
            raise BadParameter(f"{where}.max_session_ttl: expected a positive duration, got {raw!r}")
    mode = data.get("create_host_user_mode")
    if mode is False:
        mode = "off"  # YAML 1.1 reads a bare off as false
    if mode is not None and mode not in HOST_USER_MODES:
        raise BadParameter(
            f"{where}.create_host_user_mode: expected one of {', '.join(HOST_USER_MODES)}, got {mode!r}"
        )
    enhanced = None
    if data.get("enhanced_recording") is not None:
        enhanced = _strings(data["enhanced_recording"], f"{where}.enhanced_recording")
        unknown = [item for item in enhanced if item not in ENHANCED_RECORDING_EVENTS]
        if unknown:
            raise BadParameter(
                f"{where}.enhanced_recording: unknown event class(es) {', '.join(map(repr, unknown))}: "
                f"expected a list of {', '.join(ENHANCED_RECORDING_EVENTS)}"
            )
        enhanced = tuple(dict.fromkeys(enhanced))
    return RoleOptions(
        max_session_ttl=ttl,
        forward_agent=_parse_bool(data.get("forward_agent"), f"{where}.forward_agent"),
        port_forwarding=_parse_bool(data.get("port_forwarding"), f"{where}.port_forwarding"),
        create_host_user_mode=mode,
        enhanced_recording=enhanced,
    )


def parse_role(data: dict[str, Any]) -> Role:
    """Validate a role resource and return the :class:`Role`.

    Raises BadParameter naming the offending field (``role "dev": spec.allow.logins: ...``) and
    the expected value.
    """
    if not isinstance(data, dict):
        raise BadParameter(f"role: expected a mapping, got {type(data).__name__}")
    _check_keys(data, ("kind", "version", "metadata", "spec"), "role")
    if data.get("kind") != "role":
        raise BadParameter(f"role: kind: expected 'role', got {data.get('kind')!r}")
    if data.get("version") != "v1":
        raise BadParameter(f"role: version: expected 'v1', got {data.get('version')!r}")
    metadata = _mapping(data.get("metadata"), "role: metadata")
    _check_keys(metadata, ("name", "description"), "role: metadata")
    name = metadata.get("name")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise BadParameter(f"role: metadata.name: expected a name of letters, digits and . _ @ -, got {name!r}")
    description = metadata.get("description") or ""
    if not isinstance(description, str):
        raise BadParameter(f'role "{name}": metadata.description: expected a string')
    where = f'role "{name}": spec'
    spec = _mapping(data.get("spec"), where)
    _check_keys(spec, ("allow", "deny", "options"), where)
    return Role(
        name=name,
        allow=_parse_conditions(spec.get("allow"), f"{where}.allow", allow=True),
        deny=_parse_conditions(spec.get("deny"), f"{where}.deny"),
        options=_parse_options(spec.get("options"), f"{where}.options"),
        description=description,
    )


def roles_from_yaml(text: str) -> list[Role]:
    """Parse one or more role resources from YAML text (``---``-separated documents)."""
    try:
        docs = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        raise BadParameter(f"role: invalid YAML: {exc}") from exc
    return [parse_role(doc) for doc in docs]


# ---------------------------------------------------------------------------- presets

_ADMIN_RESOURCES = [
    "user",
    "role",
    "token",
    "node",
    "cert_authority",
    "cluster_auth_preference",
]
_ALL_VERBS = ["list", "create", "read", "update", "delete"]


def preset_roles() -> list[Role]:
    """The built-in roles: ``access``, ``editor`` and ``auditor``."""
    docs = [
        {
            "kind": "role",
            "version": "v1",
            "metadata": {"name": "access", "description": "Access to all nodes"},
            "spec": {
                "allow": {"logins": ["{{internal.logins}}"], "node_labels": {"*": "*"}},
                "options": {
                    "max_session_ttl": "30h",
                    "forward_agent": True,
                    "port_forwarding": True,
                },
            },
        },
        {
            "kind": "role",
            "version": "v1",
            "metadata": {"name": "editor", "description": "Edit cluster configuration"},
            "spec": {"allow": {"rules": [{"resources": _ADMIN_RESOURCES, "verbs": _ALL_VERBS}]}},
        },
        {
            "kind": "role",
            "version": "v1",
            "metadata": {"name": "auditor", "description": "Read session recordings and audit log"},
            "spec": {"allow": {"rules": [{"resources": ["session", "event"], "verbs": ["list", "read"]}]}},
        },
    ]
    return [parse_role(doc) for doc in docs]


# ---------------------------------------------------------------------------- matching


@lru_cache(maxsize=1024)
def _value_pattern(value: str) -> re.Pattern[str]:
    if value.startswith("^") and value.endswith("$"):
        return re.compile(value)
    return re.compile(fnmatch.translate(value), re.DOTALL)


def _value_matches(selector_value: str, value: str) -> bool:
    if selector_value == WILDCARD:
        return True
    return _value_pattern(selector_value).fullmatch(value) is not None


def match_labels(selector: Mapping[str, Iterable[str]], labels: Mapping[str, str]) -> bool:
    """True when ``selector`` (a role's ``node_labels``) matches a node's ``labels``."""
    if not selector:
        return False
    for key, values in selector.items():
        if key == WILDCARD:
            continue
        if key not in labels:
            return False
        if not any(_value_matches(v, labels[key]) for v in values):
            return False
    return True


def expand_logins(logins: Iterable[str], traits: Mapping[str, Any]) -> list[str]:
    """Expand ``{{internal.NAME}}`` templates in ``logins`` from ``traits``; dedupe, keep order."""
    out: list[str] = []
    for login in logins:
        match = _TEMPLATE_RE.fullmatch(login)
        if match:
            value = traits.get(match.group(2)) or []
            values = [value] if isinstance(value, str) else list(value)
            expanded = [v for v in values if isinstance(v, str) and v and v.split() == [v]]
        else:
            expanded = [login]
        for item in expanded:
            if item not in out:
                out.append(item)
    return out


def _describe(selector: Mapping[str, tuple[str, ...]]) -> str:
    return ", ".join(f"{k}={'|'.join(v)}" for k, v in selector.items()) or "(none)"


class RoleSet:
    """The roles of one user together with the user's traits, answering access questions."""

    def __init__(self, roles: Iterable[Role], traits: Mapping[str, Any] | None = None) -> None:
        self.roles = list(roles)
        self.traits = dict(traits or {})

    def __repr__(self) -> str:
        return f"RoleSet({[r.name for r in self.roles]})"

    def _logins(self, role: Role, which: str) -> list[str]:
        conditions = role.allow if which == "allow" else role.deny
        return expand_logins(conditions.logins, self.traits)

    def logins(self) -> list[str]:
        """OS logins the roles allow (templates expanded) minus those any role denies."""
        denied = {login for role in self.roles for login in self._logins(role, "deny")}
        out: list[str] = []
        for role in self.roles:
            for login in self._logins(role, "allow"):
                if login not in denied and login not in out:
                    out.append(login)
        return out

    def check_access_to_node(self, login: str, node_labels: Mapping[str, str]) -> None:
        """Raise AccessDenied (with the reason) unless ``login`` may be used on the node."""
        for role in self.roles:
            if match_labels(role.deny.node_labels, node_labels):
                raise AccessDenied(
                    f"access to node denied by role {role.name!r}: its deny node_labels "
                    f"({_describe(role.deny.node_labels)}) match the node"
                )
            if login in self._logins(role, "deny"):
                raise AccessDenied(f"login {login!r} is denied by role {role.name!r}")
        with_login = [r.name for r in self.roles if login in self._logins(r, "allow")]
        for role in self.roles:
            if role.name in with_login and match_labels(role.allow.node_labels, node_labels):
                return
        if not with_login:
            raise AccessDenied(
                f"login {login!r} is not allowed by any role ({', '.join(r.name for r in self.roles) or 'no roles'})"
            )
        raise AccessDenied(
            f"login {login!r} is allowed by role(s) {', '.join(with_login)} but their "
            f"node_labels do not match the node's labels "
            f"({', '.join(f'{k}={v}' for k, v in sorted(node_labels.items())) or 'none'})"
        )

    def host_user_policy(self, node_labels: Mapping[str, str]) -> HostUserPolicy | None:
        """Whether (and how) the node may create the login as a host user: None when no role
        matching the node asks for it, or one of them says ``off``."""
        roles = [r for r in self.roles if match_labels(r.allow.node_labels, node_labels)]
        modes = {r.options.create_host_user_mode for r in roles}
        if "off" in modes or not modes & {"keep", "insecure-drop"}:
            return None
        groups = list(dict.fromkeys(g for r in roles for g in r.allow.host_groups))
        sudoers = list(dict.fromkeys(line for r in roles for line in r.allow.host_sudoers))
        return HostUserPolicy(
            mode="keep" if "keep" in modes else "insecure-drop", groups=tuple(groups), sudoers=tuple(sudoers)
        )

    def enhanced_recording(self) -> frozenset[str]:
        """The enhanced recording event classes the roles ask for (union; see the docstring)."""
        out: set[str] = set()
        for role in self.roles:
            chosen = role.options.enhanced_recording
            out.update(DEFAULT_ENHANCED_RECORDING if chosen is None else chosen)
        return frozenset(out)

    def max_session_ttl(self) -> timedelta:
        """The shortest ``max_session_ttl`` of the roles (30h for a role that sets none)."""
        ttls = [r.options.max_session_ttl or DEFAULT_MAX_SESSION_TTL for r in self.roles]
        return min(ttls, default=DEFAULT_MAX_SESSION_TTL)

    def can_forward_agent(self) -> bool:
        """Some role sets ``forward_agent: true`` and none sets it to false."""
        values = [r.options.forward_agent for r in self.roles]
        return True in values and False not in values

    def can_port_forward(self) -> bool:
        """No role sets ``port_forwarding: false`` (unset means allowed; no roles: False)."""
        return bool(self.roles) and all(r.options.port_forwarding is not False for r in self.roles)

    def check_rule(self, resource: str, verb: str) -> None:
        """Raise AccessDenied unless the roles allow ``verb`` on ``resource`` (deny wins)."""
        for role in self.roles:
            if any(rule.matches(resource, verb) for rule in role.deny.rules):
                raise AccessDenied(
                    f"access denied to perform action {verb!r} on {resource!r}: denied by role {role.name!r}"
                )
        for role in self.roles:
            if any(rule.matches(resource, verb) for rule in role.allow.rules):
                return
        raise AccessDenied(f"access denied to perform action {verb!r} on {resource!r}")
