"""tsh keeps the host CAs it trusts current, so users keep access through a host CA rotation.

tsh trusts the cluster's host CAs in two files (:mod:`teleport_runtime.client.tsh_profile`):
``cas/<cluster>.pem`` (X.509, verifies the proxy's web TLS) and the cluster's ``@cert-authority``
lines in ``known_hosts`` (SSH, verifies the proxy and the nodes; OpenSSH with ``tsh config``
reads the same file). ``tsh login`` writes them. From the ``update_servers`` phase of a host CA
rotation on, the proxy and the nodes serve certificates from the *new* host CA, so a client that
still trusts only the old one would be refused.

**Refresh.** Every tsh command that uses a profile (``ssh``, ``scp``, ``ls``, ``status``,
``config``) asks the proxy's ``GET /webapi/ping`` for the host CAs the cluster trusts now and
stores exactly those. During ``init`` and ``update_clients`` the proxy still serves its web
certificate from the old CA while the cluster trusts both, so a client that runs tsh then learns
the new CA; after ``standby`` the answer holds only the new CA, and the old one is dropped (after
a rollback, the new one).

**Only over a channel already trusted (fail closed).** The ping goes over TLS verified against the
CA certificates tsh already holds, to a certificate with the Proxy role of the profile's cluster
(:class:`~teleport_runtime.client.tsh_web.ProxyWebClient`). The answer is used only when it names
the same cluster, every certificate is one CA certificate and every key parses, and the
certificate the proxy just presented was issued by one of the CAs in it (so storing the answer
cannot cut the client off). Anything else leaves the stored trust untouched. Nothing is ever
learned from an unverified connection or from the SSH side.

**No added latency.** The refresh runs concurrently with the command's own work (in a daemon
thread: the ping is one TLS handshake and one request to the proxy, fewer round trips than the
SSH handshakes to the proxy and the node), and its answer is stored as soon as it arrives. A
refresh on every command rather than only when the stored trust is older than some interval:
rotation phases may be minutes apart (the Ansible playbook walks them as soon as every agent
reports), and any skipped refresh inside ``init``/``update_clients`` could be the one the user
needed. The command waits for the refresh only when it finishes first (bounded by
:data:`REFRESH_TIMEOUT`, an unreachable web port) and when a host key failed to verify: then,
if the refresh learned new CAs, the connection is tried once more with them.

**Missed the whole rotation.** A client that ran no tsh command between ``init`` and
``update_servers`` holds only a CA the proxy no longer serves with: the refresh cannot verify the
proxy, and the user is told to log in again with ``--ca-pin`` (:func:`rotation_missed`); nothing
is learned in that case.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from teleport_runtime.ca import is_ca_cert, issuing_ca_matches
from teleport_runtime.client.tsh_web import ProxyWebClient, UntrustedProxy, trusting_context
from teleport_runtime.errors import AccessDenied, BadParameter, ConnectionProblem, TeleportError

if TYPE_CHECKING:
    from teleport_runtime.client.tsh_profile import Profile, ProfileStore

T = TypeVar("T")

#: The longest a refresh may take (socket timeout of the ping; a command never waits longer).
REFRESH_TIMEOUT = 5.0


@dataclass(frozen=True)
class HostCAs:
    """The host CAs a cluster trusts: X.509 CA certs (PEM) and SSH public keys."""

    certs: list[str]
    keys: list[str]


@dataclass(frozen=True)
class RefreshOutcome:
    """What a refresh did: ``changed`` when the stored trust was rewritten; ``problem`` when it
    could not be done (the stored trust is then untouched)."""

    changed: bool = False
    problem: TeleportError | None = None

    @property
    def proxy_untrusted(self) -> bool:
        """The proxy's web certificate is not from a host CA tsh trusts (a missed rotation)."""
        return isinstance(self.problem, UntrustedProxy)


def host_cas_from_ping(ping: Any, cluster: str, proxy_cert: bytes | None) -> HostCAs:
    """The host CAs in a ``/webapi/ping`` answer, checked (see the module docstring); raises
    BadParameter naming what is wrong."""
    if not isinstance(ping, dict):
        raise BadParameter("the proxy's ping answer is not a JSON object")
    if ping.get("cluster") != cluster:
        raise BadParameter(f"the proxy's ping answer is for cluster {ping.get('cluster')!r}, not {cluster!r}")
    certs, keys = ping.get("host_ca_certs"), ping.get("host_ca_keys")
    if not isinstance(certs, list) or not certs or not all(isinstance(c, str) and is_ca_cert(c) for c in certs):
        raise BadParameter("the proxy's ping answer has no valid host_ca_certs (one CA certificate each)")
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        raise BadParameter("the proxy's ping answer has no host_ca_keys: is the proxy up to date?")
    import asyncssh  # here: `tsh ls`, `status` and `config` need it only for this check

    for key in keys:
        try:
            asyncssh.import_public_key(key)
        except (asyncssh.KeyImportError, ValueError):
            raise BadParameter(f"the proxy's ping answer has an invalid host CA key {key[:40]!r}") from None
    if proxy_cert is None or not issuing_ca_matches(proxy_cert, [c.encode() for c in certs]):
        raise BadParameter("the host CAs in the proxy's ping answer do not include the one that issued its certificate")
    return HostCAs(certs=list(certs), keys=list(keys))


def fetch_host_cas(profile: Profile, timeout: float = REFRESH_TIMEOUT) -> HostCAs:
    """Ask the proxy for the cluster's host CAs over TLS verified with the CAs ``profile`` trusts
    (blocking). Raises UntrustedProxy when the proxy's certificate is not from one of them."""
    held = profile.host_ca_certs()
    if not held:
        raise BadParameter(f"no trusted host CA certificate in {profile.ca_path}")
    client = ProxyWebClient(profile.web_addr, trusting_context(held), profile.cluster, timeout=timeout)
    status, ping = client.request("GET", "/webapi/ping")
    if status != 200:
        raise ConnectionProblem(f"the proxy at {profile.web_addr} answered HTTP {status} to its ping")
    return host_cas_from_ping(ping, profile.cluster, client.peer_cert)


def _store(store: ProfileStore, profile: Profile, result: HostCAs | TeleportError) -> RefreshOutcome:
    if isinstance(result, TeleportError):
        return RefreshOutcome(problem=result)
    try:
        return RefreshOutcome(changed=store.update_trust(profile, result.certs, result.keys))
    except OSError as exc:
        return RefreshOutcome(problem=BadParameter(f"cannot store the trusted host CAs in {store.home}: {exc}"))


def _fetch(profile: Profile, timeout: float) -> HostCAs | TeleportError:
    try:
        return fetch_host_cas(profile, timeout)
    except TeleportError as exc:
        return exc
    except Exception as exc:  # a refresh never breaks the command it runs beside
        return ConnectionProblem(f"cannot ask the proxy at {profile.web_addr} for its host CAs: {exc!r}")


def refresh_host_cas(store: ProfileStore, profile: Profile, timeout: float = REFRESH_TIMEOUT) -> RefreshOutcome:
    """Refresh now (blocking): for commands without SSH work to overlap (``status``, ``config``)."""
    return _store(store, profile, _fetch(profile, timeout))


class HostCARefresh:
    """A refresh running beside a command: :meth:`start` it first, ``await`` :meth:`outcome`
    when a host key did not verify and before exiting. ``on_learned`` gets the new host CA keys
    (to verify the next connections with) when the stored trust changed."""

    def __init__(self, store: ProfileStore, profile: Profile,
                 on_learned: Callable[[list[str]], None] = lambda _keys: None,
                 timeout: float = REFRESH_TIMEOUT) -> None:
        self.store = store
        self.profile = profile
        self.on_learned = on_learned
        self.timeout = timeout
        self._outcome: RefreshOutcome | None = None
        self._done = asyncio.Event()
        self._deadline = 0.0

    def start(self) -> HostCARefresh:
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + self.timeout + 1.0

        def work() -> None:
            result = _fetch(self.profile, self.timeout)
            with contextlib.suppress(RuntimeError):  # the command ended first: nothing is stored
                loop.call_soon_threadsafe(self._finish, result)

        # A daemon thread, not the loop's executor: a proxy that does not answer must not keep
        # tsh from exiting.
        threading.Thread(target=work, name="tsh-host-ca-refresh", daemon=True).start()
        return self

    def _finish(self, result: HostCAs | TeleportError) -> None:
        outcome = _store(self.store, self.profile, result)
        if outcome.changed and isinstance(result, HostCAs):
            self.on_learned(result.keys)
        self._outcome = outcome
        self._done.set()

    async def outcome(self) -> RefreshOutcome:
        """The refresh's outcome, waiting for it (at most until its deadline)."""
        if self._outcome is None:
            remaining = self._deadline - asyncio.get_running_loop().time()
            try:
                await asyncio.wait_for(self._done.wait(), max(remaining, 0.0))
            except TimeoutError:
                return RefreshOutcome(problem=ConnectionProblem(
                    f"the proxy at {self.profile.web_addr} did not answer within {self.timeout:g}s"
                ))
        assert self._outcome is not None
        return self._outcome

    async def verified(self, connect: Callable[[], Awaitable[T]]) -> T:
        """``connect()``; when the host's certificate does not verify, wait for the refresh:
        try once more if it learned new host CAs, or explain a missed rotation."""
        from teleport_runtime.client.tsh_ssh import HostNotVerified  # loaded already: connect() uses it

        try:
            return await connect()
        except HostNotVerified as exc:
            outcome = await self.outcome()
            if outcome.changed:
                return await connect()
            if outcome.proxy_untrusted:
                raise rotation_missed(self.profile) from None
            if outcome.problem is not None:
                raise HostNotVerified(
                    f"{exc.message} (tsh could not check the cluster's current host CAs: {outcome.problem.message})"
                ) from None
            raise


def rotation_missed(profile: Profile) -> AccessDenied:
    """The error for a client whose trusted host CAs the cluster no longer serves with."""
    return AccessDenied(
        f"cluster {profile.cluster} serves certificates from a host CA you do not trust, and tsh cannot "
        f"learn the new one: the proxy's web certificate at {profile.web_addr} is not from a host CA you "
        f"trust either. The cluster's host CA was rotated since you last used tsh. Log in again, verifying "
        f"the new host CA with the pin `tctl status` prints: "
        f"tsh login --proxy={profile.web_addr} --user={profile.user} --ca-pin=sha256:..."
    )


def untrusted_warning(profile: Profile, outcome: RefreshOutcome) -> str | None:
    """A warning line for commands that do not connect (``status``, ``config``), or None."""
    if not outcome.proxy_untrusted:
        return None
    return f"WARNING: {rotation_missed(profile).message}"
