"""Known-bad inputs per entry point, with the exact answer expected: the auth API (status, error
code, a fragment of the message naming the field and the fix; nothing stored), the config loader
(ConfigError naming the key) and the parsers (their error and message)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from teleport_runtime.config import config_from_dict, parse_host_port, parse_labels
from teleport_runtime.durations import parse_duration
from teleport_runtime.errors import BadParameter, ConfigError
from teleport_runtime.proxy.directory import check_target
from teleport_runtime.proxy.ssh import parse_proxy_subsystem
from teleport_runtime.recording.asciicast import check_session_id
from tests.fuzz.conftest import AuthServer
from tests.fuzz.test_auth_api_bodies import assert_answer

pytestmark = pytest.mark.fuzz

JOIN = {"token": "t", "role": "node", "host_uuid": "u", "nodename": "n", "ssh_public_key": "k", "tls_public_key": "k"}
ROLE = {"kind": "role", "version": "v1", "metadata": {"name": "r\n"}, "spec": {"allow": {"logins": ["root"]}}}

# (method, path, identity, body: JSON-able or raw bytes, status, code, message fragment)
API_CASES: list[tuple[str, str, str | None, Any, int, str, str]] = [
    ("POST", "/v1/join", None, b"not json", 400, "bad_parameter", "request body is not JSON"),
    ("POST", "/v1/join", None, b"[1]", 400, "bad_parameter", "request body must be a JSON object"),
    ("POST", "/v1/join", None, b"[" * 100000, 400, "bad_parameter", "request body is not JSON"),
    ("POST", "/v1/join", None, b"\xff\xfe{}", 400, "bad_parameter", "request body is not JSON"),
    ("POST", "/v1/join", None, b'{"a": ' + b"[" * 40 + b"]" * 40 + b"}", 400, "bad_parameter",
     "nests deeper than 32 levels"),
    ("POST", "/v1/join", None, {}, 400, "bad_parameter", "POST /v1/join: 'token' is required"),
    ("POST", "/v1/join", None, {**JOIN, "addresses": 5}, 400, "bad_parameter",
     "'addresses' is a number: expected a list of strings"),
    ("POST", "/v1/join", None, {**JOIN, "nodename": "n" * 300}, 400, "bad_parameter",
     "'nodename' is longer than 256 characters"),
    ("POST", "/v1/join", None, {**JOIN, "token": "a\x00b"}, 400, "bad_parameter", "'token' holds a NUL character"),
    ("POST", "/v1/reregister", "node", {"ssh_public_key": 1, "tls_public_key": "k"}, 400, "bad_parameter",
     "'ssh_public_key' is a number: expected a string"),
    ("POST", "/v1/heartbeat", "node", {"labels": ["env"]}, 400, "bad_parameter",
     "'labels' is a list: expected an object of names to strings, such as {\"env\": \"prod\"}"),
    ("POST", "/v1/heartbeat", "node", {"labels": {"env": {"a": 1}}}, 400, "bad_parameter", "has an object under 'env'"),
    ("POST", "/v1/heartbeat", "node", {"labels": {"env\n": "x"}}, 400, "bad_parameter", "invalid label key 'env\\n'"),
    ("POST", "/v1/heartbeat", "proxy", {"cmd_labels": {"arch": "x86\n"}}, 400, "bad_parameter",
     "invalid value 'x86\\n'"),
    ("POST", "/v1/heartbeat", "node", {"version": ["1"]}, 400, "bad_parameter", "'version' is a list"),
    ("POST", "/v1/tokens", "admin", {"ttl": {"h": 1}}, 400, "bad_parameter",
     "'ttl' is an object: expected a duration such as 5m or 1h30m"),
    ("POST", "/v1/tokens", "admin", {"ttl": "99999999d"}, 400, "bad_parameter", "longer than 36500 days"),
    ("POST", "/v1/tokens", "admin", {"ttl": "5m\n"}, 400, "bad_parameter", "invalid duration '5m\\n'"),
    ("POST", "/v1/tokens", "admin", {"ttl": -5}, 400, "bad_parameter", "invalid duration -5"),
    ("POST", "/v1/tokens", "admin", {"roles": "node"}, 400, "bad_parameter",
     "'roles' is a string: expected a list of strings, such as [\"node\", \"proxy\"]"),
    ("POST", "/v1/tokens", "admin", {"token": "x" * 2000}, 400, "bad_parameter", "'token' is longer than 1024"),
    ("POST", "/v1/tokens", "node", {"roles": ["node"]}, 403, "access_denied", "is not allowed for role Node"),
    ("POST", "/v1/roles", "admin", {"role": "admin"}, 400, "bad_parameter", "'role' is a string: expected an object"),
    ("POST", "/v1/roles", "admin", {"role": ROLE}, 400, "bad_parameter", "metadata.name"),
    ("POST", "/v1/roles", "admin", {"role": {**ROLE, "metadata": {"name": "r"}}, "force": "yes"}, 400,
     "bad_parameter", "'force' is a string: expected true or false"),
    ("POST", "/v1/users", "admin", {"name": ["bob"]}, 400, "bad_parameter", "'name' is a list"),
    ("POST", "/v1/users", "admin", {"name": "bob", "roles": 1}, 400, "bad_parameter", "'roles' is a number"),
    ("POST", "/v1/users", "admin", b"{" + b" " * (5 * 1024 * 1024) + b"}", 400, "bad_parameter",
     "request body is too large"),
    ("PUT", "/v1/users/nobody", "admin", {"logins": {"root": True}}, 400, "bad_parameter", "'logins' is an object"),
    ("POST", "/v1/users/login", "proxy", {"user": "bob", "ttl": 3600}, 400, "bad_parameter",
     "'ttl' is a number: expected a string, such as \"8h\""),
    ("POST", "/v1/signup", "proxy", {"token": "t", "password": ["x"]}, 400, "bad_parameter", "'password' is a list"),
    ("POST", "/v1/certs/user", "admin", {"user": "bob", "ttl": 3600}, 400, "bad_parameter", "'ttl' is a number"),
    ("POST", "/v1/certs/host", "admin", {"names": ["h.example.com"], "ssh_public_key": "ssh-ed25519 \u00a1"}, 400,
     "bad_parameter", "'ssh_public_key' holds characters that are not ASCII"),
    ("POST", "/v1/reregister", "node", {"ssh_public_key": "ssh-ed25519 \u00a1", "tls_public_key": "k"}, 400,
     "bad_parameter", "'ssh_public_key' holds characters that are not ASCII"),
    ("POST", "/v1/certs/host", "admin", {"names": "host.example.com"}, 400, "bad_parameter",
     "'names' is a string: expected a list of strings"),
    ("POST", "/v1/audit", "node", {"event": 5}, 400, "bad_parameter", "'event' is a number"),
    ("POST", "/v1/audit", "node", {"time": "2026-01-01T00:00:00+00:00"}, 400, "bad_parameter", "'event' is required"),
    # a time inside the window an agent's events must be dated in (auth/audit.py), so only the ID is wrong
    ("POST", "/v1/audit", "node", {"event": "exec", "id": "0123456789abcdef\n", "time": datetime.now(UTC).isoformat()},
     400, "bad_parameter", "expected 16 to 64 lower-case hex digits"),
    ("POST", "/v1/authorities/host/rotate", "admin", {"grace_period": [1]}, 400, "bad_parameter",
     "'grace_period' is a list"),
    ("POST", "/v1/authorities/host/rotate", "admin", {"grace_period": "1e400"}, 400, "bad_parameter",
     "invalid duration '1e400'"),
    ("POST", "/v1/sessions/active", "node", {"id": "../x"}, 400, "bad_parameter", "invalid session ID '../x'"),
    ("POST", "/v1/sessions/active", "node", {"id": 5}, 400, "bad_parameter", "'id' is a number"),
    ("POST", "/v1/recordings/a%0A/stream?offset=0", "node", b"x", 400, "bad_parameter", "invalid session ID 'a\\n'"),
    ("POST", "/v1/recordings/abc/stream?offset=%EF%BC%91", "node", b"x", 400, "bad_parameter", "?offset=BYTES"),
]


@pytest.mark.parametrize(("method", "path", "who", "body", "status", "code", "fragment"), API_CASES,
                         ids=[f"{c[0]} {c[1][:40]} {c[6][:30]}" for c in API_CASES])
def test_auth_api_refuses(auth_server: AuthServer, method: str, path: str, who: str | None, body: Any,
                          status: int, code: str, fragment: str) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    before = auth_server.snapshot()
    got, answer = auth_server.call(method, path, raw, who)
    assert_answer(auth_server, before, got, answer, f"{method} {path}")
    assert (got, answer["error"]["code"]) == (status, code), answer
    assert fragment in answer["error"]["message"], answer


# ---------------------------------------------------------------------------- the config loader

BASE: dict[str, Any] = {"version": "v1", "teleport": {"nodename": "n"}, "auth_service": {"enabled": True}}

CONFIG_CASES: list[tuple[dict[str, Any], str]] = [
    ({"teleport": {"nodename": {"a": 1}}}, "teleport.nodename: expected a string such as node1, got a mapping"),
    ({"teleport": {"nodename": "node\n1"}}, "teleport.nodename: expected a string such as node1 on one line"),
    ({"teleport": {"data_dir": ["/a"]}}, "teleport.data_dir: expected a string such as /var/lib/teleport, got a list"),
    ({"teleport": {"auth_token": "/tmp/\x00token"}}, "teleport.auth_token: expected a string"),
    ({"teleport": {"advertise_ip": "not-an-ip"}}, "teleport.advertise_ip: 'not-an-ip' is not an IP address"),
    ({"teleport": {"diag_addr": "127.0.0.1:+80"}}, "teleport.diag_addr: invalid port '+80'"),
    ({"teleport": {"auth_servers": ["auth example:3025"]}}, "teleport.auth_servers: invalid host 'auth example'"),
    ({"teleport": {"auth_servers": ["[::1:3025"]}}, "teleport.auth_servers: invalid address '[::1:3025'"),
    ({"teleport": {"auth_servers": ["[auth]:3025"]}}, "'auth' in brackets is not an IPv6 address"),
    ({"teleport": {"log": {"severity": ["INFO"]}}}, "teleport.log.severity: expected a string"),
    ({"auth_service": {"listen_addr": "0.0.0.0:3025\n"}}, "auth_service.listen_addr: invalid port '3025\\n'"),
    ({"auth_service": {"listen_addr": "0.0.0.0:١٢"}}, "auth_service.listen_addr: invalid port"),
    ({"auth_service": {"presence_ttl": {"m": 5}}}, "auth_service.presence_ttl: invalid duration"),
    ({"auth_service": {"presence_ttl": float("inf")}}, "auth_service.presence_ttl: invalid duration inf"),
    ({"auth_service": {"presence_ttl": True}}, "auth_service.presence_ttl: invalid duration True"),
    ({"auth_service": {"cluster_name": ["a"]}}, "auth_service.cluster_name: expected a string"),
    ({"auth_service": {"session_recording": {"mode": "node"}}}, "auth_service.session_recording: expected a string"),
    ({"auth_service": {"tokens": ["node:/tmp/\x00"]}}, "auth_service.tokens: cannot read token file"),
    ({"ssh_service": {"enabled": True, "labels": {"env": ["a"]}}}, "ssh_service.labels: label 'env' has a list"),
    ({"ssh_service": {"enabled": True, "labels": {"env": "a\nb"}}}, "ssh_service.labels: label 'env' has an invalid"),
    ({"ssh_service": {"enabled": True, "commands": [{"name": ["x"], "command": ["id"]}]}},
     "ssh_service.commands[0].name: expected a string"),
    ({"ssh_service": {"enabled": True, "commands": [{"name": "x", "command": ["id"], "period": "1h\n"}]}},
     "ssh_service.commands[0].period: invalid duration"),
]


@pytest.mark.parametrize(("change", "message"), CONFIG_CASES, ids=[c[1][:50] for c in CONFIG_CASES])
def test_config_refuses(change: dict[str, Any], message: str) -> None:
    doc = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    for section, values in change.items():
        doc.setdefault(section, {}).update(values)
    with pytest.raises(ConfigError) as err:
        config_from_dict(doc, "teleport.yaml")
    assert err.value.message.startswith("teleport.yaml: ")
    assert message in err.value.message


# ---------------------------------------------------------------------------- the parsers

PARSER_CASES: list[tuple[Any, Any, type[Exception], str]] = [
    (parse_duration, None, BadParameter, "invalid duration None"),
    (parse_duration, [5], BadParameter, "invalid duration [5]"),
    (parse_duration, float("nan"), BadParameter, "invalid duration nan"),
    (parse_duration, "\u0661m", BadParameter, "invalid duration '\u0661m'"),
    (parse_duration, "1e400s", BadParameter, "invalid duration '1e400s'"),
    (parse_duration, "9" * 400 + "d", BadParameter, "longer than 36500 days"),
    (lambda v: parse_host_port(v, 3025, "--auth-server"), "host:1_000", BadParameter, "invalid port '1_000'"),
    (lambda v: parse_host_port(v, 3025, "--auth-server"), "host: 80", BadParameter, "invalid port ' 80'"),
    (lambda v: parse_host_port(v, 3025, "--auth-server"), "[::1]x", BadParameter, "invalid address '[::1]x'"),
    (lambda v: parse_host_port(v, 3025, "--auth-server"), "ho/st:1", BadParameter, "invalid host 'ho/st'"),
    (lambda v: parse_host_port(v, 3025, "--auth-server"), "hôst:1", BadParameter, "invalid host 'hôst'"),
    (parse_proxy_subsystem, "proxy:node 1:22", ValueError, "invalid host 'node 1'"),
    (parse_proxy_subsystem, "proxy:node1:99999", ValueError, "port 99999 is out of range"),
    (parse_proxy_subsystem, "proxy:node1:22@a b", ValueError, "invalid cluster name 'a b'"),
    (parse_proxy_subsystem, "proxy:[node1]:22", ValueError, "'node1' in brackets is not an IPv6 address"),
    (parse_proxy_subsystem, "proxy:node1:٢٢", ValueError, "unknown subsystem"),
    (check_target, "node1\r\n", BadParameter, "invalid node name 'node1\\r\\n'"),
    (check_target, "a\x00b", BadParameter, "invalid node name"),
    (check_target, "", BadParameter, "invalid node name ''"),
    (lambda v: parse_labels(v, "--labels"), "env", BadParameter, "'env' is not key=value, such as env=prod,role=db"),
    (lambda v: parse_labels(v, "--labels"), "env=a,env=b", BadParameter, "label 'env' is given twice"),
    (lambda v: parse_labels(v, "--labels"), "=prod", BadParameter, "invalid label key ''"),
    (lambda v: parse_labels(v, "--labels"), "en v=prod", BadParameter, "invalid label key 'en v'"),
    (check_session_id, "..", BadParameter, "invalid session ID '..'"),
    (check_session_id, "a/b", BadParameter, "invalid session ID 'a/b'"),
    (check_session_id, "x" * 129, BadParameter, "invalid session ID"),
    (check_session_id, 5, BadParameter, "invalid session ID 5"),
]


@pytest.mark.parametrize(("parse", "value", "error", "message"), PARSER_CASES,
                         ids=[f"{i}-{c[3][:40]}" for i, c in enumerate(PARSER_CASES)])
def test_parser_refuses(parse: Any, value: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as err:
        parse(value)
    assert message in str(err.value)
