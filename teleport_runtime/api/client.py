"""The one client of the auth API, used by nodes, proxies, tctl and tsh's admin paths: one
method per endpoint of :mod:`teleport_runtime.api.routes`, taking and answering the dataclasses
of :mod:`teleport_runtime.api.types`.

It verifies the auth server against the cluster's host CAs under the name
``teleport.cluster.local`` (so joining by IP works), requires the server's certificate to be a
host identity with the ``Auth`` system role (of the caller's cluster when known), and presents
the caller's identity. The host CA signs every node's and proxy's certificate too, so the chain
alone would accept any member of the cluster as the auth service; the role is checked during
the TLS handshake of every connection (:func:`~teleport_runtime.identity.require_server_role`),
before anything is sent, on every context the client is given, including the unverified one
used only to fetch the CA certs a pin is checked against.

Request paths are checked before anything is sent (:func:`~teleport_runtime.urlpath.check_request_path`);
values go into paths through :meth:`Endpoint.url <teleport_runtime.api.routes.Endpoint.url>`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from teleport_runtime.api import routes as r
from teleport_runtime.api import types as t
from teleport_runtime.api.names import (
    API_SERVER_NAME,
    AUTH_ROLE,
    HEADER_FORWARDED_ADDR,
    HEADER_FORWARDED_USER,
    KEEPALIVE_SECONDS,
)
from teleport_runtime.api.wire import Message
from teleport_runtime.config import HostPort
from teleport_runtime.errors import BadParameter, ConnectionProblem, TeleportError, error_from_dict
from teleport_runtime.identity import Identity, WrongServer, require_server_role
from teleport_runtime.urlpath import check_request_path

log = logging.getLogger("teleport.client")

DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=10)
#: Raw bodies (session recordings) can be large: more time in total, same time to connect.
RAW_TIMEOUT = aiohttp.ClientTimeout(total=600, connect=10, sock_read=60)
#: How long a session replaced by a new identity lives on for the requests still using it.
RETIRED_SESSION_SECONDS = 90.0
#: Seconds a CA watch's answer may take beyond the wait it asked for.
WATCH_MARGIN_SECONDS = 30.0


def insecure_ssl_context() -> ssl.SSLContext:
    """No verification: only for fetching the CA certs that the caller then checks by pin."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def trusting_ssl_context(ca_certs: list[bytes]) -> ssl.SSLContext:
    """Verify the server against ``ca_certs`` only; present no client certificate."""
    ctx = ssl.create_default_context(cadata=b"".join(ca_certs).decode())
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


@dataclass(frozen=True)
class Forwarded:
    """A proxy's request on behalf of a user: the client's address and, for reads the user's
    roles decide (recordings, sessions), the user's certificate (DER)."""

    addr: str
    user_cert: bytes | None = None

    def headers(self) -> dict[str, str]:
        headers = {HEADER_FORWARDED_ADDR: self.addr}
        if self.user_cert is not None:
            headers[HEADER_FORWARDED_USER] = base64.b64encode(self.user_cert).decode("ascii")
        return headers


class AuthClient:
    """Calls the auth API at the first reachable address of ``addresses``."""

    def __init__(
        self,
        addresses: list[HostPort],
        ssl_context: ssl.SSLContext,
        *,
        verify_name: bool = True,
        cluster: str | None = None,
    ) -> None:
        if not addresses:
            raise ConnectionProblem("no auth server address: pass --auth-server=HOST:3025")
        self.addresses = addresses
        #: The cluster the auth server must belong to, when the caller knows it.
        self.cluster = cluster
        self.ssl_context = require_server_role(ssl_context, AUTH_ROLE, cluster)
        self.verify_name = verify_name
        self._session: aiohttp.ClientSession | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        #: The address that answered last: tried first, so once an auth server is down each
        #: call does not wait for it again before reaching one that answers.
        self._preferred = 0

    @classmethod
    def for_identity(cls, addresses: list[HostPort], identity: Identity) -> AuthClient:
        return cls(addresses, identity.client_ssl_context(), cluster=identity.cluster)

    async def __aenter__(self) -> AuthClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def set_ssl_context(self, ctx: ssl.SSLContext) -> None:
        """Use a new identity or trust from the next request on (rotation, re-registration).

        Requests already under way finish on the old session, which is closed later."""
        self.ssl_context = require_server_role(ctx, AUTH_ROLE, self.cluster)
        if self._session is not None:
            task = asyncio.get_running_loop().create_task(self._retire(self._session))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
            self._session = None

    @staticmethod
    async def _retire(session: aiohttp.ClientSession) -> None:
        try:
            await asyncio.sleep(RETIRED_SESSION_SECONDS)
        finally:
            await session.close()

    # ------------------------------------------------------------------ CAs and host identities

    async def ca(self) -> t.PublicCAs:
        return t.PublicCAs.from_json(await self._json(r.CA, r.CA.path))

    async def join(self, request: t.JoinRequest) -> t.IssuedIdentity:
        return t.IssuedIdentity.from_json(await self._json(r.JOIN, r.JOIN.path, request))

    async def reregister(self, request: t.ReregisterRequest) -> t.IssuedIdentity:
        return t.IssuedIdentity.from_json(await self._json(r.REREGISTER, r.REREGISTER.path, request))

    async def heartbeat(self, report: t.HeartbeatReport) -> t.HeartbeatAnswer:
        return t.HeartbeatAnswer.from_json(await self._json(r.HEARTBEAT, r.HEARTBEAT.path, report))

    async def nodes(self) -> list[t.NodeRecord]:
        return t.NodeRecord.list_from_json(await self._json(r.NODES, r.NODES.path))

    async def proxies(self) -> list[t.NodeRecord]:
        return t.NodeRecord.list_from_json(await self._json(r.PROXIES, r.PROXIES.path))

    async def remove_node(self, name: str) -> t.HostRemoved:
        return t.HostRemoved.from_json(await self._json(r.REMOVE_NODE, r.REMOVE_NODE.url(name=name)))

    async def upsert_node(self, request: t.NodeUpsert) -> t.NodeSaved:
        return t.NodeSaved.from_json(await self._json(r.UPSERT_NODE, r.UPSERT_NODE.path, request))

    async def status(self) -> t.ClusterStatus:
        return t.ClusterStatus.from_json(await self._json(r.STATUS, r.STATUS.path))

    # ------------------------------------------------------------------ CA rotation

    async def rotate(self, ca_type: str, request: t.RotateRequest) -> t.RotationView:
        return t.RotationView.from_json(await self._json(r.ROTATE, r.ROTATE.url(type=ca_type), request))

    async def rotation(self) -> dict[str, t.RotationView]:
        answer = await self._json(r.ROTATION, r.ROTATION.path)
        if not isinstance(answer, dict):
            raise BadParameter(f"{r.ROTATION}: expected a JSON object")
        return {k: t.RotationView.from_json(v) for k, v in answer.items()}

    async def watch_authorities(self, revision: str = "", wait: float = 0) -> t.AuthorityState:
        """The CA state; with ``revision`` the current one, waits up to ``wait`` seconds for a
        change first (a long poll)."""
        path = r.WATCH_AUTHORITIES.url(query={"revision": revision, "wait": f"{wait:g}"})
        answer = await self._json(r.WATCH_AUTHORITIES, path, time_limit=wait + WATCH_MARGIN_SECONDS)
        return t.AuthorityState.from_json(answer)

    # ------------------------------------------------------------------ tokens

    async def tokens(self) -> list[t.TokenRecord]:
        return t.TokenRecord.list_from_json(await self._json(r.TOKENS, r.TOKENS.path))

    async def create_token(self, request: t.TokenRequest) -> t.TokenCreated:
        return t.TokenCreated.from_json(await self._json(r.CREATE_TOKEN, r.CREATE_TOKEN.path, request))

    async def delete_token(self, token: str) -> t.Deleted:
        return t.Deleted.from_json(await self._json(r.DELETE_TOKEN, r.DELETE_TOKEN.url(token=token)))

    # ------------------------------------------------------------------ roles and users

    async def roles(self) -> list[t.RoleResource]:
        return t.RoleResource.list_from_json(await self._json(r.ROLES, r.ROLES.path))

    async def upsert_role(self, request: t.RoleUpsert) -> t.RoleSaved:
        return t.RoleSaved.from_json(await self._json(r.UPSERT_ROLE, r.UPSERT_ROLE.path, request))

    async def delete_role(self, name: str) -> t.Deleted:
        return t.Deleted.from_json(await self._json(r.DELETE_ROLE, r.DELETE_ROLE.url(name=name)))

    async def users(self) -> list[t.UserRecord]:
        return t.UserRecord.list_from_json(await self._json(r.USERS, r.USERS.path))

    async def add_user(self, request: t.UserAdd) -> t.SignupToken:
        return t.SignupToken.from_json(await self._json(r.ADD_USER, r.ADD_USER.path, request))

    async def update_user(self, name: str, request: t.UserUpdate) -> t.UserRecord:
        return t.UserRecord.from_json(await self._json(r.UPDATE_USER, r.UPDATE_USER.url(name=name), request))

    async def delete_user(self, name: str) -> t.Deleted:
        return t.Deleted.from_json(await self._json(r.DELETE_USER, r.DELETE_USER.url(name=name)))

    async def reset_user(self, name: str) -> t.SignupToken:
        return t.SignupToken.from_json(await self._json(r.RESET_USER, r.RESET_USER.url(name=name), {}))

    async def login(self, request: t.LoginRequest, forwarded: Forwarded) -> t.UserCerts:
        return t.UserCerts.from_json(await self._json(r.LOGIN, r.LOGIN.path, request, forwarded=forwarded))

    async def signup_info(self, token: str) -> t.SignupInfo:
        return t.SignupInfo.from_json(await self._json(r.SIGNUP_INFO, r.SIGNUP_INFO.url(token=token)))

    async def signup(self, request: t.SignupRequest, forwarded: Forwarded) -> t.SignupDone:
        return t.SignupDone.from_json(await self._json(r.SIGNUP, r.SIGNUP.path, request, forwarded=forwarded))

    async def sign_user(self, request: t.UserCertRequest) -> t.UserCerts:
        return t.UserCerts.from_json(await self._json(r.SIGN_USER, r.SIGN_USER.path, request))

    async def sign_host(self, request: t.HostCertRequest) -> t.HostCert:
        return t.HostCert.from_json(await self._json(r.SIGN_HOST, r.SIGN_HOST.path, request))

    async def sign_target_host(self, request: t.TargetHostCertRequest) -> t.HostCert:
        return t.HostCert.from_json(await self._json(r.SIGN_TARGET_HOST, r.SIGN_TARGET_HOST.path, request))

    async def sign_session(self, request: t.SessionCertRequest) -> t.SessionCert:
        return t.SessionCert.from_json(await self._json(r.SIGN_SESSION, r.SIGN_SESSION.path, request))

    # ------------------------------------------------------------------ audit

    async def emit_audit(self, event: t.AuditEvent) -> t.AuditEvent:
        return t.AuditEvent.from_json(await self._json(r.EMIT_AUDIT, r.EMIT_AUDIT.path, event))

    async def search_audit(self, since: str = "", types: str = "") -> list[t.AuditEvent]:
        """Events of the last ``since`` (a duration, 1h by default), of ``types`` (comma-separated)."""
        path = r.SEARCH_AUDIT.url(query={"since": since, "type": types})
        return t.AuditEvent.list_from_json(await self._json(r.SEARCH_AUDIT, path))

    # ------------------------------------------------------------------ recordings and sessions

    async def recordings(
        self, since: str | None = None, *, forwarded: Forwarded | None = None
    ) -> list[t.RecordingMeta]:
        """Recording metadata, oldest first (``since``: ISO 8601 time or a duration like 24h)."""
        path = r.RECORDINGS.url(query={"since": since} if since else None)
        return t.RecordingMeta.list_from_json(await self._json(r.RECORDINGS, path, forwarded=forwarded))

    async def recording(self, session_id: str) -> bytes:
        """A recording's asciicast bytes."""
        data = await self._send(r.RECORDING, r.RECORDING.url(session_id=session_id), raw=True)
        if not isinstance(data, bytes):
            raise BadParameter(f"the auth service answered recording {session_id} with JSON, not asciicast")
        return data

    async def recording_json(self, session_id: str, *, forwarded: Forwarded | None = None) -> t.RecordingMeta:
        """A recording's metadata with its bytes in ``data_b64`` (for clients that speak only JSON)."""
        path = r.RECORDING.url(session_id=session_id, query={"encoding": "base64"})
        return t.RecordingMeta.from_json(await self._json(r.RECORDING, path, forwarded=forwarded))

    async def upload_recording(self, session_id: str, body: Any, headers: Mapping[str, str]) -> t.RecordingStored:
        """A recording as its raw asciicast ``body`` (bytes or a streaming payload), with the
        size, sha256 and manifest in ``headers`` (:func:`~teleport_runtime.recording.uploader.upload_headers`)."""
        path = r.UPLOAD_RECORDING.url(session_id=session_id)
        answer = await self._send(r.UPLOAD_RECORDING, path, data=body, headers=headers, raw=True)
        return t.RecordingStored.from_json(answer)

    async def append_stream(self, session_id: str, offset: int, data: bytes, content_type: str) -> t.StreamAppended:
        """Append ``data`` at ``offset`` to a recording streamed live (``node-sync``)."""
        path = r.STREAM_RECORDING.url(session_id=session_id, query={"offset": offset})
        answer = await self._send(r.STREAM_RECORDING, path, data=data, headers={"Content-Type": content_type}, raw=True)
        return t.StreamAppended.from_json(answer)

    async def active_sessions(self, *, forwarded: Forwarded | None = None) -> list[t.ActiveSession]:
        return t.ActiveSession.list_from_json(
            await self._json(r.ACTIVE_SESSIONS, r.ACTIVE_SESSIONS.path, forwarded=forwarded))

    async def start_session(self, session: t.ActiveSession) -> t.ActiveSession:
        return t.ActiveSession.from_json(await self._json(r.START_SESSION, r.START_SESSION.path, session))

    async def keep_alive_session(self, session_id: str) -> t.ActiveSession:
        path = r.KEEP_ALIVE_SESSION.url(session_id=session_id)
        return t.ActiveSession.from_json(await self._json(r.KEEP_ALIVE_SESSION, path, {}))

    async def end_session(self, session_id: str) -> t.SessionEnded:
        path = r.END_SESSION.url(session_id=session_id)
        return t.SessionEnded.from_json(await self._json(r.END_SESSION, path))

    # ------------------------------------------------------------------ transport

    async def request(self, method: str, path: str, body: Any = None, *, data: bytes | None = None,
                      headers: Mapping[str, str] | None = None, time_limit: float | None = None) -> Any:
        """One call by method and path, for tests that send what the typed methods never would
        (attacks, malformed bodies); services use the typed methods. ``body`` is sent as JSON,
        ``data`` as it is (then the answer is bytes unless the server answers JSON)."""
        if data is not None:
            return await self._request(method, path, {"data": data, "headers": dict(headers or {})},
                                       RAW_TIMEOUT, raw=True)
        limits = DEFAULT_TIMEOUT if time_limit is None else aiohttp.ClientTimeout(total=time_limit, connect=10)
        return await self._request(method, path, {"json": body, "headers": dict(headers or {})}, limits, raw=False)

    async def _json(self, endpoint: r.Endpoint, path: str, body: Message | dict[str, Any] | None = None, *,
                    forwarded: Forwarded | None = None, time_limit: float | None = None) -> Any:
        payload = body.to_json() if isinstance(body, Message) else body
        limits = DEFAULT_TIMEOUT if time_limit is None else aiohttp.ClientTimeout(total=time_limit, connect=10)
        headers = forwarded.headers() if forwarded is not None else {}
        return await self._request(endpoint.method, path, {"json": payload, "headers": headers}, limits, raw=False)

    async def _send(self, endpoint: r.Endpoint, path: str, *, data: Any = None,
                    headers: Mapping[str, str] | None = None, raw: bool) -> Any:
        return await self._request(endpoint.method, path, {"data": data, "headers": dict(headers or {})},
                                   RAW_TIMEOUT, raw=raw)

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self.ssl_context, limit=8, keepalive_timeout=KEEPALIVE_SECONDS)
            self._session = aiohttp.ClientSession(connector=connector, timeout=DEFAULT_TIMEOUT)
        return self._session

    async def _request(
        self, method: str, path: str, send: dict[str, Any], limits: aiohttp.ClientTimeout, *, raw: bool
    ) -> Any:
        """Try each auth address in turn, starting with the one that answered last (a connection
        to a server that went away fails and the next address is tried). The answer is decoded
        JSON (any body when not ``raw``; with ``raw``, bytes unless the server says it is JSON);
        an error answer is raised as the TeleportError the server sent."""
        check_request_path(path)
        session = self._get_session()
        problems = []
        count = len(self.addresses)
        for index in [(self._preferred + i) % count for i in range(count)]:
            addr = self.addresses[index]
            try:
                async with session.request(
                    method,
                    # Sent as checked: no re-quoting or dot-segment normalisation on the way.
                    URL(f"https://{addr}{path}", encoded=True),
                    timeout=limits,
                    server_hostname=API_SERVER_NAME if self.verify_name else None,
                    **send,
                ) as resp:
                    body = await resp.read()
                    is_json = not raw or resp.content_type == "application/json"
                    try:
                        data = json.loads(body) if is_json and body else None
                    except ValueError:
                        data = None
                    self._preferred = index  # it answered, even if with an error
                    if resp.status >= 400:
                        if isinstance(data, dict) and isinstance(data.get("error"), dict):
                            raise error_from_dict(data["error"])
                        raise TeleportError(f"auth server at {addr} answered HTTP {resp.status}")
                    return data if is_json else body
            except aiohttp.ClientConnectorCertificateError as exc:
                if isinstance(exc.certificate_error, WrongServer):
                    problem = (f"{addr} is not the auth service: {exc.certificate_error}; nothing was sent "
                               "to it (point the auth server address at the auth service)")
                    log.warning("%s", problem)
                    problems.append(problem)
                    continue
                problems.append(f"{addr}: its certificate is not signed by the cluster's CA ({exc.certificate_error})")
            except aiohttp.ClientSSLError as exc:
                problems.append(f"{addr}: TLS handshake failed ({exc})")
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problems.append(f"{addr}: {exc or type(exc).__name__}")
        raise ConnectionProblem(
            "cannot reach the auth server: " + "; ".join(problems)
            + " — check --auth-server / teleport.auth_servers and that the auth service is running"
        )
