"""The join flow, client side: how a node or proxy becomes a member of the cluster.

1. Fetch the host CA certificates over TLS *without* verification (we do not trust anything yet).
2. Check every one against the CA pins (``--ca-pin``); with no pin, warn about man-in-the-middle
   risk and go on, as the reference does. The token is not sent before this check.
3. Reconnect verifying the auth server against those CA certs, send the token with freshly made
   public keys, and receive the host SSH certificate and the X.509 identity.
4. Keep them in ``<data_dir>/identity/<role>/``; later starts reuse them without a token.

The auth service binds the host UUID to the first key that joined with it. A host that joins a
second role (node and proxy on one host) presents the certificate of the role it already holds
on the join connection, which is how the auth service knows it is the same host.

The server side (token check, signing) is ``auth/service.py: AuthService.register``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from teleport_runtime.api.client import AuthClient, insecure_ssl_context, trusting_ssl_context
from teleport_runtime.api.types import IssuedIdentity, JoinRequest
from teleport_runtime.ca import check_ca_pins, generate_ssh_keypair, generate_tls_keypair
from teleport_runtime.config import Config, HostPort
from teleport_runtime.errors import AccessDenied, ConfigError
from teleport_runtime.identity import Identity, host_uuid, load_cert_chain

log = logging.getLogger("teleport.join")

NO_PIN_WARNING = (
    "WARN: joining the cluster without a CA pin: the auth server's identity is not verified and a "
    "man-in-the-middle could impersonate it. Pass --ca-pin=sha256:... (or teleport.ca_pin) with "
    "the pin `tctl status` prints on the auth server."
)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def identity_dir(data_dir: Path, role: str) -> Path:
    return data_dir / "identity" / role


async def join_cluster(
    *,
    auth_servers: list[HostPort],
    token: str,
    ca_pins: list[str],
    role: str,
    nodename: str,
    uuid: str,
    addresses: list[str],
    warn: Callable[[str], None] = _stderr,
    presenting: Identity | None = None,
    unix_socket: str | None = None,
) -> Identity:
    """Join with ``token`` as ``role`` (node or proxy); returns the issued identity.
    ``presenting``: this host's identity of another role, shown on the join connection.
    ``unix_socket``: a local relay to the auth API (joining through a proxy,
    :mod:`teleport_runtime.agent.tunnel`); the TLS and the checks are the same."""
    async with AuthClient(auth_servers, insecure_ssl_context(), verify_name=False, unix_socket=unix_socket) as probe:
        cas = await probe.ca()
    ca_certs = [c.encode() for c in cas.host_ca_certs]
    if ca_pins:
        try:
            check_ca_pins(ca_certs, ca_pins)
        except AccessDenied as exc:
            hint = ""
            if len(ca_certs) > 1:
                hint = (" (the cluster's host CA is being rotated and both its old and new CA are "
                        "trusted: pass --ca-pin once for each pin `tctl status` prints)")
            raise AccessDenied(f"refusing to join: {exc.message}{hint}") from None
    else:
        warn(NO_PIN_WARNING)
    ssh_key, ssh_public = generate_ssh_keypair()
    tls_key, tls_public = generate_tls_keypair()
    context = trusting_ssl_context(ca_certs)
    if presenting is not None:
        load_cert_chain(context, presenting.tls_cert, presenting.tls_key)
    async with AuthClient(auth_servers, context, unix_socket=unix_socket) as client:
        issued = await client.join(JoinRequest(
            token=token, role=role, host_uuid=uuid, nodename=nodename, ssh_public_key=ssh_public,
            tls_public_key=tls_public, addresses=tuple(addresses),
        ))
    return issued_identity(issued, tls_key=tls_key, ssh_key=ssh_key)


def issued_identity(issued: IssuedIdentity | dict[str, Any], *, tls_key: bytes, ssh_key: bytes) -> Identity:
    """The identity an auth answer issued (at join and re-registration) for the keys the agent
    generated; ``issued`` may be the answer's JSON form."""
    if not isinstance(issued, IssuedIdentity):
        issued = IssuedIdentity.from_json(issued)
    return Identity(
        tls_key=tls_key,
        tls_cert=issued.tls_cert.encode(),
        ca_certs=[c.encode() for c in issued.host_ca_certs],
        ssh_key=ssh_key,
        ssh_cert=issued.ssh_cert,
        user_ca_keys=list(issued.user_ca_keys),
        host_ca_keys=list(issued.host_ca_keys),
    )


async def ensure_identity(cfg: Config, role: str, addresses: list[str], *,
                          through: tuple[HostPort, str] | None = None) -> Identity:
    """The stored identity for ``role``, or join the cluster with the configured token
    (``through``: a proxy's web address and the local relay socket to join through it)."""
    directory = identity_dir(cfg.data_dir, role)
    if Identity.exists(directory):
        log.info("using the stored %s identity in %s", role, directory)
        return Identity.load(directory)
    if not cfg.auth_token:
        raise ConfigError(
            f"this host has not joined the cluster yet (no identity in {directory}) and no join "
            "token was given: pass --token=TOKEN (from `tctl nodes add`) or set teleport.auth_token"
        )
    identity = await join_cluster(
        auth_servers=[through[0]] if through else cfg.auth_addresses(),
        token=cfg.auth_token,
        ca_pins=cfg.ca_pins,
        role=role,
        nodename=cfg.nodename,
        uuid=host_uuid(cfg.data_dir),
        addresses=addresses,
        presenting=next(
            (Identity.load(identity_dir(cfg.data_dir, other)) for other in ("node", "proxy")
             if other != role and Identity.exists(identity_dir(cfg.data_dir, other))),
            None,
        ),
        unix_socket=through[1] if through else None,
    )
    identity.save(directory)
    log.info("joined the cluster as %s %s", role, cfg.nodename)
    return identity
