"""Host names: the one rule for the names hosts are known by (nodenames, the names and addresses
in host certificates, the names in heartbeats), wherever they enter (config, join, heartbeat).

A host name is a DNS name: labels of letters, digits, ``-`` and ``_`` (hostnames in the wild
have underscores), 1-63 characters each, separated by dots, at most 253 characters, not starting
or ending with ``-`` or ``.``. No wildcards, no spaces, no control characters: names end up in
certificate principals, backend keys and terminal output.
"""

from __future__ import annotations

import ipaddress
import re

from teleport_runtime.errors import BadParameter

MAX_NAME = 253
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
#: Names no host may be signed for: the name every agent verifies the auth API by lives under it.
RESERVED_DOMAIN = "cluster.local"


def is_host_name(name: str) -> bool:
    """True when ``name`` is a plain DNS name by the rule above."""
    return len(name) <= MAX_NAME and _NAME.fullmatch(name) is not None


def check_host_name(name: str, where: str) -> str:
    """``name`` if it is a valid host name; BadParameter naming ``where`` and the rule otherwise."""
    if not isinstance(name, str) or not is_host_name(name):
        shown = repr(name)[:80]
        raise BadParameter(
            f"{where}: invalid host name {shown}: use a DNS name (letters, digits, - and _ in "
            f"dot-separated labels of at most 63 characters, {MAX_NAME} in all; no spaces, "
            "wildcards or control characters)"
        )
    return name


def ip_literal(text: str) -> str | None:
    """The canonical form of ``text`` when it is an IP address (``[v6]`` accepted), else None."""
    value = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def is_loopback(text: str) -> bool:
    ip = ip_literal(text)
    return text.lower() == "localhost" if ip is None else ipaddress.ip_address(ip).is_loopback


def is_reserved(name: str, cluster: str) -> bool:
    """Names never signed for a node or proxy: the cluster name itself and anything under
    ``cluster.local`` (``teleport.cluster.local`` is what agents verify the auth API by)."""
    lowered = name.lower().rstrip(".")
    return (
        lowered == cluster.lower()
        or lowered == RESERVED_DOMAIN
        or lowered.endswith("." + RESERVED_DOMAIN)
    )
