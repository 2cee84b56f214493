"""Agents follow CA rotations: what a node or proxy does in each phase of a host or user CA
rotation, and the rotation phase it reports in its heartbeat.

The agent watches the CA state on the auth API (``GET /v1/authorities/watch``, a long poll that
answers as soon as a CA changes, and after :data:`WATCH_SECONDS` anyway, which is the periodic
poll that catches anything a lost watch missed) and converges to it. What it does depends on
the phase, not on the step that led there (the table is ``teleport_runtime/rotation_phases.py``
``AGENT_STEPS``), so an agent that was down or missed phases catches up in one go:

host CA (its identity, and the CAs it trusts the auth API and other servers with)
    - trust: exactly the host CA certs the cluster trusts now (both during a rotation; the old
      dropped at ``standby``).
    - ``update_clients``: the agent re-registers with its current identity (``POST
      /v1/reregister``, no token) and holds the identity signed by the new key as a
      *replacement*, used for its calls to the auth API; it still serves the old one.
    - ``update_servers``, ``rollback``, ``standby``: the identity it serves (SSH host cert,
      proxy web TLS) and keeps on disk must be signed by the key that signs now: the
      replacement is promoted, or the agent re-registers (rollback: for an old-key identity).
user CA
    - the user CA keys the agent accepts user certificates from are exactly the ones the
      cluster trusts now: old user certs keep working until the rotation completes.

The reported phase per CA type (``{"host": {"phase", "id"}, "user": {...}}``) is the phase the
agent has *applied*, with the rotation's id; the Ansible rotation playbook waits for every node
to report the CA's phase.

On disk, under ``<data_dir>/identity/<role>/``: the identity (as before), ``replacement/`` (the
held identity, same files) and ``rotation.json`` (the applied phases), so an agent restarted mid
rotation resumes where it was.

An agent whose identity was issued by a host CA the cluster no longer trusts (it was away for a
whole rotation) cannot prove who it is any more: :class:`IdentityNotTrusted` tells the operator
to re-join it with a token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from teleport_runtime.agent.join import issued_identity
from teleport_runtime.api.client import AuthClient, insecure_ssl_context
from teleport_runtime.api.types import AuthorityState, PublicCAs, ReregisterRequest
from teleport_runtime.ca import generate_ssh_keypair, generate_tls_keypair, issuing_ca_matches
from teleport_runtime.durable import write_private
from teleport_runtime.errors import AccessDenied, ConnectionProblem, TeleportError
from teleport_runtime.identity import Identity
from teleport_runtime.rotation_phases import AGENT_STEPS, Held, to_phase

log = logging.getLogger("teleport.rotation")

#: How long the auth API holds a watch open; also the safety-net poll interval.
WATCH_SECONDS = 30.0
#: The longest wait between attempts while the auth service is unreachable.
MAX_RETRY_SECONDS = 30.0
REPLACEMENT_DIR = "replacement"
STATE_FILE = "rotation.json"
CA_TYPES = ("host", "user")


class IdentityNotTrusted(AccessDenied):
    """The agent's identity is signed by a host CA the cluster has dropped."""


def standby_report() -> dict[str, dict[str, str]]:
    """What an agent that has never seen a rotation reports."""
    return {ca_type: {"phase": "standby", "id": ""} for ca_type in CA_TYPES}


def _signed_by(identity: Identity, ca_cert: bytes) -> bool:
    return issuing_ca_matches(identity.tls_cert, [ca_cert])


class RotationSync:
    """Keeps one agent role's identity and trust in step with the cluster's CA rotations.

    Args:
        role: ``node`` or ``proxy`` (names the identity directory).
        directory: the role's identity directory, ``<data_dir>/identity/<role>``.
        identity: the identity loaded from ``directory`` (served, and used as a client).
        client: the role's auth client; its TLS identity and trust are switched here.
        addresses: the host's names and addresses, for re-issued certificates.
        on_serve: called with a new identity to serve (SSH host cert, web TLS).
        on_cas: called with the cluster's public CAs after each sync (the proxy's trust).
        on_applied: called when the reported phases changed (a heartbeat goes out at once).
    """

    def __init__(
        self,
        *,
        role: str,
        directory: Path,
        identity: Identity,
        client: AuthClient,
        addresses: list[str],
        on_serve: Callable[[Identity], None] = lambda _identity: None,
        on_cas: Callable[[dict[str, Any]], None] = lambda _cas: None,
        on_applied: Callable[[], None] = lambda: None,
    ) -> None:
        self.role = role
        self.directory = directory
        self.identity = identity
        self.client = client
        self.addresses = addresses
        self.on_serve = on_serve
        self.on_cas = on_cas
        self.on_applied = on_applied
        self.replacement: Identity | None = None
        replacement_dir = directory / REPLACEMENT_DIR
        if Identity.exists(replacement_dir):
            self.replacement = Identity.load(replacement_dir)
        self.applied = self._load_applied()
        self.revision = ""
        self.synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._use_client_identity()

    # ------------------------------------------------------------------ state

    @property
    def client_identity(self) -> Identity:
        """The identity the agent calls the auth API with: the replacement while it holds one."""
        return self.replacement or self.identity

    def report(self) -> dict[str, dict[str, str]]:
        """The rotation phases this agent has applied, for its heartbeat."""
        return {ca_type: dict(value) for ca_type, value in self.applied.items()}

    def _load_applied(self) -> dict[str, dict[str, str]]:
        applied = standby_report()
        try:
            stored = json.loads((self.directory / STATE_FILE).read_text())
        except FileNotFoundError:
            return applied
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s (%s); the next sync rewrites it", self.directory / STATE_FILE, exc)
            return applied
        for ca_type in CA_TYPES:
            value = stored.get(ca_type) if isinstance(stored, dict) else None
            if isinstance(value, dict):
                applied[ca_type] = {"phase": str(value.get("phase") or "standby"), "id": str(value.get("id") or "")}
        return applied

    def _use_client_identity(self) -> None:
        self.client.set_ssl_context(self.client_identity.client_ssl_context())

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Sync once (an agent whose identity the cluster dropped stops here with
        :class:`IdentityNotTrusted`; an unreachable auth service is not fatal), then follow."""
        try:
            await self.sync(wait=0)
        except IdentityNotTrusted:
            raise
        except TeleportError as exc:
            log.warning("cannot read the cluster's CA state yet (%s); serving the stored identity", exc.message)
        self._task = asyncio.get_running_loop().create_task(self._follow(), name=f"{self.role}-rotation")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _follow(self) -> None:
        failures = 0
        while True:
            try:
                await self.sync(wait=WATCH_SECONDS)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure is retried: the agent keeps serving
                failures += 1
                delay = min(MAX_RETRY_SECONDS, 2.0 ** min(failures, 5))
                reason = exc.message if isinstance(exc, TeleportError) else repr(exc)
                log.log(
                    logging.ERROR if isinstance(exc, IdentityNotTrusted) else logging.WARNING,
                    "CA rotation sync failed (%s); retrying in %.0fs", reason, delay,
                )
                await asyncio.sleep(delay)

    # ------------------------------------------------------------------ sync

    async def sync(self, wait: float = 0) -> None:
        """Read the CA state (waiting up to ``wait`` s for a change) and converge to it."""
        try:
            state = await self.client.watch_authorities(self.revision, wait)
        except (ConnectionProblem, AccessDenied) as exc:
            await self._check_still_trusted(exc)
            raise
        await self.apply(state)
        self.revision = state.revision
        self.synced.set()

    async def apply(self, state: AuthorityState) -> None:
        """Converge identity and trust to ``state`` (the CA watch's answer)."""
        rotation, cas = state.rotation, state.cas
        host_phase = rotation["host"].phase
        step = AGENT_STEPS[to_phase(host_phase)]
        signer = state.signing["host_ca_cert"].encode()
        if step.serves is Held.SIGNED_NOW:
            if not _signed_by(self.identity, signer):
                fresh = self.replacement
                if fresh is None or not _signed_by(fresh, signer):
                    fresh = await self._reregister()
                self._promote(fresh, host_phase)
            elif self.replacement is not None:
                self._drop_replacement()
        elif step.client is Held.SIGNED_NOW:
            # Call the auth API with a new-key identity while still serving the old one.
            if not _signed_by(self.client_identity, signer):
                self.replacement = await self._reregister()
                self.replacement.save(self.directory / REPLACEMENT_DIR)
                self._use_client_identity()
                log.info("%s holds a replacement identity signed by the new host CA", self.role)
        self._set_trust(cas)
        self.on_cas(cas.to_json())
        applied = {ca_type: {"phase": rotation[ca_type].phase, "id": rotation[ca_type].id}
                   for ca_type in CA_TYPES}
        if applied != self.applied:
            self.applied = applied
            write_private(self.directory / STATE_FILE, json.dumps(applied) + "\n")
            log.info(
                "%s applied CA rotation phases: host %s, user %s",
                self.role, applied["host"]["phase"], applied["user"]["phase"],
            )
            self.on_applied()

    def _promote(self, fresh: Identity, phase: str) -> None:
        """Serve ``fresh`` and keep it as the identity on disk; the replacement is gone."""
        fresh.save(self.directory)
        self.identity = fresh
        self._drop_replacement()
        self.on_serve(fresh)
        log.info("%s serves a new identity (host CA phase %s)", self.role, phase)

    def _drop_replacement(self) -> None:
        self.replacement = None
        shutil.rmtree(self.directory / REPLACEMENT_DIR, ignore_errors=True)
        self._use_client_identity()

    def _set_trust(self, cas: PublicCAs) -> None:
        """Trust exactly the host CA certs and user CA keys the cluster trusts now."""
        host_certs = [c.encode() for c in cas.host_ca_certs]
        user_keys = list(cas.user_ca_keys)
        host_keys = list(cas.host_ca_keys)
        changed = False
        for identity, directory in ((self.identity, self.directory),
                                    (self.replacement, self.directory / REPLACEMENT_DIR)):
            if identity is None:
                continue
            if (identity.ca_certs, identity.user_ca_keys, identity.host_ca_keys) == (host_certs, user_keys, host_keys):
                continue
            identity.ca_certs, identity.user_ca_keys, identity.host_ca_keys = host_certs, user_keys, host_keys
            identity.save(directory)
            changed = True
        if changed:
            self._use_client_identity()
            log.info("%s trusts %d host CA(s) and %d user CA key(s)", self.role, len(host_certs), len(user_keys))

    async def _reregister(self) -> Identity:
        """A new identity from the auth service, asked for with the current one (no token)."""
        ssh_key, ssh_public = generate_ssh_keypair()
        tls_key, tls_public = generate_tls_keypair()
        issued = await self.client.reregister(
            ReregisterRequest(ssh_public_key=ssh_public, tls_public_key=tls_public, addresses=tuple(self.addresses))
        )
        log.info("%s re-registered with the auth service", self.role)
        return issued_identity(issued, tls_key=tls_key, ssh_key=ssh_key)

    async def _check_still_trusted(self, problem: TeleportError) -> None:
        """After a TLS or access failure: raise :class:`IdentityNotTrusted` when the cluster no
        longer trusts the host CA that issued our identity.

        The CA certs are fetched without verification: they only choose the error message (the
        agent is refused either way), nothing is trusted because of them.
        """
        try:
            async with AuthClient(self.client.addresses, insecure_ssl_context(), verify_name=False) as probe:
                cas = await probe.ca()
        except TeleportError:
            return
        current = [c.encode() for c in cas.host_ca_certs]
        if not current or any(_signed_by(identity, cert) for identity in filter(None, (self.identity, self.replacement))
                              for cert in current):
            return
        raise IdentityNotTrusted(
            f"this {self.role}'s identity in {self.directory} was issued by a host CA the cluster no "
            f"longer trusts (a CA rotation completed while it was away, {problem.message}); re-join it: "
            f"stop teleport, remove {self.directory}, remove the host on the auth server "
            f"(`tctl nodes rm <nodename>`: its UUID is bound to the old key), and start it again with "
            f"a new token (`tctl nodes add --roles={self.role}`) and the CA pin `tctl status` prints"
        )
