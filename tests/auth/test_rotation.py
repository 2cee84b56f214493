"""CA rotation: the phase state machine (pure), the auto schedule, real signatures across phases,
and the backend layer (compare-and-swap under races, state surviving a restart) on real SQLite."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from teleport_runtime.auth.rotation import (
    ALLOWED_NEXT,
    Phase,
    RotationManager,
    advance,
    current_phase,
    due_transition,
    is_rotation_due,
    longest_trusted,
    next_deadline,
    rollback,
    rotate_request,
    rotation_view,
    start_rotation,
)
from teleport_runtime.auth.service import AuthService, _ca_key
from teleport_runtime.backend import Item, open_backend
from teleport_runtime.ca import (
    CAType,
    CertAuthority,
    TLSIdentity,
    generate_ca_keypair,
    generate_host_ssh_cert,
    generate_ssh_keypair,
    generate_tls_identity_cert,
    generate_tls_keypair,
    generate_user_ssh_cert,
    issuing_ca_matches,
    new_cert_authority,
    parse_host_ssh_cert,
    parse_user_ssh_cert,
)
from teleport_runtime.config import AuthConfig
from teleport_runtime.errors import AccessDenied, BadParameter, CompareFailed

CLUSTER = "example.com"
T0 = datetime(2030, 1, 1, tzinfo=UTC)
SECOND = timedelta(seconds=1)


@pytest.fixture
def ca() -> CertAuthority:
    return new_cert_authority(CAType.HOST, CLUSTER, T0 - timedelta(days=100))


def keys(*pairs):
    return {kp.ssh_public_key for kp in pairs}


def assert_keys(authority: CertAuthority, signer, trusted) -> None:
    """``signer`` signs; exactly ``trusted`` are trusted (SSH keys and X.509 CA certs)."""
    assert authority.active.ssh_public_key == signer.ssh_public_key
    assert authority.active.has_secrets
    assert set(authority.trusted_ssh_public_keys()) == keys(*trusted)
    assert set(authority.trusted_tls_certs()) == {kp.tls_cert for kp in trusted}


def at_phase(authority: CertAuthority, phase: str) -> CertAuthority:
    """The CA moved (manually) from standby to ``phase``."""
    steps = {
        "standby": [],
        "init": ["init"],
        "update_clients": ["init", "update_clients"],
        "update_servers": ["init", "update_clients", "update_servers"],
        "rollback": ["init", "rollback"],
    }[phase]
    for i, step in enumerate(steps):
        authority = advance(authority, step, T0 + i * SECOND)
    return authority


def host_cert(kp) -> str:
    _, public = generate_ssh_keypair()
    return generate_host_ssh_cert(kp, public, host_uuid="uuid-1", nodename="node1", cluster_name=CLUSTER, role="Node")


def tls_host_cert(kp) -> bytes:
    _, public = generate_tls_keypair()
    identity = TLSIdentity(name=f"uuid-1.{CLUSTER}", kind="host", roles=["Node"], cluster=CLUSTER)
    return generate_tls_identity_cert(kp, public, identity, ttl=timedelta(hours=1))


# ---------------------------------------------------------------------------- valid paths


def test_fresh_ca_view_is_standby(ca):
    assert rotation_view(ca) == {
        "state": "standby",
        "phase": "standby",
        "mode": "",
        "id": "",
        "current_id": None,
        "started": None,
        "grace_period": None,
        "schedule": {},
        "phase_changed": None,
        "last_rotated": None,
    }


def test_manual_rotation_full_path_keys_per_phase(ca):
    old = ca.active

    init = start_rotation(ca, "manual", None, T0)
    new = init.additional_trusted[0]
    assert new.created == T0 and new.has_secrets
    assert_keys(init, signer=old, trusted=[old, new])
    view = rotation_view(init)
    assert view["state"] == "in_progress" and view["phase"] == "init" and view["mode"] == "manual"
    assert view["started"] == T0.isoformat() and view["grace_period"] is None and view["schedule"] == {}
    rotation_id = view["current_id"]
    assert rotation_id

    clients = advance(init, "update_clients", T0 + SECOND)
    assert_keys(clients, signer=new, trusted=[new, old])
    assert current_phase(clients) is Phase.UPDATE_CLIENTS

    servers = advance(clients, "update_servers", T0 + 2 * SECOND)
    assert_keys(servers, signer=new, trusted=[new, old])
    assert rotation_view(servers)["phase_changed"] == (T0 + 2 * SECOND).isoformat()

    done = advance(servers, "standby", T0 + 3 * SECOND)
    assert_keys(done, signer=new, trusted=[new])
    assert done.additional_trusted == []
    view = rotation_view(done)
    assert view["state"] == "standby" and view["phase"] == "standby" and view["mode"] == ""
    assert view["last_rotated"] == (T0 + 3 * SECOND).isoformat()
    assert view["current_id"] == rotation_id
    assert view["started"] is None and view["schedule"] == {}

    # Every step kept the rotation id; a new rotation gets a new one and keeps last_rotated.
    assert {rotation_view(x)["current_id"] for x in (init, clients, servers)} == {rotation_id}
    again = start_rotation(done, "manual", None, T0 + timedelta(days=1))
    assert rotation_view(again)["current_id"] != rotation_id
    assert rotation_view(again)["last_rotated"] == view["last_rotated"]
    assert_keys(again, signer=new, trusted=[new, again.additional_trusted[0]])


def test_transitions_do_not_modify_their_input(ca):
    before = ca.to_dict(True)
    init = start_rotation(ca, "manual", None, T0)
    init_before = init.to_dict(True)
    advance(init, "update_clients", T0)
    rollback(init, T0)
    assert ca.to_dict(True) == before
    assert init.to_dict(True) == init_before


def test_advance_to_init_from_standby_starts_a_manual_rotation(ca):
    made = []

    def factory(ca_type, cluster, now):
        made.append((ca_type, cluster, now))
        return generate_ca_keypair(ca_type, cluster, now)

    init = advance(ca, "init", T0, new_keypair_factory=factory)
    assert made == [(CAType.HOST, CLUSTER, T0)]
    assert rotation_view(init)["mode"] == "manual"
    assert init.additional_trusted[0].created == T0


def test_rotation_dict_is_json_safe_and_round_trips(ca):
    for phase in ("init", "update_clients", "update_servers", "rollback"):
        authority = at_phase(ca, phase)
        text = json.dumps(authority.to_dict(True))
        back = CertAuthority.from_dict(json.loads(text))
        assert rotation_view(back) == rotation_view(authority)
        assert back.to_dict(True) == authority.to_dict(True)
    auto = start_rotation(ca, "auto", "30h", T0)
    back = CertAuthority.from_dict(json.loads(json.dumps(auto.to_dict(True))))
    assert due_transition(back, T0 + timedelta(hours=10)) == "update_clients"


# ---------------------------------------------------------------------------- invalid transitions

INVALID = [
    (phase, target)
    for phase in Phase
    for target in Phase
    if target not in ALLOWED_NEXT[phase]
]


@pytest.mark.parametrize(("phase", "target"), INVALID, ids=[f"{p}->{t}" for p, t in INVALID])
def test_invalid_transition_names_current_and_allowed_phases(ca, phase, target):
    authority = at_phase(ca, phase)
    allowed = ", ".join(p.value for p in ALLOWED_NEXT[phase])
    with pytest.raises(BadParameter) as err:
        advance(authority, target, T0 + timedelta(minutes=1))
    assert err.value.message == f"cannot move the host CA from {phase} to {target}: allowed: {allowed}"


def test_the_briefs_example_message(ca):
    with pytest.raises(BadParameter) as err:
        advance(ca, "update_servers", T0)
    assert err.value.message == "cannot move the host CA from standby to update_servers: allowed: init"


def test_messages_name_the_ca_type():
    user = new_cert_authority(CAType.USER, CLUSTER, T0)
    with pytest.raises(BadParameter, match=r"^cannot move the user CA from standby to standby: allowed: init$"):
        advance(user, "standby", T0)


@pytest.mark.parametrize("phase", ["init", "update_clients", "update_servers", "rollback"])
def test_new_rotation_starts_only_from_standby(ca, phase):
    authority = at_phase(ca, phase)
    allowed = ", ".join(p.value for p in ALLOWED_NEXT[Phase(phase)])
    for mode, grace in (("manual", None), ("auto", "30h")):
        with pytest.raises(BadParameter) as err:
            start_rotation(authority, mode, grace, T0)
        assert err.value.message == (
            f"cannot move the host CA from {phase} to init: allowed: {allowed} "
            "(a new rotation starts only from standby)"
        )


@pytest.mark.parametrize("phase", ["standby", "rollback"])
def test_rollback_only_from_a_rotating_phase(ca, phase):
    authority = at_phase(ca, phase)
    allowed = ", ".join(p.value for p in ALLOWED_NEXT[Phase(phase)])
    with pytest.raises(BadParameter) as err:
        rollback(authority, T0)
    assert err.value.message == f"cannot move the host CA from {phase} to rollback: allowed: {allowed}"


def test_bad_arguments(ca):
    with pytest.raises(BadParameter, match="unknown rotation phase 'update_everything'"):
        advance(ca, "update_everything", T0)
    with pytest.raises(BadParameter, match="unknown rotation mode 'sometimes'"):
        start_rotation(ca, "sometimes", None, T0)
    with pytest.raises(BadParameter, match="grace period applies to auto rotation only"):
        start_rotation(ca, "manual", "30h", T0)
    with pytest.raises(BadParameter, match="timezone-aware"):
        start_rotation(ca, "manual", None, datetime(2030, 1, 1))
    with pytest.raises(BadParameter, match="at least 1s"):
        start_rotation(ca, "auto", timedelta(0), T0)
    with pytest.raises(BadParameter, match="invalid duration"):
        start_rotation(ca, "auto", "soon", T0)
    with pytest.raises(BadParameter, match="already trusted"):
        start_rotation(ca, "manual", None, T0, lambda *_: ca.active)
    with pytest.raises(BadParameter, match="no private keys"):
        start_rotation(ca, "manual", None, T0, lambda t, c, n: generate_ca_keypair(t, c, n).public())
    with pytest.raises(BadParameter, match="cannot switch to auto"):
        advance(at_phase(ca, "init"), "update_clients", T0, mode="auto")


def test_inconsistent_stored_ca_is_refused(ca):
    init = at_phase(ca, "init")
    broken = CertAuthority(init.type, init.cluster_name, init.active, [], dict(init.rotation))
    with pytest.raises(BadParameter, match="in rotation phase init but holds 0 additional trusted"):
        advance(broken, "update_clients", T0)
    weird = CertAuthority(ca.type, ca.cluster_name, ca.active, [], {"phase": "sideways"})
    with pytest.raises(BadParameter, match="stored rotation phase 'sideways' is unknown"):
        rotation_view(weird)


# ---------------------------------------------------------------------------- rollback


@pytest.mark.parametrize("phase", ["init", "update_clients", "update_servers"])
def test_rollback_restores_old_signer_then_old_trust(ca, phase):
    old = ca.active
    rotating = at_phase(ca, phase)
    new = rotating.additional_trusted[0] if phase == "init" else rotating.active

    rolling = rollback(rotating, T0 + timedelta(hours=1))
    # The old key signs again; the new one stays trusted until the rollback completes, so agents
    # already holding new-key identities can still reach the auth service and re-register.
    assert_keys(rolling, signer=old, trusted=[old, new])
    view = rotation_view(rolling)
    assert view["phase"] == "rollback" and view["state"] == "in_progress" and view["mode"] == "manual"
    assert view["schedule"] == {}

    done = advance(rolling, "standby", T0 + timedelta(hours=2))
    assert_keys(done, signer=old, trusted=[old])
    assert done.active.to_dict(True) == old.to_dict(True)
    view = rotation_view(done)
    assert view["state"] == "standby" and view["last_rotated"] is None  # nothing was rotated

    # A certificate the new key signed is no longer trusted; one the old key signs is.
    with pytest.raises(AccessDenied):
        parse_host_ssh_cert(host_cert(new), trusted_ca_keys=done.trusted_ssh_public_keys())
    parse_host_ssh_cert(host_cert(done.active), trusted_ca_keys=done.trusted_ssh_public_keys())
    # And a new rotation can start.
    assert current_phase(start_rotation(done, "manual", None, T0 + timedelta(hours=3))) is Phase.INIT


def test_rollback_of_an_auto_rotation_becomes_manual(ca):
    auto = start_rotation(ca, "auto", "3h", T0)
    rolling = rollback(advance(auto, "update_clients", T0 + timedelta(hours=1)), T0 + timedelta(hours=1))
    assert rotation_view(rolling)["mode"] == "manual"
    assert due_transition(rolling, T0 + timedelta(days=1)) is None


# ---------------------------------------------------------------------------- auto schedule


def test_auto_schedule_at_the_thirds(ca):
    auto = start_rotation(ca, "auto", "30h", T0)
    view = rotation_view(auto)
    assert view["mode"] == "auto" and view["grace_period"] == "30h"
    assert view["schedule"] == {
        "update_clients": (T0 + timedelta(hours=10)).isoformat(),
        "update_servers": (T0 + timedelta(hours=20)).isoformat(),
        "standby": (T0 + timedelta(hours=30)).isoformat(),
    }
    first, second, third = (T0 + timedelta(hours=h) for h in (10, 20, 30))
    tiny = timedelta(microseconds=1)

    assert due_transition(auto, T0) is None
    assert due_transition(auto, first - tiny) is None
    assert due_transition(auto, first) == "update_clients"
    # Down past several deadlines: one step at a time.
    assert due_transition(auto, third + timedelta(days=3)) == "update_clients"

    clients = advance(auto, "update_clients", first)
    assert rotation_view(clients)["mode"] == "auto"
    assert due_transition(clients, second - tiny) is None
    assert due_transition(clients, second) == "update_servers"

    servers = advance(clients, "update_servers", second)
    assert due_transition(servers, third - tiny) is None
    assert due_transition(servers, third) == "standby"

    done = advance(servers, "standby", third)
    assert due_transition(done, third + timedelta(days=365)) is None
    assert rotation_view(done)["last_rotated"] == third.isoformat()
    # the auth service's timer sleeps until the next of these
    assert [next_deadline(x) for x in (auto, clients, servers, done)] == [first, second, third, None]
    assert next_deadline(at_phase(ca, "init")) is None  # manual: nothing scheduled


@pytest.mark.parametrize("phase", ["standby", "init", "update_clients", "update_servers", "rollback"])
def test_the_auth_api_cert_is_signed_by_the_key_trusted_longest(ca, phase):
    rotated = at_phase(ca, phase)
    # the key trusted before the rotation started, until it completes
    assert longest_trusted(rotated).ssh_public_key == ca.active.ssh_public_key
    assert longest_trusted(rotated).has_secrets
    done = advance(at_phase(ca, "update_servers"), "standby", T0 + timedelta(hours=1))
    assert longest_trusted(done).ssh_public_key != ca.active.ssh_public_key


def test_auto_default_grace_and_odd_grace(ca):
    auto = start_rotation(ca, "auto", None, T0)
    assert rotation_view(auto)["grace_period"] == "30h"
    odd = start_rotation(ca, "auto", timedelta(seconds=10), T0)
    assert due_transition(odd, T0 + timedelta(seconds=3)) is None
    assert due_transition(odd, T0 + timedelta(seconds=4)) == "update_clients"


def test_manual_rotation_is_never_due(ca):
    init = at_phase(ca, "init")
    assert due_transition(init, T0 + timedelta(days=1000)) is None
    assert due_transition(ca, T0 + timedelta(days=1000)) is None


def test_admin_taking_over_an_auto_rotation_drops_the_schedule(ca):
    auto = start_rotation(ca, "auto", "30h", T0)
    early = advance(auto, "update_clients", T0 + timedelta(hours=1), mode="manual")
    assert rotation_view(early)["mode"] == "manual" and rotation_view(early)["schedule"] == {}
    assert due_transition(early, T0 + timedelta(days=2)) is None
    # Without mode, an early manual step keeps the schedule: the timer carries on from there.
    kept = advance(auto, "update_clients", T0 + timedelta(hours=1))
    assert due_transition(kept, T0 + timedelta(hours=20)) == "update_servers"


# ---------------------------------------------------------------------------- admin requests


def test_rotate_request_maps_tctl_flags(ca):
    auto = rotate_request(ca, mode="auto", grace_period="12h", now=T0)
    assert rotation_view(auto)["mode"] == "auto" and rotation_view(auto)["grace_period"] == "12h"

    manual = rotate_request(ca, mode="manual", target_phase="init", now=T0)
    assert rotation_view(manual)["mode"] == "manual"
    clients = rotate_request(manual, mode="manual", target_phase="update_clients", now=T0)
    assert current_phase(clients) is Phase.UPDATE_CLIENTS

    # Manual step on an auto rotation takes it over.
    took = rotate_request(auto, mode="manual", target_phase="update_clients", now=T0)
    assert rotation_view(took)["mode"] == "manual"

    # Rollback in either mode.
    assert current_phase(rotate_request(auto, mode="auto", target_phase="rollback", now=T0)) is Phase.ROLLBACK
    assert current_phase(rotate_request(clients, mode="manual", target_phase="rollback", now=T0)) is Phase.ROLLBACK

    hint = r"use manual mode \(tctl auth rotate --type=host --manual --phase=update_clients\)"
    with pytest.raises(BadParameter, match=hint):
        rotate_request(auto, mode="auto", target_phase="update_clients", now=T0)
    with pytest.raises(BadParameter, match="needs a target phase: the host CA is in standby; allowed: init"):
        rotate_request(ca, mode="manual", now=T0)
    with pytest.raises(BadParameter, match="grace period applies to auto rotation only"):
        rotate_request(ca, mode="manual", target_phase="init", grace_period="1h", now=T0)
    with pytest.raises(BadParameter, match="not to a rollback"):
        rotate_request(manual, mode="auto", target_phase="rollback", grace_period="1h", now=T0)


# ---------------------------------------------------------------------------- max age


def test_is_rotation_due_by_active_key_age(ca):
    created = ca.active.created
    age = timedelta(days=90)
    assert not is_rotation_due(ca, age, created + age - SECOND)
    assert is_rotation_due(ca, age, created + age)
    init = start_rotation(ca, "manual", None, T0)
    assert not is_rotation_due(init, age, T0 + timedelta(days=1000))  # already rotating
    done = at_phase(ca, "update_servers")
    done = advance(done, "standby", T0 + timedelta(hours=1))
    assert not is_rotation_due(done, age, T0 + timedelta(days=89))  # the new key is young
    assert is_rotation_due(done, age, T0 + timedelta(days=90))
    with pytest.raises(BadParameter, match="max_age must be a positive duration"):
        is_rotation_due(ca, timedelta(0), T0)


# ---------------------------------------------------------------------------- real signatures


def test_host_certs_verify_across_phases(ca):
    init = start_rotation(ca, "manual", None, T0)
    old, new = init.active, init.additional_trusted[0]
    clients = advance(init, "update_clients", T0)
    servers = advance(clients, "update_servers", T0)
    done = advance(servers, "standby", T0)

    # Signed at init (by the old key): still verifies with the trust of update_clients/servers.
    cert_init = host_cert(init.active)
    for authority in (init, clients, servers):
        info = parse_host_ssh_cert(cert_init, trusted_ca_keys=authority.trusted_ssh_public_keys())
        assert info.ca_public_key == old.ssh_public_key
    # At init the new key is already trusted (agents add it before anything is signed with it).
    parse_host_ssh_cert(host_cert(new), trusted_ca_keys=init.trusted_ssh_public_keys())

    # Signed at update_clients (by the new key): verifies at update_servers and after standby.
    cert_clients = host_cert(clients.active)
    assert parse_host_ssh_cert(cert_clients).ca_public_key == new.ssh_public_key
    parse_host_ssh_cert(cert_clients, trusted_ca_keys=servers.trusted_ssh_public_keys())
    parse_host_ssh_cert(cert_clients, trusted_ca_keys=done.trusted_ssh_public_keys())

    # After standby only new-key certs verify.
    with pytest.raises(AccessDenied):
        parse_host_ssh_cert(cert_init, trusted_ca_keys=done.trusted_ssh_public_keys())
    parse_host_ssh_cert(host_cert(done.active), trusted_ca_keys=done.trusted_ssh_public_keys())


def test_tls_identities_verify_across_phases(ca):
    init = start_rotation(ca, "manual", None, T0)
    clients = advance(init, "update_clients", T0)
    servers = advance(clients, "update_servers", T0)
    done = advance(servers, "standby", T0)
    leaf_init, leaf_clients = tls_host_cert(init.active), tls_host_cert(clients.active)
    for authority in (init, clients, servers):
        assert issuing_ca_matches(leaf_init, authority.trusted_tls_certs())
        assert issuing_ca_matches(leaf_clients, authority.trusted_tls_certs())
    assert issuing_ca_matches(leaf_clients, done.trusted_tls_certs())
    assert not issuing_ca_matches(leaf_init, done.trusted_tls_certs())


def test_user_ca_rotation_user_certs():
    user = new_cert_authority(CAType.USER, CLUSTER, T0)
    clients = advance(advance(user, "init", T0), "update_clients", T0)
    _, public = generate_ssh_keypair()
    old_cert = generate_user_ssh_cert(user.active, public, username="bob", logins=["bob"], roles=["access"])
    new_cert = generate_user_ssh_cert(clients.active, public, username="bob", logins=["bob"], roles=["access"])
    parse_user_ssh_cert(old_cert, clients.trusted_ssh_public_keys())
    parse_user_ssh_cert(new_cert, clients.trusted_ssh_public_keys())
    done = advance(advance(clients, "update_servers", T0), "standby", T0)
    parse_user_ssh_cert(new_cert, done.trusted_ssh_public_keys())
    with pytest.raises(AccessDenied):
        parse_user_ssh_cert(old_cert, done.trusted_ssh_public_keys())


# ---------------------------------------------------------------------------- backend


async def seed(backend) -> None:
    for ca_type in (CAType.HOST, CAType.USER):
        authority = new_cert_authority(ca_type, CLUSTER, T0 - timedelta(days=100))
        await backend.create(Item(key=_ca_key(ca_type), value=json.dumps(authority.to_dict(True)).encode()))


async def stored(backend, ca_type=CAType.HOST) -> CertAuthority:
    return CertAuthority.from_dict(json.loads((await backend.get(_ca_key(ca_type))).value))


@pytest.fixture
async def backend(tmp_path):
    be = open_backend({"type": "sqlite"}, tmp_path, sweep_interval=None)
    await seed(be)
    yield be
    await be.close()


class Interleaved:
    """A backend whose ``get`` of a key runs ``meanwhile`` right after the read, as a second auth
    server or admin command would between our read and our compare-and-swap."""

    def __init__(self, real, meanwhile, times=1):
        self.real = real
        self.meanwhile = meanwhile
        self.times = times
        self.gets = 0

    def __getattr__(self, name):
        return getattr(self.real, name)

    async def get(self, key):
        item = await self.real.get(key)
        self.gets += 1
        if self.times:
            self.times -= 1
            await self.meanwhile()
        return item


async def test_manager_manual_path_and_views(backend):
    manager = RotationManager(backend, _ca_key)
    old = (await stored(backend)).active
    view = await manager.rotate("host", mode="manual", target_phase="init", now=T0)
    assert view["phase"] == "init" and view["mode"] == "manual"
    new = (await stored(backend)).additional_trusted[0]
    for phase in ("update_clients", "update_servers"):
        assert (await manager.rotate(CAType.HOST, mode="manual", target_phase=phase, now=T0))["phase"] == phase
    assert_keys(await stored(backend), signer=new, trusted=[new, old])
    done = await manager.rotate("host", mode="manual", target_phase="standby", now=T0 + SECOND)
    assert done["state"] == "standby" and done["last_rotated"] == (T0 + SECOND).isoformat()
    assert_keys(await stored(backend), signer=new, trusted=[new])
    assert await manager.view("host") == done
    # The user CA rotates on its own and was not touched.
    assert (await manager.view("user"))["phase"] == "standby"
    assert (await stored(backend, CAType.USER)).additional_trusted == []

    with pytest.raises(BadParameter, match=r"^cannot move the host CA from standby to update_servers: allowed: init$"):
        await manager.rotate("host", mode="manual", target_phase="update_servers", now=T0)


async def test_auto_rotation_survives_auth_restarts(tmp_path):
    be = open_backend({"type": "sqlite"}, tmp_path, sweep_interval=None)
    await seed(be)
    old = (await stored(be)).active
    await RotationManager(be, _ca_key).rotate("host", mode="auto", grace_period="30h", now=T0)
    new = (await stored(be)).additional_trusted[0]
    await be.close()

    # Restart 1, a third of the way in: the stored schedule moves the CA on.
    be = open_backend({"type": "sqlite"}, tmp_path, sweep_interval=None)
    manager = RotationManager(be, _ca_key)
    assert (await manager.view("host"))["phase"] == "init"
    assert await manager.tick(T0 + timedelta(hours=9)) == {}
    moved = await manager.tick(T0 + timedelta(hours=10))
    assert list(moved) == ["host"] and moved["host"]["phase"] == "update_clients"
    await be.close()

    # Restart 2, long after the grace period: one step per tick.
    be = open_backend({"type": "sqlite"}, tmp_path, sweep_interval=None)
    manager = RotationManager(be, _ca_key)
    late = T0 + timedelta(days=7)
    assert_keys(await stored(be), signer=new, trusted=[new, old])
    assert (await manager.apply_due("host", late))["phase"] == "update_servers"
    assert (await manager.apply_due("host", late))["phase"] == "standby"
    assert await manager.apply_due("host", late) is None
    assert_keys(await stored(be), signer=new, trusted=[new])
    await be.close()

    be = open_backend({"type": "sqlite"}, tmp_path, sweep_interval=None)
    view = await RotationManager(be, _ca_key).view("host")
    assert view["state"] == "standby" and view["last_rotated"] == late.isoformat()
    await be.close()


async def test_concurrent_init_one_wins_the_other_sees_the_new_state(backend):
    theirs = []

    def their_factory(ca_type, cluster, now):
        theirs.append(generate_ca_keypair(ca_type, cluster, now))
        return theirs[-1]

    other = RotationManager(backend, _ca_key, new_keypair_factory=their_factory)
    racing = Interleaved(backend, lambda: other.rotate("host", mode="manual", target_phase="init", now=T0))
    ours = RotationManager(racing, _ca_key)

    with pytest.raises(BadParameter) as err:
        await ours.rotate("host", mode="manual", target_phase="init", now=T0)
    # Our first swap failed (the CA changed after we read it); the retry saw init.
    assert racing.gets == 2
    assert err.value.message == "cannot move the host CA from init to init: allowed: update_clients, rollback"
    current = await stored(backend)
    assert len(theirs) == 1 and current.additional_trusted[0].ssh_public_key == theirs[0].ssh_public_key


async def test_stale_write_is_retried_on_fresh_state(backend):
    """A step decided on a stale read is never written: it is decided again on the fresh CA."""
    await RotationManager(backend, _ca_key).rotate("host", mode="manual", target_phase="init", now=T0)

    async def admin_rolls_back():
        await RotationManager(backend, _ca_key).rotate("host", mode="manual", target_phase="rollback", now=T0)

    racing = Interleaved(backend, admin_rolls_back)
    with pytest.raises(BadParameter, match="from rollback to update_clients: allowed: standby"):
        await RotationManager(racing, _ca_key).rotate("host", mode="manual", target_phase="update_clients", now=T0)
    assert (await RotationManager(backend, _ca_key).view("host"))["phase"] == "rollback"


async def test_two_auth_timers_apply_a_due_step_once(backend):
    await RotationManager(backend, _ca_key).rotate("host", mode="auto", grace_period="3h", now=T0)
    late = T0 + timedelta(hours=5)  # every step is overdue
    server_b = RotationManager(backend, _ca_key)
    server_a = RotationManager(Interleaved(backend, lambda: server_b.apply_due("host", late)), _ca_key)
    # B applies update_clients between A's read and A's swap; A re-reads and finds the next step
    # (update_servers) due too, so A applies exactly that one: two steps in all, none twice.
    view = await server_a.apply_due("host", late)
    assert view["phase"] == "update_servers"
    assert (await stored(backend)).rotation["phase"] == "update_servers"


async def test_auto_timers_race_for_the_final_step(backend):
    manager = RotationManager(backend, _ca_key)
    await manager.rotate("host", mode="auto", grace_period="3h", now=T0)
    await manager.apply_due("host", T0 + timedelta(hours=1))
    await manager.apply_due("host", T0 + timedelta(hours=2))
    end = T0 + timedelta(hours=3)
    server_b = RotationManager(backend, _ca_key)
    server_a = RotationManager(Interleaved(backend, lambda: server_b.apply_due("host", end)), _ca_key)
    assert await server_a.apply_due("host", end) is None  # B completed it; nothing left for A
    view = await manager.view("host")
    assert view["state"] == "standby" and view["last_rotated"] == end.isoformat()


async def test_cas_gives_up_when_the_ca_keeps_changing(backend):
    counter = {"n": 0}

    async def someone_else_writes():
        counter["n"] += 1
        authority = await stored(backend)
        authority.rotation["touched"] = counter["n"]
        await backend.put(Item(key=_ca_key(CAType.HOST), value=json.dumps(authority.to_dict(True)).encode()))

    racing = Interleaved(backend, someone_else_writes, times=100)
    manager = RotationManager(racing, _ca_key, max_attempts=3)
    with pytest.raises(CompareFailed, match=r"host CA kept changing .* \(3 attempts\)"):
        await manager.rotate("host", mode="manual", target_phase="init", now=T0)
    assert racing.gets == 3
    assert (await stored(backend)).rotation["phase"] == "standby"


async def test_auth_service_signs_and_trusts_per_phase(tmp_path):
    """The auth service reads what the manager stores: it signs with ``active`` and hands out
    every trusted key and CA pin, so no signing code changes for rotation."""
    be = open_backend({"type": "sqlite"}, tmp_path, sweep_interval=None)
    try:
        auth = AuthService(be, AuthConfig(enabled=True, cluster_name=CLUSTER), tmp_path)
        await auth.init()
        manager = RotationManager(be, _ca_key)
        old = (await auth.get_ca(CAType.HOST)).active

        async def issue():
            _, ssh_public = generate_ssh_keypair()
            _, tls_public = generate_tls_keypair()
            return await auth.issue_host_identity(
                host_uuid="uuid-1", nodename="node1", role="Node",
                ssh_public_key=ssh_public, tls_public_key=tls_public,
            )

        await manager.rotate("host", mode="manual", target_phase="init")
        new = (await auth.get_ca(CAType.HOST)).additional_trusted[0]
        ident = await issue()
        assert parse_host_ssh_cert(ident["ssh_cert"]).ca_public_key == old.ssh_public_key
        assert set(ident["host_ca_keys"]) == keys(old, new)
        assert len(await auth.ca_pins()) == 2

        await manager.rotate("host", mode="manual", target_phase="update_clients")
        ident = await issue()
        assert parse_host_ssh_cert(ident["ssh_cert"], ident["host_ca_keys"]).ca_public_key == new.ssh_public_key
        assert issuing_ca_matches(ident["tls_cert"].encode(), [new.tls_cert])

        await manager.rotate("host", mode="manual", target_phase="update_servers")
        await manager.rotate("host", mode="manual", target_phase="standby")
        assert (await auth.public_cas())["host_ca_keys"] == [new.ssh_public_key]
        assert len(await auth.ca_pins()) == 1
        status = await auth.status()
        host_status = next(c for c in status["cas"] if c["type"] == "host")
        assert host_status["rotation"]["state"] == "standby"
    finally:
        await be.close()
