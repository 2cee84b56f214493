"""OpenSSH nodes: servers running a stock ``sshd`` that the cluster knows as resources.

An admin registers one with ``tctl create`` of a resource in the reference's shape::

    kind: node
    sub_kind: openssh
    version: v2
    metadata: {name: web1, labels: {env: prod}}
    spec: {addr: 10.0.0.5:22, hostname: web1.example.com}

It is kept under ``/openssh_nodes/<name>`` without an expiry (it does not heartbeat), listed with
the joined nodes (``sub_kind`` tells them apart) and removed with ``tctl rm node/NAME`` or
``tctl nodes rm NAME``.

What the proxy may be made to dial: only admins create these, and the proxy only ever speaks SSH
to them, refusing the server unless it presents a host certificate from the cluster's host CA.
Even so an address is refused when it is not a plain ``host:port`` with an explicit port, when it
is unspecified (``0.0.0.0``, ``::``), multicast or link-local (``169.254.0.0/16`` holds cloud
metadata services, ``fe80::/10``), or when the auth API or a proxy listens there. Loopback is
allowed: an sshd on the proxy's own host is an admin's deliberate choice. A name already claimed
by a joined host is refused, so an OpenSSH node never shadows a node.
"""

from __future__ import annotations

import ipaddress
import json
import re
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from typing import Any

from teleport_runtime.backend import Backend, Item, prefix_end
from teleport_runtime.config import validate_labels
from teleport_runtime.errors import AlreadyExists, BadParameter, NotFound
from teleport_runtime.names import check_host_name, ip_literal
from teleport_runtime.netaddr import HostPort, format_host_port, is_wildcard, parse_host_port

PREFIX = "/openssh_nodes/"
SUB_KIND = "openssh"
_EXAMPLE = (
    "expected kind: node, sub_kind: openssh, version: v2, metadata: {name: web1, labels: {env: prod}}, "
    "spec: {addr: 10.0.0.5:22, hostname: web1.example.com}"
)
_PORT = re.compile(r".*:[0-9]{1,5}")


def check_node_name(name: object) -> str:
    """A resource name: a host name (letters, digits, ``-``, ``.``) or a UUID (canonical)."""
    if not isinstance(name, str) or not name:
        raise BadParameter(f"metadata.name is required: {_EXAMPLE}")
    try:
        return str(uuidlib.UUID(name)) if "-" in name and len(name) == 36 else check_host_name(
            name, "metadata.name")
    except ValueError:
        return check_host_name(name, "metadata.name")


def check_node_addr(text: object, forbidden: set[tuple[str, int]]) -> HostPort:
    """``spec.addr``: host:port the proxy may dial (see the module docstring)."""
    if not isinstance(text, str) or not _PORT.fullmatch(text):
        raise BadParameter(
            f"spec.addr {str(text)[:80]!r} is not host:port with a port: give the sshd's address, "
            "such as 10.0.0.5:22 or [2001:db8::5]:22"
        )
    addr = parse_host_port(text, 22, "spec.addr")
    ip = ip_literal(addr.host)
    if ip is None:
        check_host_name(addr.host, "spec.addr")
    else:
        parsed = ipaddress.ip_address(ip)
        if is_wildcard(ip) or parsed.is_multicast or parsed.is_link_local or parsed.is_unspecified:
            raise BadParameter(
                f"spec.addr {addr} is an unspecified, multicast or link-local address (such as a "
                "cloud metadata service), not an sshd: give the server's own address"
            )
    canonical = (ip or addr.host.lower().rstrip("."), addr.port)
    if canonical in forbidden:
        raise BadParameter(
            f"spec.addr {addr} is where the auth service or a proxy listens, not an sshd: give the "
            "OpenSSH server's own address and port"
        )
    if not 0 < addr.port <= 65535:
        raise BadParameter(f"spec.addr {addr}: port must be 1-65535")
    return addr


def parse_resource(doc: dict[str, Any], forbidden: set[tuple[str, int]]) -> dict[str, Any]:
    """The stored form of an OpenSSH node resource; BadParameter naming the field otherwise."""
    if doc.get("kind") != "node" or doc.get("sub_kind") != SUB_KIND:
        raise BadParameter(f"not an OpenSSH node resource: {_EXAMPLE}")
    if doc.get("version", "v2") != "v2":
        raise BadParameter(f"version {doc.get('version')!r} is not supported: use version: v2")
    unknown = set(doc) - {"kind", "sub_kind", "version", "metadata", "spec"}
    if unknown:
        raise BadParameter(f"unknown field(s) {', '.join(sorted(unknown))}: {_EXAMPLE}")
    meta, spec = doc.get("metadata"), doc.get("spec")
    if not isinstance(meta, dict) or not isinstance(spec, dict):
        raise BadParameter(f"metadata and spec must be mappings: {_EXAMPLE}")
    for where, given, allowed in (("metadata", meta, {"name", "labels", "description"}),
                                  ("spec", spec, {"addr", "hostname"})):
        extra = set(given) - allowed
        if extra:
            raise BadParameter(f"unknown {where} field(s) {', '.join(sorted(extra))}: {_EXAMPLE}")
    name = check_node_name(meta.get("name"))
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict):
        raise BadParameter("metadata.labels must be a mapping such as {env: prod}")
    labels = validate_labels(labels, "metadata.labels")
    addr = check_node_addr(spec.get("addr"), forbidden)
    hostname = spec.get("hostname") or name
    if not isinstance(hostname, str):
        raise BadParameter("spec.hostname must be a host name such as web1.example.com")
    check_host_name(hostname, "spec.hostname")
    return {"kind": "node", "sub_kind": SUB_KIND, "version": "v2",
            "metadata": {"name": name, "labels": labels},
            "spec": {"addr": format_host_port(addr.host, addr.port), "hostname": hostname}}


def as_node_record(resource: dict[str, Any]) -> dict[str, Any]:
    """The presence-record shape listings use (``tctl nodes ls``, ``tsh ls``, the proxy)."""
    labels = dict(resource["metadata"]["labels"])
    return {"id": resource["metadata"]["name"], "hostname": resource["spec"]["hostname"],
            "addr": resource["spec"]["addr"], "static_labels": labels, "command_labels": {},
            "labels": labels, "roles": ["Node"], "sub_kind": SUB_KIND}


class OpenSSHNodes:
    """The registered OpenSSH nodes in the backend."""

    def __init__(self, backend: Backend, claimed: Callable[[str], Awaitable[str | None]]) -> None:
        self.backend = backend
        self._claimed = claimed

    async def upsert(self, doc: dict[str, Any], *, force: bool,
                     forbidden: set[tuple[str, int]]) -> tuple[dict[str, Any], str]:
        """Store a resource; answers it and ``created``, ``updated`` or ``unchanged``."""
        resource = parse_resource(doc, forbidden)
        name = resource["metadata"]["name"]
        for claim in {name, resource["spec"]["hostname"]}:
            holder = await self._claimed(claim)
            if holder is not None:
                raise AlreadyExists(
                    f"{claim!r} is the name of joined host {holder}: give the OpenSSH node another "
                    "metadata.name / spec.hostname, or remove the host with `tctl nodes rm`"
                )
        old = await self.get(name)
        if old == resource:
            return resource, "unchanged"
        if old is not None and not force:
            raise AlreadyExists(f"node {name!r} exists: use `tctl create -f` to overwrite it")
        await self.backend.put(Item(key=PREFIX + name.lower(), value=json.dumps(resource).encode()))
        return resource, "updated" if old is not None else "created"

    async def get(self, name: str) -> dict[str, Any] | None:
        try:
            item = await self.backend.get(PREFIX + name.lower())
        except NotFound:
            return None
        value: dict[str, Any] = json.loads(item.value)
        return value

    async def find(self, target: str) -> dict[str, Any] | None:
        """The resource named ``target`` (its name or hostname), if any."""
        wanted = target.lower()
        for resource in await self.list():
            if wanted in (resource["metadata"]["name"].lower(), resource["spec"]["hostname"].lower()):
                return resource
        return None

    async def list(self) -> list[dict[str, Any]]:
        items = await self.backend.get_range(PREFIX, prefix_end(PREFIX))
        return sorted((json.loads(i.value) for i in items), key=lambda r: r["metadata"]["name"])

    async def delete(self, name: str) -> None:
        resource = await self.find(name)
        if resource is None:
            raise NotFound(f"no OpenSSH node named {name!r}: see `tctl nodes ls`")
        await self.backend.delete(PREFIX + resource["metadata"]["name"].lower())
