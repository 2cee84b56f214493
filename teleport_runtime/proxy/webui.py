"""The web UI on the proxy's web port: the single-page app, its web sessions and the terminal.

A web session is a server-side record at the proxy. At login the proxy makes a key pair, the auth
service checks the password and one-time code (the same checks, rate limits and audit as ``tsh
login``, through ``/v1/users/login``) and signs the user's SSH and X.509 certificates for that key;
the keys never leave the proxy. The browser holds only an opaque session id in an HttpOnly, Secure,
SameSite=Strict cookie (``__Host-`` prefixed). The session ends when the certificate does, or at
logout (the record is dropped on the server).

Every state-changing request (POST, DELETE) must come from this origin (``Origin``) and carry the
session's CSRF token in ``X-CSRF-Token``; the terminal websocket must come from this origin. Every
refusal answers a JSON error the page shows and is audited. Responses carry a strict
Content-Security-Policy (scripts from this origin only: the app has no inline script) and
``X-Frame-Options: DENY``.

Routes (all JSON under ``/web/api/``, the app and its assets under ``/`` and ``/web/``):

- ``POST /web/api/login`` {user, password, otp} -> the session (and its cookie);
- ``GET /web/api/session``, ``POST /web/api/logout``;
- ``POST /web/api/signup/info`` {token} -> the user, the TOTP URI and its QR code;
  ``POST /web/api/signup`` {token, password, otp}: the invitation's sign-up (the link ``tctl users
  add`` prints is ``https://PROXY/web/signup#TOKEN``: the token is in the fragment, which the
  browser never sends);
- ``GET /web/api/nodes``: the nodes some login of the user may reach, with those logins;
- ``GET /web/api/sessions``, ``GET /web/api/recordings``, ``GET /web/api/recordings/{session_id}``:
  read on the auth API with the session's certificate (the user's roles decide);
- ``GET /web/api/audit?since=&type=&user=``: the audit log, as the user's roles allow;
- ``GET /web/api/terminal?node=ID&login=LOGIN&cols=C&rows=R`` (websocket): an SSH session to the
  node as the user, through this proxy's own SSH listener (the same routing, RBAC at the node,
  recording and audit as ``tsh ssh``). With ``join=SESSION_ID`` (``login`` optional: the first the
  roles allow there) it watches that session instead, read-only: the node decides who may.
  Text frames from the page are JSON ``{"type": "input", "data"}`` or ``{"type": "resize",
  "cols", "rows"}``; binary frames to the page are the terminal's output; a text frame
  ``{"type": "end"|"error", "message"}`` says why it closed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncssh
import segno
from aiohttp import WSMsgType, web
from cryptography.hazmat.primitives.serialization import Encoding

from teleport_runtime.api.client import Forwarded
from teleport_runtime.api.types import LoginRequest, SignupRequest
from teleport_runtime.ca import generate_ssh_keypair, generate_tls_keypair
from teleport_runtime.ca._common import load_one_cert
from teleport_runtime.durations import parse_duration
from teleport_runtime.errors import AccessDenied, BadParameter, ConnectionProblem, LimitExceeded, TeleportError
from teleport_runtime.httpjson import json_route, read_object
from teleport_runtime.names import is_host_name
from teleport_runtime.netaddr import is_wildcard
from teleport_runtime.rbac import RoleSet, check_posix_name
from teleport_runtime.recording.asciicast import check_session_id
from teleport_runtime.urlpath import check_url_token

if TYPE_CHECKING:
    from teleport_runtime.proxy.service import ProxyService

log = logging.getLogger("teleport.proxy.webui")

COOKIE = "__Host-teleport-session"
CSRF_HEADER = "X-CSRF-Token"
#: Sessions one proxy keeps at most (each holds two keys): a flood of logins cannot exhaust memory.
MAX_SESSIONS = 10_000
#: Largest websocket message the page may send (keystrokes, a paste, a resize).
MAX_WS_MESSAGE = 64 * 1024
#: Most audit events the page lists (the newest).
MAX_AUDIT_EVENTS = 1000
_AUDIT_TYPES = re.compile(r"([a-z_.]{1,64}(,[a-z_.]{1,64}){0,31})?")
#: Terminal size bounds.
MAX_COLS, MAX_ROWS = 1000, 500
CONNECT_TIMEOUT = 30.0
CSP = (
    # The player's terminal emulator is WebAssembly: 'wasm-unsafe-eval' compiles it, and allows no
    # JavaScript eval or inline script.
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; connect-src 'self'; img-src 'self' data:; "
    # xterm.js and asciinema-player set element styles and add <style> sheets at run time.
    "style-src 'self' 'unsafe-inline'; font-src 'self' data:; worker-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def assets_dir() -> Path:
    """Where the built app is (``scripts/setup`` builds ``frontend/`` into it)."""
    return Path(str(resources.files("teleport_runtime.proxy"))) / "webassets"


@dataclass
class WebSession:
    user: str
    csrf: str
    expires: float
    roles: list[str]
    logins: list[str]
    ssh_key: asyncssh.SSHKey
    ssh_cert: asyncssh.SSHCertificate
    tls_der: bytes
    host_ca_keys: list[str]
    sockets: set[web.WebSocketResponse] = field(default_factory=set)

    def public(self) -> dict[str, Any]:
        return {"user": self.user, "csrf_token": self.csrf, "logins": self.logins, "roles": self.roles,
                "expires": int(self.expires)}


def _key(session_id: str) -> str:
    # Sessions are looked up by a hash of the cookie: the raw id is nowhere in the proxy's memory
    # dumps or logs, and the lookup's timing tells nothing about it.
    return hashlib.sha256(session_id.encode()).hexdigest()


class WebUI:
    """The app's routes and the session store of one proxy."""

    def __init__(self, service: ProxyService) -> None:
        self.service = service
        self.sessions: dict[str, WebSession] = {}

    def mount(self, app: web.Application) -> None:
        app.on_response_prepare.append(self._headers)
        app.on_shutdown.append(self._close_all)
        r = app.router
        r.add_post("/web/api/login", json_route(self.login))
        r.add_post("/web/api/logout", json_route(self.logout))
        r.add_get("/web/api/session", json_route(self.session))
        r.add_get("/web/api/nodes", json_route(self.nodes))
        r.add_get("/web/api/sessions", json_route(self.active_sessions))
        r.add_get("/web/api/recordings", json_route(self.recordings))
        r.add_get("/web/api/recordings/{session_id}", json_route(self.recording))
        r.add_get("/web/api/audit", json_route(self.audit))
        r.add_get("/web/api/terminal", self.terminal)
        r.add_post("/web/api/signup/info", json_route(self.signup_info))
        r.add_post("/web/api/signup", json_route(self.signup))
        r.add_get("/web/assets/{name}", self.asset)
        for path in ("/", "/web", "/web/{page:(login|nodes|terminal|sessions|recordings|audit|signup)}"):
            r.add_get(path, self.index)

    # ------------------------------------------------------------------ plumbing

    @staticmethod
    async def _headers(_request: web.Request, response: web.StreamResponse) -> None:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)

    async def _close_all(self, _app: web.Application) -> None:
        for session in list(self.sessions.values()):
            for ws in list(session.sockets):
                with contextlib.suppress(Exception):
                    await ws.close(message=b"the proxy is shutting down")

    def _refuse(self, request: web.Request, exc: TeleportError, user: str = "") -> TeleportError:
        """Audit a refusal of ``request`` and return ``exc`` to raise."""
        self.service.audit(
            "access.denied", user=user, resource=request.path, verb=request.method,
            remote_addr=request.remote or "", reason=exc.message,
        )
        return exc

    def _check_origin(self, request: web.Request, what: str) -> None:
        origin = request.headers.get("Origin", "")
        if origin != f"https://{request.host}":
            raise self._refuse(request, AccessDenied(
                f"{what} from origin {origin or '(none)'} refused: open the web UI at "
                f"https://{request.host}/ and use it from there"
            ))

    def _session(self, request: web.Request, *, state_changing: bool = False) -> WebSession:
        """The request's live web session; AccessDenied (401-like, audited) otherwise; with
        ``state_changing``, the origin and CSRF token are checked too."""
        if state_changing:
            self._check_origin(request, f"{request.method} {request.path}")
        cookie = request.cookies.get(COOKIE, "")
        key = _key(cookie) if cookie else ""
        session = self.sessions.get(key) if key else None
        if session is None:
            exc = NotLoggedIn("you are not logged in (or you logged out): log in again")
            # No cookie is every first visit; a cookie the proxy does not know (forged, or kept
            # after logout) is worth an audit event.
            raise self._refuse(request, exc) if cookie else exc
        if session.expires <= time.time():
            self.sessions.pop(key, None)
            raise self._refuse(request, NotLoggedIn(
                f"your web session expired at {time.strftime('%H:%M:%S UTC', time.gmtime(session.expires))} "
                "(it lasts as long as your certificate): log in again"
            ), session.user)
        if state_changing:
            token = request.headers.get(CSRF_HEADER, "")
            if not token or not hmac.compare_digest(token.encode(), session.csrf.encode()):
                raise self._refuse(request, AccessDenied(
                    "the request's CSRF token is missing or wrong: reload the page and try again"
                ), session.user)
        return session

    def _forwarded(self, request: web.Request, session: WebSession) -> Forwarded:
        return Forwarded(addr=request.remote or "", user_cert=session.tls_der)

    def _sweep(self) -> None:
        now = time.time()
        for key in [k for k, s in self.sessions.items() if s.expires <= now]:
            del self.sessions[key]

    # ------------------------------------------------------------------ the app

    async def index(self, _request: web.Request) -> web.StreamResponse:
        page = assets_dir() / "index.html"
        if not page.is_file():
            return web.Response(
                status=503, content_type="text/plain",
                text="The web UI is not built on this proxy: run scripts/setup (it builds frontend/ with npm) "
                     "or install the runtime's wheel, which carries the built app.\n",
            )
        return web.FileResponse(page)

    async def asset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        root = assets_dir()
        path = root / name
        # One flat directory: a name with a separator or a dot-dot never leaves it.
        if "/" in name or "\\" in name or name.startswith(".") or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    # ------------------------------------------------------------------ sessions

    async def login(self, request: web.Request) -> web.StreamResponse:
        self._check_origin(request, "login")
        body = await read_object(request)
        user = body.get("user")
        if not isinstance(user, str) or not user:
            raise self._refuse(request, BadParameter("enter your user name"))
        self._sweep()
        if len(self.sessions) >= MAX_SESSIONS:
            raise self._refuse(request, LimitExceeded(
                "this proxy holds too many web sessions: try again later, or use tsh"), user)
        ssh_key, ssh_public = generate_ssh_keypair()
        tls_key, tls_public = generate_tls_keypair()
        del tls_key  # the proxy reads on the user's behalf with the certificate alone
        answer = await self.service.client.login(
            LoginRequest.from_json({
                "user": user, "password": body.get("password") or "", "otp": str(body.get("otp") or ""),
                "ssh_public_key": ssh_public, "tls_public_key": tls_public.decode(),
            }, "web login"),
            Forwarded(addr=request.remote or ""),
        )
        if not answer.tls_cert:
            raise ConnectionProblem("the auth service signed no TLS certificate: is it up to date?")
        cert = load_one_cert(answer.tls_cert)
        expires = min(time.time() + answer.ttl_seconds, cert.not_valid_after_utc.timestamp())
        session_id = secrets.token_urlsafe(32)
        session = WebSession(
            user=answer.username, csrf=secrets.token_urlsafe(32), expires=expires,
            roles=list(answer.roles), logins=list(answer.logins),
            ssh_key=asyncssh.import_private_key(ssh_key), ssh_cert=asyncssh.import_certificate(answer.ssh_cert),
            tls_der=cert.public_bytes(Encoding.DER), host_ca_keys=list(answer.host_ca_keys),
        )
        self.sessions[_key(session_id)] = session
        self.service.audit("web.session.start", user=session.user, remote_addr=request.remote or "",
                           expires=int(expires))
        response = web.json_response(session.public())
        response.set_cookie(COOKIE, session_id, max_age=max(1, int(expires - time.time())), path="/",
                            secure=True, httponly=True, samesite="Strict")
        return response

    async def session(self, request: web.Request) -> dict[str, Any]:
        return self._session(request).public()

    async def logout(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request, state_changing=True)
        self.sessions.pop(_key(request.cookies[COOKIE]), None)
        for ws in list(session.sockets):
            with contextlib.suppress(Exception):
                await ws.close(message=b"logged out")
        self.service.audit("web.session.end", user=session.user, remote_addr=request.remote or "")
        response = web.json_response({"logged_out": True})
        response.del_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
        return response

    # ------------------------------------------------------------------ sign-up

    async def signup_info(self, request: web.Request) -> dict[str, Any]:
        """The invitation's user and the TOTP secret to enrol, with its QR code (an SVG data URI).
        The token comes in the body: the page reads it from the link's fragment, which browsers
        never send, so it stays out of request lines and logs."""
        self._check_origin(request, "sign-up")
        token = await self._signup_token(request)
        info = (await self.service.client.signup_info(token)).to_json()
        info["qr_svg"] = segno.make(info["otpauth_uri"]).svg_data_uri(scale=5, border=2)
        return dict(info)

    async def signup(self, request: web.Request) -> dict[str, Any]:
        self._check_origin(request, "sign-up")
        body = await read_object(request)
        done = await self.service.client.signup(
            SignupRequest.from_json({k: body.get(k) for k in ("token", "password", "otp")}, "web sign-up"),
            Forwarded(addr=request.remote or ""),
        )
        return dict(done.to_json())

    async def _signup_token(self, request: web.Request) -> str:
        body = await read_object(request)
        try:
            return check_url_token(body.get("token"), "sign-up token")
        except BadParameter as exc:
            raise self._refuse(request, BadParameter(
                f"{exc.message}: open the link `tctl users add` printed, whole"), "") from None

    # ------------------------------------------------------------------ reads

    async def nodes(self, request: web.Request) -> list[dict[str, Any]]:
        session = self._session(request)
        role_set = RoleSet(await self.service.roles(session.roles), {"logins": session.logins})
        logins = [login for login in role_set.logins() if login in session.logins]
        visible = []
        for node in self.service.directory.nodes:
            allowed = [login for login in logins if _can_reach(role_set, login, node.labels)]
            if allowed:
                visible.append({**node.to_dict(), "logins": allowed})
        return sorted(visible, key=lambda n: (n["hostname"], n["id"]))

    async def active_sessions(self, request: web.Request) -> list[dict[str, Any]]:
        session = self._session(request)
        found = await self.service.client.active_sessions(forwarded=self._forwarded(request, session))
        return [s.to_json() for s in found]

    async def recordings(self, request: web.Request) -> list[dict[str, Any]]:
        session = self._session(request)
        found = await self.service.client.recordings(None, forwarded=self._forwarded(request, session))
        return [r.to_json() for r in found]

    async def recording(self, request: web.Request) -> dict[str, Any]:
        session = self._session(request)
        try:
            session_id = check_session_id(request.match_info["session_id"])
        except BadParameter as exc:
            raise self._refuse(request, exc, session.user) from None
        meta = await self.service.client.recording_json(session_id, forwarded=self._forwarded(request, session))
        out = dict(meta.to_json())
        # The player reads the asciicast as text.
        out["cast"] = base64.b64decode(out.pop("data_b64", "") or "").decode("utf-8", errors="replace")
        return out

    async def audit(self, request: web.Request) -> list[dict[str, Any]]:
        """The audit log, for roles that may list events: ``since`` (a duration), ``type``
        (comma-separated types or prefixes), ``user``."""
        session = self._session(request)
        since, types, user = (request.query.get(k, "") for k in ("since", "type", "user"))
        try:
            parse_duration(since or "1h")
            if not _AUDIT_TYPES.fullmatch(types):
                raise BadParameter(f"invalid event types {types!r}: expected names like user.login,session.")
        except BadParameter as exc:
            raise self._refuse(request, exc, session.user) from None
        events = await self.service.client.search_audit(
            since or "1h", types, forwarded=self._forwarded(request, session))
        out = [e.to_json() for e in events]
        return [e for e in out if not user or e.get("user") == user][-MAX_AUDIT_EVENTS:]

    # ------------------------------------------------------------------ terminal

    async def terminal(self, request: web.Request) -> web.StreamResponse:
        self._check_origin(request, "terminal websocket")
        session = self._session(request)
        query = request.query
        node_name, login = query.get("node", ""), query.get("login", "")
        join = query.get("join")
        try:
            if not is_host_name(node_name):
                raise BadParameter(f"invalid node {node_name!r}: pick a node from the list")
            if join is not None:
                join = check_session_id(join)
            if login or join is None:
                check_posix_name(login, "login")
            cols, rows = _size(query.get("cols", "80"), query.get("rows", "24"))
        except BadParameter as exc:
            raise self._refuse(request, exc, session.user) from None
        ws = web.WebSocketResponse(max_msg_size=MAX_WS_MESSAGE, heartbeat=30)
        await ws.prepare(request)
        session.sockets.add(ws)
        try:
            await self._run_terminal(request, session, ws, node_name, login, cols, rows, join)
        finally:
            session.sockets.discard(ws)
            if not ws.closed:
                await ws.close()
        return ws

    async def _run_terminal(self, request: web.Request, session: WebSession, ws: web.WebSocketResponse,
                            node_name: str, login: str, cols: int, rows: int, join: str | None = None) -> None:
        async def fail(message: str) -> None:
            self.service.audit("access.denied", user=session.user, login=login, target=node_name,
                               resource=request.path, remote_addr=request.remote or "", reason=message)
            await ws.send_str(json.dumps({"type": "error", "message": message}))

        try:
            node = await self.service.directory.resolve(node_name)
        except TeleportError as exc:
            await fail(exc.message)
            return
        if not login:  # a join: the first login the user's roles allow on that node
            role_set = RoleSet(await self.service.roles(session.roles), {"logins": session.logins})
            allowed = [x for x in role_set.logins() if x in session.logins and _can_reach(role_set, x, node.labels)]
            if not allowed:
                await fail(f"your roles allow no login on {node.hostname}, which joining a session there needs")
                return
            login = allowed[0]
        try:
            proxy_conn, node_conn = await self._connect(session, node.id, node.addr.port, login)
        except TeleportError as exc:
            await fail(f"cannot open a session as {login} on {node.hostname}: {exc.message}")
            return
        try:
            if join is not None:
                # Observer mode (the node's protocol, node/session.py); its refusal comes on stderr.
                from teleport_runtime.node.session import JOIN_ENV, JOIN_SUBSYSTEM

                process = await node_conn.create_process(
                    subsystem=JOIN_SUBSYSTEM, env={JOIN_ENV: join}, encoding=None, stderr=asyncssh.STDOUT,
                )
            else:
                process = await node_conn.create_process(
                    term_type="xterm-256color", term_size=(cols, rows), encoding=None,
                )
            await self._pump(ws, process, session, node.hostname, login, watching=join is not None)
        except (OSError, asyncssh.Error) as exc:
            await fail(f"the session on {node.hostname} failed: {_describe(exc)}")
        finally:
            node_conn.close()
            proxy_conn.close()

    async def _connect(self, session: WebSession, node_id: str, port: int,
                       login: str) -> tuple[asyncssh.SSHClientConnection, asyncssh.SSHClientConnection]:
        """Through this proxy's SSH listener (so the terminal is routed as every client is) to the
        node, as ``login``, with the web session's certificate; hosts verified by the host CA."""
        listen = self.service.cfg.proxy.listen_addr
        host = "127.0.0.1" if is_wildcard(listen.host) else listen.host
        host_cas = [asyncssh.import_public_key(k) for k in session.host_ca_keys or self.service.host_ca_keys()]
        known: tuple[list[asyncssh.SSHKey], list[asyncssh.SSHKey], list[asyncssh.SSHKey]] = ([], host_cas, [])
        options: dict[str, Any] = {
            "client_keys": [(session.ssh_key, session.ssh_cert)], "known_hosts": known, "config": [],
            "preferred_auth": "publickey", "agent_path": None, "keepalive_interval": 30,
        }
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                proxy_conn = await asyncssh.connect(host, self.service.ssh_port, username=login, **options)
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            raise ConnectionProblem(f"the proxy cannot reach its own SSH listener: {_describe(exc)}") from None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                node_conn = await asyncssh.connect(node_id, port, username=login, tunnel=proxy_conn, **options)
        except asyncssh.PermissionDenied:
            proxy_conn.close()
            raise AccessDenied(f"the node refused the login {login!r} (your roles may not allow it there)") from None
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            proxy_conn.close()
            raise ConnectionProblem(_describe(exc)) from None
        return proxy_conn, node_conn

    async def _pump(self, ws: web.WebSocketResponse, process: asyncssh.SSHClientProcess[bytes],
                    session: WebSession, node: str, login: str, watching: bool = False) -> None:
        async def downstream() -> None:
            while data := await process.stdout.read(32 * 1024):
                await ws.send_bytes(data)

        down = asyncio.ensure_future(downstream())
        up = asyncio.ensure_future(self._upstream(ws, process, session, node, login, watching))
        # The terminal lasts no longer than the web session (and its certificate).
        await asyncio.wait({down, up}, timeout=max(0.0, session.expires - time.time()),
                           return_when=asyncio.FIRST_COMPLETED)
        if not (down.done() or up.done()) and not ws.closed:
            await ws.send_str(json.dumps({
                "type": "end",
                "message": "your web session expired (it lasts as long as your certificate): log in again",
            }))
        elif down.done() and not ws.closed:
            await process.wait_closed()
            status = process.exit_status
            await ws.send_str(json.dumps({
                "type": "end", "exit_status": status,
                "message": f"the session on {node} ended" + (f" (exit status {status})" if status is not None else ""),
            }))
        for task in (down, up):
            task.cancel()
        await asyncio.gather(down, up, return_exceptions=True)

    async def _upstream(self, ws: web.WebSocketResponse, process: asyncssh.SSHClientProcess[bytes],
                        session: WebSession, node: str, login: str, watching: bool = False) -> None:
        async for msg in ws:
            if msg.type == WSMsgType.ERROR:
                reason = f"the page sent a websocket message the proxy refuses ({ws.exception()})"
                self.service.audit("access.denied", user=session.user, login=login, target=node,
                                   resource="/web/api/terminal", reason=reason)
                return
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                event = json.loads(msg.data)
            except ValueError:
                continue
            if not isinstance(event, dict) or watching:
                continue  # a watcher's input and resizes are not sent (the node drops them too)
            if event.get("type") == "input" and isinstance(event.get("data"), str):
                process.stdin.write(event["data"].encode())
            elif event.get("type") == "resize":
                try:
                    cols, rows = _size(event.get("cols"), event.get("rows"))
                except BadParameter:
                    continue
                process.change_terminal_size(cols, rows)


class NotLoggedIn(AccessDenied):
    """No live web session: the page goes to the login form."""

    code = "not_logged_in"
    http_status = 401


def _size(cols: Any, rows: Any) -> tuple[int, int]:
    try:
        c, r = int(cols), int(rows)
    except (TypeError, ValueError):
        raise BadParameter("terminal size must be whole numbers of columns and rows") from None
    if not (1 <= c <= MAX_COLS and 1 <= r <= MAX_ROWS):
        raise BadParameter(f"terminal size {c}x{r} is out of range (1-{MAX_COLS} columns, 1-{MAX_ROWS} rows)")
    return c, r


def _can_reach(role_set: RoleSet, login: str, labels: dict[str, str]) -> bool:
    try:
        role_set.check_access_to_node(login, labels)
    except AccessDenied:
        return False
    return True


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (asyncssh.DisconnectError, asyncssh.ChannelOpenError)):
        return exc.reason
    return str(exc) or type(exc).__name__

