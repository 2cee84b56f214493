"""The audit log: structured events with a code and time, kept by the auth service in the
backend under ``/events/<time>/<id>`` so a time range is a key range.

Every event has ``event`` (its type), ``code`` (see :data:`EVENT_CODES`; the reference's codes
where it has one), ``time`` (ISO 8601 UTC), ``id``, and as far as they apply ``user`` (the
Teleport user), ``login`` (the OS login), ``node`` (node name), ``server_id`` (host UUID),
``session_id`` and ``remote_addr``. Who emits what:

- the auth service: ``user.login`` (success ``T1000I``, failure ``T1000W``), ``user.signup``
  (a password and one-time code enrolled with a sign-up token, ``T1005I``; a refused token
  ``T1005W``), ``session.upload`` (a recording was stored), ``access.denied`` (a user's request
  refused by the roles);
- nodes: ``session.start``, ``session.end``, ``exec`` (with ``exit_status``), ``subsystem``,
  ``port``, ``auth.rejected``, ``session.rejected``, ``port.rejected``, ``agent.rejected``,
  ``subsystem.rejected``, ``session.recording_failed`` (node-sync: the session was ended);
- the proxy: what its routing refuses (``proxy.connect.rejected``) and web requests it refuses
  before they reach the auth service (``access.denied``);
- the auth API itself: ``access.denied`` for a request its system-role check refuses too.

What an agent may write (``POST /v1/audit``, :func:`check_agent_event`): only the event types
its own code emits (:data:`AGENT_EVENTS`; ``user.login`` and the other auth-service events never
come from an agent). The auth service, not the body, says who sent it (``server_id``, and for a
node ``node``/``nodename``, from the caller's certificate) and when it arrived (``received``, its
own clock). The agent's ``time`` is kept (a spooled event sorts where it happened) only inside a
window: at most :data:`MAX_CLOCK_SKEW` ahead of the auth service's clock and at most
:data:`MAX_EVENT_AGE` old (how long a node's spool may hold events through an auth outage). Size
and field names are bounded. Anything else is refused (:class:`EventRefused`, final for the
node's spool) and audited as ``access.denied``.

Idempotent on the event ID: a node gives each event an ``id`` (and its ``time``) when it spools
it, and may send it again after a crash; the event's key derives from both, so the second
:meth:`AuditLog.emit` finds it stored and changes nothing. Events are keyed by their own time
(the emitter's clock), so a node's events sent after an auth outage sort where they happened.
A node whose spool overflowed sends ``audit.dropped`` (``count`` of the events it lost).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from teleport_runtime.backend import Backend, Item
from teleport_runtime.errors import AlreadyExists, BadParameter, EventRefused

log = logging.getLogger("teleport.audit")
_PREFIX = "/events/"
#: What an emitter's own event ID may look like.
_ID_RE = re.compile(r"[0-9a-f]{16,64}")

#: Event type -> code. ``user.login`` and ``exec``/``subsystem`` have a failure code too
#: (:data:`FAILURE_CODES`).
EVENT_CODES = {
    "user.login": "T1000I",
    "session.rejected": "T1006W",
    "access.denied": "T1007W",
    "session.start": "T2000I",
    "session.end": "T2004I",
    "session.upload": "T2005I",
    "session.recording_failed": "T2006E",
    "subsystem": "T3001I",
    "exec": "T3002I",
    "port": "T3003I",
    "auth.rejected": "T3007W",
    "port.rejected": "T3008W",
    "agent.rejected": "T3009W",
    "subsystem.rejected": "T3010W",
    "audit.dropped": "T9000W",
    "user.signup": "T1005I",
    # enhanced recording (the reference's codes) and host users (this project's)
    "session.command": "T4000I",
    "session.disk": "T4001I",
    "session.network": "T4002I",
    "session.enhanced_lost": "T4003W",
    "host_user.create": "T4010I",
    "host_user.update": "T4011I",
    "host_user.delete": "T4012I",
    "host_user.rejected": "T4013W",
}
FAILURE_CODES = {"user.login": "T1000W", "user.signup": "T1005W", "exec": "T3002E", "subsystem": "T3001E"}
UNKNOWN_CODE = "TCC00E"


def event_code(event: dict[str, Any]) -> str:
    """The code of an event: failures of ``user.login`` (``success`` false) and of ``exec`` and
    ``subsystem`` (a non-zero ``exit_status`` or a ``signal``) have their own."""
    kind = str(event.get("event") or "")
    failed = event.get("success") is False or (
        kind in ("exec", "subsystem") and (event.get("exit_status") not in (0, None) or event.get("signal"))
    )
    if failed and kind in FAILURE_CODES:
        return FAILURE_CODES[kind]
    return EVENT_CODES.get(kind, UNKNOWN_CODE)


#: The event types each agent role may write: what its code emits (node/session.py,
#: node/ssh_server.py, node/service.py and the spool's ``audit.dropped``; the proxy's routing
#: refusals in proxy/ssh.py and proxy/web.py). A new event an agent emits is added here, or it is refused.
AGENT_EVENTS: dict[str, frozenset[str]] = {
    "Node": frozenset({
        "session.start", "session.end", "session.rejected", "session.recording_failed",
        "exec", "subsystem", "port",
        "auth.rejected", "port.rejected", "agent.rejected", "subsystem.rejected",
        "audit.dropped",
        "host_user.create", "host_user.update", "host_user.delete", "host_user.rejected",
        "session.command", "session.disk", "session.network", "session.enhanced_lost",
    }),
    # access.denied: a web request the proxy refused before it reached the auth service (a path
    # parameter that is not a valid token, name or session ID).
    # The rest: sessions the proxy terminates for OpenSSH nodes (proxy/recording_proxy.py).
    "Proxy": frozenset({"proxy.connect.rejected", "access.denied", "auth.rejected", "session.start",
                        "session.end", "session.recording_failed", "port"}),
}
#: How far ahead of the auth service's clock an agent's event time may be (clock drift).
MAX_CLOCK_SKEW = timedelta(minutes=1)
#: How old an agent's event may be: a node spools events through an auth outage of up to this.
MAX_EVENT_AGE = timedelta(days=7)
#: Bounds of one agent event (its JSON form) and of its top-level field names.
MAX_EVENT_BYTES = 64 * 1024
MAX_EVENT_FIELDS = 64
_FIELD_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
#: Fields only the auth service sets on an agent's event; an agent's own values are dropped.
_SERVER_FIELDS = ("code", "server_id", "received", "duplicate", "node", "nodename", "proxy")


def check_agent_event(
    event: dict[str, Any], *, role: str, host_uuid: str, nodename: str, now: datetime | None = None
) -> dict[str, Any]:
    """The record to store for ``event`` sent by an agent of system ``role`` whose certificate
    names ``host_uuid`` and ``nodename``; EventRefused (naming the rule) otherwise."""
    now = now or datetime.now(UTC)
    kind = event.get("event")
    allowed = AGENT_EVENTS.get(role, frozenset())
    if not isinstance(kind, str) or kind not in allowed:
        shown = kind[:64] if isinstance(kind, str) else kind
        raise EventRefused(
            f"a {role} may not write {shown!r} audit events: it may write {', '.join(sorted(allowed)) or 'none'}"
            " (user.login and the other auth service events are recorded by the auth service only)"
        )
    if len(event) > MAX_EVENT_FIELDS:
        raise EventRefused(f"audit event {kind} has {len(event)} fields: at most {MAX_EVENT_FIELDS}")
    bad = [name for name in event if not _FIELD_RE.fullmatch(name)]
    if bad:
        raise EventRefused(
            f"audit event {kind} has invalid field name {bad[0][:64]!r}: use lower-case letters, digits and _"
        )
    size = len(json.dumps(event, default=str))
    if size > MAX_EVENT_BYTES:
        raise EventRefused(f"audit event {kind} is {size} bytes: at most {MAX_EVENT_BYTES}")
    record = {k: v for k, v in event.items() if k not in _SERVER_FIELDS}
    if "time" in record:
        when = _parse_time(record["time"])
        if when is None:
            raise EventRefused(f"audit event {kind} has an invalid time {str(record['time'])[:64]!r}: use ISO 8601")
        if when > now + MAX_CLOCK_SKEW:
            raise EventRefused(
                f"audit event {kind} is dated {when.isoformat()}, ahead of the auth service's clock "
                f"({now.isoformat()}): check the sender's clock (NTP)"
            )
        if when < now - MAX_EVENT_AGE:
            raise EventRefused(
                f"audit event {kind} is dated {when.isoformat()}, more than {MAX_EVENT_AGE.days} days "
                "before the auth service's clock: events that old are not accepted from an agent"
            )
    record["server_id"] = host_uuid
    record["received"] = now.isoformat()
    if role == "Node":
        record["node"] = record["nodename"] = nodename
    else:
        record[role.lower()] = nodename
    return record


def _parse_time(value: object) -> datetime | None:
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, str) and value:
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _key_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class AuditLog:
    """Emit and search audit events in the backend."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def emit(self, event: dict[str, Any]) -> dict[str, Any]:
        """Record ``event`` (must name ``event``); return the stored record. Adds the ``code``
        (when not given) and ``node`` from a node's ``nodename``.

        An event that brings its own ``id`` (16-64 hex digits) must bring its ``time`` too
        (ISO 8601): it is stored once; sending it again returns the stored record with
        ``"duplicate": True``. AlreadyExists if that ID and time belong to another server's
        event. Without an ``id``, the event gets one, and ``time`` (when missing) is now.
        """
        record = {**event}
        record.pop("duplicate", None)
        if "id" in record:
            event_id = str(record["id"])
            if not _ID_RE.fullmatch(event_id):
                raise BadParameter(f"audit event id {event_id!r}: expected 16 to 64 lower-case hex digits")
            when = _parse_time(record.get("time"))
            if when is None:
                raise BadParameter(
                    f"audit event {event_id} has no valid time {record.get('time')!r}: an event "
                    "that brings its id brings its ISO 8601 time too"
                )
        else:
            when = _parse_time(record.get("time")) or datetime.now(UTC)
            record.setdefault("time", when.isoformat())
            record["id"] = event_id = secrets.token_hex(8)
        record.setdefault("code", event_code(record))
        if "node" not in record and record.get("nodename"):
            record["node"] = record["nodename"]
        key = f"{_PREFIX}{_key_time(when)}/{event_id}"
        try:
            await self.backend.create(Item(key=key, value=json.dumps(record, default=str).encode()))
        except AlreadyExists:
            stored = json.loads((await self.backend.get(key)).value)
            if stored.get("server_id") != record.get("server_id"):
                raise AlreadyExists(
                    f"audit event {event_id} at {record['time']} is already stored for another server"
                ) from None
            return {**stored, "duplicate": True}
        log.info("%s", json.dumps(record, sort_keys=True, default=str))
        return record

    async def search(
        self, since: datetime, until: datetime | None = None, types: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """Events recorded in ``[since, until)``, oldest first; only ``types`` when given (an
        entry ending in ``.`` or ``*`` matches a prefix, such as ``session.``)."""
        start = f"{_PREFIX}{_key_time(since)}"
        end = f"{_PREFIX}{_key_time(until)}" if until else _PREFIX + "~"
        events = [json.loads(i.value) for i in await self.backend.get_range(start, end)]
        if types:
            exact = {t for t in types if not t.endswith(("*", "."))}
            prefixes = tuple(t.rstrip("*") for t in types if t.endswith(("*", ".")))
            events = [
                e for e in events
                if e.get("event") in exact or (prefixes and str(e.get("event", "")).startswith(prefixes))
            ]
        return events
