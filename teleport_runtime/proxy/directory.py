"""The proxy's view of the cluster's nodes, and how a name a client typed becomes a node.

Only registered nodes are reachable through the proxy. A client may name a node by

- its nodename (``node1``) or host UUID,
- either of those followed by ``.<cluster>`` (``node1.example.com``: what OpenSSH sends with the
  ``Host *.<cluster>`` block of ``tsh config``),
- the host of its registered address (an IP or a DNS name, as in its heartbeat), or a DNS name
  that resolves to that IP.

The proxy always dials the node's *registered* address (host:port from its heartbeat), whatever
port the client named. The node list is cached and refreshed in the background on a short
interval, and on a miss (at most once a second, shared by all the lookups that missed), so a
connection costs no auth round trip in the common case.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from teleport_runtime.config import HostPort, parse_host_port
from teleport_runtime.errors import BadParameter, NotFound, TeleportError
from teleport_runtime.names import is_host_name
from teleport_runtime.netaddr import unbracket

log = logging.getLogger("teleport.proxy.directory")

#: How often the background task refreshes the node list.
REFRESH_INTERVAL = 5.0
#: At most one refresh per this interval is triggered by lookups that miss.
MISS_REFRESH_INTERVAL = 1.0
#: Bound on the DNS lookup of a name that matches no node by name.
DNS_TIMEOUT = 3.0
NODE_SSH_PORT = 3022


@dataclass(frozen=True)
class NodeRecord:
    """A registered node as the proxy routes to it."""

    id: str
    hostname: str
    addr: HostPort
    labels: dict[str, str] = field(default_factory=dict)
    last_heartbeat: str = ""
    #: ``openssh``: a registered sshd the proxy reaches by terminating SSH (proxy/recording_proxy.py).
    sub_kind: str = "teleport"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeRecord:
        addr = parse_host_port(str(data.get("addr") or ""), NODE_SSH_PORT, "node addr")
        return cls(
            id=str(data["id"]),
            hostname=str(data.get("hostname") or data["id"]),
            addr=addr,
            labels={str(k): str(v) for k, v in (data.get("labels") or {}).items()},
            last_heartbeat=str(data.get("last_heartbeat") or ""),
            sub_kind=str(data.get("sub_kind") or "teleport"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``/webapi/nodes`` form; ``sub_kind`` only for an OpenSSH node (absent: teleport)."""
        out: dict[str, Any] = {
            "id": self.id,
            "hostname": self.hostname,
            "addr": str(self.addr),
            "labels": dict(self.labels),
        }
        if self.sub_kind != "teleport":
            out["sub_kind"] = self.sub_kind
        return out


def _normalize_host(text: str) -> str:
    """Lower case, without IPv6 brackets or a trailing dot; IPs in canonical form."""
    host = unbracket(text.strip().lower().rstrip("."))
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def check_target(target: str) -> str:
    """``target`` if it can name a node (a node name, UUID, DNS name or IP, IPv6 possibly in
    brackets); BadParameter naming it otherwise, so junk never reaches the node list or DNS."""
    printable = isinstance(target, str) and not any(ord(c) <= 0x20 or ord(c) == 0x7F for c in target)
    host = _normalize_host(target) if printable else ""
    if not host or not (_is_ip(host) or is_host_name(host)):
        raise BadParameter(
            f"invalid node name {target!r}: expected a node name, UUID, DNS name or IP address "
            "(see `tsh ls`)"
        )
    return target


def match_nodes(nodes: list[NodeRecord], target: str, cluster: str) -> list[NodeRecord]:
    """The nodes ``target`` names (see the module docstring); DNS is not consulted here."""
    wanted = _normalize_host(target)
    if not wanted:
        return []
    names = {wanted}
    suffix = "." + cluster.lower()
    if cluster and wanted.endswith(suffix) and len(wanted) > len(suffix):
        names.add(wanted[: -len(suffix)])
    by_name = [n for n in nodes if n.id.lower() in names or n.hostname.lower() in names]
    if by_name:
        return by_name
    return [n for n in nodes if _normalize_host(n.addr.host) == wanted]


def pick(matches: list[NodeRecord], target: str) -> NodeRecord:
    """One node out of the matches; several at one address (a re-joined host whose old record
    has not expired yet) are one node, the most recent wins; otherwise the name is ambiguous."""
    if len({(m.addr.host, m.addr.port) for m in matches}) == 1:
        return max(matches, key=lambda m: m.last_heartbeat)
    listed = ", ".join(f"{m.hostname} ({m.id} at {m.addr})" for m in matches)
    raise BadParameter(
        f"{target!r} is ambiguous: it names several nodes: {listed}; connect by node UUID"
    )


async def _resolve_dns(name: str) -> set[str]:
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(name, None, type=socket.SOCK_STREAM), DNS_TIMEOUT
        )
    except (OSError, TimeoutError, UnicodeError):
        return set()
    return {_normalize_host(str(info[4][0])) for info in infos}


class NodeDirectory:
    """A cached, periodically refreshed list of the cluster's nodes."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[list[dict[str, Any]]]],
        cluster: str,
        *,
        refresh_interval: float = REFRESH_INTERVAL,
        miss_refresh_interval: float = MISS_REFRESH_INTERVAL,
    ) -> None:
        self._fetch = fetch
        self.cluster = cluster
        self.refresh_interval = refresh_interval
        self.miss_refresh_interval = miss_refresh_interval
        self.nodes: list[NodeRecord] = []
        self.loaded = False
        self.refreshes = 0
        self._last_refresh = float("-inf")
        self._inflight: asyncio.Task[None] | None = None
        self._miss_task: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load once (best effort) and keep refreshing in the background."""
        with contextlib.suppress(TeleportError):
            await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="node-directory")

    async def stop(self) -> None:
        for task in (self._task, self._inflight, self._miss_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._task = self._inflight = self._miss_task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval)
            try:
                await self.refresh()
            except TeleportError as exc:
                log.warning("cannot refresh the node list (%s); using the cached one", exc.message)

    async def refresh(self) -> None:
        """Fetch the node list; concurrent callers share one request."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.get_running_loop().create_task(self._load())
        await asyncio.shield(self._inflight)

    async def _load(self) -> None:
        self._last_refresh = time.monotonic()
        raw = await self._fetch()
        nodes = []
        for item in raw or []:
            try:
                nodes.append(NodeRecord.from_dict(item))
            except (KeyError, BadParameter) as exc:
                log.warning("ignoring a node record with a bad address: %s", exc)
        self.nodes = nodes
        self.loaded = True
        self.refreshes += 1

    async def _refresh_after_miss(self) -> None:
        """One refresh for all the lookups that missed meanwhile, at most one per
        ``miss_refresh_interval`` (a node that joined a moment ago is found; a flood of unknown
        names costs the auth service one request per interval)."""
        if self._miss_task is None or self._miss_task.done():
            self._miss_task = asyncio.get_running_loop().create_task(self._delayed_refresh())
        await asyncio.shield(self._miss_task)

    async def _delayed_refresh(self) -> None:
        wait = self._last_refresh + self.miss_refresh_interval - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        await self.refresh()

    async def resolve(self, target: str) -> NodeRecord:
        """The node ``target`` names; BadParameter if it cannot name a host at all (checked
        before any lookup), NotFound (naming the cluster and `tsh ls`) otherwise."""
        check_target(target)
        matches = match_nodes(self.nodes, target, self.cluster)
        if not matches:
            try:
                await self._refresh_after_miss()
            except TeleportError as exc:
                log.warning("cannot refresh the node list (%s); using the cached one", exc.message)
            matches = match_nodes(self.nodes, target, self.cluster)
        if not matches:
            name = _normalize_host(target)
            if name and not _is_ip(name):
                ips = await _resolve_dns(name)
                matches = [n for n in self.nodes if _normalize_host(n.addr.host) in ips]
        if not matches:
            raise NotFound(
                f"node {target} is not registered in cluster {self.cluster}; "
                "see `tsh ls` for the nodes you can reach"
            )
        return pick(matches, target)
