"""Presence: the heartbeats nodes and proxies send, kept in the backend with an expiry.

A record lives ``presence_ttl`` (10 min by default) after the last heartbeat; a host that stops
reporting drops out of ``tctl nodes ls`` when its record expires.

Heartbeats are written in groups: the ones that arrive within ``FLUSH_WINDOW`` of each other are
stored in one backend transaction (one disk flush for all of them), and each is answered only
after that transaction committed. With thousands of nodes the flush, not the request, would
otherwise bound the heartbeats per second.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from teleport_runtime.backend import Backend, EventType, Item, Watcher, prefix_end
from teleport_runtime.config import validate_labels
from teleport_runtime.errors import AccessDenied, BadParameter, NotFound
from teleport_runtime.names import check_host_name, ip_literal
from teleport_runtime.netaddr import HostPort, is_wildcard, parse_host_port

_KINDS = {"Node": "/nodes/", "Proxy": "/proxies/"}
#: Where heartbeats are stored (nodes, proxies).
PRESENCE_PREFIXES = tuple(_KINDS.values())
#: How long a heartbeat waits for others to share its write (seconds).
FLUSH_WINDOW = 0.005


def heartbeat_interval(presence_ttl: timedelta) -> float:
    """How often agents report: a tenth of the presence TTL (1 min for 10 min), at least 1 s."""
    return max(1.0, min(60.0, presence_ttl.total_seconds() / 10))


def _rotation_report(value: Any) -> dict[str, dict[str, str]]:
    """The CA rotation phases a host says it has applied: ``{"host": {"phase", "id"}, "user":
    {...}}`` (standby with no id for what it does not report)."""
    given = value if isinstance(value, dict) else {}
    out: dict[str, dict[str, str]] = {}
    for ca_type in ("host", "user"):
        reported = given.get(ca_type)
        entry = reported if isinstance(reported, dict) else {}
        out[ca_type] = {"phase": str(entry.get("phase") or "standby"), "id": str(entry.get("id") or "")}
    return out


def _canonical(host: str) -> str:
    """A host for comparison: IPs in canonical form, names in lower case."""
    return ip_literal(host) or host.lower().rstrip(".")


def _listen_pairs(record: dict[str, Any]) -> set[tuple[str, int]]:
    out = set()
    for key in ("addr", "ssh_addr", "web_addr"):
        try:
            addr = parse_host_port(str(record.get(key) or ""), 3023, key)
        except BadParameter:
            continue
        out.add((_canonical(addr.host), addr.port))
    return out


class Presence:
    """Node and proxy records keyed by host UUID."""

    def __init__(self, backend: Backend, ttl: timedelta) -> None:
        self.backend = backend
        self.ttl = ttl
        #: Cluster-wide settings every heartbeat answer carries (``session_recording``).
        self.cluster_settings: dict[str, Any] = {}
        self._pending: list[tuple[Item, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        #: Proxy UUID -> the ``(host, port)`` pairs it listens at (None: not loaded yet).
        self._proxy_addrs: dict[str, set[tuple[str, int]]] | None = None
        #: Follows the proxies' records, also those written through other auth servers.
        self._proxy_watch: Watcher | None = None

    async def heartbeat(
        self, *, role: str, host_uuid: str, report: dict[str, Any], remote_ip: str, nodename: str,
        cert_names: list[str], forbidden: set[tuple[str, int]] | None = None,
    ) -> dict[str, Any]:
        """Store a host's report. Who it is comes from its certificate, never the body: the
        UUID and ``nodename`` are the certificate's (a ``hostname`` in the body must equal it),
        and each address must be justified by the certificate (``cert_names``: its SANs) or be
        the connection's source address. A node may not register where the auth API or a proxy
        listens (the proxy would relay to it). AccessDenied otherwise."""
        prefix = _KINDS.get(role)
        if prefix is None:
            raise BadParameter(f"role {role} does not heartbeat")
        hostname = str(report.get("hostname") or nodename)
        if hostname != nodename:
            check_host_name(hostname, "heartbeat hostname")
            raise AccessDenied(
                f"heartbeat hostname {hostname!r} is not this host's name: its certificate is for "
                f"{nodename!r}; set teleport.nodename back to {nodename!r}, or remove the host with "
                f"`tctl nodes rm {nodename}` and join it again under the new name"
            )
        justified = {_canonical(n) for n in cert_names} | {_canonical(remote_ip)}
        # A tunnel node has no address: the proxies reach it through its tunnel (it connects
        # through a proxy, so the source address is the proxy's, never the node's).
        tunnel = role == "Node" and report.get("tunnel") is True
        addr = self._address(str(report.get("addr") or ""), remote_ip, justified, "addr") if not tunnel else None
        if addr is not None and role == "Node" and (
                (_canonical(addr.host), addr.port) in await self._forbidden(forbidden or set())):
            raise AccessDenied(
                f"heartbeat addr {addr} is where the auth service or a proxy listens, not a node: "
                "set ssh_service.public_addr (or listen_addr) to this node's own SSH address"
            )
        extra = {}
        for key in ("web_addr", "ssh_addr"):  # proxies also report where clients reach them
            value = str(report.get(key) or "")
            extra[key] = str(self._address(value, remote_ip, justified, key)) if value and role == "Proxy" else ""
        static = validate_labels(dict(report.get("labels") or {}), "heartbeat labels")
        commands = validate_labels(dict(report.get("cmd_labels") or {}), "heartbeat command labels")
        now = datetime.now(UTC)
        expires = now + self.ttl
        record = {
            "id": host_uuid,
            "hostname": nodename,
            "addr": str(addr) if addr is not None else "",
            "tunnel": tunnel,
            "static_labels": static,
            "command_labels": commands,
            "roles": [role],
            "rotation": _rotation_report(report.get("rotation")),
            "version": str(report.get("version") or "")[:64],
            # proxies also report where clients reach them (tctl prints it in sign-up commands)
            "web_addr": extra["web_addr"],
            "ssh_addr": extra["ssh_addr"],
            "last_heartbeat": now.isoformat(),
            "expires": expires.isoformat(),
        }
        if role == "Proxy" and self._proxy_addrs is not None:
            self._proxy_addrs[host_uuid] = _listen_pairs(record)
        await self._store(Item(key=prefix + host_uuid, value=json.dumps(record).encode(), expires=expires))
        return {"heartbeat_interval": heartbeat_interval(self.ttl), **self.cluster_settings}

    @staticmethod
    def _address(text: str, remote_ip: str, justified: set[str], key: str) -> HostPort:
        """A reported ``host:port``; a wildcard host is the address the connection came from."""
        try:
            addr = parse_host_port(text or ":3022", 3022, f"heartbeat {key}")
        except BadParameter:
            raise BadParameter(f"heartbeat {key} {text[:80]!r} is not host:port") from None
        if is_wildcard(addr.host):  # use what we saw
            addr = HostPort(remote_ip, addr.port)
        host = _canonical(addr.host)
        if host not in justified:
            if ip_literal(host) is None:
                check_host_name(host, f"heartbeat {key}")
            raise AccessDenied(
                f"heartbeat {key} {addr} is not this host's address: it is neither in its certificate "
                f"nor the address it connects from ({remote_ip}); set ssh_service.public_addr or "
                "--listen-ip to an address of this host, then re-join it (remove <data_dir>/identity, "
                "`tctl nodes rm` it and start it with a new token) so its certificate carries the address"
            )
        return addr

    async def _forbidden(self, served: set[tuple[str, int]]) -> set[tuple[str, int]]:
        """Where the auth API and the proxies listen (proxies' addresses from their records,
        loaded once and again whenever a proxy record changes, on this auth server or another
        one sharing the backend)."""
        watch = self._proxy_watch
        if watch is None or watch.closed:
            self._proxy_watch = await self.backend.new_watcher([_KINDS["Proxy"]])
            self._proxy_addrs = None
        elif any(e.type is not EventType.INIT for e in watch.take_pending()):
            self._proxy_addrs = None
        if self._proxy_addrs is None:
            self._proxy_addrs = {r["id"]: _listen_pairs(r) for r in await self.list("Proxy")}
        out = {(_canonical(h), p) for h, p in served}
        for pairs in self._proxy_addrs.values():
            out |= pairs
        return out

    async def remove(self, host_uuid: str) -> None:
        """Delete a host's records (``tctl nodes rm``)."""
        for prefix in _KINDS.values():
            try:
                await self.backend.delete(prefix + host_uuid)
            except NotFound:
                pass
        if self._proxy_addrs is not None:
            self._proxy_addrs.pop(host_uuid, None)

    async def _store(self, item: Item) -> None:
        """Queue ``item`` for the next group write and wait until it is committed."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((item, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush(), name="presence-flush")
        # Each caller waits on its own future: one that gives up cancels only that future, and
        # its item is still written with the others.
        await done

    async def _flush(self) -> None:
        while self._pending:
            await asyncio.sleep(FLUSH_WINDOW)
            batch, self._pending = self._pending, []
            try:
                await self.backend.put_many([item for item, _ in batch])
            except Exception as exc:  # every waiting heartbeat gets the error
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)

    async def list(self, role: str = "Node") -> list[dict[str, Any]]:
        """Live records, sorted by hostname, with static and command labels merged."""
        prefix = _KINDS[role]
        items = await self.backend.get_range(prefix, prefix_end(prefix))
        records = []
        for item in items:
            record = json.loads(item.value)
            record["labels"] = {**record["static_labels"], **record["command_labels"]}
            records.append(record)
        return sorted(records, key=lambda r: (r["hostname"], r["id"]))
