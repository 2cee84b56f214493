"""The proxy's web API over HTTPS (default port 3080): discovery, login, signup, node listing.

TLS uses the proxy's own X.509 identity (issued by the host CA when the proxy joined), so a
client that pinned the host CA (``tsh login --ca-pin``) can verify the proxy. Client
certificates are optional at the TLS layer and verified against the user CA; the endpoints that
need a user (``/webapi/nodes``) require one from this cluster's user CA.

Endpoints (errors are ``{"error": {"code", "message"}}`` with the error's HTTP status, as in the
auth API):

- ``GET /webapi/ping`` (public): cluster name, proxy addresses, auth settings and every host CA
  the cluster trusts now (``host_ca_certs`` X.509, ``host_ca_keys`` SSH; both CAs during a host CA
  rotation, as the rotation watch last told the proxy), so a client can check them against a CA
  pin, and a client that verified this proxy keeps its trusted host CAs current (tsh_trust).
- ``GET /webapi/find`` (public): cluster name, version and where the proxy's services are
  (``proxy.ssh_addr``, ``proxy.web_addr``, ``proxy.tunnel_addr``, ``proxy.listener_mode``: in
  ``multiplex`` mode SSH and tunnels are on the web address).
- ``POST /webapi/login`` (public): password + OTP, forwarded to the auth service with the
  client's IP; answers the signed SSH and X.509 certificates.
- ``GET /webapi/signup/{token}``, ``POST /webapi/signup`` (public): invitation sign-up.
- ``GET /webapi/connect/auth`` (public, websocket, rate limited per source): raw bytes to an
  auth server, for nodes that join through the proxy (:mod:`teleport_runtime.proxy.tunnel`).
- ``GET /webapi/nodes`` (user certificate): the nodes some login of the user may reach.
- ``GET /webapi/recordings[?since=]``, ``GET /webapi/recordings/{session_id}`` (JSON, the
  asciicast in ``data_b64``), ``GET /webapi/sessions/active`` (user certificate): passed to the
  auth service with the user's certificate, and the auth service decides by the user's roles.

Every path parameter is validated where it enters (sign-up tokens: URL-safe token characters;
session IDs: :func:`~teleport_runtime.recording.asciicast.check_session_id`) and put into the
auth API's path with :func:`~teleport_runtime.urlpath.api_path`: aiohttp decodes ``%2F`` in a
parameter, so ``/webapi/signup/..%2Fnodes`` would otherwise fetch ``/v1/nodes`` with the proxy's
identity. A refused parameter answers 400 and is audited (``access.denied``).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from teleport_runtime.api import routes
from teleport_runtime.api.client import Forwarded
from teleport_runtime.api.names import CONNECT_AUTH_PATH
from teleport_runtime.api.types import LoginRequest, SignupRequest
from teleport_runtime.ca import TLSIdentity, issuing_ca_matches, parse_tls_identity
from teleport_runtime.errors import AccessDenied, BadParameter, TeleportError
from teleport_runtime.httpjson import error_response, internal_error_response, json_route, read_object
from teleport_runtime.identity import Identity, load_cert_chain
from teleport_runtime.proxy.tunnel import CONNECT_BURST, CONNECT_RATE, relay_websocket_to_auth
from teleport_runtime.proxy.webui import WebUI
from teleport_runtime.ratelimit import TokenBuckets
from teleport_runtime.rbac import RoleSet, parse_role
from teleport_runtime.recording.asciicast import check_session_id
from teleport_runtime.urlpath import check_path_param, check_url_token

if TYPE_CHECKING:
    from teleport_runtime.proxy.service import ProxyService

log = logging.getLogger("teleport.proxy.web")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: Fields of a login request passed on to the auth service.
LOGIN_FIELDS = ("user", "password", "otp", "ssh_public_key", "tls_public_key", "ttl")


def server_ssl_context(identity: Identity, user_ca_certs: list[str]) -> ssl.SSLContext:
    """Serve ``identity``; accept (not require) client certificates from the user CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    load_cert_chain(ctx, identity.tls_cert, identity.tls_key)
    if user_ca_certs:
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(cadata="".join(user_ca_certs))
    return ctx


class ProxyWeb:
    """HTTP handlers and the TLS listener."""

    def __init__(self, service: ProxyService) -> None:
        self.service = service
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self._active_ssl: ssl.SSLContext | None = None
        self.webui = WebUI(service)
        #: The listener's context: the current identity is swapped in per handshake (SNI callback).
        self.listener_ssl: ssl.SSLContext | None = None
        self._connect_limit = TokenBuckets(rate=CONNECT_RATE, burst=CONNECT_BURST, what="joins through the proxy")

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=1024 * 1024)
        app.router.add_get("/webapi/ping", json_route(self.ping))
        app.router.add_post("/webapi/login", json_route(self.login))
        app.router.add_get("/webapi/signup/{token}", json_route(self.get_signup))
        app.router.add_post("/webapi/signup", json_route(self.signup))
        app.router.add_get("/webapi/nodes", json_route(self.nodes))
        app.router.add_get("/webapi/recordings", json_route(self.recordings))
        app.router.add_get("/webapi/recordings/{session_id}", json_route(self.recording))
        app.router.add_get("/webapi/sessions/active", json_route(self.active_sessions))
        self.webui.mount(app)  # the browser app: proxy/webui.py
        app.router.add_get("/webapi/find", json_route(self.find))
        app.router.add_get(CONNECT_AUTH_PATH, self.connect_auth)
        return app

    async def start(self, host: str, port: int) -> int:
        await self.setup()
        assert self.runner is not None and self.listener_ssl is not None
        site = web.TCPSite(self.runner, host or None, port, ssl_context=self.listener_ssl, reuse_address=True)
        await site.start()
        self.port = int(self.runner.addresses[0][1])
        log.info("proxy web API listening on %s:%s", host, self.port)
        return self.port

    async def setup(self) -> None:
        """The application and its TLS, without a listener of its own: :meth:`start` adds one,
        the one-port mode (proxy/multiplex.py) hands it TLS connections (``runner.server`` is the
        protocol factory, ``listener_ssl`` the context)."""
        self._active_ssl = self.service.web_ssl_context()
        self.listener_ssl = self.service.web_ssl_context()
        self.listener_ssl.sni_callback = self._select_context
        self.runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self.runner.setup()

    def reload_tls(self) -> None:
        """New connections use the current identity and user CA trust."""
        self._active_ssl = self.service.web_ssl_context()

    def _select_context(self, sslobj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        if self._active_ssl is not None:
            sslobj.context = self._active_ssl

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status >= 400:
                return web.json_response(
                    {"error": {"code": "not_found" if exc.status == 404 else "bad_parameter",
                               "message": f"{request.method} {request.path}: {exc.reason}"}},
                    status=exc.status,
                )
            raise
        except TeleportError as exc:
            return error_response(exc)
        except Exception:
            log.exception("internal error in %s %s", request.method, request.path)
            return internal_error_response("proxy")


    def _user(self, request: web.Request) -> TLSIdentity:
        """The verified user certificate of the request; AccessDenied otherwise."""
        sslobj = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = sslobj.getpeercert(binary_form=True) if sslobj else None
        hint = "log in with `tsh login --proxy=...`"
        if not der:
            raise AccessDenied(f"this endpoint needs your user certificate: {hint}")
        identity = parse_tls_identity(der)
        if identity.kind != "user":
            raise AccessDenied(f"this endpoint needs a user certificate, not a {identity.kind} one")
        if identity.cluster != self.service.cluster:
            raise AccessDenied(
                f"your certificate is for cluster {identity.cluster!r}, not {self.service.cluster!r}"
            )
        if not issuing_ca_matches(der, [c.encode() for c in self.service.user_ca_certs()]):
            raise AccessDenied(f"your certificate is not signed by the cluster's user CA: {hint}")
        return identity

    def _path_param(self, request: web.Request, name: str, check: Callable[[str], str]) -> str:
        """The path parameter ``name`` of ``request`` if ``check`` and the path-segment rules
        accept it; otherwise BadParameter (400), and the attempt is audited."""
        value = request.match_info[name]
        try:
            return check_path_param(check(value), name)
        except BadParameter as exc:
            self.service.audit(
                "access.denied", resource=request.raw_path, verb=request.method,
                remote_addr=request.remote or "", reason=exc.message,
            )
            raise

    # ------------------------------------------------------------------ handlers

    async def ping(self, request: web.Request) -> dict[str, Any]:
        return self.service.ping_info(request.host)

    async def find(self, request: web.Request) -> dict[str, Any]:
        """Public: the cluster and where its proxy listens (SSH, web, reverse tunnels): what an
        agent given this address asks to learn it is a proxy and where to dial its tunnel."""
        return self.service.find_info(request.host)

    async def connect_auth(self, request: web.Request) -> web.StreamResponse:
        """Public: joining through the proxy (proxy/tunnel.py ``relay_websocket_to_auth``)."""
        return await relay_websocket_to_auth(
            request, list(self.service.client.addresses), self._connect_limit, self.service.audit)

    async def login(self, request: web.Request) -> Any:
        body = await read_object(request)
        if not isinstance(body.get("user"), str) or not body["user"]:
            raise BadParameter("login request needs a user")
        login = LoginRequest.from_json({k: body.get(k) for k in LOGIN_FIELDS}, str(routes.LOGIN))
        return (await self.service.client.login(login, self._client(request))).to_json()

    async def get_signup(self, request: web.Request) -> dict[str, Any]:
        token = self._path_param(request, "token", lambda v: check_url_token(v, "sign-up token"))
        return (await self.service.client.signup_info(token)).to_json()

    async def signup(self, request: web.Request) -> Any:
        body = await read_object(request)
        signup = SignupRequest.from_json({k: body.get(k) for k in ("token", "password", "otp")}, str(routes.SIGNUP))
        return (await self.service.client.signup(signup, self._client(request))).to_json()

    @staticmethod
    def _client(request: web.Request) -> Forwarded:
        """The client's address, forwarded to the auth service, which counts failed logins by
        it (and audits it)."""
        return Forwarded(addr=request.remote or "")

    async def nodes(self, request: web.Request) -> list[dict[str, Any]]:
        identity = self._user(request)
        roles = await self.service.roles(identity.roles)
        # The X.509 identity carries the expanded logins, not the user's traits: expand
        # {{internal.logins}} with them (the node's own check is the authoritative one).
        role_set = RoleSet(roles, {"logins": list(identity.logins)})
        logins = [login for login in role_set.logins() if login in identity.logins]
        visible = []
        for node in self.service.directory.nodes:
            if any(_can_reach(role_set, login, node.labels) for login in logins):
                visible.append(node.to_dict())
        return sorted(visible, key=lambda n: (n["hostname"], n["id"]))


    # ------------------------------------------------------------------ recordings, sessions

    def _as_user(self, request: web.Request) -> Forwarded:
        """A read on the auth API for the user of ``request`` (who must have a valid user
        certificate): the auth service checks the forwarded certificate and the user's roles."""
        self._user(request)
        sslobj = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = sslobj.getpeercert(binary_form=True) if sslobj else b""
        return Forwarded(addr=request.remote or "", user_cert=der or b"")

    async def recordings(self, request: web.Request) -> Any:
        since = request.query.get("since")
        records = await self.service.client.recordings(since, forwarded=self._as_user(request))
        return [record.to_json() for record in records]

    async def recording(self, request: web.Request) -> Any:
        session_id = self._path_param(request, "session_id", check_session_id)
        return (await self.service.client.recording_json(session_id, forwarded=self._as_user(request))).to_json()

    async def active_sessions(self, request: web.Request) -> Any:
        sessions = await self.service.client.active_sessions(forwarded=self._as_user(request))
        return [session.to_json() for session in sessions]


def _can_reach(role_set: RoleSet, login: str, labels: dict[str, str]) -> bool:
    try:
        role_set.check_access_to_node(login, labels)
    except AccessDenied:
        return False
    return True


def parse_roles(raw: list[dict[str, Any]], wanted: list[str]) -> list[Any]:
    """The roles named ``wanted`` out of the auth service's role list (unparsable ones skipped)."""
    out = []
    for item in raw or []:
        try:
            role = parse_role(item)
        except BadParameter as exc:
            log.warning("ignoring a role the proxy cannot parse: %s", exc.message)
            continue
        if role.name in wanted:
            out.append(role)
    return out
