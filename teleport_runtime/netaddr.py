"""Network addresses, one rule each: ``host:port`` parsing and formatting (IPv6 in brackets), the
wildcard (listen-everywhere) check, and which address a service advertises.

Every module that reads, prints or chooses an address calls these; nothing else splits on ``:``.
The Ansible collection keeps a copy of :func:`parse_host_port` in ``plugins/module_utils`` (it
runs without the runtime); ``tests/ansible/test_rules_match_runtime.py`` holds the two together.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from teleport_runtime.errors import BadParameter
from teleport_runtime.names import is_host_name

#: The IPv4 wildcard: the default listen host (every address of the machine).
EVERY_IPV4 = "0.0.0.0"  # noqa: S104 - a listen address, not a bind
_PORT = re.compile(r"[0-9]{1,5}")
_EXPECTED = "expected host:port, such as auth.example.com:3025 or [::1]:3025"


@dataclass(frozen=True)
class HostPort:
    """A ``host:port`` address (``host`` without brackets; empty means every address)."""

    host: str
    port: int

    def __str__(self) -> str:
        return format_host_port(self.host, self.port)

    def dialable(self) -> HostPort:
        """The address a local client dials: a wildcard listen address becomes loopback of its
        family."""
        if not is_wildcard(self.host):
            return self
        return HostPort("::1" if ":" in self.host else "127.0.0.1", self.port)


def format_host_port(host: str, port: int) -> str:
    """``host:port``, an IPv6 host in brackets (``[::1]:3022``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_ipv6(text: str) -> bool:
    """Whether ``text`` is an IPv6 address (without brackets)."""
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def unbracket(text: str) -> str:
    """``text`` without the brackets around an IPv6 literal (``[::1]`` -> ``::1``)."""
    return text[1:-1] if text.startswith("[") and text.endswith("]") else text


def is_wildcard(host: str) -> bool:
    """Whether a listen ``host`` means every address of the machine: empty, ``0.0.0.0``, ``::``
    (in any spelling, brackets allowed)."""
    value = unbracket(host.strip())
    if not value:
        return True
    try:
        return ipaddress.ip_address(value).is_unspecified
    except ValueError:
        return False


def split_host(text: str) -> str:
    """The host of ``host``, ``host:port``, ``[v6]:port``, ``[v6]`` or a bare IPv6 address, without
    checking it (the caller validates what it needs: an IP, a name)."""
    value = text.strip()
    if value.startswith("[") and "]" in value:
        return value[1 : value.index("]")]
    if value.count(":") == 1:
        return value.partition(":")[0]
    return value


_FIELD = re.compile(r"\[(?P<bracketed>[^\[\]]*)\]|(?P<plain>[^:\[\]]*)")


def split_fields(text: str) -> list[str] | None:
    """``:``-separated fields where a host may be an IPv6 address in brackets, brackets removed
    (OpenSSH's ``-L [BIND:]LPORT:HOST:RPORT``): ``[::1]:80:db:5432`` -> ``["::1", "80", "db",
    "5432"]``; None when the brackets do not close around a whole field or hold no IPv6 address."""
    fields: list[str] = []
    pos = 0
    while True:
        match = _FIELD.match(text, pos)
        assert match is not None  # the plain alternative matches the empty string
        bracketed = match.group("bracketed")
        if bracketed is not None and not is_ipv6(bracketed):
            return None
        fields.append(bracketed if bracketed is not None else match.group("plain"))
        pos = match.end()
        if pos == len(text):
            return fields
        if text[pos] != ":":
            return None
        pos += 1


def parse_host_port(text: str, default_port: int, key: str = "address") -> HostPort:
    """Parse ``host``, ``host:port``, ``[v6]:port``, a bare IPv6 address or ``:port`` (every
    address); ``default_port`` when the port is left out. Raises BadParameter naming ``key``, the
    value and the expected form."""
    value = str(text).strip(" \t")
    if not value:
        raise BadParameter(f"{key}: empty address, expected host:port")
    if value.startswith("["):
        host, closed, rest = value[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise BadParameter(f"{key}: invalid address {value!r}: {_EXPECTED}")
        port_text = rest[1:] if rest else str(default_port)
        if not is_ipv6(host):
            raise BadParameter(f"{key}: {host!r} in brackets is not an IPv6 address: {_EXPECTED}")
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    elif value.count(":") > 1:
        if not is_ipv6(value):
            raise BadParameter(f"{key}: invalid address {value!r}: {_EXPECTED}")
        host, port_text = value, str(default_port)
    else:
        host, port_text = value, str(default_port)
    if host and ":" not in host and not is_host_name(host):
        raise BadParameter(
            f"{key}: invalid host {host!r} in {value!r}: a host is an IP address or a DNS name "
            f"of letters, digits, '.', '-' and '_'; {_EXPECTED}"
        )
    if not _PORT.fullmatch(port_text):
        raise BadParameter(f"{key}: invalid port {port_text!r} in {value!r}: {_EXPECTED}")
    if int(port_text) > 65535:
        raise BadParameter(f"{key}: port {port_text} out of range 0-65535 in {value!r}: {_EXPECTED}")
    return HostPort(host, int(port_text))


def advertised(
    public: HostPort | None,
    listen: HostPort,
    *,
    bound_port: int | None = None,
    advertise_ip: str | None = None,
    fallbacks: Iterable[str | None] = (),
) -> HostPort:
    """The address a service tells others to dial, the one rule for the auth service, proxy and
    node, in this order:

    1. ``public`` (its ``public_addr``) when configured, as written;
    2. else ``advertise_ip`` (``teleport.advertise_ip`` or ``--listen-ip``), the operator's word for
       this host's address (behind NAT it is not the one it listens on);
    3. else the listen host when it is one address;
    4. else (a wildcard listener) the first of ``fallbacks`` that is set and not a wildcard: the
       host a client reached the service by, then an address of this machine;
    5. else the wildcard itself: whoever receives it substitutes the address it sees the service
       connect from (the auth service does so for heartbeats).

    The port is ``bound_port`` (what the listener got, for port 0) or the listen port.
    """
    if public is not None:
        return public
    port = bound_port or listen.port
    if advertise_ip:
        return HostPort(advertise_ip, port)
    if not is_wildcard(listen.host):
        return HostPort(listen.host, port)
    for host in fallbacks:
        if host and not is_wildcard(host):
            return HostPort(host, port)
    return HostPort(listen.host, port)


def local_address() -> str:
    """An address of this machine for others to dial: what its host name resolves to, else
    loopback (a single-host install)."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"
