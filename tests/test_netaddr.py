"""The address rules (teleport_runtime/netaddr.py): parsing, formatting, wildcards, advertising."""

from __future__ import annotations

from pathlib import Path

import pytest

from teleport_runtime.auth.service import AuthService
from teleport_runtime.backend import open_backend
from teleport_runtime.config import config_from_dict
from teleport_runtime.errors import BadParameter, ConfigError
from teleport_runtime.netaddr import (
    HostPort,
    advertised,
    format_host_port,
    is_wildcard,
    parse_host_port,
    split_fields,
    split_host,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("auth.example.com:3025", HostPort("auth.example.com", 3025)),
        ("auth.example.com", HostPort("auth.example.com", 9)),
        ("10.0.0.5:22", HostPort("10.0.0.5", 22)),
        ("[::1]:3025", HostPort("::1", 3025)),
        ("[2001:db8::1]", HostPort("2001:db8::1", 9)),
        ("2001:db8::1", HostPort("2001:db8::1", 9)),
        (":3080", HostPort("", 3080)),
        ("  node1:0 ", HostPort("node1", 0)),
    ],
)
def test_parse_host_port(text: str, expected: HostPort) -> None:
    assert parse_host_port(text, 9) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty address"),
        ("[::1", "invalid address"),
        ("[::1]x", "invalid address"),
        ("[node1]:22", "is not an IPv6 address"),
        ("a:b:c", "invalid address"),
        ("node 1:22", "invalid host"),
        ("node1:http", "invalid port"),
        ("node1:65536", "out of range"),
    ],
)
def test_parse_host_port_refuses_with_the_form_expected(text: str, problem: str) -> None:
    with pytest.raises(BadParameter) as err:
        parse_host_port(text, 22, "ssh_service.listen_addr")
    assert problem in err.value.message
    assert err.value.message.startswith("ssh_service.listen_addr: ")
    assert "host:port" in err.value.message


@pytest.mark.parametrize("host", ["::1", "2001:db8::1", "10.0.0.1", "node1", ""])
@pytest.mark.parametrize("port", [0, 22, 65535])
def test_format_then_parse_is_the_same_address(host: str, port: int) -> None:
    text = format_host_port(host, port)
    assert parse_host_port(text, 1) == HostPort(host, port)
    assert str(HostPort(host, port)) == text
    assert split_host(text) == host


@pytest.mark.parametrize("host", ["", "0.0.0.0", "::", "[::]", "0:0::0", " 0.0.0.0 "])
def test_wildcards(host: str) -> None:
    assert is_wildcard(host)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "node1", "0.0.0.1", "[::1]"])
def test_not_wildcards(host: str) -> None:
    assert not is_wildcard(host)


def test_a_wildcard_dials_loopback_of_its_family() -> None:
    assert HostPort("0.0.0.0", 3025).dialable() == HostPort("127.0.0.1", 3025)
    assert HostPort("", 3025).dialable() == HostPort("127.0.0.1", 3025)
    assert HostPort("::", 3025).dialable() == HostPort("::1", 3025)
    assert HostPort("10.1.2.3", 3025).dialable() == HostPort("10.1.2.3", 3025)


def test_advertised_address_order() -> None:
    everywhere = HostPort("0.0.0.0", 3022)
    public = HostPort("node.example.com", 443)
    assert advertised(public, everywhere, advertise_ip="10.0.0.5", fallbacks=["x"]) == public
    assert advertised(None, everywhere, bound_port=4000, advertise_ip="10.0.0.5") == HostPort("10.0.0.5", 4000)
    assert advertised(None, HostPort("10.0.0.6", 3022), fallbacks=["x"]) == HostPort("10.0.0.6", 3022)
    assert advertised(None, everywhere, fallbacks=["", "::", "proxy.example.com"]) == HostPort(
        "proxy.example.com", 3022
    )
    # Nothing better known: the wildcard stays, for the receiver to replace with what it sees.
    assert advertised(None, everywhere, bound_port=5000) == HostPort("0.0.0.0", 5000)


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        ("8080:node1:22", ["8080", "node1", "22"]),
        ("127.0.0.1:8080:node1:22", ["127.0.0.1", "8080", "node1", "22"]),
        ("8080:[::1]:22", ["8080", "::1", "22"]),
        ("[::1]:8080:[2001:db8::1]:22", ["::1", "8080", "2001:db8::1", "22"]),
        ("8080:[node1]:22", None),
        ("8080:[::1:22", None),
        ("8080:x[::1]:22", None),
    ],
)
def test_split_fields_of_a_forward_spec(text: str, fields: list[str] | None) -> None:
    assert split_fields(text) == fields


def test_auth_public_addr_is_checked_where_it_enters() -> None:
    doc = {"version": "v1", "teleport": {"nodename": "n"},
           "auth_service": {"enabled": True, "public_addr": ["auth.example.com", "auth example:3025"]}}
    with pytest.raises(ConfigError) as err:
        config_from_dict(doc, "teleport.yaml")
    assert err.value.message.startswith("teleport.yaml: auth_service.public_addr[1]: ")
    assert "invalid host 'auth example'" in err.value.message
    assert "host:port" in err.value.message


@pytest.mark.parametrize(
    ("public", "listen", "expected"),
    [
        (["auth.example.com"], "0.0.0.0:3025", "auth.example.com:3025"),
        (["auth.example.com:443", "other"], "0.0.0.0:3025", "auth.example.com:443"),
        (["2001:db8::1"], "0.0.0.0:3025", "[2001:db8::1]:3025"),
        ([], "10.1.2.3:3025", "10.1.2.3:3025"),
        ([], "[::1]:3025", "[::1]:3025"),
    ],
)
async def test_auth_advertises_its_public_address_else_its_listen_address(
    public: list[str], listen: str, expected: str, tmp_path: Path
) -> None:
    doc = {"version": "v1", "teleport": {"nodename": "n"},
           "auth_service": {"enabled": True, "public_addr": public, "listen_addr": listen}}
    cfg = config_from_dict(doc, "teleport.yaml")
    backend = open_backend(None, tmp_path)
    try:
        assert AuthService(backend, cfg.auth, tmp_path).advertise_addr() == expected
    finally:
        await backend.close()
