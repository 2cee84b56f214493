"""The one client of the auth API, used by nodes, proxies and tctl.

It verifies the auth server against the cluster's host CAs under the name
``teleport.cluster.local`` (so joining by IP works), requires the server's certificate to be a
host identity with the ``Auth`` system role (of the caller's cluster when known), and presents
the caller's identity. The host CA signs every node's and proxy's certificate too, so the chain
alone would accept any member of the cluster as the auth service; the role is checked during
the TLS handshake of every connection (:func:`~teleport_runtime.identity.require_server_role`),
before anything is sent, on every context the client is given, including the unverified one
used only to fetch the CA certs a pin is checked against.

Request paths are checked before anything is sent (:func:`~teleport_runtime.urlpath.check_request_path`):
call sites put values into paths with :func:`~teleport_runtime.urlpath.api_path`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from typing import Any

import aiohttp
from yarl import URL

from teleport_runtime.config import HostPort
from teleport_runtime.errors import ConnectionProblem, TeleportError, error_from_dict
from teleport_runtime.identity import Identity, WrongServer, require_server_role
from teleport_runtime.urlpath import check_request_path

log = logging.getLogger("teleport.client")

API_SERVER_NAME = "teleport.cluster.local"
#: The system role the auth API's certificate carries (auth/service.py issue_server_identity).
AUTH_ROLE = "Auth"
DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=10)
#: Raw bodies (session recordings) can be large: more time in total, same time to connect.
RAW_TIMEOUT = aiohttp.ClientTimeout(total=600, connect=10, sock_read=60)
#: How long a session replaced by a new identity lives on for the requests still using it.
RETIRED_SESSION_SECONDS = 90.0
#: Seconds an idle connection to the auth service is kept for the next call: longer than the
#: longest heartbeat interval (60 s), so an agent holds one connection across its heartbeats, as
#: the reference's agents do, instead of a new TLS handshake for each. The auth service keeps idle
#: connections longer still (auth/api.py), so the agent is the side that closes them.
KEEPALIVE_SECONDS = 150.0


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

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self.ssl_context, limit=8, keepalive_timeout=KEEPALIVE_SECONDS)
            self._session = aiohttp.ClientSession(connector=connector, timeout=DEFAULT_TIMEOUT)
        return self._session

    async def call(self, method: str, path: str, body: Any = None, *, time_limit: float | None = None) -> Any:
        """One API call; TeleportError as the server sent it, ConnectionProblem if unreachable.

        ``time_limit`` (seconds) replaces the default total timeout, for long polls."""
        limit = DEFAULT_TIMEOUT if time_limit is None else aiohttp.ClientTimeout(total=time_limit, connect=10)
        return await self._request(method, path, {"json": body}, limit, raw=False)

    # Convenience wrappers keep call sites readable.
    async def get(self, path: str, *, time_limit: float | None = None) -> Any:
        return await self.call("GET", path, time_limit=time_limit)

    async def post(self, path: str, body: Any) -> Any:
        return await self.call("POST", path, body)

    async def delete(self, path: str) -> Any:
        return await self.call("DELETE", path)

    async def call_raw(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Any:
        """One API call with a raw (non-JSON) body, such as a session recording upload or
        download, under :data:`RAW_TIMEOUT`. Answers the body as bytes, or decoded JSON when the
        server answers JSON; errors as :meth:`call`."""
        return await self._request(method, path, {"data": body, "headers": headers}, RAW_TIMEOUT, raw=True)

    async def _request(
        self, method: str, path: str, send: dict[str, Any], limits: aiohttp.ClientTimeout, *, raw: bool
    ) -> Any:
        """Try each auth address in turn. The answer is decoded JSON (any body when not ``raw``;
        with ``raw``, bytes unless the server says it is JSON); an error answer is raised as the
        TeleportError the server sent."""
        check_request_path(path)
        session = self._get_session()
        problems = []
        for addr in self.addresses:
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
