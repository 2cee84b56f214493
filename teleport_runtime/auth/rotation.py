"""CA rotation: the state machine that replaces a certificate authority's key pair.

Each CA type (host, user) rotates on its own. All rotation state lives in the CA record the
backend stores (``/authorities/<type>``): the key pairs and the ``rotation`` dict. Nothing is kept
in memory, so an auth server that restarts mid-rotation resumes where the record says, and two
auth servers sharing a backend see the same rotation.

The phase table (the phases, the allowed moves, which key signs, what agents do in each) is
:mod:`teleport_runtime.rotation_phases`; this module stores it. The key pairs in each phase
(``active`` always signs; every key pair listed is trusted)::

    phase            CertAuthority.active   additional_trusted   trusted set
    standby          current                []                   {current}
    init             old                    [new]                {old, new}
    update_clients   new                    [old]                {new, old}
    update_servers   new                    [old]                {new, old}
    standby (done)   new                    []                   {new}
    rollback         old                    [new]                {old, new}
    standby (undone) old                    []                   {old}

A move the table does not allow raises BadParameter naming the current phase and the allowed ones.

Rollback is two steps, as in the reference: in ``rollback`` the old key signs again while the new
key stays trusted, because agents may already hold (and authenticate to the auth API with)
identities signed by the new key; they re-register and get old-key identities. Completing the
rollback (``standby``) then drops the new key. Dropping it at once would lock those agents out.
A rollback always leaves the rotation in manual mode: the admin completes it.

Modes: ``manual`` (the admin sets each phase) and ``auto`` (a grace period: ``update_clients`` is
due at start + grace/3, ``update_servers`` at + 2*grace/3, ``standby`` at + grace). The auth
service asks :func:`due_transition` on start-up and from a timer and applies what it returns, one
step at a time, through :class:`RotationManager`.

The rotation dict (JSON-safe, times in ISO 8601 UTC)::

    {"state": "standby" | "in_progress", "phase": ..., "mode": "manual" | "auto" | "",
     "current_id": hex id of the current/last rotation or None, "started": ISO or None,
     "grace_period": "30h" or None, "schedule": {"update_clients": ISO, "update_servers": ISO,
     "standby": ISO} (auto only, else {}), "phase_changed": ISO or None, "last_rotated": ISO or None}

``last_rotated`` is when the last rotation *completed* (a rolled-back one does not count).

The functions on :class:`CertAuthority` are pure (no I/O) and never modify their argument; they
return a new CertAuthority. :class:`RotationManager` is the thin async layer that reads a CA from
the backend, applies one transition and writes it back with compare-and-swap.
"""

from __future__ import annotations

import copy
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

from teleport_runtime.backend import Backend, Item
from teleport_runtime.ca import CAKeyPair, CAType, CertAuthority, generate_ca_keypair, to_ca_type
from teleport_runtime.ca.keywrap import CACodec
from teleport_runtime.durations import format_duration, parse_duration
from teleport_runtime.errors import BadParameter, CompareFailed
from teleport_runtime.rotation_phases import (
    ALLOWED_NEXT,
    NEW_KEY_SIGNS,
    ROTATING,
    WALK,
    Mode,
    Phase,
    to_mode,
    to_phase,
)

log = logging.getLogger("teleport.auth.rotation")


#: The reference's default grace period for an auto rotation.
DEFAULT_GRACE_PERIOD = timedelta(hours=30)

#: Makes the new key pair at ``init``: ``factory(ca_type, cluster_name, now)``.
KeyPairFactory = Callable[[CAType, str, datetime], CAKeyPair]

#: The auto schedule along the walk: (phase that waits, next phase, thirds of the grace period
#: from the start).
_AUTO_STEPS = tuple((waiting, following, step) for step, (waiting, following) in enumerate(pairwise(WALK), 1))


# ---------------------------------------------------------------------------- parsing helpers


def _utc(now: datetime) -> datetime:
    if not isinstance(now, datetime):
        raise BadParameter(f"rotation time must be a datetime, got {type(now).__name__}")
    if now.tzinfo is None or now.utcoffset() is None:
        raise BadParameter(f"rotation time must be timezone-aware, got naive {now.isoformat()}")
    return now.astimezone(UTC)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat()


def _parse_time(value: Any, what: str) -> datetime:
    try:
        return _utc(datetime.fromisoformat(str(value)))
    except (ValueError, BadParameter) as exc:
        raise BadParameter(f"rotation {what}: bad timestamp {value!r}") from exc


def _grace(value: timedelta | str | int | float | None) -> timedelta:
    grace = DEFAULT_GRACE_PERIOD if value is None else value
    if not isinstance(grace, timedelta):
        grace = parse_duration(grace)
    whole = timedelta(seconds=int(grace.total_seconds()))
    if whole < timedelta(seconds=1):
        raise BadParameter(f"grace period must be at least 1s, such as 30h; got {value!r}")
    return whole


def current_phase(ca: CertAuthority) -> Phase:
    """The phase the CA's stored rotation dict is in (``standby`` when it has none)."""
    raw = ca.rotation.get("phase") or Phase.STANDBY.value
    try:
        return Phase(raw)
    except ValueError:
        raise BadParameter(f"the {ca.type.value} CA's stored rotation phase {raw!r} is unknown") from None


def _check_transition(ca: CertAuthority, target: Phase, hint: str = "") -> Phase:
    phase = current_phase(ca)
    allowed = ALLOWED_NEXT[phase]
    if target not in allowed:
        raise BadParameter(
            f"cannot move the {ca.type.value} CA from {phase.value} to {target.value}: "
            f"allowed: {', '.join(p.value for p in allowed)}{hint}"
        )
    return phase


def _check_shape(ca: CertAuthority, phase: Phase) -> None:
    """The stored CA must hold the key pairs its phase implies (see the module docstring)."""
    if phase in ROTATING and len(ca.additional_trusted) != 1:
        raise BadParameter(
            f"the {ca.type.value} CA is in rotation phase {phase.value} but holds "
            f"{len(ca.additional_trusted)} additional trusted key pairs (expected 1, the "
            f"{'new' if phase in (Phase.INIT, Phase.ROLLBACK) else 'old'} key); the stored CA is inconsistent"
        )


def _build(
    ca: CertAuthority, active: CAKeyPair, additional: list[CAKeyPair], rotation: dict[str, Any]
) -> CertAuthority:
    return CertAuthority(
        type=ca.type,
        cluster_name=ca.cluster_name,
        active=active,
        additional_trusted=additional,
        rotation=rotation,
    )


def _standby_rotation(previous: dict[str, Any], last_rotated: str | None, now: datetime) -> dict[str, Any]:
    return {
        "state": "standby",
        "phase": Phase.STANDBY.value,
        "mode": "",
        "current_id": previous.get("current_id"),
        "started": None,
        "grace_period": None,
        "schedule": {},
        "phase_changed": _iso(now),
        "last_rotated": last_rotated,
    }


# ---------------------------------------------------------------------------- transitions


def start_rotation(
    ca: CertAuthority,
    mode: Mode | str,
    grace_period: timedelta | str | None,
    now: datetime,
    new_keypair_factory: KeyPairFactory | None = None,
) -> CertAuthority:
    """Move a CA from ``standby`` to ``init``: a new key pair is made and trusted; the old signs.

    ``mode`` is ``manual`` (``grace_period`` must be None) or ``auto`` (``grace_period``, default
    30h, sets the schedule of the later phases). ``new_keypair_factory(ca_type, cluster, now)``
    makes the new key pair (default: :func:`generate_ca_keypair`).
    """
    mode = to_mode(mode)
    now = _utc(now)
    _check_transition(ca, Phase.INIT, " (a new rotation starts only from standby)")
    schedule: dict[str, str] = {}
    grace_text: str | None = None
    if mode is Mode.AUTO:
        grace = _grace(grace_period)
        grace_text = format_duration(grace)
        for _, phase, thirds in _AUTO_STEPS:
            schedule[phase.value] = _iso(now + grace * thirds / 3)
    elif grace_period is not None:
        raise BadParameter(
            "a grace period applies to auto rotation only; a manual rotation moves when the admin "
            "sets each phase"
        )
    factory = new_keypair_factory or generate_ca_keypair
    new = factory(ca.type, ca.cluster_name, now)
    if not new.has_secrets:
        raise BadParameter("the new CA key pair has no private keys; it could never sign")
    if new.ssh_public_key in ca.trusted_ssh_public_keys() or new.tls_cert in ca.trusted_tls_certs():
        raise BadParameter(f"the new {ca.type.value} CA key pair is already trusted; a rotation needs a new key")
    rotation = {
        "state": "in_progress",
        "phase": Phase.INIT.value,
        "mode": mode.value,
        "current_id": uuid.uuid4().hex,
        "started": _iso(now),
        "grace_period": grace_text,
        "schedule": schedule,
        "phase_changed": _iso(now),
        "last_rotated": ca.rotation.get("last_rotated"),
    }
    # Standby holds no additional trusted keys (this module never leaves any there).
    return _build(ca, ca.active, [new], rotation)


def advance(
    ca: CertAuthority,
    target_phase: Phase | str,
    now: datetime,
    *,
    mode: Mode | str | None = None,
    new_keypair_factory: KeyPairFactory | None = None,
) -> CertAuthority:
    """Move the CA one step to ``target_phase`` (any phase; see the module docstring's table).

    ``init`` from standby starts a manual rotation (:func:`start_rotation`); ``rollback`` is
    :func:`rollback`. ``mode="manual"`` turns an auto rotation into a manual one (the admin took
    over, the schedule is dropped); None keeps the mode (what the auto timer passes).
    """
    target = to_phase(target_phase)
    take_over = to_mode(mode) if mode is not None else None
    if take_over is Mode.AUTO:
        raise BadParameter(
            "an auto rotation starts from standby with a grace period; a phase step cannot switch to auto"
        )
    if target is Phase.INIT and current_phase(ca) is Phase.STANDBY:
        return start_rotation(ca, Mode.MANUAL, None, now, new_keypair_factory)
    if target is Phase.ROLLBACK:
        return rollback(ca, now)
    now = _utc(now)
    phase = _check_transition(ca, target)
    _check_shape(ca, phase)
    rotation = copy.deepcopy(ca.rotation)
    if target is Phase.STANDBY:
        # Completion drops the old key; completing a rollback drops the new one. Either way the
        # key that signs now is the only one left.
        last = _iso(now) if phase is Phase.UPDATE_SERVERS else rotation.get("last_rotated")
        return _build(ca, ca.active, [], _standby_rotation(rotation, last, now))
    if phase is Phase.INIT:
        # update_clients: the new key starts signing; the old one stays trusted.
        active, additional = ca.additional_trusted[0], [ca.active]
    else:
        # update_servers: same keys as update_clients; only what the agents do changes.
        active, additional = ca.active, list(ca.additional_trusted)
    rotation.update({"state": "in_progress", "phase": target.value, "phase_changed": _iso(now)})
    if take_over is Mode.MANUAL:
        rotation.update({"mode": Mode.MANUAL.value, "schedule": {}})
    return _build(ca, active, additional, rotation)


def rollback(ca: CertAuthority, now: datetime) -> CertAuthority:
    """Move a rotating CA to ``rollback``: the old key signs again, the new one is still trusted.

    Allowed from ``init``, ``update_clients`` and ``update_servers``. The rotation becomes manual;
    ``advance(ca, "standby", now)`` completes the rollback by dropping the new key.
    """
    now = _utc(now)
    phase = _check_transition(ca, Phase.ROLLBACK)
    _check_shape(ca, phase)
    if phase is Phase.INIT:
        old, new = ca.active, ca.additional_trusted[0]
    else:
        new, old = ca.active, ca.additional_trusted[0]
    rotation = copy.deepcopy(ca.rotation)
    rotation.update(
        {
            "state": "in_progress",
            "phase": Phase.ROLLBACK.value,
            "mode": Mode.MANUAL.value,
            "schedule": {},
            "phase_changed": _iso(now),
        }
    )
    return _build(ca, old, [new], rotation)


def rotate_request(
    ca: CertAuthority,
    *,
    mode: Mode | str,
    target_phase: Phase | str | None = None,
    grace_period: timedelta | str | None = None,
    now: datetime,
    new_keypair_factory: KeyPairFactory | None = None,
) -> CertAuthority:
    """Apply an admin's rotate request (``tctl auth rotate`` flags / the API body).

    - ``mode="auto"``, no phase (or ``init``): start an auto rotation with ``grace_period``.
    - ``mode="manual"``, ``target_phase``: one manual step (``init`` starts the rotation); an auto
      rotation in progress becomes manual.
    - ``target_phase="rollback"`` in either mode: :func:`rollback`.
    """
    mode = to_mode(mode)
    target = to_phase(target_phase) if target_phase else None
    if target is Phase.ROLLBACK:
        if grace_period is not None:
            raise BadParameter("a grace period applies to starting an auto rotation, not to a rollback")
        return rollback(ca, now)
    if mode is Mode.AUTO:
        if target not in (None, Phase.INIT):
            raise BadParameter(
                f"phase {target} is set by hand: use manual mode (tctl auth rotate --type={ca.type.value} "
                f"--manual --phase={target}); auto mode starts a rotation with a grace period"
            )
        return start_rotation(ca, Mode.AUTO, grace_period, now, new_keypair_factory)
    if target is None:
        allowed = ", ".join(p.value for p in ALLOWED_NEXT[current_phase(ca)])
        raise BadParameter(
            f"a manual rotation step needs a target phase: the {ca.type.value} CA is in "
            f"{current_phase(ca).value}; allowed: {allowed}"
        )
    if grace_period is not None:
        raise BadParameter(
            "a grace period applies to auto rotation only; a manual rotation moves when the admin "
            "sets each phase"
        )
    return advance(ca, target, now, mode=Mode.MANUAL, new_keypair_factory=new_keypair_factory)


# ---------------------------------------------------------------------------- queries


def rotation_view(ca: CertAuthority) -> dict[str, Any]:
    """The CA's rotation state for ``tctl status``, the API and agents (JSON-safe)."""
    rotation = ca.rotation
    phase = current_phase(ca)
    return {
        "state": "standby" if phase is Phase.STANDBY else "in_progress",
        "phase": phase.value,
        "mode": rotation.get("mode") or "",
        "id": rotation.get("current_id") or "",
        "current_id": rotation.get("current_id"),
        "started": rotation.get("started"),
        "grace_period": rotation.get("grace_period"),
        "schedule": dict(rotation.get("schedule") or {}),
        "phase_changed": rotation.get("phase_changed"),
        "last_rotated": rotation.get("last_rotated"),
    }


def longest_trusted(ca: CertAuthority) -> CAKeyPair:
    """The key pair every agent has trusted the longest: the old key from ``init`` until the
    rotation completes (in ``update_clients`` and ``update_servers`` it no longer signs but is
    still trusted), the active key otherwise.

    The auth API signs its own TLS certificate with it, so an agent that missed ``init`` (it was
    down, or the admin moved on quickly) can still reach the API, learn the new key and follow.
    """
    phase = current_phase(ca)
    if phase in NEW_KEY_SIGNS:
        _check_shape(ca, phase)
        return ca.additional_trusted[0]
    return ca.active


def due_transition(ca: CertAuthority, now: datetime) -> str | None:
    """The phase the auto schedule wants the CA in at ``now``, or None (nothing due, or manual).

    Returns one step at a time: a rotation overdue by several deadlines (the auth service was
    down) moves one phase per call, so a timer moves it one phase per tick rather than jumping
    straight to the end.
    """
    now = _utc(now)
    if ca.rotation.get("mode") != Mode.AUTO.value:
        return None
    phase = current_phase(ca)
    schedule = ca.rotation.get("schedule") or {}
    for waiting, following, _ in _AUTO_STEPS:
        if phase is waiting:
            at = schedule.get(following.value)
            if at is None:
                raise BadParameter(
                    f"the {ca.type.value} CA's auto rotation has no scheduled time for {following.value}"
                )
            return following.value if now >= _parse_time(at, f"schedule.{following.value}") else None
    return None


def next_deadline(ca: CertAuthority) -> datetime | None:
    """When the auto schedule next moves the CA (None: manual, or nothing scheduled)."""
    if ca.rotation.get("mode") != Mode.AUTO.value:
        return None
    phase = current_phase(ca)
    schedule = ca.rotation.get("schedule") or {}
    for waiting, following, _ in _AUTO_STEPS:
        if phase is waiting and schedule.get(following.value):
            return _parse_time(schedule[following.value], f"schedule.{following.value}")
    return None


def is_rotation_due(ca: CertAuthority, max_age: timedelta, now: datetime) -> bool:
    """True when the CA is in standby and its signing key is at least ``max_age`` old.

    A CA already rotating is never due (a new rotation starts only from standby).
    """
    if not isinstance(max_age, timedelta) or max_age <= timedelta(0):
        raise BadParameter(f"max_age must be a positive duration, such as 90d; got {max_age!r}")
    if current_phase(ca) is not Phase.STANDBY:
        return False
    return _utc(now) - ca.active.created >= max_age


# ---------------------------------------------------------------------------- backend


class RotationManager:
    """Applies rotation transitions to the CAs stored in a backend, safely under concurrency.

    Each call reads the CA item, applies one pure transition and writes it back with
    ``compare_and_swap``. When another writer (a second auth server, a concurrent admin command)
    changed the CA in between, the swap fails and the transition is re-applied to the fresh CA,
    where the state machine decides again (the loser of two ``init`` requests gets BadParameter).

    Args:
        backend: the cluster's storage backend.
        ca_key: the backend key of a CA type (the auth service's ``/authorities/<type>`` layout).
        new_keypair_factory: makes the key pair at ``init`` (default :func:`generate_ca_keypair`).
        max_attempts: compare-and-swap attempts before giving up with CompareFailed.
        codec: encodes and decodes the stored CA records (default: no key-encryption key).
    """

    def __init__(
        self,
        backend: Backend,
        ca_key: Callable[[CAType], str],
        *,
        new_keypair_factory: KeyPairFactory | None = None,
        max_attempts: int = 5,
        codec: CACodec | None = None,
    ) -> None:
        if max_attempts < 1:
            raise BadParameter(f"max_attempts must be at least 1, got {max_attempts}")
        self.backend = backend
        self.ca_key = ca_key
        self.new_keypair_factory = new_keypair_factory
        self.max_attempts = max_attempts
        #: How CA records are stored (private keys sealed when a key-encryption key is set).
        self.codec = codec or CACodec()

    async def _load(self, ca_type: CAType) -> tuple[Item, CertAuthority]:
        item = await self.backend.get(self.ca_key(ca_type))
        return item, self.codec.decode(item.key, item.value)

    async def view(self, ca_type: CAType | str) -> dict[str, Any]:
        """The stored rotation state of ``ca_type`` (:func:`rotation_view`)."""
        _, ca = await self._load(to_ca_type(ca_type))
        return rotation_view(ca)

    async def _update(
        self, ca_type: CAType, change: Callable[[CertAuthority], CertAuthority | None]
    ) -> CertAuthority | None:
        for _ in range(self.max_attempts):
            item, ca = await self._load(ca_type)
            updated = change(ca)
            if updated is None:
                return None
            value = self.codec.encode(item.key, updated)
            try:
                await self.backend.compare_and_swap(item, Item(key=item.key, value=value))
            except CompareFailed:
                log.info("the %s CA changed during a rotation step; re-reading it", ca_type.value)
                continue
            log.info(
                "%s CA rotation: %s -> %s (%s)",
                ca_type.value,
                current_phase(ca).value,
                current_phase(updated).value,
                updated.rotation.get("mode") or "done",
            )
            return updated
        raise CompareFailed(
            f"the {ca_type.value} CA kept changing while a rotation step was applied "
            f"({self.max_attempts} attempts); try again"
        )

    async def rotate(
        self,
        ca_type: CAType | str,
        *,
        mode: Mode | str,
        target_phase: Phase | str | None = None,
        grace_period: timedelta | str | None = None,
        now: datetime | None = None,
    ) -> dict[str, Any]:
        """Apply an admin's rotate request (:func:`rotate_request`); returns the new view."""
        ca_type = to_ca_type(ca_type)
        when = now or self.backend.now()
        updated = await self._update(
            ca_type,
            lambda ca: rotate_request(
                ca,
                mode=mode,
                target_phase=target_phase,
                grace_period=grace_period,
                now=when,
                new_keypair_factory=self.new_keypair_factory,
            ),
        )
        assert updated is not None
        return rotation_view(updated)

    async def apply_due(self, ca_type: CAType | str, now: datetime | None = None) -> dict[str, Any] | None:
        """Apply the auto schedule's due step for ``ca_type``, if any; returns the new view or None.

        Safe to call from every auth server's timer: when another server applied the step first,
        the re-read CA has nothing due and this returns None.
        """
        ca_type = to_ca_type(ca_type)
        when = now or self.backend.now()

        def step(ca: CertAuthority) -> CertAuthority | None:
            due = due_transition(ca, when)
            return None if due is None else advance(ca, due, when)

        updated = await self._update(ca_type, step)
        return None if updated is None else rotation_view(updated)

    async def next_deadline(self) -> datetime | None:
        """The earliest time an auto rotation of either CA is due to move (None: none is)."""
        deadlines = [d for d in [next_deadline((await self._load(t))[1]) for t in (CAType.HOST, CAType.USER)] if d]
        return min(deadlines) if deadlines else None

    async def tick(self, now: datetime | None = None) -> dict[str, dict[str, Any]]:
        """:meth:`apply_due` for both CA types; returns the views of the CAs that moved."""
        moved: dict[str, dict[str, Any]] = {}
        for ca_type in (CAType.HOST, CAType.USER):
            view = await self.apply_due(ca_type, now)
            if view is not None:
                moved[ca_type.value] = view
        return moved
