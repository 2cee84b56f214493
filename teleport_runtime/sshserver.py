"""What the node's and the proxy's SSH listeners share: certificate-only connection options and
the shutdown of a listener with its connections."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

import asyncssh

from teleport_runtime.config import SSH_WINDOW

#: Seconds a closing connection or listener is waited for.
CLOSE_WAIT = 5


def cert_only_options(**settings: Any) -> asyncssh.SSHServerConnectionOptions:
    """Connection options of a listener where a user certificate is the only way in: public-key
    authentication (the server's handler accepts certificates only), every other method off, no
    X11, bytes not text, and the project's SSH window; ``settings`` add the rest."""
    return asyncssh.SSHServerConnectionOptions(
        public_key_auth=True,
        password_auth=False,
        kbdint_auth=False,
        host_based_auth=False,
        gss_auth=False,
        gss_kex=False,
        x11_forwarding=False,
        encoding=None,
        window=SSH_WINDOW,
        **settings,
    )


async def close_listener(
    server: asyncio.AbstractServer | None, connections: Iterable[asyncssh.SSHServerConnection]
) -> None:
    """Stop accepting, close every connection (ending its sessions) and wait for them, bounded."""
    if server is not None:
        server.close()
    connections = list(connections)
    for conn in connections:
        conn.close()
    for conn in connections:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.wait_closed(), CLOSE_WAIT)
    if server is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), CLOSE_WAIT)
