"""The JSON body each auth API endpoint accepts, checked where a request enters (the API's
middleware, after the caller's role and before the handler): the types, the required fields and
the size of every field a handler reads. Deeper rules (a role's spec, a token's characters, a
duration's syntax) stay with the service that owns them; what reaches it is at least well typed.
"""

from __future__ import annotations

from aiohttp import web

from teleport_runtime.httpjson import Field, check_body, read_object

_KEY = Field("string", example="the PEM or OpenSSH public key", max_len=8192, ascii=True)
_ADDRESSES = Field("strings", example='["10.0.0.5", "node1.example.com"]', max_len=256, max_items=64)
_NAME = Field("string", example='"alice"', max_len=256)
_NAMES = Field("strings", example='["access", "auditor"]', max_len=256, max_items=256)
_SECRET = Field("string", max_len=1024)

#: (method, route) -> the fields its body may hold.
BODIES: dict[tuple[str, str], dict[str, Field]] = {
    ("POST", "/v1/join"): {
        "token": Field("string", required=True, example="the value `tctl nodes add` printed", max_len=1024),
        "role": Field("string", required=True, example='"node" or "proxy"', max_len=32),
        "host_uuid": Field("string", required=True, example="a UUID", max_len=256),
        "nodename": Field("string", required=True, example='"node1"', max_len=256),
        "ssh_public_key": Field("string", required=True, example="an OpenSSH public key", max_len=8192, ascii=True),
        "tls_public_key": Field("string", required=True, example="a PEM public key", max_len=8192, ascii=True),
        "addresses": _ADDRESSES,
    },
    ("POST", "/v1/reregister"): {
        "ssh_public_key": Field("string", required=True, example="an OpenSSH public key", max_len=8192, ascii=True),
        "tls_public_key": Field("string", required=True, example="a PEM public key", max_len=8192, ascii=True),
        "addresses": _ADDRESSES,
    },
    ("POST", "/v1/heartbeat"): {
        "hostname": _NAME,
        "addr": Field("string", example='"10.0.0.5:3022"', max_len=512),
        "labels": Field("labels", example='{"env": "prod"}', max_len=1024),
        "cmd_labels": Field("labels", example='{"arch": "x86_64"}', max_len=1024),
        # rotation: any shape; presence reads one it does not understand as standby
        "version": Field("string", max_len=128),
        "web_addr": Field("string", example='"proxy.example.com:3080"', max_len=512),
        "ssh_addr": Field("string", example='"proxy.example.com:3023"', max_len=512),
    },
    ("POST", "/v1/tokens"): {
        "ttl": Field("duration", example='"5m"'),
        "roles": Field("strings", example='["node", "proxy"]', max_len=32, max_items=8),
        "token": Field("string", example="a value of letters and digits", max_len=1024),
    },
    ("POST", "/v1/roles"): {
        "role": Field("object", required=True, example="a role resource {kind: role, version: v1, ...}"),
        "force": Field("bool"),
    },
    ("POST", "/v1/users"): {
        "name": Field("string", required=True, example='"alice"', max_len=256),
        "roles": _NAMES, "logins": _NAMES,
    },
    ("PUT", "/v1/users/{name}"): {"roles": _NAMES, "logins": _NAMES},
    ("POST", "/v1/users/login"): {
        "user": _NAME, "password": _SECRET, "otp": Field("string", example='"123456"', max_len=64),
        "ssh_public_key": _KEY, "tls_public_key": _KEY,
        "ttl": Field("string", example='"8h"', max_len=64),
        "remote_addr": Field("string", max_len=512),
    },
    ("POST", "/v1/signup"): {
        "token": Field("string", example="the token of the invitation", max_len=1024),
        "password": _SECRET, "otp": Field("string", example='"123456"', max_len=64),
    },
    ("POST", "/v1/certs/user"): {
        "user": _NAME, "ssh_public_key": _KEY, "tls_public_key": _KEY,
        "ttl": Field("string", example='"8h"', max_len=64),
    },
    ("POST", "/v1/certs/host"): {
        "names": Field("strings", example='["host.example.com"]', max_len=256, max_items=64),
        "ssh_public_key": _KEY,
        "ttl": Field("duration", example='"24h"'),
    },
    ("POST", "/v1/audit"): {
        "event": Field("string", required=True, example='"session.start"', max_len=128),
        "id": Field("string", example="16 to 64 hex digits", max_len=64),
        "time": Field("string", example="an ISO 8601 time", max_len=64),
        "code": Field("string", example='"T2000I"', max_len=32),
    },
    ("POST", "/v1/authorities/{type}/rotate"): {
        "mode": Field("string", example='"manual" or "auto"', max_len=32),
        "phase": Field("string", example='"init"', max_len=32),
        "grace_period": Field("duration", example='"30h"'),
    },
    ("POST", "/v1/sessions/active"): {
        "id": Field("string", example="the session UUID", max_len=128),
        "session_id": Field("string", example="the session UUID", max_len=128),
    },
}


async def check_request_body(request: web.Request) -> None:
    """BadParameter naming the endpoint and the field when the body of ``request`` does not hold
    what its route declares in :data:`BODIES` (routes not listed read no JSON body)."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else request.path
    fields = BODIES.get((request.method, route))
    if fields is not None:
        check_body(await read_object(request), fields, f"{request.method} {route}")
