"""Unit tests for the parsers the cluster core relies on: durations, addresses, static tokens
and labels."""

from __future__ import annotations

from datetime import timedelta

import pytest

from teleport_runtime.config import (
    HostPort,
    StaticToken,
    parse_host_port,
    parse_labels,
    parse_static_token,
)
from teleport_runtime.durations import format_duration, parse_duration
from teleport_runtime.errors import BadParameter

# ---------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("12h", timedelta(hours=12)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("90d", timedelta(days=90)),
        ("1h30m15s", timedelta(hours=1, minutes=30, seconds=15)),
        ("500ms", timedelta(milliseconds=500)),
        ("1.5h", timedelta(minutes=90)),
        ("45", timedelta(seconds=45)),
        (" 5m ", timedelta(minutes=5)),
        (10, timedelta(seconds=10)),
        (2.5, timedelta(seconds=2.5)),
    ],
)
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "m", "5x", "5 m", "m5", "1h 30m", "-5m", "5m3", "abc", "1y"])
def test_parse_duration_rejects(text):
    with pytest.raises(BadParameter) as err:
        parse_duration(text)
    assert repr(text) in err.value.message
    assert "30s, 5m, 12h or 1h30m" in err.value.message


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(0), "0s"),
        (timedelta(seconds=59), "59s"),
        (timedelta(minutes=5), "5m"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(hours=30), "30h"),
        (timedelta(hours=1, seconds=1), "1h1s"),
    ],
)
def test_format_duration(delta, text):
    assert format_duration(delta) == text
    assert parse_duration(text) == delta


# ---------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("auth.example.com", HostPort("auth.example.com", 3025)),
        ("auth.example.com:4025", HostPort("auth.example.com", 4025)),
        ("10.0.10.5", HostPort("10.0.10.5", 3025)),
        ("10.0.10.5:3080", HostPort("10.0.10.5", 3080)),
        ("[::1]:3025", HostPort("::1", 3025)),
        ("[fe80::1]", HostPort("fe80::1", 3025)),
        ("::1", HostPort("::1", 3025)),
        (" 127.0.0.1:0 ", HostPort("127.0.0.1", 0)),
    ],
)
def test_parse_host_port(text, expected):
    assert parse_host_port(text, 3025) == expected


@pytest.mark.parametrize("text", ["", "   ", "host:abc", "host:70000", "host:-1", "a:b:c"])
def test_parse_host_port_rejects_naming_key(text):
    with pytest.raises(BadParameter) as err:
        parse_host_port(text, 3025, "teleport.auth_servers")
    assert err.value.message.startswith("teleport.auth_servers: ")


def test_host_port_str_and_dialable():
    assert str(HostPort("::1", 3025)) == "[::1]:3025"
    assert str(HostPort("10.0.0.1", 3022)) == "10.0.0.1:3022"
    assert HostPort("0.0.0.0", 3025).dialable() == HostPort("127.0.0.1", 3025)
    assert HostPort("::", 3025).dialable() == HostPort("::1", 3025)
    assert HostPort("10.1.2.3", 3025).dialable() == HostPort("10.1.2.3", 3025)


# ---------------------------------------------------------------------------- static tokens


def test_parse_static_token_value():
    assert parse_static_token("proxy,node:secret-value", "auth_service.tokens") == StaticToken(
        roles=("proxy", "node"), value="secret-value"
    )
    assert parse_static_token("Node:abc", "t").roles == ("node",)


def test_parse_static_token_file(tmp_path):
    path = tmp_path / "tokenfile"
    path.write_text("  from-a-file\n")
    token = parse_static_token(f"auth:{path}", "auth_service.tokens")
    assert token == StaticToken(roles=("auth",), value="from-a-file")


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("no-colon", "expected"),
        ("node:", "expected"),
        ("wizard:secret", "unknown role 'wizard'"),
        ("node,kube:secret", "unknown role 'kube'"),
        ("node:/nonexistent/token/file", "cannot read token file"),
    ],
)
def test_parse_static_token_rejects(spec, fragment):
    with pytest.raises(BadParameter) as err:
        parse_static_token(spec, "auth_service.tokens")
    assert err.value.message.startswith("auth_service.tokens: ")
    assert fragment in err.value.message


def test_parse_static_token_empty_file(tmp_path):
    path = tmp_path / "empty"
    path.write_text("\n")
    with pytest.raises(BadParameter, match="is empty"):
        parse_static_token(f"node:{path}", "auth_service.tokens")


# ---------------------------------------------------------------------------- labels


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("env=prod", {"env": "prod"}),
        ("env=prod,distro=ubuntu", {"env": "prod", "distro": "ubuntu"}),
        (" env = prod , role=db ", {"env": "prod", "role": "db"}),
        ("teleport.dev/origin=config,a_b-c=", {"teleport.dev/origin": "config", "a_b-c": ""}),
        ("k=v=w", {"k": "v=w"}),
        ("", {}),
        ("env=prod,", {"env": "prod"}),
    ],
)
def test_parse_labels(text, expected):
    assert parse_labels(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("env", "'env' is not key=value"),
        ("env=prod,bad", "'bad' is not key=value"),
        ("bad key=x", "invalid label key 'bad key'"),
        ("=x", "invalid label key ''"),
        ("k!=x", "invalid label key 'k!'"),
    ],
)
def test_parse_labels_rejects(text, fragment):
    with pytest.raises(BadParameter) as err:
        parse_labels(text, "--labels")
    assert err.value.message.startswith("--labels: ")
    assert fragment in err.value.message
