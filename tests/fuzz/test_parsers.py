"""Properties of the parsers where outside text enters: durations, ``host:port`` addresses, the
proxy's ``proxy:HOST:PORT@CLUSTER`` subsystem and node names, label selectors (``env=prod``) and
role label matching, session IDs. Good input round-trips; bad input gets the parser's own error
type (BadParameter; ValueError for the subsystem), never another exception."""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from teleport_runtime.config import LABEL_KEY, HostPort, parse_host_port, parse_labels, validate_labels
from teleport_runtime.durations import MAX_DURATION, format_duration, parse_duration
from teleport_runtime.errors import BadParameter
from teleport_runtime.names import is_host_name
from teleport_runtime.proxy.directory import NodeRecord, check_target, match_nodes
from teleport_runtime.proxy.ssh import parse_proxy_subsystem
from teleport_runtime.rbac import match_labels, parse_role
from teleport_runtime.recording.asciicast import check_session_id
from tests.fuzz.conftest import FUZZ, junk_json, junk_text

pytestmark = pytest.mark.fuzz

anything = st.one_of(junk_json, junk_text, st.text(alphabet=st.characters(max_codepoint=0x7f), max_size=30))

dns_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
dns_name = st.lists(dns_label, min_size=1, max_size=4).map(".".join)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
host = st.one_of(dns_name, ipv4, ipv6)
port = st.integers(min_value=0, max_value=65535)


# ---------------------------------------------------------------------------- durations

UNITS = {"ms": timedelta(milliseconds=1), "s": timedelta(seconds=1), "m": timedelta(minutes=1),
         "h": timedelta(hours=1), "d": timedelta(days=1)}


@FUZZ
@given(parts=st.lists(st.tuples(st.integers(0, 1000), st.sampled_from(list(UNITS))), min_size=1, max_size=4))
def test_duration_parts_add_up(parts: list[tuple[int, str]]) -> None:
    text = "".join(f"{n}{unit}" for n, unit in parts)
    assert parse_duration(text) == sum((n * UNITS[unit] for n, unit in parts), timedelta())


@FUZZ
@given(seconds=st.integers(0, int(MAX_DURATION.total_seconds())))
def test_duration_format_round_trips(seconds: int) -> None:
    delta = timedelta(seconds=seconds)
    assert parse_duration(format_duration(delta)) == delta


@FUZZ
@given(value=st.one_of(anything, st.floats(allow_nan=True, allow_infinity=True), st.integers()))
def test_duration_junk_is_bad_parameter(value: Any) -> None:
    try:
        parsed = parse_duration(value)
    except BadParameter as exc:
        assert "30s, 5m, 12h or 1h30m" in exc.message
    else:
        assert timedelta(0) <= parsed <= MAX_DURATION


# ---------------------------------------------------------------------------- host:port


@FUZZ
@given(host=host, port=port)
def test_host_port_round_trips(host: str, port: int) -> None:
    addr = HostPort(host, port)
    assert parse_host_port(str(addr), 1, "addr") == addr
    if ":" not in host:
        assert parse_host_port(host, port, "addr") == addr


@FUZZ
@given(text=anything)
def test_host_port_junk_is_bad_parameter_naming_the_key(text: Any) -> None:
    try:
        addr = parse_host_port(text, 3025, "teleport.auth_servers")
    except BadParameter as exc:
        assert exc.message.startswith("teleport.auth_servers: ")
    else:
        assert 0 <= addr.port <= 65535
        assert addr.host == "" or is_host_name(addr.host) or ipaddress.ip_address(addr.host.split("%")[0])


# ---------------------------------------------------------------------------- the proxy's targets

cluster_name = dns_name


@FUZZ
@given(host=host, port=st.none() | port, cluster=st.none() | cluster_name)
def test_subsystem_round_trips(host: str, port: int | None, cluster: str | None) -> None:
    text = "proxy:" + (f"[{host}]" if ":" in host else host)
    text += f":{port}" if port is not None else ""
    text += f"@{cluster}" if cluster is not None else ""
    assert parse_proxy_subsystem(text) == (host, port, cluster)


@FUZZ
@given(text=st.one_of(anything, junk_text.map(lambda s: "proxy:" + s),
                      st.tuples(dns_name, junk_text).map(lambda t: f"proxy:{t[0]}:{t[1]}")))
def test_subsystem_junk_is_value_error(text: Any) -> None:
    assume(isinstance(text, str))
    try:
        host, port, cluster = parse_proxy_subsystem(text)
    except ValueError as exc:
        assert repr(text)[:20] in str(exc) or "subsystem" in str(exc)
    else:
        assert is_host_name(host) or ipaddress.IPv6Address(host)
        assert port is None or 0 <= port <= 65535
        assert cluster is None or is_host_name(cluster)


NODES = [NodeRecord.from_dict({"id": "0b7f6bd5-6a9e-4f8e-9d3a-2f0c2d6b1c11", "hostname": "node1",
                               "addr": "10.0.0.5:3022"}),
         NodeRecord.from_dict({"id": "1c8a7ce6-7bae-4f9f-8e4b-3a1d3e7c2d22", "hostname": "db",
                               "addr": "[fd00::5]:3022"})]


@FUZZ
@given(target=st.one_of(anything, host, st.sampled_from(["node1", "NODE1.", "node1.c.test", "[fd00::5]", "db\n"])))
def test_node_names_are_checked_before_matching(target: Any) -> None:
    try:
        check_target(target)
    except BadParameter as exc:
        assert "invalid node name" in exc.message
        return
    assert not any(c.isspace() for c in target)
    for node in match_nodes(NODES, target, "c.test"):
        assert node in NODES


@pytest.mark.parametrize("target", ["node1", "NODE1", "node1.", "node1.c.test", "10.0.0.5", "[fd00::5]", "fd00::5",
                                    "0b7f6bd5-6a9e-4f8e-9d3a-2f0c2d6b1c11"])
def test_good_node_names_find_their_node(target: str) -> None:
    assert check_target(target) == target
    assert len(match_nodes(NODES, target, "c.test")) == 1


# ---------------------------------------------------------------------------- labels

label_key = st.from_regex(r"[a-zA-Z0-9/._-]{1,20}", fullmatch=True)
label_value = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e, exclude_characters=","),
                      max_size=20)


@FUZZ
@given(labels=st.dictionaries(label_key, label_value, min_size=1, max_size=5))
def test_label_selector_round_trips(labels: dict[str, str]) -> None:
    text = ",".join(f"{k}={v}" for k, v in labels.items())
    assert parse_labels(text) == labels


@FUZZ
@given(text=anything)
def test_label_selector_junk_is_bad_parameter(text: Any) -> None:
    assume(isinstance(text, str))
    try:
        labels = parse_labels(text, "--labels")
    except BadParameter as exc:
        assert exc.message.startswith("--labels: ")
    else:
        assert all(LABEL_KEY.fullmatch(k) for k in labels)
        assert not any(c in v for v in labels.values() for c in "\n\r\x00")


@FUZZ
@given(labels=st.dictionaries(st.one_of(junk_text, label_key), junk_json, max_size=4))
def test_label_maps_are_checked(labels: dict[Any, Any]) -> None:
    try:
        out = validate_labels(labels, "heartbeat labels")
    except BadParameter as exc:
        assert exc.message.startswith("heartbeat labels: ")
    else:
        assert all(isinstance(v, str) and "\n" not in v for v in out.values())


def role_with(selector: Any) -> dict[str, Any]:
    return {"kind": "role", "version": "v1", "metadata": {"name": "r"},
            "spec": {"allow": {"logins": ["root"], "node_labels": selector}}}


@FUZZ
@given(selector=st.one_of(junk_json, st.dictionaries(label_key, st.one_of(junk_text, st.lists(junk_text, max_size=3)))),
       labels=st.dictionaries(label_key, junk_text, max_size=3))
def test_role_label_selectors(selector: Any, labels: dict[str, str]) -> None:
    try:
        role = parse_role(role_with(selector))
    except BadParameter as exc:
        assert "node_labels" in exc.message
        return
    assert match_labels(role.allow.node_labels, labels) in (True, False)


@pytest.mark.parametrize(("selector", "value", "matches"), [
    ("prod", "prod", True), ("prod", "prod\n", False), ("^prod$", "prod\n", False), ("^prod$", "prod", True),
    ("pro*", "production", True), ("pro*", "pro\n", True), ("^pro.*$", "pro\nx", False), ("*", "\n", True),
])
def test_label_value_matching_is_whole_value(selector: str, value: str, matches: bool) -> None:
    """A selector matches the whole value: a regex's ``$`` does not stop before a trailing newline
    (a glob's ``*`` matches any characters, newlines included, as it always did)."""
    assert match_labels({"env": (selector,)}, {"env": value}) is matches


# ---------------------------------------------------------------------------- session IDs

session_id = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", fullmatch=True).filter(lambda s: ".." not in s)


@FUZZ
@given(value=session_id)
def test_session_ids_round_trip(value: str) -> None:
    assert check_session_id(value) == value


@FUZZ
@given(value=st.one_of(anything, st.uuids().map(lambda u: f"{u}\n"), st.uuids().map(lambda u: f"../{u}")))
def test_session_id_junk_is_bad_parameter(value: Any) -> None:
    try:
        checked = check_session_id(value)
    except BadParameter as exc:
        assert "invalid session ID" in exc.message
    else:
        assert "/" not in checked and ".." not in checked and checked.isascii() and checked.isprintable()


# ---------------------------------------------------------------------------- role documents


def role_doc() -> st.SearchStrategy[dict[str, Any]]:
    """Role documents from the known keys, any of them junk or missing."""
    conditions = st.fixed_dictionaries({}, optional={
        "logins": st.one_of(junk_json, st.lists(st.one_of(junk_text, st.just("{{internal.logins}}")), max_size=3)),
        "node_labels": st.one_of(junk_json, st.dictionaries(st.one_of(label_key, junk_text), junk_json, max_size=3)),
        "rules": st.one_of(junk_json, st.lists(st.fixed_dictionaries({}, optional={
            "resources": junk_json, "verbs": st.one_of(junk_json, st.lists(st.sampled_from(["list", "read", "*"])))}),
            max_size=2)),
    })
    spec = st.fixed_dictionaries({}, optional={
        "allow": st.one_of(conditions, junk_json), "deny": st.one_of(conditions, junk_json),
        "options": st.one_of(junk_json, st.fixed_dictionaries({}, optional={
            "max_session_ttl": junk_json, "forward_agent": junk_json, "port_forwarding": junk_json})),
    })
    return st.fixed_dictionaries({
        "kind": st.one_of(st.just("role"), junk_json), "version": st.one_of(st.just("v1"), junk_json),
        "metadata": st.one_of(st.fixed_dictionaries({"name": st.one_of(st.just("r"), junk_json)}), junk_json),
        "spec": st.one_of(spec, junk_json),
    })


@FUZZ
@given(doc=role_doc())
def test_role_documents_are_a_role_or_bad_parameter(doc: dict[str, Any]) -> None:
    try:
        role = parse_role(doc)
    except BadParameter as exc:
        assert exc.message.startswith("role")
    else:
        # junk names that are valid role names ("0") are accepted as they are
        assert role.name == doc["metadata"]["name"]
        assert parse_role(role.to_dict()) == role
