"""Property: whatever JSON body reaches a POST/PUT endpoint of the auth API, from a caller the
endpoint admits, the answer is a 2xx or a 4xx with ``{"error": {"code", "message"}}``, never a
5xx, and a refused request stores nothing (backend items and their revisions, files under the
data directory; audit events aside, since refusals are audited).

The endpoints are read from the API's route table, so an endpoint added later is fuzzed too.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from teleport_runtime.api.routes import ENDPOINTS, PUBLIC
from teleport_runtime.ca import generate_ssh_keypair, generate_tls_keypair
from tests.fuzz.conftest import FUZZ, AuthServer, junk_json, junk_text, shaped_body

pytestmark = pytest.mark.fuzz

#: The keys each endpoint reads from its body (what the junk is put under).
KEYS: dict[str, list[str]] = {
    "/v1/join": ["token", "role", "host_uuid", "nodename", "ssh_public_key", "tls_public_key", "addresses"],
    "/v1/reregister": ["ssh_public_key", "tls_public_key", "addresses"],
    "/v1/heartbeat": ["hostname", "addr", "labels", "cmd_labels", "rotation", "version", "web_addr", "ssh_addr"],
    "/v1/tokens": ["ttl", "roles", "token"],
    "/v1/roles": ["role", "force"],
    "/v1/users": ["name", "roles", "logins"],
    "/v1/users/{name}": ["roles", "logins"],
    "/v1/users/{name}/reset": [],
    "/v1/users/login": ["user", "password", "otp", "ssh_public_key", "tls_public_key", "ttl", "remote_addr"],
    "/v1/signup": ["token", "password", "otp"],
    "/v1/certs/user": ["user", "ssh_public_key", "tls_public_key", "ttl"],
    "/v1/certs/host": ["names", "ssh_public_key", "ttl"],
    "/v1/audit": ["event", "id", "time", "code", "user", "session_id", "nodename", "server_id"],
    "/v1/authorities/{type}/rotate": ["mode", "phase", "grace_period"],
    "/v1/sessions/active": ["id", "session_id", "user", "login", "started", "remote_addr"],
    "/v1/sessions/active/{session_id}/keepalive": [],
    "/v1/nodes": ["resource", "force"],
    "/v1/certs/proxy/host": ["node", "ssh_public_key"],
    "/v1/certs/proxy/session": ["user_ssh_cert", "login", "node", "ssh_public_key"],
}
_SSH_KEY = generate_ssh_keypair()[1]
_TLS_KEY = generate_tls_keypair()[1].decode()
_ROLE = {"kind": "role", "version": "v1", "metadata": {"name": "fuzzed"},
         "spec": {"allow": {"logins": ["root"], "node_labels": {"env": "prod"}}}}
#: A body each endpoint could accept (or refuse only late, deep in the service): the fuzzer
#: replaces one or two of its values, so junk also reaches the code behind the first checks.
VALID: dict[str, dict[str, Any]] = {
    "/v1/join": {"token": "0123456789abcdef", "role": "node", "host_uuid": "6f1c", "nodename": "n1",
                 "ssh_public_key": _SSH_KEY, "tls_public_key": _TLS_KEY, "addresses": ["127.0.0.1"]},
    "/v1/reregister": {"ssh_public_key": _SSH_KEY, "tls_public_key": _TLS_KEY, "addresses": ["127.0.0.1"]},
    "/v1/heartbeat": {"hostname": "n1", "addr": "127.0.0.1:3022", "labels": {"env": "prod"},
                      "cmd_labels": {"arch": "x86_64"}, "version": "1"},
    "/v1/tokens": {"roles": ["node"], "ttl": "5m"},
    "/v1/roles": {"role": _ROLE, "force": True},
    "/v1/users": {"name": "fuzzed", "roles": ["access"], "logins": ["root"]},
    "/v1/users/{name}": {"roles": ["access"], "logins": ["root"]},
    "/v1/users/{name}/reset": {},
    "/v1/users/login": {"user": "fuzzed", "password": "a long password", "otp": "123456",
                        "ssh_public_key": _SSH_KEY, "tls_public_key": _TLS_KEY, "ttl": "1h"},
    "/v1/signup": {"token": "0123456789abcdef", "password": "a long password", "otp": "123456"},
    "/v1/certs/user": {"user": "fuzzed", "ssh_public_key": _SSH_KEY, "tls_public_key": _TLS_KEY, "ttl": "1h"},
    "/v1/certs/host": {"names": ["h.example.com"], "ssh_public_key": _SSH_KEY, "ttl": "1h"},
    "/v1/audit": {"event": "exec", "time": "2026-01-01T00:00:00+00:00", "user": "bob"},
    "/v1/authorities/{type}/rotate": {"mode": "manual", "phase": "init", "grace_period": "30h"},
    "/v1/sessions/active": {"id": "0b7f6bd5-6a9e-4f8e-9d3a-2f0c2d6b1c11", "user": "bob", "login": "root"},
    "/v1/sessions/active/{session_id}/keepalive": {},
    "/v1/nodes": {"resource": {"kind": "node", "sub_kind": "openssh", "version": "v2",
                               "metadata": {"name": "fuzzed", "labels": {"env": "prod"}},
                               "spec": {"addr": "192.0.2.10:22", "hostname": "fuzzed"}}, "force": True},
    "/v1/certs/proxy/host": {"node": "fuzzed", "ssh_public_key": _SSH_KEY},
    "/v1/certs/proxy/session": {"user_ssh_cert": "ssh-ed25519-cert-v01@openssh.com AAAA", "login": "root",
                                "node": "fuzzed", "ssh_public_key": _SSH_KEY},
}


def mutated(template: str) -> st.SearchStrategy[dict[str, Any]]:
    """The endpoint's valid body with one or two of its keys given junk or removed."""
    valid = VALID[template]
    keys = sorted(set(KEYS[template]) | set(valid)) or ["x"]
    # Strings first: most fields are strings, and what a string holds is what slips through types.
    junk = st.one_of(junk_text, junk_json, st.just(_REMOVE))
    changes = st.dictionaries(st.sampled_from(keys), junk, min_size=1, max_size=2)
    return changes.map(lambda c: {k: v for k, v in {**valid, **c}.items() if v is not _REMOVE})


_REMOVE = object()
#: Raw (non-JSON) bodies: fuzzed by test_recording_uploads.
RAW = {"/v1/recordings/{session_id}", "/v1/recordings/{session_id}/stream"}
#: The system roles a test can present, and the identity that holds each.
IDENTITY = {"Admin": "admin", "Node": "node", "Proxy": "proxy"}


def _routes() -> list[tuple[str, str, str | None]]:
    """(method, path template, identity) for every POST/PUT route and every identity it admits."""
    out = []
    for endpoint in ENDPOINTS:
        if endpoint.method not in ("POST", "PUT"):
            continue
        path, roles = endpoint.path, endpoint.roles
        if roles == PUBLIC:
            out.append((endpoint.method, path, None))
        else:
            out.extend((endpoint.method, path, IDENTITY[r]) for r in roles or () if r in IDENTITY)
    return out


ROUTES = _routes()
JSON_ROUTES = [r for r in ROUTES if r[1] not in RAW]

path_param = st.one_of(
    st.sampled_from(["alice", "host", "user", "0123456789abcdef", "..", "a\n", "x" * 300]),
    st.text(min_size=1, max_size=30),
)


def fill(template: str, value: str) -> str:
    return re.sub(r"\{[^}]+\}", lambda _m: quote(value, safe=""), template)


def assert_answer(server: AuthServer, before: dict[str, int], status: int, answer: Any, what: str) -> None:
    what = what[:200]
    assert status < 500, f"{what}: {status} {answer}"
    if status >= 400:
        assert isinstance(answer, dict) and set(answer) == {"error"}, f"{what}: {status} {answer!r}"
        error = answer["error"]
        assert isinstance(error.get("code"), str) and error["code"], f"{what}: {answer!r}"
        assert isinstance(error.get("message"), str) and error["message"], f"{what}: {answer!r}"
        after = server.snapshot()
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        assert not changed, f"{what}: refused ({status} {error}) but stored {changed}"
    else:
        assert answer is not None, f"{what}: {status} with a body that is not JSON"


def test_every_post_and_put_endpoint_is_fuzzed() -> None:
    """The table of keys covers the router: a new JSON endpoint must say what it reads."""
    assert {path for _, path, _ in JSON_ROUTES} == set(KEYS)


not_json = st.one_of(st.binary(max_size=200), st.sampled_from([b"", b"{", b"[" * 100000, b'{"a": 1e999999}',
                                                             b"\xff\xfe{}", b'{"a": "\\ud800"}']))


@pytest.mark.parametrize(("method", "template", "who"), JSON_ROUTES,
                         ids=[f"{m} {p} as {w}" for m, p, w in JSON_ROUTES])
@FUZZ
@given(data=st.data())
def test_json_bodies(auth_server: AuthServer, method: str, template: str, who: str | None,
                     data: st.DataObject) -> None:
    body = data.draw(st.one_of(
        shaped_body(KEYS[template]).map(lambda b: json.dumps(b).encode()),
        mutated(template).map(lambda b: json.dumps(b).encode()),
        mutated(template).map(lambda b: json.dumps(b).encode()),
        junk_json.map(lambda b: json.dumps(b).encode()),
        not_json,
    ), label="body")
    path = fill(template, data.draw(path_param, label="path"))
    before = auth_server.snapshot()
    status, answer = auth_server.call(method, path, body, who)
    assert_answer(auth_server, before, status, answer, f"{method} {path} as {who}")


header_value = st.one_of(
    st.sampled_from(["", "0", "-1", "abc", "9" * 40, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                     "e30", "bnVsbA", "W10", "%%%"]),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=60),
)


@FUZZ
@given(session=path_param, raw=st.binary(max_size=300), size=header_value, sha=header_value,
       manifest=header_value, offset=header_value, stream=st.booleans())
def test_recording_uploads(auth_server: AuthServer, session: str, raw: bytes, size: str, sha: str,
                           manifest: str, offset: str, stream: bool) -> None:
    from teleport_runtime.recording.asciicast import HEADER_MANIFEST, HEADER_SHA256, HEADER_SIZE

    if stream:
        path = f"/v1/recordings/{quote(session, safe='')}/stream?offset={quote(offset)}"
        headers = {}
    else:
        path = f"/v1/recordings/{quote(session, safe='')}"
        headers = {HEADER_SIZE: size, HEADER_SHA256: sha, HEADER_MANIFEST: manifest}
    before = auth_server.snapshot()
    status, answer = auth_server.call("POST", path, raw, "node", headers)
    assert_answer(auth_server, before, status, answer, f"POST {path}")
