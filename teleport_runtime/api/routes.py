"""Every endpoint of the auth API: method, path, the system roles it admits and the body it
takes. The server builds its routes from this table (``auth/api.py`` pairs each endpoint with
its handler), the client (:mod:`teleport_runtime.api.client`) calls these paths and nothing
else: an endpoint's roles sit beside its path, in one place.

Roles are the system roles of the caller's certificate: ``Node`` and ``Proxy`` (host
certificates), ``Admin`` (the auth server's admin identity, tctl), ``User`` (any user
certificate: what a user may then do is the user's roles' business). :data:`PUBLIC` endpoints
answer without a client certificate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from teleport_runtime.api import types as t
from teleport_runtime.api.wire import Field, Message
from teleport_runtime.urlpath import api_path

Method = Literal["GET", "POST", "PUT", "DELETE"]
#: No client certificate needed.
PUBLIC: tuple[str, ...] = ()
AGENTS = ("Node", "Proxy")
AGENTS_AND_ADMIN = ("Node", "Proxy", "Admin")
ADMIN = ("Admin",)
#: Reads of recordings, sessions and the audit log: an admin, a user (allowed by the user's
#: roles), or a proxy on behalf of the user whose certificate it forwards.
READERS = ("Admin", "User", "Proxy")


@dataclass(frozen=True)
class Endpoint:
    method: Method
    path: str
    roles: tuple[str, ...]
    #: The JSON body it takes (None: no JSON body; a raw body where ``raw_body``).
    body: type[Message] | None = None
    raw_body: bool = False

    def url(self, query: Mapping[str, object] | None = None, **params: str) -> str:
        """The request path with ``params`` in its placeholders (:func:`api_path`)."""
        return api_path(self.path, query, **params)

    @property
    def fields(self) -> Mapping[str, Field] | None:
        return self.body.FIELDS if self.body is not None else None

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


CA = Endpoint("GET", "/v1/ca", PUBLIC)
JOIN = Endpoint("POST", "/v1/join", PUBLIC, t.JoinRequest)
REREGISTER = Endpoint("POST", "/v1/reregister", AGENTS, t.ReregisterRequest)
HEARTBEAT = Endpoint("POST", "/v1/heartbeat", AGENTS, t.HeartbeatReport)
NODES = Endpoint("GET", "/v1/nodes", AGENTS_AND_ADMIN)
REMOVE_NODE = Endpoint("DELETE", "/v1/nodes/{name}", ADMIN)
UPSERT_NODE = Endpoint("POST", "/v1/nodes", ADMIN, t.NodeUpsert)
PROXIES = Endpoint("GET", "/v1/proxies", AGENTS_AND_ADMIN)
STATUS = Endpoint("GET", "/v1/status", ADMIN)
TOKENS = Endpoint("GET", "/v1/tokens", ADMIN)
CREATE_TOKEN = Endpoint("POST", "/v1/tokens", ADMIN, t.TokenRequest)
DELETE_TOKEN = Endpoint("DELETE", "/v1/tokens/{token}", ADMIN)
ROLES = Endpoint("GET", "/v1/roles", AGENTS_AND_ADMIN)
UPSERT_ROLE = Endpoint("POST", "/v1/roles", ADMIN, t.RoleUpsert)
DELETE_ROLE = Endpoint("DELETE", "/v1/roles/{name}", ADMIN)
USERS = Endpoint("GET", "/v1/users", ADMIN)
ADD_USER = Endpoint("POST", "/v1/users", ADMIN, t.UserAdd)
UPDATE_USER = Endpoint("PUT", "/v1/users/{name}", ADMIN, t.UserUpdate)
DELETE_USER = Endpoint("DELETE", "/v1/users/{name}", ADMIN)
RESET_USER = Endpoint("POST", "/v1/users/{name}/reset", ADMIN)
LOGIN = Endpoint("POST", "/v1/users/login", ("Proxy",), t.LoginRequest)
SIGNUP_INFO = Endpoint("GET", "/v1/signup/{token}", ("Proxy",))
SIGNUP = Endpoint("POST", "/v1/signup", ("Proxy",), t.SignupRequest)
SIGN_USER = Endpoint("POST", "/v1/certs/user", ADMIN, t.UserCertRequest)
SIGN_HOST = Endpoint("POST", "/v1/certs/host", ADMIN, t.HostCertRequest)
#: The proxy terminating SSH for a registered node: a host cert naming the node, and the
#: certificate of one session to an OpenSSH node.
SIGN_TARGET_HOST = Endpoint("POST", "/v1/certs/proxy/host", ("Proxy",), t.TargetHostCertRequest)
SIGN_SESSION = Endpoint("POST", "/v1/certs/proxy/session", ("Proxy",), t.SessionCertRequest)
EMIT_AUDIT = Endpoint("POST", "/v1/audit", AGENTS, t.AuditEvent)
SEARCH_AUDIT = Endpoint("GET", "/v1/audit", READERS)
ROTATE = Endpoint("POST", "/v1/authorities/{type}/rotate", ADMIN, t.RotateRequest)
ROTATION = Endpoint("GET", "/v1/authorities/rotation", AGENTS_AND_ADMIN)
WATCH_AUTHORITIES = Endpoint("GET", "/v1/authorities/watch", AGENTS_AND_ADMIN)
RECORDINGS = Endpoint("GET", "/v1/recordings", READERS)
RECORDING = Endpoint("GET", "/v1/recordings/{session_id}", READERS)
UPLOAD_RECORDING = Endpoint("POST", "/v1/recordings/{session_id}", AGENTS, raw_body=True)
STREAM_RECORDING = Endpoint("POST", "/v1/recordings/{session_id}/stream", AGENTS, raw_body=True)
ACTIVE_SESSIONS = Endpoint("GET", "/v1/sessions/active", READERS)
START_SESSION = Endpoint("POST", "/v1/sessions/active", ("Node",), t.ActiveSession)
KEEP_ALIVE_SESSION = Endpoint("POST", "/v1/sessions/active/{session_id}/keepalive", ("Node",))
END_SESSION = Endpoint("DELETE", "/v1/sessions/active/{session_id}", ("Node",))

#: The whole API, in the order routes are registered.
ENDPOINTS: tuple[Endpoint, ...] = tuple(v for v in dict(globals()).values() if isinstance(v, Endpoint))
