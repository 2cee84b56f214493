"""Shared pieces of the property-based tests: one settings object (bounded examples, no deadline,
no example database on disk, so runs share no state), JSON strategies, and an in-process auth
service run on its own event loop in a thread, so synchronous Hypothesis tests can call it over
real mutual TLS with the identity each endpoint admits.

Every fuzz module is marked ``fuzz``; each uses its own temporary directory and loopback port 0,
so the modules run in parallel with each other and with the rest of the suite.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import ssl
import threading
import uuid as uuidlib
from collections.abc import Coroutine, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from teleport_runtime.api.names import API_SERVER_NAME
from teleport_runtime.ca import CAType, TLSIdentity, generate_tls_identity_cert, generate_tls_keypair
from tests.proxy.harness import CLUSTER, LocalCluster

T = TypeVar("T")

#: Every property test: about 50 examples, no per-example deadline (the auth service shares two
#: cores with the rest of the suite), no example database written into the working tree. The
#: examples are the same on every run (a CI result is reproducible, and a change cannot pass by
#: luck); FUZZ_RANDOM=1 draws new ones, to explore.
FUZZ = settings(
    max_examples=50, deadline=None, database=None,
    derandomize=os.environ.get("FUZZ_RANDOM") != "1",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fuzz: property-based tests (no shared state; safe to run in parallel)")


# ---------------------------------------------------------------------------- JSON strategies

#: Text that is hard on validators: control characters, newlines, NUL, non-ASCII, surrogates
#: excluded (JSON cannot carry them through aiohttp's decoder as text).
junk_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "\n", "a\n", "\x00", "..", "../../etc/passwd", "-rf", "*", "{{internal.x}}",
                     "ü", "\u202e", "node\r\n", "1e400", "NaN", "99999999999999999999d", "-5m", "0",
                     "ssh-ed25519 \u00a1", "ssh-rsa AAAA\u00e9", "-----BEGIN PUBLIC KEY-----\n\u00a1\n"]),
    # huge strings, cheap to generate: one character repeated
    st.tuples(st.sampled_from(["x", "\u00fc", "\n", "\U0001f600"]), st.integers(5000, 70000)).map(
        lambda t: t[0] * t[1]
    ),
)
junk_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), junk_text,
)
junk_json = st.recursive(
    junk_scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)),
    max_leaves=20,
)


def shaped_body(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects that use an endpoint's own keys, each with junk (or missing), plus junk keys."""
    return st.fixed_dictionaries({}, optional={k: junk_json for k in keys}).flatmap(
        lambda d: st.dictionaries(st.text(max_size=8), junk_json, max_size=2).map(lambda extra: {**extra, **d})
    )


# ---------------------------------------------------------------------------- the auth service


class _APIConnection(http.client.HTTPSConnection):
    """HTTPS to the auth API by IP, verifying its certificate's cluster API name."""

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=API_SERVER_NAME)  # type: ignore[attr-defined]


class AuthServer:
    """A :class:`LocalCluster` (auth service + API on 127.0.0.1, port 0) on an event loop of its
    own, in a thread; callers use :meth:`run` to reach into it and :meth:`call` to send requests."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-auth", daemon=True)
        self.cluster = LocalCluster(root)
        self._contexts: dict[str | None, ssl.SSLContext] = {}
        self._keys: dict[str, tuple[bytes, bytes]] = {}

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> None:
        self.thread.start()
        self.run(self.cluster.start())

    def stop(self) -> None:
        try:
            self.run(self.cluster.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)

    # -- identities

    async def _issue(self, who: str) -> tuple[bytes, bytes]:
        host_ca = await self.cluster.auth.get_ca(CAType.HOST)
        # One key per identity for the server's life: the auth service binds a host's UUID to
        # the first key it sees, so a certificate re-issued after a fuzzed rotation keeps it.
        if who not in self._keys:
            self._keys[who] = generate_tls_keypair()
        key, public = self._keys[who]
        host_uuid = str(uuidlib.uuid5(uuidlib.NAMESPACE_DNS, who))
        if who == "admin":
            identity = TLSIdentity(name="admin", kind="admin", roles=["Admin"], cluster=CLUSTER)
        else:
            identity = TLSIdentity(name=f"{host_uuid}.{CLUSTER}", kind="host", roles=[who.title()],
                                   cluster=CLUSTER, host_uuid=host_uuid, nodename=f"fuzz-{who}")
        return generate_tls_identity_cert(host_ca.active, public, identity, ttl=timedelta(hours=2)), key

    def context(self, who: str | None) -> ssl.SSLContext:
        """A client TLS context trusting the cluster, with ``who``'s certificate (``admin``,
        ``node``, ``proxy``; None: no certificate). Built again after a rotate request (a
        fuzzed rotation may have changed the CA that signs)."""
        ctx = self._contexts.get(who)
        if ctx is not None:
            return ctx
        cas = self.run(self.cluster.auth.public_cas())
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cadata="".join(cas["host_ca_certs"]))
        if who is not None:
            cert, key = self.run(self._issue(who))
            path = self.root / f"{who}.pem"
            path.write_bytes(cert + key)
            ctx.load_cert_chain(path)
        self._contexts[who] = ctx
        if who in ("node", "proxy"):
            # The first call of a host the auth service has no binding for binds its UUID to this
            # key (as for an agent that joined before bindings existed): done here, so that what a
            # fuzzed request stores is compared against a state that already has it.
            conn = _APIConnection(self.cluster.addr.host, self.cluster.addr.port, context=ctx, timeout=60)
            try:
                conn.request("GET", "/v1/nodes", headers={"Host": API_SERVER_NAME})
                conn.getresponse().read()
            finally:
                conn.close()
        return ctx

    def call(self, method: str, path: str, body: bytes, who: str | None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """One request; the answer's status and its JSON (None when it is not JSON)."""
        conn = _APIConnection(self.cluster.addr.host, self.cluster.addr.port, context=self.context(who), timeout=60)
        try:
            conn.request(method, path, body=body,
                         headers={"Host": API_SERVER_NAME, "Content-Type": "application/json", **(headers or {})})
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
            if "/rotate" in path:
                self._contexts.clear()
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, None

    def snapshot(self) -> dict[str, int]:
        """What the auth service stores, as key -> revision (audit events aside: a refusal is
        audited), plus the files under its data directory."""

        for who in ("node", "proxy"):
            self.context(who)  # the hosts' bindings exist before the state is read

        async def items() -> dict[str, int]:
            found = await self.cluster.backend.get_range("", None)
            return {i.key: i.revision for i in found if not i.key.startswith("/events/")}

        state = self.run(items())
        for path in (self.root / "auth").rglob("*"):
            if path.is_file() and "backend" not in path.parts:
                state[f"file:{path.relative_to(self.root)}"] = path.stat().st_mtime_ns
        return state


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    """One auth service per module (not per example)."""
    server = AuthServer(tmp_path_factory.mktemp("fuzz-auth"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
