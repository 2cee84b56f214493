"""Property: whatever JSON body reaches a POST/PUT endpoint of the auth API, from a caller the
endpoint admits, the answer is a 2xx or a 4xx with ``{"error": {"code", "message"}}``, never a
5xx, and a refused request stores nothing (backend items and their revisions, files under the
data directory; audit events aside, since refusals are audited).

The endpoints are read from the API's own router, so an endpoint added later is fuzzed too.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from teleport_runtime.auth.api import PUBLIC, AuthAPI
from tests.fuzz.conftest import FUZZ, AuthServer, junk_json, shaped_body

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
}
#: Raw (non-JSON) bodies: fuzzed by test_recording_uploads.
RAW = {"/v1/recordings/{session_id}", "/v1/recordings/{session_id}/stream"}
#: The system roles a test can present, and the identity that holds each.
IDENTITY = {"Admin": "admin", "Node": "node", "Proxy": "proxy"}


def _routes() -> list[tuple[str, str, str | None]]:
    """(method, path template, identity) for every POST/PUT route and every identity it admits."""
    out = []
    for route in AuthAPI.__new__(AuthAPI).app().router.routes():
        if route.method not in ("POST", "PUT"):
            continue
        path = route.resource.canonical if route.resource else ""
        roles = getattr(route.handler, "allowed_roles", None)
        if roles == PUBLIC:
            out.append((route.method, path, None))
        else:
            out.extend((route.method, path, IDENTITY[r]) for r in roles or () if r in IDENTITY)
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
