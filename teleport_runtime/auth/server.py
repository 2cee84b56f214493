"""The auth server: the storage backend, the auth service over it, the auth API serving it, and
the background work they need (the rotation timer, the CA watcher that reloads the API's TLS
identity and the local admin identity). The daemon and the in-process test harness both build it
here, so the tests run the auth server users run.

``async with AuthServer(...) as server`` starts it in that order and stops it in reverse: the
background tasks first, then the API listener, then the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from teleport_runtime.auth.api import AuthAPI
from teleport_runtime.auth.audit import AuditLog
from teleport_runtime.auth.hosts import HOSTS_PREFIX, LOCKS_PREFIX
from teleport_runtime.auth.openssh_nodes import PREFIX as OPENSSH_NODES_PREFIX
from teleport_runtime.auth.presence import PRESENCE_PREFIXES
from teleport_runtime.auth.service import AUTHORITIES_PREFIX, CLUSTER_CONFIG_PREFIX, AuthService
from teleport_runtime.auth.users import ROLES
from teleport_runtime.backend import (
    DEFAULT_SWEEP_INTERVAL,
    Backend,
    EventType,
    Watcher,
    open_audit_backend,
    open_backend,
)
from teleport_runtime.config import AuthConfig, HostPort
from teleport_runtime.errors import TeleportError
from teleport_runtime.netaddr import is_wildcard

log = logging.getLogger("teleport.auth.server")

#: The rotation timer wakes at least this often, even when no phase change is scheduled.
ROTATION_TICK_SECONDS = 60.0
#: A join token the auth server makes for the agents of its own process lives this long.
LOCAL_JOIN_TTL = timedelta(minutes=1)
#: What the auth server answers from memory while a shared database does not answer: the CAs
#: and cluster name (status, the CA watch, verifying clients), roles, host bindings and locks
#: (checking a host's certificate), presence and the OpenSSH node resources (`tctl nodes ls`,
#: the proxies' routing). Users, tokens and the audit
#: log are not kept: logins, joins and sign-ups write anyway, and are refused until it is back.
CACHED_PREFIXES = (
    AUTHORITIES_PREFIX, CLUSTER_CONFIG_PREFIX, ROLES, HOSTS_PREFIX, LOCKS_PREFIX,
    *PRESENCE_PREFIXES, OPENSSH_NODES_PREFIX,
)


class AuthServer:
    """One auth server: :meth:`start` brings it up, :meth:`stop` takes it down in reverse order.

    ``names`` are the extra names and addresses its TLS certificate carries (the daemon passes
    the host's; the listen address is added when it is not a wildcard)."""

    def __init__(
        self,
        config: AuthConfig,
        data_dir: str | os.PathLike[str],
        *,
        storage: Mapping[str, Any] | None = None,
        names: Sequence[str] = (),
        sweep_interval: float | None = DEFAULT_SWEEP_INTERVAL,
    ) -> None:
        self.config = config
        self.data_dir = Path(data_dir)
        self._storage = storage
        self._sweep_interval = sweep_interval
        listen_host = config.listen_addr.host
        self.names = list(dict.fromkeys([*names, *([] if is_wildcard(listen_host) else [listen_host])]))
        self._backend: Backend | None = None
        self._audit_backend: Backend | None = None
        self._service: AuthService | None = None
        self._api: AuthAPI | None = None
        self.port = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._ca_changed = asyncio.Event()
        self._stopping = False
        self._watchers: list[Watcher] = []

    # ------------------------------------------------------------------ parts

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            raise RuntimeError("the auth server is not started")
        return self._backend

    @property
    def service(self) -> AuthService:
        if self._service is None:
            raise RuntimeError("the auth server is not started")
        return self._service

    @property
    def api(self) -> AuthAPI:
        if self._api is None:
            raise RuntimeError("the auth server is not started")
        return self._api

    @property
    def addr(self) -> HostPort:
        """Where the API listens (the picked port when the config asked for port 0)."""
        return HostPort(self.config.listen_addr.host, self.port)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the backend, load or create the cluster, listen, write the admin identity and
        start the background tasks. A failure part-way stops what was started."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        self._stopping = False
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._backend = open_backend(self._storage, self.data_dir, sweep_interval=self._sweep_interval)
        self._service = AuthService(self._backend, self.config, self.data_dir)
        self._audit_backend = open_audit_backend(self._storage)
        if self._audit_backend is not None:  # teleport.storage.audit_events_uri: a database of its own
            await self._audit_backend.open()
            self._service.audit = AuditLog(self._audit_backend)
        await self._service.init()
        await self._backend.cache_reads(list(CACHED_PREFIXES))
        self._api = AuthAPI(self._service)
        listen = self.config.listen_addr
        self.port = await self._api.start(listen.host, listen.port, self.names)
        await self._service.write_admin_identity()
        loop = asyncio.get_running_loop()
        # The watcher is registered before the timer runs, so no CA change between the two
        # goes unseen.
        watcher = await self._backend.new_watcher(["/authorities/"])
        self._watchers.append(watcher)
        self._tasks += [
            loop.create_task(self._follow_authorities(watcher), name="auth-ca-watch"),
            loop.create_task(self._rotation_timer(), name="auth-rotation-timer"),
        ]
        pins = await self._service.ca_pins()
        log.info("auth service ready: cluster %s, CA pin %s", self._service.cluster_name, pins[0])

    async def stop(self) -> None:
        """Background tasks, then the API listener, then the backend. Safe to call twice."""
        tasks, self._tasks = self._tasks, []
        # Also told without cancellation: on Python 3.11 a wait_for inside the backend's driver
        # may swallow the cancellation of a task waiting there, and the timer would go on.
        self._stopping = True
        self._ca_changed.set()
        for watcher in self._watchers:
            watcher.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._api is not None:
            await self._api.stop()
            self._api = None
        if self._backend is not None:
            await self._backend.close()
            self._backend = None
        if self._audit_backend is not None:
            await self._audit_backend.close()
            self._audit_backend = None
        self._service = None
        self._watchers = []

    async def __aenter__(self) -> AuthServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ what the process asks

    async def local_join_token(self, roles: Sequence[str]) -> tuple[str, list[str]]:
        """A short-lived join token for the agents of this process, and the CA pins they check:
        they join over the API like any other host, so there is one join path."""
        token = await self.service.tokens.create(list(roles), ttl=LOCAL_JOIN_TTL)
        return token.value, await self.service.ca_pins()

    # ------------------------------------------------------------------ background tasks

    async def _rotation_timer(self) -> None:
        """Auto-mode rotations move on their schedule: the timer wakes at the next scheduled
        phase change (or when a CA changes, or after a minute at most) and applies what is due."""
        service = self.service
        while not self._stopping:
            wait = ROTATION_TICK_SECONDS
            try:
                moved = await service.rotation.tick()
                for ca_type, view in moved.items():
                    log.info("%s CA rotation moved to phase %s", ca_type, view["phase"])
                deadline = await service.rotation.next_deadline()
                if moved:
                    wait = 0.0  # several steps may be overdue: one per tick
                elif deadline is not None:
                    wait = min(wait, max(0.2, (deadline - datetime.now(UTC)).total_seconds()))
            except TeleportError as exc:
                log.warning("rotation timer: %s", exc.message)
            if self._stopping:
                return
            self._ca_changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._ca_changed.wait()

    async def _follow_authorities(self, watcher: Watcher) -> None:
        """Whenever a CA changes (a rotation step, here or on another auth server), serve the API
        with the new trust and refresh the local admin identity tctl uses."""
        service, api = self.service, self.api
        try:
            async for event in watcher:
                if event.type is not EventType.PUT:
                    continue
                self._ca_changed.set()
                try:
                    await api.reload_tls(self.names)
                    await service.write_admin_identity()
                except TeleportError as exc:  # keep watching: the next change may succeed
                    log.warning("after a CA change: %s", exc.message)
        finally:
            watcher.close()
