"""Who each host is: the auth service, not the joining host, decides a host's identity.

Backend records:

- ``/hosts/<uuid>``: the binding of a host UUID to its nodename and to the keys it holds
  certificates for (``{"uuid", "nodename", "keys": {role: [fingerprint, ...]}, "names",
  "remote_addr", "joined"}``). The first join with a UUID binds it; a later join with that UUID is
  the same host only when it brings a bound key (a rerun) or presents a certificate of that UUID
  (a second role of the same host). Fingerprints are the SHA-256 of the TLS public key (SPKI).
- ``/hostnames/<name>``: which UUID holds a name (nodename, UUID and their cluster-scoped forms,
  certificate addresses); a name is signed for one host only, except a proxy's DNS name (not an
  IP), which other proxies may share (``"proxies": [uuid, ...]``: proxies behind one load balancer).
- ``/locks/hosts/<uuid>``: a removed host (``tctl nodes rm``): ``{"uuid", "nodename", "keys":
  [fingerprint, ...], "all": bool, "created"}``. Certificates of that UUID with a locked key are
  refused by the auth API and the host's record is not listed. The lock names the keys the host
  held when it was removed, so the host may join again with a new key (and a new token); ``all``
  locks every key of the UUID when the removed host had no binding (joined before bindings
  existed and never called since), and then the UUID cannot join again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from teleport_runtime.backend import Backend, Item, prefix_end
from teleport_runtime.errors import AccessDenied, AlreadyExists, BadParameter, NotFound

log = logging.getLogger("teleport.auth.hosts")

HOSTS_PREFIX = "/hosts/"
NAMES_PREFIX = "/hostnames/"
LOCKS_PREFIX = "/locks/hosts/"
#: Keys remembered per role: the current one and those of recent re-registrations (a rotation
#: step whose answer was lost retries with the previous identity).
KEYS_PER_ROLE = 4


def key_fingerprint(public_or_cert: bytes | x509.Certificate) -> str:
    """SHA-256 (hex) of a public key's SubjectPublicKeyInfo, from a PEM public key, or a
    certificate (PEM, DER or parsed)."""
    if isinstance(public_or_cert, x509.Certificate):
        key = public_or_cert.public_key()
    else:
        data = bytes(public_or_cert)
        try:
            if b"CERTIFICATE" in data:
                key = x509.load_pem_x509_certificate(data).public_key()
            elif data.lstrip().startswith(b"-----"):
                key = serialization.load_pem_public_key(data)  # type: ignore[assignment]
            else:
                key = x509.load_der_x509_certificate(data).public_key()
        except (ValueError, TypeError) as exc:
            raise BadParameter(f"tls_public_key: not a PEM public key ({exc})") from None
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


@dataclass
class Binding:
    uuid: str
    nodename: str
    keys: dict[str, list[str]] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    remote_addr: str = ""
    joined: str = ""

    def holds(self, fingerprint: str) -> bool:
        return any(fingerprint in fps for fps in self.keys.values())

    def add_key(self, role: str, fingerprint: str) -> None:
        fps = [f for f in self.keys.get(role, []) if f != fingerprint]
        self.keys[role] = [*fps, fingerprint][-KEYS_PER_ROLE:]

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__).encode()

    @classmethod
    def from_item(cls, item: Item) -> Binding:
        data = json.loads(item.value)
        return cls(uuid=data["uuid"], nodename=data["nodename"], keys=dict(data.get("keys") or {}),
                   names=list(data.get("names") or []), remote_addr=str(data.get("remote_addr") or ""),
                   joined=str(data.get("joined") or ""))


@dataclass(frozen=True)
class Lock:
    uuid: str
    nodename: str
    keys: frozenset[str]
    all: bool

    def covers(self, fingerprint: str) -> bool:
        return self.all or fingerprint in self.keys


def removed_message(lock: Lock) -> str:
    return (
        f"host {lock.nodename} ({lock.uuid}) was removed from the cluster with `tctl nodes rm` and "
        "its certificate is revoked; to bring it back, stop teleport on it, remove its "
        "<data_dir>/identity and join it again with a new token"
        + (" and a new UUID (remove <data_dir>/host_uuid too)" if lock.all else "")
    )


class HostRegistry:
    """Bindings, claimed names and locks in the backend."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    # ------------------------------------------------------------------ bindings

    async def binding(self, host_uuid: str) -> Binding | None:
        try:
            return Binding.from_item(await self.backend.get(HOSTS_PREFIX + host_uuid))
        except NotFound:
            return None

    async def _name(self, name: str) -> dict[str, Any] | None:
        try:
            record: dict[str, Any] = json.loads((await self.backend.get(NAMES_PREFIX + name.lower())).value)
            return record
        except NotFound:
            return None

    async def holder(self, name: str) -> str | None:
        """The UUID that holds ``name``, if any (the first, for a name proxies share)."""
        record = await self._name(name)
        return record["uuid"] if record else None

    async def bindings(self) -> list[Binding]:
        items = await self.backend.get_range(HOSTS_PREFIX, prefix_end(HOSTS_PREFIX))
        return [Binding.from_item(i) for i in items]

    async def claim(self, host_uuid: str, name: str, proxy_shared: bool = False) -> bool:
        """Claim ``name`` for ``host_uuid``; False when another host holds it. ``proxy_shared``:
        a proxy's address, which other proxies may hold too (proxies behind one load balancer
        share their public address), never a node."""
        key = NAMES_PREFIX + name.lower()
        record: dict[str, Any] = {"uuid": host_uuid, **({"proxies": [host_uuid]} if proxy_shared else {})}
        try:
            await self.backend.create(Item(key=key, value=json.dumps(record).encode()))
            return True
        except AlreadyExists:
            pass
        held = await self._name(name)
        if held is None or held["uuid"] == host_uuid or host_uuid in held.get("proxies", []):
            return held is not None
        if not proxy_shared or "proxies" not in held:
            return False
        held["proxies"].append(host_uuid)
        await self.backend.put(Item(key=key, value=json.dumps(held).encode()))
        return True

    async def save(self, binding: Binding, *, new: bool) -> None:
        """Store a binding; ``new``: only if no binding of that UUID exists (two joins racing
        for one UUID: one wins, the other is refused)."""
        item = Item(key=HOSTS_PREFIX + binding.uuid, value=binding.to_json())
        if new:
            try:
                await self.backend.create(item)
            except AlreadyExists:
                raise AccessDenied(
                    f"host UUID {binding.uuid} was bound to another host a moment ago; "
                    "join again to see which"
                ) from None
        else:
            await self.backend.put(item)

    async def forget(self, binding: Binding) -> None:
        """Delete a binding and the names its host holds."""
        for name in binding.names:
            held = await self._name(name)
            if held is None:
                continue
            others = [u for u in held.get("proxies", []) if u != binding.uuid]
            if held["uuid"] == binding.uuid and not others:
                await self.backend.delete(NAMES_PREFIX + name.lower())
            elif binding.uuid in held.get("proxies", []) or held["uuid"] == binding.uuid:
                held.update(uuid=held["uuid"] if held["uuid"] != binding.uuid else others[0], proxies=others)
                await self.backend.put(Item(key=NAMES_PREFIX + name.lower(), value=json.dumps(held).encode()))
        try:
            await self.backend.delete(HOSTS_PREFIX + binding.uuid)
        except NotFound:
            pass

    # ------------------------------------------------------------------ locks

    async def lock(self, host_uuid: str, nodename: str, binding: Binding | None) -> Lock:
        keys = sorted({f for fps in (binding.keys.values() if binding else ()) for f in fps})
        try:
            old = json.loads((await self.backend.get(LOCKS_PREFIX + host_uuid)).value)
            keys = sorted({*keys, *old.get("keys", [])})
        except NotFound:
            pass
        record: dict[str, Any] = {
            "uuid": host_uuid, "nodename": nodename, "keys": keys, "all": binding is None,
            "created": datetime.now(UTC).isoformat(),
        }
        await self.backend.put(Item(key=LOCKS_PREFIX + host_uuid, value=json.dumps(record).encode()))
        return Lock(host_uuid, nodename, frozenset(keys), binding is None)

    async def locks(self) -> dict[str, Lock]:
        items = await self.backend.get_range(LOCKS_PREFIX, prefix_end(LOCKS_PREFIX))
        out = {}
        for item in items:
            data = json.loads(item.value)
            out[data["uuid"]] = Lock(data["uuid"], data.get("nodename", ""), frozenset(data.get("keys") or []),
                                     bool(data.get("all")))
        return out

    async def get_lock(self, host_uuid: str) -> Lock | None:
        try:
            data = json.loads((await self.backend.get(LOCKS_PREFIX + host_uuid)).value)
        except NotFound:
            return None
        return Lock(data["uuid"], data.get("nodename", ""), frozenset(data.get("keys") or []), bool(data.get("all")))
