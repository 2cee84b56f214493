"""tsh's HTTPS client of the proxy web API, and how it decides to trust the proxy.

The proxy serves its own X.509 identity, signed by the cluster's host CA. tsh trusts it when

- the certificate chains to the host CA certificates tsh stored at an earlier login
  (``cas/<cluster>.pem``), or, on first contact, to host CA certificates that match a CA pin
  (``--ca-pin``: fetched without verification, checked with the pin, then the connection is
  made again verifying against them, as a joining node does), and
- the certificate is a host identity with the ``Proxy`` role of the expected cluster (any
  certificate the host CA signed for a node would chain as well): the same check as the auth
  client's ``Auth`` role check (:func:`~teleport_runtime.identity.check_server_identity`),
  made on the connected socket before the request is written.

Host names are not checked: the cluster's own CA and the Proxy role identify the proxy, so a
proxy reached by an IP or name missing from its certificate still works. ``--insecure`` skips
every check (first contact only; tsh warns).

Through a host CA rotation the stored CA certificates are kept current from the proxy's ping
over a connection verified this way (:mod:`teleport_runtime.client.tsh_trust`).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
from typing import Any

from teleport_runtime.ca import check_ca_pins
from teleport_runtime.config import HostPort
from teleport_runtime.errors import AccessDenied, BadParameter, ConnectionProblem, TeleportError, error_from_dict
from teleport_runtime.identity import check_server_identity, load_cert_chain
from teleport_runtime.urlpath import check_request_path

TIMEOUT = 60.0


def insecure_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def trusting_context(
    ca_certs: list[bytes], client_cert: bytes | None = None, client_key: bytes | None = None
) -> ssl.SSLContext:
    """Verify the server against ``ca_certs`` only (no host name check, see the module
    docstring); present the user's X.509 certificate when given."""
    if not ca_certs:
        raise BadParameter("no trusted host CA certificate: run `tsh login` again")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=b"".join(ca_certs).decode())
    if client_cert and client_key:
        load_cert_chain(ctx, client_cert, client_key)
    return ctx


class UntrustedProxy(AccessDenied):
    """The proxy's TLS certificate does not chain to the host CAs tsh trusts."""


class ProxyWebClient:
    """JSON calls to ``https://<addr>/webapi/...``.

    Uses the standard library's HTTP client (in a thread): the TLS connection is made and the
    proxy's certificate checked *before* anything, such as a password, is sent on it.
    """

    def __init__(self, addr: HostPort, ssl_context: ssl.SSLContext, cluster: str | None = None,
                 *, verify_proxy: bool = True, timeout: float = TIMEOUT) -> None:
        self.addr = addr
        self.ssl_context = ssl_context
        self.cluster = cluster
        self.verify_proxy = verify_proxy
        self.timeout = timeout
        #: The certificate (DER) the proxy presented on the last request's connection.
        self.peer_cert: bytes | None = None

    def check_peer(self, der: bytes | None) -> None:
        """The server certificate must be a Proxy host identity of the expected cluster."""
        if not self.verify_proxy:
            return
        try:
            check_server_identity(der, "Proxy", self.cluster)
        except AccessDenied as exc:
            raise AccessDenied(
                f"{self.addr} is not a proxy of the cluster: {exc.message}; refusing to talk to it "
                "(check --proxy)"
            ) from None

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One HTTPS request (blocking): (status, decoded JSON or None)."""
        check_request_path(path)
        host = self.addr.host
        conn = http.client.HTTPSConnection(host, self.addr.port, context=self.ssl_context, timeout=self.timeout)
        try:
            try:
                conn.connect()
            except ssl.SSLCertVerificationError as exc:
                raise UntrustedProxy(
                    f"the proxy at {self.addr} presented a certificate not signed by the cluster's host CA "
                    f"({exc.verify_message}): if the cluster's CA changed, log in again with --ca-pin"
                ) from None
            except ssl.SSLError as exc:
                raise ConnectionProblem(f"TLS handshake with the proxy at {self.addr} failed: {exc}") from None
            except OSError as exc:
                raise ConnectionProblem(
                    f"cannot reach the proxy at {self.addr}: {exc.strerror or exc}; "
                    "check --proxy and that the proxy service is running"
                ) from None
            sock = conn.sock
            self.peer_cert = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
            self.check_peer(self.peer_cert)
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json", "Accept": "application/json"}
            try:
                conn.request(method, path, body=payload, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                raise ConnectionProblem(
                    f"the proxy at {self.addr} closed the connection ({exc}): if it no longer accepts your "
                    "certificate (a CA rotation), run `tsh login` again"
                ) from None
        finally:
            conn.close()
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        return resp.status, data

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        status, data = await asyncio.to_thread(self.request, method, path, body)
        if status >= 400:
            if isinstance(data, dict) and isinstance(data.get("error"), dict):
                raise error_from_dict(data["error"])
            raise TeleportError(f"the proxy at {self.addr} answered HTTP {status} to {method} {path}")
        return data

    async def get(self, path: str) -> Any:
        return await self.call("GET", path)

    async def post(self, path: str, body: Any) -> Any:
        return await self.call("POST", path, body)


async def first_contact(addr: HostPort, pins: list[str]) -> tuple[dict[str, Any], list[bytes]]:
    """Ping a proxy we know nothing about: check its host CA against ``pins``, then ping again
    verifying the TLS connection against that CA. Returns (ping, host CA certs)."""
    probe = ProxyWebClient(addr, insecure_context(), verify_proxy=False)
    ping = await probe.get("/webapi/ping")
    certs = [c.encode() for c in (ping or {}).get("host_ca_certs") or []]
    try:
        check_ca_pins(certs, pins)
    except AccessDenied as exc:
        raise AccessDenied(
            f"refusing to talk to the proxy: its cluster CA does not match --ca-pin: {exc.message}"
        ) from None
    verified = ProxyWebClient(addr, trusting_context(certs), str(ping.get("cluster") or "") or None)
    return await verified.get("/webapi/ping"), certs
