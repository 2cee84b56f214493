"""The collection's own copies of the runtime's rules (it runs on hosts without the runtime) agree
with the runtime over a table of cases: durations, host:port, host names, rotation phases.

When one of these fails, the rule changed on one side: change the other to match (the runtime's
module is named in each copy's docstring).
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from ansible_collections.teleport_access.cluster.plugins.inventory.nodes import (
    address_host,
    valid_address_host,
    valid_dns_name,
)
from ansible_collections.teleport_access.cluster.plugins.module_utils import ca_rotation
from ansible_collections.teleport_access.cluster.plugins.module_utils.durations import duration_seconds

from teleport_runtime import rotation_phases
from teleport_runtime.durations import MAX_DURATION, parse_duration
from teleport_runtime.errors import BadParameter
from teleport_runtime.names import ip_literal, is_host_name
from teleport_runtime.netaddr import split_host
from tests.ansible.conftest import ALLOWED_NEXT as FAKE_ALLOWED_NEXT

REPO = Path(__file__).resolve().parents[2]

DURATIONS = [
    "0", "0s", "45", "1.5", "30s", "5m", "12h", "90d", "2w", "1h30m", "1w2d3h4m5s6ms", "500ms", "1.5h",
    "0.25s", " 5m ", "\t5m", "5m\n", "", " ", "1y", "-1s", "+5m", "1h 30m", "d", "h1", "1", "1e3", "1e400s",
    "inf", "nan", "5M", "5 m", "\u0661m", "1..5s", "1.s", ".5s", "1h30", "30m1h", "ms", "5mm", "5sm",
    "9" * 20 + "d", "36500d", "36501d", "5200w", "5220w", 0, 45, 1.5, -1, float("inf"), float("nan"), True, None,
    [5], {"m": 5},
]


def _runtime_seconds(value: object) -> float | None:
    try:
        return parse_duration(value).total_seconds()  # type: ignore[arg-type]
    except BadParameter:
        return None


@pytest.mark.parametrize("value", DURATIONS, ids=repr)
def test_durations_module_utils(value: object) -> None:
    assert duration_seconds(value) == _runtime_seconds(value)


@pytest.mark.parametrize("value", [v for v in DURATIONS if isinstance(v, str)], ids=repr)
def test_durations_ca_rotation_max_age(value: str) -> None:
    runtime = _runtime_seconds(value)
    if runtime is None:
        with pytest.raises(ca_rotation.TctlError):
            ca_rotation.parse_duration(value)
    else:
        assert ca_rotation.parse_duration(value) == runtime


@pytest.mark.parametrize("value", [v for v in DURATIONS if isinstance(v, str) and v.strip(" \t") == v], ids=repr)
def test_durations_node_role_pattern(value: str) -> None:
    """roles/node checks command label periods with a Jinja ``match`` on this pattern (the bound
    on the length is left to the runtime)."""
    pattern = yaml.safe_load((REPO / "roles/node/vars/main.yml").read_text())["_node_duration_pattern"]
    try:
        parse_duration(value)
        in_grammar = True
    except BadParameter as exc:
        in_grammar = "longer than" in exc.message
    assert (re.match(pattern, value) is not None) == in_grammar


def test_duration_bound_is_the_runtimes() -> None:
    from ansible_collections.teleport_access.cluster.plugins.module_utils.durations import MAX_SECONDS

    assert timedelta(seconds=MAX_SECONDS) == MAX_DURATION


ADDRESSES = [
    "node1", "node1:3022", "10.0.0.1:3022", "10.0.0.1", "[::1]:3022", "[2001:db8::1]", "2001:db8::1", "::1",
    ":3022", "node1.example.com:22", "[::1", "a:b:c", "node_1:22",
]


@pytest.mark.parametrize("addr", ADDRESSES)
def test_address_host_inventory(addr: str) -> None:
    """The inventory's host part of a node's reported address is the runtime's (None: empty)."""
    expected = split_host(addr) if not (addr.startswith("[") and "]" not in addr) else None
    assert address_host(addr) == (expected or None)


NAMES = [
    "node1", "node1.example.com", "a", "a" * 63, "a" * 64, "-node", "node-", "node.", ".node", "no de",
    "node*", "a..b", "x" * 254, "node\n", "nœud", "10.0.0.1", "::1", "node_1", "_node",
]


@pytest.mark.parametrize("name", NAMES, ids=repr)
def test_host_names_inventory(name: str) -> None:
    """The inventory's name check is the runtime's, without ``_`` (a name reaches OpenSSH's
    command line): it never accepts a name the runtime refuses."""
    if valid_dns_name(name):
        assert is_host_name(name)
    if "_" not in name:
        assert valid_dns_name(name) == is_host_name(name)
    assert valid_address_host(name) == (ip_literal(name) is not None or valid_dns_name(name))


# ---------------------------------------------------------------------------- rotation phases


def test_phases() -> None:
    assert set(ca_rotation.PHASES) == {p.value for p in rotation_phases.Phase}


def test_allowed_next() -> None:
    runtime = {p.value: [n.value for n in nexts] for p, nexts in rotation_phases.ALLOWED_NEXT.items()}
    assert {p: list(nexts) for p, nexts in ca_rotation.ALLOWED_NEXT.items()} == runtime
    assert FAKE_ALLOWED_NEXT == runtime


def test_walk_and_rollback() -> None:
    assert list(ca_rotation.ROTATION_WALK) == [p.value for p in rotation_phases.WALK]
    assert list(ca_rotation.ROLLBACK_FROM) == [p.value for p in rotation_phases.ROLLBACK_FROM]


@pytest.mark.parametrize("phase", [p.value for p in rotation_phases.Phase])
def test_remaining_walk(phase: str) -> None:
    """What is left of a rotation in ``phase``: the runtime's walk (or rollback's one move)."""
    expected: list[str] = []
    current: rotation_phases.Phase | None = rotation_phases.Phase(phase)
    if current is rotation_phases.Phase.ROLLBACK:
        expected = [phase, *(p.value for p in rotation_phases.ALLOWED_NEXT[current])]
    elif current is not rotation_phases.Phase.STANDBY:
        while current is not None:
            expected.append(current.value)
            current = rotation_phases.next_in_walk(current)
    assert ca_rotation.remaining_walk(phase) == expected
