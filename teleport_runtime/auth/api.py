"""The auth API over HTTPS (default port 3025).

Only two endpoints answer without a client certificate: the CA certificates (for CA pinning) and
joining. Everything else needs mutual TLS with a certificate from one of the cluster's CAs; the
caller's identity and system role come from that certificate, and each route names the roles it
admits (a node cannot create tokens). Errors cross this boundary once, as
``{"error": {"code", "message"}}`` with the error's HTTP status.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import logging
import ssl
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import web
from cryptography import x509

from teleport_runtime.api import routes as r
from teleport_runtime.api import types as t
from teleport_runtime.api.names import (
    HEADER_FORWARDED_ADDR,
    HEADER_FORWARDED_USER,
    MAX_BODY_BYTES,
    MAX_STREAM_CHUNK,
    MAX_WATCH_SECONDS,
    SERVER_KEEPALIVE_SECONDS,
)
from teleport_runtime.api.routes import PUBLIC, Endpoint
from teleport_runtime.api.wire import Message, encode
from teleport_runtime.auth.audit import AGENT_EVENTS, check_agent_event
from teleport_runtime.auth.hosts import LOCKS_PREFIX, Lock, key_fingerprint
from teleport_runtime.auth.recordings import download, parse_since, read_upload
from teleport_runtime.auth.service import AUTHORITIES_PREFIX, AuthService
from teleport_runtime.auth.users import login_source
from teleport_runtime.backend import EventType, Watcher
from teleport_runtime.ca import TLSIdentity, issuing_ca_matches, load_certs, parse_tls_identity
from teleport_runtime.durations import parse_duration
from teleport_runtime.errors import AccessDenied, BadParameter, EventRefused, TeleportError
from teleport_runtime.httpjson import error_response, internal_error_response, query_int, read_object
from teleport_runtime.identity import load_cert_chain
from teleport_runtime.ratelimit import RateLimited, TokenBuckets
from teleport_runtime.recording.asciicast import check_session_id

log = logging.getLogger("teleport.auth.api")

Handler = Callable[[web.Request], Awaitable[Any]]
#: Joins per source address: a burst a fleet installing through one NAT gets through, then a
#: steady rate; a refused join (a wrong token) costs ``JOIN_FAILURE_COST`` more, so guessing
#: tokens runs at about one a second.
JOIN_BURST = 100
JOIN_RATE = 50.0
JOIN_FAILURE_COST = 50.0


@dataclass(frozen=True)
class TrustedCAs:
    """The CA certificates client certificates are checked against, parsed."""

    host: tuple[x509.Certificate, ...]
    user: tuple[x509.Certificate, ...]
    #: Removed hosts (``tctl nodes rm``) by UUID: their locked certificates are refused.
    locks: dict[str, Lock] = field(default_factory=dict)


@dataclass(frozen=True)
class PeerCert:
    """What a caller's certificate says beyond its identity: its key and its names (SANs)."""

    fingerprint: str
    names: tuple[str, ...]

    @classmethod
    def from_der(cls, der: bytes) -> PeerCert:
        cert = x509.load_der_x509_certificate(der)
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = (*san.get_values_for_type(x509.DNSName),
                     *(str(ip) for ip in san.get_values_for_type(x509.IPAddress)))
        except x509.ExtensionNotFound:
            names = ()
        return cls(key_fingerprint(cert), tuple(names))


def system_roles(identity: TLSIdentity) -> list[str]:
    """The API roles a certificate holds. User certs carry user role names, which must never
    be mistaken for system roles (a user role named "Admin" is still just a user)."""
    return list(identity.roles) if identity.kind in ("host", "admin") else ["User"]


#: What the middleware learned about a request, for its handler: the caller's verified identity,
#: its certificate's key and names, and the decoded body (when the endpoint takes one).
IDENTITY = web.RequestKey("identity", TLSIdentity)
PEER = web.RequestKey("peer", PeerCert)
BODY = web.RequestKey("body", Message)
M = TypeVar("M", bound=Message)


def _body(request: web.Request, kind: type[M]) -> M:
    """The body the middleware decoded: the endpoint's declared type (a mismatch is a bug in the
    route table, not the caller's: it fails closed as an internal error)."""
    body = request[BODY]
    if not isinstance(body, kind):
        raise TypeError(f"{request.method} {request.path}: body is {type(body).__name__}, not {kind.__name__}")
    return body


class AuthAPI:
    """HTTP handlers over :class:`AuthService`, and the TLS listener that serves them."""

    def __init__(self, auth: AuthService) -> None:
        self.auth = auth
        self.runner: web.AppRunner | None = None
        self._ssl: ssl.SSLContext | None = None
        self._active_ssl: ssl.SSLContext | None = None
        self._closing = asyncio.Event()
        #: Per connection: the trust it was checked against and the identity it presented.
        self._callers: weakref.WeakKeyDictionary[ssl.SSLObject, tuple[TrustedCAs, TLSIdentity, PeerCert]] = (
            weakref.WeakKeyDictionary()
        )
        self.join_limit = TokenBuckets(rate=JOIN_RATE, burst=JOIN_BURST, what="join attempts")
        self._ca_watcher: Watcher | None = None
        self._trust: TrustedCAs | None = None
        self._endpoints: dict[web.AbstractRoute, Endpoint] = {}

    # ------------------------------------------------------------------ TLS

    async def build_ssl_context(self, extra_names: list[str]) -> ssl.SSLContext:
        """Server identity signed by the host CA; client certs verified against both CAs."""
        identity = await self.auth.issue_server_identity(extra_names)
        cas = await self.auth.public_cas()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        load_cert_chain(ctx, identity.tls_cert, identity.tls_key)
        ctx.verify_mode = ssl.CERT_OPTIONAL  # public endpoints exist; handlers require a cert
        ctx.load_verify_locations(cadata="".join(cas["host_ca_certs"] + cas["user_ca_certs"]))
        return ctx

    async def reload_tls(self, extra_names: list[str]) -> None:
        """Swap the TLS identity and trust for new connections (after a CA rotation step)."""
        self._active_ssl = await self.build_ssl_context(extra_names)

    def _select_context(self, sslobj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        if self._active_ssl is not None:
            sslobj.context = self._active_ssl

    # ------------------------------------------------------------------ serving

    def routes(self) -> list[tuple[Endpoint, Handler]]:
        """The route table: each endpoint of the contract (its method, path and roles are in
        :mod:`teleport_runtime.api.routes`) with the handler that serves it."""
        return [
            (r.CA, self.get_ca),
            (r.JOIN, self.join),
            (r.REREGISTER, self.reregister),
            (r.HEARTBEAT, self.heartbeat),
            (r.NODES, self.list_nodes),
            (r.REMOVE_NODE, self.remove_node),
            (r.UPSERT_NODE, self.upsert_node),
            (r.PROXIES, self.list_proxies),
            (r.STATUS, self.status),
            (r.TOKENS, self.list_tokens),
            (r.CREATE_TOKEN, self.create_token),
            (r.DELETE_TOKEN, self.delete_token),
            (r.ROLES, self.list_roles),
            (r.UPSERT_ROLE, self.upsert_role),
            (r.DELETE_ROLE, self.delete_role),
            (r.USERS, self.list_users),
            (r.ADD_USER, self.add_user),
            (r.UPDATE_USER, self.update_user),
            (r.DELETE_USER, self.delete_user),
            (r.RESET_USER, self.reset_user),
            (r.LOGIN, self.login),
            (r.SIGNUP_INFO, self.signup_info),
            (r.SIGNUP, self.signup),
            (r.SIGN_USER, self.sign_user),
            (r.SIGN_HOST, self.sign_host),
            (r.SIGN_TARGET_HOST, self.sign_target_host),
            (r.SIGN_SESSION, self.sign_session),
            (r.EMIT_AUDIT, self.emit_audit),
            (r.ROTATE, self.rotate),
            (r.ROTATION, self.rotation_state),
            (r.WATCH_AUTHORITIES, self.watch_authorities),
            (r.SEARCH_AUDIT, self.search_audit),
            (r.RECORDINGS, self.list_recordings),
            (r.RECORDING, self.get_recording),
            (r.UPLOAD_RECORDING, self.upload_recording),
            (r.STREAM_RECORDING, self.stream_recording),
            (r.ACTIVE_SESSIONS, self.list_active_sessions),
            (r.START_SESSION, self.start_active_session),
            (r.KEEP_ALIVE_SESSION, self.keep_alive_session),
            (r.END_SESSION, self.end_active_session),
        ]

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_BODY_BYTES)
        for endpoint, handler in self.routes():
            route = app.router.add_route(endpoint.method, endpoint.path, handler)
            self._endpoints[route] = endpoint
        return app

    async def start(self, host: str, port: int, extra_names: list[str]) -> int:
        """Listen on ``host:port`` (port 0 picks one); returns the bound port."""
        self._active_ssl = await self.build_ssl_context(extra_names)
        outer = await self.build_ssl_context(extra_names)
        outer.sni_callback = self._select_context
        self.runner = web.AppRunner(self.app(), access_log=None, handle_signals=False,
                                    keepalive_timeout=SERVER_KEEPALIVE_SECONDS)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, ssl_context=outer, reuse_address=True)
        await site.start()
        addresses = self.runner.addresses
        bound = int(addresses[0][1]) if addresses else port
        self.auth.served_at([host, *extra_names], bound)
        log.info("auth API listening on %s:%s", host, bound)
        return bound

    async def stop(self) -> None:
        self._closing.set()  # open CA watches answer now rather than hold the shutdown
        if self._ca_watcher is not None:
            self._ca_watcher.close()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            endpoint = self._endpoints.get(request.match_info.route)
            if endpoint is None:
                raise AccessDenied("no such endpoint")
            if endpoint.roles != PUBLIC:
                identity = await self._caller(request)
                if not set(system_roles(identity)) & set(endpoint.roles):
                    log.warning(
                        "denied %s %s to %s (roles %s)",
                        request.method, request.path, identity.name, ",".join(identity.roles),
                    )
                    reason = f"{request.method} {request.path} is not allowed for role {','.join(identity.roles)}"
                    await self.auth.audit.emit({
                        "event": "access.denied", "user": identity.name, "roles": list(identity.roles),
                        "resource": request.path, "verb": request.method, "remote_addr": request.remote or "",
                        "reason": reason,
                    })
                    raise AccessDenied(reason)
                request[IDENTITY] = identity
            if endpoint.body is not None:  # types and sizes, before any handler reads it
                request[BODY] = endpoint.body.from_json(await read_object(request), str(endpoint))
            result = await handler(request)
            if isinstance(result, web.StreamResponse):
                return result
            return web.json_response(encode(result))
        except web.HTTPException:
            raise
        except TeleportError as exc:
            response = error_response(exc)
            if isinstance(exc, RateLimited):
                response.headers["Retry-After"] = str(exc.retry_after)
            return response
        except Exception:
            log.exception("internal error in %s %s", request.method, request.path)
            return internal_error_response("auth")

    async def _caller(self, request: web.Request) -> TLSIdentity:
        """The verified client identity; fail closed on anything unexpected.

        A connection's certificate is read and checked once and remembered with the connection
        (agents keep theirs across heartbeats), until the CAs or the host locks change: the next
        request after a rotation step or a `tctl nodes rm` checks it again. A host certificate
        must be the one its UUID is bound to, and not locked.
        """
        sslobj = request.transport.get_extra_info("ssl_object") if request.transport else None
        trust = await self._trusted_cas()
        cached = self._callers.get(sslobj) if sslobj is not None else None
        if cached is not None and cached[0] is trust:
            identity, peer = cached[1], cached[2]
        else:
            identity, peer = self._verify_peer(sslobj, trust)
            if identity.kind == "host" and identity.host_uuid:
                try:
                    await self.auth.check_host_caller(identity, peer.fingerprint, trust.locks)
                except AccessDenied as exc:
                    raise await self.auth.refuse(
                        exc, resource=request.path, remote_addr=request.remote or "",
                        host_uuid=identity.host_uuid, nodename=identity.nodename or "",
                        role=",".join(identity.roles)) from None
            if sslobj is not None:
                self._callers[sslobj] = (trust, identity, peer)
        if identity.expires is not None and identity.expires <= datetime.now(UTC):
            raise AccessDenied(f"the certificate of {identity.name} expired: log in or join again")
        request[PEER] = peer
        return identity

    def _verify_peer(self, sslobj: ssl.SSLObject | None, trust: TrustedCAs) -> tuple[TLSIdentity, PeerCert]:
        der = sslobj.getpeercert(binary_form=True) if sslobj else None
        if not der:
            raise AccessDenied("this endpoint needs a client certificate issued by the cluster")
        identity = parse_tls_identity(der)
        if identity.cluster != self.auth.cluster_name:
            raise AccessDenied(f"certificate is for cluster {identity.cluster!r}, not this one")
        # Host and admin identities must come from the host CA, users from the user CA.
        if not issuing_ca_matches(der, trust.user if identity.kind == "user" else trust.host):
            raise AccessDenied(f"{identity.kind} certificate not issued by the expected CA")
        return identity, PeerCert.from_der(der)

    async def _trusted_cas(self) -> TrustedCAs:
        """The CA certificates of the cluster, parsed once and again after any change under
        ``/authorities/`` (a backend watcher: a commit's events are queued before the write
        returns, so no check after a rotation step sees the old trust). Host locks
        (``/locks/hosts/``) are part of the trust and followed the same way."""
        watcher = self._ca_watcher
        if watcher is None or watcher.closed:
            watcher = self._ca_watcher = await self.auth.backend.new_watcher([AUTHORITIES_PREFIX, LOCKS_PREFIX])
            self._trust = None
        if watcher.take_pending() or self._trust is None:
            cas = await self.auth.public_cas()
            self._trust = TrustedCAs(
                host=tuple(c for pem in cas["host_ca_certs"] for c in load_certs(pem)),
                user=tuple(c for pem in cas["user_ca_certs"] for c in load_certs(pem)),
                locks=await self.auth.hosts.locks(),
            )
        return self._trust

    # ------------------------------------------------------------------ handlers

    async def get_ca(self, _request: web.Request) -> dict[str, Any]:
        return await self.auth.public_cas()

    async def join(self, request: web.Request) -> t.IssuedIdentity:
        remote = request.remote or "unknown"
        try:
            self.join_limit.take(remote)
        except RateLimited as exc:
            if not exc.first:
                raise
            raise await self.auth.refuse(exc, resource=r.JOIN.path, remote_addr=remote) from None
        sent = _body(request, t.JoinRequest)
        req = dataclasses.replace(sent, role=sent.role.lower())
        # A host joining a second role (node and proxy on one host) proves it is the host
        # holding its UUID with the certificate of its first role.
        presented = None
        if request.transport is not None and request.transport.get_extra_info("peercert"):
            try:
                presented = await self._caller(request)
            except AccessDenied:
                presented = None
        try:
            return await self.auth.register(req, remote, presented)
        except (AccessDenied, BadParameter):
            self.join_limit.charge(remote, JOIN_FAILURE_COST)
            raise

    async def reregister(self, request: web.Request) -> t.IssuedIdentity:
        """A new identity for the caller's own UUID, name, role and certificate names: names in
        the body are ignored."""
        body = _body(request, t.ReregisterRequest)
        peer = request[PEER]
        return await self.auth.reregister(
            request[IDENTITY], list(peer.names), body.ssh_public_key, body.tls_public_key, request.remote or "",
        )

    async def heartbeat(self, request: web.Request) -> t.HeartbeatAnswer:
        identity = request[IDENTITY]
        if not identity.host_uuid:
            raise AccessDenied("heartbeat needs a host identity")
        peer = request[PEER]
        return await self.auth.heartbeat(identity, list(peer.names), _body(request, t.HeartbeatReport),
                                         request.remote or "")

    async def list_nodes(self, request: web.Request) -> list[t.NodeRecord]:
        return await self.auth.list_hosts("Node")

    async def remove_node(self, request: web.Request) -> t.HostRemoved:
        """``tctl nodes rm``: remove a host and lock its certificates."""
        return await self.auth.remove_host(request.match_info["name"])

    async def upsert_node(self, request: web.Request) -> t.NodeSaved:
        """``tctl create`` of an OpenSSH node resource."""
        body = _body(request, t.NodeUpsert)
        return await self.auth.upsert_openssh_node(body.resource, body.force)

    async def sign_target_host(self, request: web.Request) -> t.HostCert:
        body = _body(request, t.TargetHostCertRequest)
        return t.HostCert(ssh_cert=await self.auth.sign_target_host(body.node, body.ssh_public_key))

    async def sign_session(self, request: web.Request) -> t.SessionCert:
        peer = request[PEER]
        return await self.auth.sign_session(_body(request, t.SessionCertRequest), request[IDENTITY],
                                            list(peer.names), request.remote or "")

    async def list_proxies(self, request: web.Request) -> list[t.NodeRecord]:
        return await self.auth.list_hosts("Proxy")

    async def status(self, request: web.Request) -> dict[str, Any]:
        return await self.auth.status()

    async def list_tokens(self, request: web.Request) -> list[dict[str, Any]]:
        return [token.to_dict() for token in await self.auth.tokens.list()]

    async def create_token(self, request: web.Request) -> t.TokenCreated:
        body = _body(request, t.TokenRequest)
        ttl = parse_duration(body.ttl) if body.ttl else None
        token = await self.auth.tokens.create(list(body.roles) or ["node"], ttl=ttl, value=body.token)
        return t.TokenCreated(
            token=token.value, roles=token.roles, expires=token.expires.isoformat() if token.expires else None,
            static=token.static, ca_pins=tuple(await self.auth.ca_pins()), auth_server=self.auth.advertise_addr(),
        )

    async def delete_token(self, request: web.Request) -> t.Deleted:
        await self.auth.tokens.delete(request.match_info["token"])
        return t.Deleted(deleted=request.match_info["token"])


    # ------------------------------------------------------------------ roles and users

    async def list_roles(self, _request: web.Request) -> list[dict[str, Any]]:
        return [role.to_dict() for role in await self.auth.users.list_roles()]

    async def upsert_role(self, request: web.Request) -> t.RoleSaved:
        body = _body(request, t.RoleUpsert)
        role, existed = await self.auth.users.upsert_role(body.role, force=body.force)
        return t.RoleSaved(name=role.name, existed=existed)

    async def delete_role(self, request: web.Request) -> t.Deleted:
        await self.auth.users.delete_role(request.match_info["name"])
        return t.Deleted(deleted=request.match_info["name"])

    async def list_users(self, _request: web.Request) -> list[dict[str, Any]]:
        return [u.public() for u in await self.auth.users.list_users()]

    async def add_user(self, request: web.Request) -> dict[str, Any]:
        body = _body(request, t.UserAdd)
        return await self.auth.users.add_user(body.name, list(body.roles), list(body.logins))

    async def update_user(self, request: web.Request) -> dict[str, Any]:
        body = _body(request, t.UserUpdate)
        user = await self.auth.users.update_user(
            request.match_info["name"],
            None if body.roles is None else list(body.roles),
            None if body.logins is None else list(body.logins),
        )
        return user.public()

    async def delete_user(self, request: web.Request) -> t.Deleted:
        await self.auth.users.delete_user(request.match_info["name"])
        return t.Deleted(deleted=request.match_info["name"])

    async def reset_user(self, request: web.Request) -> dict[str, Any]:
        return await self.auth.users.reset_user(request.match_info["name"])

    @staticmethod
    def _client_addr(request: web.Request) -> str:
        """The address of the user behind a proxy's request: the proxy forwards it (only a Proxy
        identity may: login and sign-up admit no other caller), validated here."""
        identity = request[IDENTITY]
        if "Proxy" not in system_roles(identity):
            raise AccessDenied(f"only a proxy may forward a client's address ({HEADER_FORWARDED_ADDR})")
        forwarded = request.headers.get(HEADER_FORWARDED_ADDR, "")
        if not forwarded:
            raise BadParameter(
                f"{request.path} needs the client's address in {HEADER_FORWARDED_ADDR}: upgrade the proxy"
            )
        login_source(forwarded)  # an IP address (and port), nothing else
        return forwarded

    async def login(self, request: web.Request) -> t.UserCerts:
        remote_addr = self._client_addr(request)
        return await self.auth.login(_body(request, t.LoginRequest), remote_addr)

    async def signup_info(self, request: web.Request) -> dict[str, Any]:
        token = request.match_info["token"]
        try:
            return await self.auth.users.signup_info(token)
        except AccessDenied as exc:
            await self._signup_refused(token, request.headers.get(HEADER_FORWARDED_ADDR, ""), exc)
            raise

    async def _signup_refused(self, token: str, remote_addr: str, exc: TeleportError) -> None:
        """Audit a refused sign-up (``user.signup`` failure); the token itself is not logged."""
        await self.auth.audit.emit({
            "event": "user.signup", "success": False, "user": await self.auth.users.signup_user(token),
            "remote_addr": remote_addr[:64], "reason": exc.message,
        })

    async def signup(self, request: web.Request) -> t.SignupDone:
        """Complete a sign-up; audited (``user.signup``) either way, a refused token too."""
        remote_addr = self._client_addr(request)
        body = _body(request, t.SignupRequest)
        token = body.token
        try:
            user = await self.auth.users.complete_signup(token, body.password, body.otp)
        except (AccessDenied, BadParameter) as exc:
            await self._signup_refused(token, remote_addr, exc)
            raise
        await self.auth.audit.emit({"event": "user.signup", "success": True, "user": user.name,
                                    "remote_addr": remote_addr})
        return t.SignupDone(user=user.name)

    async def sign_user(self, request: web.Request) -> t.UserCerts:
        body = _body(request, t.UserCertRequest)
        return await self.auth.sign_user(body.user, body.ssh_public_key, body.tls_public_key.encode() or None, body.ttl)

    async def sign_host(self, request: web.Request) -> t.HostCert:
        body = _body(request, t.HostCertRequest)
        ttl = parse_duration(body.ttl) if body.ttl else None
        cert = await self.auth.sign_openssh_host(list(body.names), body.ssh_public_key, ttl)
        return t.HostCert(ssh_cert=cert)

    async def emit_audit(self, request: web.Request) -> dict[str, Any]:
        """An agent's event, within what its role may write (:func:`check_agent_event`); a
        refusal is final for the sender and audited as ``access.denied``."""
        identity = request[IDENTITY]
        host_uuid = self._host(request)
        body = _body(request, t.AuditEvent).to_json()
        if not body.get("event"):
            raise BadParameter("an audit event needs an 'event' field")
        role = next((name for name in system_roles(identity) if name in AGENT_EVENTS), "")
        try:
            record = check_agent_event(body, role=role, host_uuid=host_uuid, nodename=identity.nodename or "")
        except EventRefused as exc:
            log.warning("refused an audit event from %s (%s): %s", identity.name, role, exc.message)
            await self.auth.audit.emit({
                "event": "access.denied", "user": identity.name, "roles": list(identity.roles),
                "server_id": host_uuid, "resource": request.path, "verb": request.method,
                "remote_addr": request.remote or "", "reason": exc.message,
            })
            raise
        return await self.auth.audit.emit(record)

    async def search_audit(self, request: web.Request) -> list[dict[str, Any]]:
        await self._authorize(request, "event", "list")
        since = parse_duration(request.query.get("since", "1h"))
        types = [kind for kind in request.query.get("type", "").split(",") if kind]
        return await self.auth.audit.search(datetime.now(UTC) - since, types=types or None)

    # ------------------------------------------------------------------ CA rotation

    async def rotate(self, request: web.Request) -> dict[str, Any]:
        body = _body(request, t.RotateRequest)
        return await self.auth.rotation.rotate(
            request.match_info["type"], mode=body.mode or "auto", target_phase=body.phase,
            # a number of seconds reaches the rotation's own duration check as it was sent
            grace_period=body.grace_period,  # type: ignore[arg-type]
        )

    async def rotation_state(self, _request: web.Request) -> dict[str, Any]:
        return {ca_type: await self.auth.rotation.view(ca_type) for ca_type in ("host", "user")}

    # ------------------------------------------------------------------ recordings and sessions

    async def _forwarded_user(self, encoded: str) -> TLSIdentity:
        """The user certificate a proxy forwards: checked as if the user had presented it."""
        try:
            der = base64.b64decode(encoded, validate=True)
            identity = parse_tls_identity(der)
        except (ValueError, binascii.Error, TeleportError):
            raise AccessDenied("the forwarded user certificate cannot be read") from None
        trust = await self._trusted_cas()
        if (
            identity.kind != "user"
            or identity.cluster != self.auth.cluster_name
            or not issuing_ca_matches(der, trust.user)
        ):
            raise AccessDenied("the forwarded certificate is not a user certificate of this cluster")
        if identity.expires is not None and identity.expires <= datetime.now(UTC):
            raise AccessDenied(f"the certificate of {identity.name} expired: run `tsh login` again")
        return identity

    async def _authorize(self, request: web.Request, resource: str, verb: str) -> TLSIdentity:
        """Who a read of recordings, sessions or the audit log is for, once allowed: the caller,
        or the user a proxy forwards. Refusals are audited (``access.denied``)."""
        identity = request[IDENTITY]
        remote = request.remote or ""
        if "Proxy" in system_roles(identity):
            encoded = request.headers.get(HEADER_FORWARDED_USER)
            if not encoded:
                raise AccessDenied(f"{request.method} {request.path}: a proxy must forward the user's certificate")
            identity = await self._forwarded_user(encoded)
            remote = request.headers.get(HEADER_FORWARDED_ADDR) or remote
        await self.auth.authorize_user(identity, resource, verb, remote)
        return identity

    @staticmethod
    def _host(request: web.Request) -> str:
        identity = request[IDENTITY]
        if not identity.host_uuid:
            raise AccessDenied("this endpoint needs a host identity")
        return identity.host_uuid

    async def list_recordings(self, request: web.Request) -> list[dict[str, Any]]:
        await self._authorize(request, "session", "list")
        return await self.auth.recordings.list(parse_since(request.query.get("since")))

    async def get_recording(self, request: web.Request) -> web.StreamResponse | dict[str, Any]:
        await self._authorize(request, "session", "read")
        return await download(self.auth.recordings, request.match_info["session_id"],
                              request.query.get("encoding", ""))

    async def upload_recording(self, request: web.Request) -> t.RecordingStored:
        server_id = self._host(request)
        # Streamed to a temp file beside the recordings, never whole in memory.
        upload = await read_upload(request, server_id, self.auth.recordings)
        try:
            record = await self.auth.store_recording(upload, server_id)
        finally:
            upload.discard()
        return t.RecordingStored.from_json(record)

    async def stream_recording(self, request: web.Request) -> t.StreamAppended:
        server_id = self._host(request)
        session_id = check_session_id(request.match_info["session_id"])
        offset = query_int(request, "offset", "a recording stream append needs ?offset=BYTES")
        data = await request.content.read(MAX_STREAM_CHUNK + 1)
        if len(data) > MAX_STREAM_CHUNK:
            raise BadParameter(f"a recording stream append is at most {MAX_STREAM_CHUNK} bytes")
        size = await self.auth.recordings.append_stream(session_id, offset, data, server_id)
        return t.StreamAppended(session_id=session_id, size=size)

    async def list_active_sessions(self, request: web.Request) -> list[dict[str, Any]]:
        await self._authorize(request, "session", "list")
        return await self.auth.sessions.list()

    async def start_active_session(self, request: web.Request) -> dict[str, Any]:
        return await self.auth.sessions.start(_body(request, t.ActiveSession).to_json(), self._host(request))

    async def keep_alive_session(self, request: web.Request) -> dict[str, Any]:
        return await self.auth.sessions.keep_alive(request.match_info["session_id"], self._host(request))

    async def end_active_session(self, request: web.Request) -> t.SessionEnded:
        session_id = request.match_info["session_id"]
        await self.auth.sessions.end(session_id, self._host(request))
        return t.SessionEnded(ended=session_id)
    async def watch_authorities(self, request: web.Request) -> t.AuthorityState:
        """The CA state agents follow (:meth:`AuthService.authority_state`), as a long poll:
        with ``revision`` equal to the current one, the answer waits up to ``wait`` seconds for
        a CA to change; otherwise (or with no ``wait``) it comes at once."""
        known = request.query.get("revision", "")
        try:
            wait = min(float(request.query.get("wait") or 0), MAX_WATCH_SECONDS)
        except ValueError:
            raise BadParameter(f"wait must be a number of seconds, got {request.query.get('wait')!r}") from None
        watcher = await self.auth.backend.new_watcher([AUTHORITIES_PREFIX])
        try:
            state = await self.auth.authority_state()
            if state.revision != known or wait <= 0:
                return state

            async def changed() -> None:
                async for event in watcher:
                    if event.type is not EventType.INIT:
                        return

            waits = [asyncio.ensure_future(changed()), asyncio.ensure_future(self._closing.wait())]
            try:
                await asyncio.wait(waits, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in waits:
                    task.cancel()
                await asyncio.gather(*waits, return_exceptions=True)
            return await self.auth.authority_state()
        finally:
            watcher.close()
