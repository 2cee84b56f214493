"""The auth service: the cluster's certificate authority and the keeper of cluster state.

It holds the host and user CAs (created on first start, private keys never leave it), the join
tokens, node presence and, later, users, roles, the audit log and rotation state, all in the
storage backend. The HTTPS API (`api.py`) is a thin layer over this class.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import uuid as uuidlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from teleport_runtime import __version__
from teleport_runtime.api.names import API_SERVER_NAME
from teleport_runtime.api.routes import HEARTBEAT, JOIN, SIGN_SESSION
from teleport_runtime.api.types import (
    AuthorityState,
    HeartbeatAnswer,
    HeartbeatReport,
    HostRemoved,
    IssuedIdentity,
    JoinRequest,
    LoginRequest,
    NodeRecord,
    NodeSaved,
    PublicCAs,
    RotationView,
    SessionCert,
    SessionCertRequest,
    UserCerts,
)
from teleport_runtime.auth.audit import AuditLog
from teleport_runtime.auth.hosts import Binding, HostRegistry, Lock, key_fingerprint, removed_message
from teleport_runtime.auth.openssh_nodes import OpenSSHNodes, as_node_record
from teleport_runtime.auth.presence import Presence
from teleport_runtime.auth.recordings import (
    ActiveSessions,
    FileRecordingStore,
    RecordingStore,
    RecordingUpload,
    recordings_dir,
)
from teleport_runtime.auth.rotation import RotationManager, longest_trusted, rotation_view
from teleport_runtime.auth.tokens import TokenStore, mask
from teleport_runtime.auth.users import UserStore
from teleport_runtime.backend import Backend, Item
from teleport_runtime.ca import (
    CAType,
    CertAuthority,
    TLSIdentity,
    ca_pin,
    generate_host_ssh_cert,
    generate_tls_identity_cert,
    generate_tls_keypair,
    generate_user_ssh_cert,
    new_cert_authority,
    parse_user_ssh_cert,
)
from teleport_runtime.ca.keywrap import CACodec, load_kek
from teleport_runtime.config import AuthConfig
from teleport_runtime.durations import parse_duration
from teleport_runtime.errors import (
    AccessDenied,
    AlreadyExists,
    BadParameter,
    CompareFailed,
    ConfigError,
    LimitExceeded,
    NotFound,
    TeleportError,
)
from teleport_runtime.identity import Identity
from teleport_runtime.names import check_host_name, ip_literal, is_host_name, is_loopback, is_reserved
from teleport_runtime.netaddr import advertised, local_address, parse_host_port, split_host
from teleport_runtime.rbac import RoleSet

log = logging.getLogger("teleport.auth")

HOST_CERT_TTL = timedelta(days=3650)
USER_CERT_TTL = timedelta(hours=12)
#: A proxy's host certificate for a node it terminates SSH for: used in one handshake.
TARGET_HOST_CERT_TTL = timedelta(minutes=10)
#: A proxy's certificate for one session to an OpenSSH node: used in one login.
SESSION_CERT_TTL = timedelta(minutes=2)
ADMIN_CERT_TTL = timedelta(days=365)
JOIN_ROLES = {"node": "Node", "proxy": "Proxy"}
_CLUSTER_NAME_KEY = "/cluster_configuration/name"
_RESOURCE_NAMES = {"session": "session recordings and sessions", "event": "the audit log"}


#: Where the CAs are stored: a change under it is a change of the cluster's trust.
AUTHORITIES_PREFIX = "/authorities/"


def _ca_key(ca_type: CAType) -> str:
    return f"{AUTHORITIES_PREFIX}{ca_type.value}"


#: The loopback names every host certificate carries (``generate_host_ssh_cert``); they are
#: nobody's in particular and never claimed.
_DEFAULT_PRINCIPALS = ("localhost", "127.0.0.1", "::1")


_HOST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def check_host_uuid(value: str) -> str:
    """A host's ID (a UUID from ``<data_dir>/host_uuid``): a backend key segment and a principal,
    so letters, digits, ``-`` and ``_`` only (no dots: it is never a name under another)."""
    if not isinstance(value, str) or not _HOST_ID.fullmatch(value):
        raise BadParameter(
            f"invalid host UUID {value!r:.60}: expected a UUID such as "
            "123e4567-e89b-12d3-a456-426614174000 (the host's <data_dir>/host_uuid)"
        )
    return value


class AuthService:
    """Cluster state and the certificate authority, over a storage backend."""

    def __init__(self, backend: Backend, config: AuthConfig, data_dir: Path) -> None:
        self.backend = backend
        self.config = config
        self.data_dir = data_dir
        self.cluster_name = ""
        self.tokens = TokenStore(backend, config.static_tokens)
        self.presence = Presence(backend, config.presence_ttl)
        self.hosts = HostRegistry(backend)
        self.openssh_nodes = OpenSSHNodes(backend, self.hosts.holder)
        #: Names and addresses the auth API serves at (set by the API when it listens): never
        #: signed for a host that joins from elsewhere, never a node's address.
        self.served_names: set[str] = {n.lower() for n in config.public_addr}
        self.served_addrs: set[tuple[str, int]] = set()
        self.audit = AuditLog(backend)
        self.users = UserStore(backend, "")
        self.ca_codec = CACodec()  # init() sets the key-encryption key from the config
        self.rotation = RotationManager(backend, _ca_key, codec=self.ca_codec)
        self.recordings: RecordingStore = FileRecordingStore(recordings_dir(data_dir))
        self.sessions = ActiveSessions(backend)
        # Nodes learn the cluster's recording mode from their heartbeat answers.
        self.presence.cluster_settings["session_recording"] = config.session_recording

    # ------------------------------------------------------------------ start-up

    async def init(self) -> None:
        """First start creates the cluster name and both CAs; later starts load them.

        Several auth servers may share the backend and start at the same moment: each record is
        made with ``create`` (fails on an existing key) and whoever loses that race loads what the
        winner stored, so the cluster and its CAs are created exactly once."""
        kek_file = self.config.ca_key_encryption_key_file
        self.ca_codec = CACodec(load_kek(kek_file) if kek_file is not None else None)
        self.rotation.codec = self.ca_codec
        wanted = self.config.cluster_name or socket.gethostname()
        try:
            await self.backend.create(Item(key=_CLUSTER_NAME_KEY, value=wanted.encode()))
            log.info("created cluster %s", wanted)
        except AlreadyExists:
            pass
        stored = (await self.backend.get(_CLUSTER_NAME_KEY)).value.decode()
        if self.config.cluster_name and stored != self.config.cluster_name:
            raise ConfigError(
                f"auth_service.cluster_name is {self.config.cluster_name!r} but this auth server's "
                f"data already belongs to cluster {stored!r}; a cluster name cannot change: "
                f"set cluster_name back to {stored!r} or use a new data_dir"
            )
        self.cluster_name = stored
        self.users.cluster_name = stored
        await self.users.ensure_presets()
        for ca_type in (CAType.HOST, CAType.USER):
            key = _ca_key(ca_type)
            try:
                item = await self.backend.get(key)
            except NotFound:
                authority = new_cert_authority(ca_type, self.cluster_name)
                try:
                    await self.backend.create(Item(key=key, value=self.ca_codec.encode(key, authority)))
                    log.info("created the %s certificate authority", ca_type.value)
                except AlreadyExists:
                    log.info("another auth server created the %s certificate authority", ca_type.value)
                item = await self.backend.get(key)
            self.ca_codec.decode(key, item.value)  # a wrong or missing key-encryption key stops here
            await self._seal_ca(item)
        # A rotation in auto mode resumes where its stored schedule says it should be.
        await self.rotation.tick()

    async def _seal_ca(self, item: Item) -> None:
        """A CA stored before the key-encryption key was configured is re-written sealed (by
        compare-and-swap: when another auth server does it first, that one's record stands)."""
        if not self.ca_codec.needs_sealing(item.value):
            return
        ca = self.ca_codec.decode(item.key, item.value)
        try:
            await self.backend.compare_and_swap(item, Item(key=item.key, value=self.ca_codec.encode(item.key, ca)))
            log.info("sealed the private keys of %s with key-encryption key %s", item.key, self.ca_codec.kek_id)
        except (CompareFailed, NotFound):
            pass

    async def get_ca(self, ca_type: CAType) -> CertAuthority:
        """A CA with its private keys: for use inside the auth service only."""
        key = _ca_key(ca_type)
        item = await self.backend.get(key)
        return self.ca_codec.decode(key, item.value)

    async def public_cas(self) -> dict[str, Any]:
        """What anyone may see: CA certs and public keys, for pinning and trust."""
        host, user = await self.get_ca(CAType.HOST), await self.get_ca(CAType.USER)
        return {"cluster": self.cluster_name, **_trusted(host, user), "user_ca_certs": _certs(user)}

    async def ca_pins(self) -> list[str]:
        host = await self.get_ca(CAType.HOST)
        return [ca_pin(c) for c in host.trusted_tls_certs()]

    async def authority_state(self) -> AuthorityState:
        """What agents follow CA rotations with: both CAs' rotation views, the public CA
        material, the host CA cert that signs now, and a ``revision`` that changes whenever
        either CA record changes (the watch compares it)."""
        items = {t: await self.backend.get(_ca_key(t)) for t in (CAType.HOST, CAType.USER)}
        cas = {t: self.ca_codec.decode(item.key, item.value) for t, item in items.items()}
        host, user = cas[CAType.HOST], cas[CAType.USER]
        return AuthorityState(
            revision=f"{items[CAType.HOST].revision}.{items[CAType.USER].revision}",
            rotation={t.value: RotationView.from_json(rotation_view(ca)) for t, ca in cas.items()},
            cas=PublicCAs.from_json({"cluster": self.cluster_name, **_trusted(host, user),
                                     "user_ca_certs": _certs(user)}),
            signing={"host_ca_cert": host.active.tls_cert.decode()},
        )

    async def issue_server_identity(self, extra_names: list[str]) -> Identity:
        """The auth API's own TLS identity, valid for ``teleport.cluster.local`` and its names.

        Signed by the host key every agent has trusted the longest (the old key until a rotation
        completes, see :func:`~teleport_runtime.auth.rotation.longest_trusted`)."""
        host = await self.get_ca(CAType.HOST)
        key, public = generate_tls_keypair()
        names = [API_SERVER_NAME, "localhost", socket.gethostname(), *extra_names]
        dns, ips = _split_names(names)
        cert = generate_tls_identity_cert(
            longest_trusted(host),
            public,
            TLSIdentity(name=f"auth.{self.cluster_name}", kind="host", roles=["Auth"],
                        cluster=self.cluster_name),
            ttl=HOST_CERT_TTL,
            dns_names=dns,
            ip_addresses=[*ips, "127.0.0.1", "::1"],
        )
        return Identity(tls_key=key, tls_cert=cert, ca_certs=host.trusted_tls_certs())

    async def write_admin_identity(self) -> Path:
        """The local admin identity tctl uses on the auth host (``<data_dir>/admin``)."""
        host = await self.get_ca(CAType.HOST)
        key, public = generate_tls_keypair()
        cert = generate_tls_identity_cert(
            host.active,
            public,
            TLSIdentity(name="admin", kind="admin", roles=["Admin"], cluster=self.cluster_name),
            ttl=ADMIN_CERT_TTL,
        )
        directory = self.data_dir / "admin"
        Identity(tls_key=key, tls_cert=cert, ca_certs=host.trusted_tls_certs()).save(directory)
        return directory

    def advertise_addr(self) -> str:
        """The address joining hosts dial: the first public_addr, else the listen address."""
        listen = self.config.listen_addr
        public = self.config.public_addr
        first = parse_host_port(public[0], listen.port, "auth_service.public_addr") if public else None
        return str(advertised(first, listen, fallbacks=[local_address()]))

    # ------------------------------------------------------------------ join

    def served_at(self, names: list[str], port: int) -> None:
        """Where the auth API listens: its names (host part) and ``(host, port)`` pairs."""
        for raw in names:
            host = split_host(raw)
            if host:
                self.served_names.add(ip_literal(host) or host.lower())
        self.served_addrs |= {(name, port) for name in self.served_names}
        self.served_addrs |= {("127.0.0.1", port), ("::1", port), ("localhost", port)}

    async def refuse(self, exc: TeleportError, *, resource: str, remote_addr: str, host_uuid: str = "",
                     nodename: str = "", role: str = "", log_it: bool = True) -> TeleportError:
        """Log and audit a refused host request (``access.denied``); returns ``exc`` to raise."""
        if log_it:
            log.warning("%s refused for %s (%s) from %s: %s", resource, _printable(nodename) or "?",
                        _printable(host_uuid) or "?", remote_addr, exc.message)
        await self.audit.emit({
            "event": "access.denied", "user": nodename or host_uuid, "roles": [role] if role else [],
            "server_id": host_uuid, "node": nodename, "resource": resource, "verb": "POST",
            "remote_addr": remote_addr, "reason": exc.message,
        })
        return exc

    async def register(
        self, req: JoinRequest, remote_addr: str, presented: TLSIdentity | None = None
    ) -> IssuedIdentity:
        """The server side of the join flow: check the token, decide who the host is, sign.

        The host's UUID is bound to the first key that joined with it; names are unique (see
        ``auth/hosts.py``). ``presented``: the verified certificate the joining connection
        presented, if any (a host joining a second role presents its first one). The client side
        (pin check before the token is sent) is ``agent/join.py``.
        """
        role = JOIN_ROLES.get(req.role)
        if role is None:
            raise BadParameter(f"cannot join as {req.role!r}: hosts join as node or proxy")
        try:
            await self.tokens.check(req.token, req.role)
        except AccessDenied as exc:
            log.warning(
                "join refused for %s (%s) from %s with token %s: %s",
                _printable(req.nodename), req.role, remote_addr, mask(req.token), exc.message,
            )
            raise await self.refuse(exc, resource=JOIN.path, remote_addr=remote_addr,
                                    nodename=req.nodename[:80], role=role, log_it=False) from None
        try:
            host_uuid = check_host_uuid(req.host_uuid)
            nodename = check_host_name(req.nodename, "nodename")
            fingerprint = key_fingerprint(req.tls_public_key)
            check_ssh_public_key(req.ssh_public_key)  # before anything is bound to the keys
            addresses = await self._bind(
                host_uuid, nodename, role, fingerprint, [*req.addresses, remote_addr],
                remote_addr, presented,
            )
        except (AccessDenied, BadParameter) as exc:
            raise await self.refuse(exc, resource=JOIN.path, remote_addr=remote_addr,
                                    host_uuid=req.host_uuid[:64], nodename=req.nodename[:80],
                                    role=role) from None
        identity = await self.issue_host_identity(
            host_uuid=host_uuid,
            nodename=nodename,
            role=role,
            ssh_public_key=req.ssh_public_key,
            tls_public_key=req.tls_public_key,
            addresses=tuple(addresses),
        )
        log.info("%s %s (%s) joined from %s", req.role, nodename, host_uuid, remote_addr)
        return IssuedIdentity.from_json(identity)

    async def _bind(
        self, host_uuid: str, nodename: str, role: str, fingerprint: str, candidates: list[str],
        remote_addr: str, presented: TLSIdentity | None,
    ) -> list[str]:
        """Bind ``host_uuid`` (first key wins), claim its names; returns the addresses its
        certificates may carry. AccessDenied names the holder and the fix."""
        lock = await self.hosts.get_lock(host_uuid)
        if lock is not None and lock.covers(fingerprint):
            raise AccessDenied(removed_message(lock))
        local = is_loopback(remote_addr)
        if is_reserved(nodename, self.cluster_name) or (not local and nodename.lower() in self.served_names):
            raise AccessDenied(
                f"the nodename {nodename} is reserved (the cluster's or the auth server's name): "
                "give this host another nodename (teleport.nodename or --nodename)"
            )
        binding = await self.hosts.binding(host_uuid)
        new = binding is None
        if binding is None:
            binding = Binding(uuid=host_uuid, nodename=nodename, remote_addr=remote_addr,
                              joined=datetime.now(UTC).isoformat())
        else:
            same_host = binding.holds(fingerprint) or (
                presented is not None and presented.kind == "host" and presented.host_uuid == host_uuid
            )
            if not same_host:
                raise AccessDenied(
                    f"host UUID {host_uuid} belongs to host {binding.nodename} (joined from "
                    f"{binding.remote_addr or 'unknown'} at {binding.joined or 'an earlier time'}) with another key. "
                    f"If this host is {binding.nodename} and lost its identity, remove the old one on the auth "
                    f"server with `tctl nodes rm {binding.nodename}`, then join again; otherwise give this host "
                    "its own UUID (remove <data_dir>/host_uuid) and join again"
                )
            if binding.nodename != nodename:
                raise AccessDenied(
                    f"host {host_uuid} is registered as {binding.nodename}, not {nodename}: to rename it, "
                    f"run `tctl nodes rm {binding.nodename}` on the auth server, then join again"
                )
        own = _own_names(host_uuid, nodename, self.cluster_name)
        for name in own:
            holder = await self.hosts.holder(name)
            if holder is not None and holder != host_uuid:
                other = await self.hosts.binding(holder)
                held_by = other.nodename if other else holder
                raise AccessDenied(
                    f"the name {name} belongs to host {held_by} ({holder}); names are unique in the "
                    f"cluster: give this host another nodename, or if {held_by} is gone, run "
                    f"`tctl nodes rm {held_by}` on the auth server, then join again"
                )
        binding.add_key(role, fingerprint)
        await self.hosts.save(binding, new=new)
        for name in own:
            if not await self.hosts.claim(host_uuid, name):
                if new:
                    await self.hosts.forget(binding)
                raise AccessDenied(f"the name {name} was taken by another host a moment ago: join again")
        addresses = await self._signable(host_uuid, nodename, role, candidates, local)
        binding.names = list(dict.fromkeys([*binding.names, *own, *addresses]))
        await self.hosts.save(binding, new=False)
        return addresses

    async def _signable(
        self, host_uuid: str, nodename: str, role: str, candidates: list[str], local: bool
    ) -> list[str]:
        """The addresses a host's certificates may carry: literal IPs and plain DNS names that are
        not reserved, not the auth server's (unless the host is on the auth host) and not
        another host's (each is claimed for this host). Loopback addresses only for a host that
        connects from loopback. Others are dropped, with a log line."""
        out: list[str] = []
        own = {n.lower() for n in _own_names(host_uuid, nodename, self.cluster_name)}
        for raw in candidates:
            host = split_host(str(raw))
            name = ip_literal(host) or host.lower()
            if not name or name in out or name in own or name in _DEFAULT_PRINCIPALS:
                continue
            reason = ""
            if ip_literal(name) is None and not is_host_name(name):
                reason = "not a literal IP or a plain DNS name"
            elif is_reserved(name, self.cluster_name):
                reason = "a reserved name"
            elif is_loopback(name) and not local:
                reason = "a loopback address of a host that is not on this machine"
            elif not local and name in self.served_names:
                reason = "the auth server's"
            elif not await self.hosts.claim(host_uuid, name, proxy_shared=role == "Proxy" and ip_literal(name) is None):
                reason = "another host's"
            if reason:
                log.warning("not signing %r for %s (%s): %s", name[:80], nodename, host_uuid, reason)
                continue
            out.append(name)
        return out

    async def reregister(
        self, caller: TLSIdentity, caller_names: list[str], ssh_public_key: str, tls_public_key: bytes,
        remote_addr: str = "",
    ) -> IssuedIdentity:
        """A joined host asks for a new identity with the one it holds (no token): during a host
        CA rotation this is how agents get certificates signed by the key that signs now. Who it
        is (UUID, name, role) and the names it is signed for come from its verified certificate
        (``caller_names``: its SANs), never from the request."""
        role = caller.roles[0] if caller.roles else ""
        if caller.kind != "host" or role not in JOIN_ROLES.values() or not caller.host_uuid:
            raise AccessDenied("re-registration needs a node or proxy identity issued by the host CA")
        if not ssh_public_key or not tls_public_key:
            raise BadParameter("re-registration needs ssh_public_key and tls_public_key")
        host_uuid = caller.host_uuid
        nodename = caller.nodename or host_uuid
        fingerprint = key_fingerprint(tls_public_key)
        binding = await self.hosts.binding(host_uuid) or Binding(
            uuid=host_uuid, nodename=nodename, joined=datetime.now(UTC).isoformat(), remote_addr=remote_addr
        )
        addresses = await self._signable(host_uuid, nodename, role, caller_names, is_loopback(remote_addr))
        # Signed first: signing checks both public keys, so a request with a bad key stores nothing.
        identity = await self.issue_host_identity(
            host_uuid=host_uuid,
            nodename=nodename,
            role=role,
            ssh_public_key=ssh_public_key,
            tls_public_key=tls_public_key,
            addresses=tuple(addresses),
        )
        binding.add_key(role, fingerprint)
        binding.names = list(dict.fromkeys([*binding.names, *addresses]))
        await self.hosts.save(binding, new=False)
        log.info("%s %s (%s) re-registered", role.lower(), caller.nodename, host_uuid)
        return IssuedIdentity.from_json(identity)

    async def check_host_caller(self, identity: TLSIdentity, fingerprint: str, locks: dict[str, Lock]) -> None:
        """A host certificate may call the API while its UUID is bound to its key. A certificate
        of a UUID with no binding (joined before bindings existed) binds it on first use."""
        host_uuid = identity.host_uuid or ""
        lock = locks.get(host_uuid)
        if lock is not None and lock.covers(fingerprint):
            raise AccessDenied(removed_message(lock))
        binding = await self.hosts.binding(host_uuid)
        if binding is None:
            role = identity.roles[0] if identity.roles else ""
            binding = Binding(uuid=host_uuid, nodename=identity.nodename or host_uuid,
                              joined=datetime.now(UTC).isoformat())
            binding.add_key(role, fingerprint)
            await self.hosts.save(binding, new=False)
        elif not binding.holds(fingerprint):
            raise AccessDenied(
                f"this certificate of host {binding.nodename} ({host_uuid}) is not the one the cluster "
                f"bound to that host: re-join the host (stop teleport, remove <data_dir>/identity, start it "
                f"with a new token) or, if {binding.nodename} is gone, run `tctl nodes rm {binding.nodename}`"
            )

    async def remove_host(self, name_or_uuid: str) -> HostRemoved:
        """``tctl nodes rm``: lock the host's certificates, forget its binding and names, delete its
        presence records. The host may join again with a new key (see ``auth/hosts.py``)."""
        target = name_or_uuid.strip()
        openssh = await self.openssh_nodes.find(target)
        if openssh is not None:  # a registered sshd: no certificate of ours to lock
            await self.openssh_nodes.delete(target)
            log.info("OpenSSH node %s removed", openssh["metadata"]["name"])
            return HostRemoved(removed=openssh["metadata"]["name"], nodename=openssh["spec"]["hostname"],
                               sub_kind="openssh")
        host_uuid = await self.hosts.holder(target)  # names and UUIDs are both claimed
        records = [r for role in ("Node", "Proxy") for r in await self.presence.list(role)
                   if target in (r["id"], r["hostname"])]
        if host_uuid is None and records:
            host_uuid = records[0]["id"]
        if host_uuid is None:
            raise NotFound(f"no host named {target!r} is registered: see `tctl nodes ls` and `tctl get proxies`")
        binding = await self.hosts.binding(host_uuid)
        nodename = binding.nodename if binding else next((r["hostname"] for r in records), target)
        lock = await self.hosts.lock(host_uuid, nodename, binding)
        if binding is not None:
            await self.hosts.forget(binding)
        await self.presence.remove(host_uuid)
        log.info("host %s (%s) removed and locked", nodename, host_uuid)
        return HostRemoved(removed=host_uuid, nodename=nodename, locked_keys=len(lock.keys), all_keys=lock.all)

    async def list_hosts(self, role: str) -> list[NodeRecord]:
        """Presence records of hosts that are bound: a removed host's record (a heartbeat in
        flight during `tctl nodes rm` may store one after the removal) is not listed."""
        bound = {b.uuid for b in await self.hosts.bindings()}
        hosts = [NodeRecord.from_json(r) for r in await self.presence.list(role) if r["id"] in bound]
        if role == "Node":
            hosts += [NodeRecord.from_json(as_node_record(r)) for r in await self.openssh_nodes.list()]
        return hosts

    # ------------------------------------------------------------------ OpenSSH nodes, proxy sessions

    async def upsert_openssh_node(self, resource: dict[str, Any], force: bool) -> NodeSaved:
        """``tctl create`` of an OpenSSH node (rules in ``auth/openssh_nodes.py``)."""
        forbidden = await self.presence._forbidden(self.served_addrs)
        stored, result = await self.openssh_nodes.upsert(resource, force=force, forbidden=forbidden)
        name = stored["metadata"]["name"]
        if result != "unchanged":
            await self.audit.emit({"event": "resource.upsert", "kind": "node", "sub_kind": "openssh",
                                   "name": name, "result": result, "addr": stored["spec"]["addr"]})
        return NodeSaved(name=name, result=result, resource=stored)

    async def _registered_node(self, target: str) -> NodeRecord:
        """The listed node named ``target`` (name, UUID or hostname); NotFound otherwise."""
        for node in await self.list_hosts("Node"):
            if target.lower() in (node.id.lower(), node.hostname.lower()):
                return node
        raise NotFound(f"node {target!r} is not registered in cluster {self.cluster_name}: see `tctl nodes ls`")

    async def sign_target_host(self, node_name: str, ssh_public_key: str) -> str:
        """A short-lived host certificate naming a registered node, for the proxy that
        terminates SSH for it (proxy recording mode): its name, hostname, their cluster forms
        and its address host."""
        check_ssh_public_key(ssh_public_key)
        node = await self._registered_node(node_name)
        names = [node.hostname, f"{node.hostname}.{self.cluster_name}", parse_host_port(node.addr, 22).host]
        host = await self.get_ca(CAType.HOST)
        return generate_host_ssh_cert(
            host.active, ssh_public_key, host_uuid=node.id, nodename=node.id, cluster_name=self.cluster_name,
            role="Node", extra_principals=[n for n in names if n and n != node.id], ttl=TARGET_HOST_CERT_TTL,
        )

    async def sign_session(self, request: SessionCertRequest, proxy: TLSIdentity, cert_ips: list[str],
                           remote_ip: str) -> SessionCert:
        """The certificate of one proxy session to an OpenSSH node. Scope: the user's certificate
        the proxy holds must be from our user CA, valid now and list ``login``; the user's current
        roles must allow ``login`` on the node's labels; the answer's only principal is ``login``,
        it lives :data:`SESSION_CERT_TTL` (long enough to log in once; an SSH connection outlives
        its certificate), carries no agent forwarding and is accepted only from the proxy's
        addresses (``source-address``: the IPs in the proxy's certificate and the address it
        asked from). Refusals are audited."""
        check_ssh_public_key(request.ssh_public_key)
        user_ca = await self.get_ca(CAType.USER)
        try:
            info = parse_user_ssh_cert(request.user_ssh_cert, user_ca.trusted_ssh_public_keys())
            now = datetime.now(UTC)
            if info.valid_after > now or (info.valid_before is not None and info.valid_before <= now):
                raise AccessDenied("the user's certificate is not valid now: log in again with `tsh login`")
            if request.login not in info.logins:
                raise AccessDenied(f"the user's certificate does not list login {request.login!r}")
            node = await self._registered_node(request.node)
            if node.sub_kind != "openssh":
                raise BadParameter(f"node {request.node!r} runs the node service: session certificates "
                                   "are only for OpenSSH nodes")
            role_set, role_names = await self.role_set(info.username)
            role_set.check_access_to_node(request.login, node.labels)
        except (AccessDenied, BadParameter, NotFound) as exc:
            raise await self.refuse(exc, resource=SIGN_SESSION.path, remote_addr=remote_ip,
                                    host_uuid=proxy.host_uuid or "", nodename=proxy.nodename or "",
                                    role="Proxy") from None
        sources = sorted({ip for ip in (*cert_ips, remote_ip) if ip_literal(ip)})
        cert = generate_user_ssh_cert(
            user_ca.active, request.ssh_public_key, username=info.username, logins=[request.login],
            roles=role_names, ttl=SESSION_CERT_TTL, permit_port_forwarding=role_set.can_port_forward(),
            source_addresses=sources,
        )
        return SessionCert(ssh_cert=cert, ttl_seconds=int(SESSION_CERT_TTL.total_seconds()),
                           source_addresses=tuple(sources))

    async def heartbeat(
        self, identity: TLSIdentity, cert_names: list[str], report: HeartbeatReport, remote_ip: str
    ) -> HeartbeatAnswer:
        """Store a host's heartbeat after checking that its name and addresses are its own."""
        role = identity.roles[0] if identity.roles else ""
        try:
            answer = await self.presence.heartbeat(
                role=role, host_uuid=identity.host_uuid or "", report=report.to_json(), remote_ip=remote_ip,
                nodename=identity.nodename or identity.host_uuid or "", cert_names=cert_names,
                forbidden=self.served_addrs,
            )
        except (AccessDenied, BadParameter) as exc:
            raise await self.refuse(exc, resource=HEARTBEAT.path, remote_addr=remote_ip,
                                    host_uuid=identity.host_uuid or "", nodename=identity.nodename or "",
                                    role=role) from None
        return HeartbeatAnswer.from_json(answer)

    async def issue_host_identity(
        self,
        *,
        host_uuid: str,
        nodename: str,
        role: str,
        ssh_public_key: str,
        tls_public_key: bytes,
        addresses: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        """Sign a host's SSH and TLS keys with the host CA (at join, and at re-registration).
        ``addresses`` must have been vetted (:meth:`_signable`)."""
        host, user = await self.get_ca(CAType.HOST), await self.get_ca(CAType.USER)
        ssh_cert = generate_host_ssh_cert(
            host.active,
            ssh_public_key,
            host_uuid=host_uuid,
            nodename=nodename,
            cluster_name=self.cluster_name,
            role=role,
            extra_principals=addresses,
        )
        dns, ips = _split_names([*_own_names(host_uuid, nodename, self.cluster_name), *addresses])
        tls_cert = generate_tls_identity_cert(
            host.active,
            tls_public_key,
            TLSIdentity(
                name=f"{host_uuid}.{self.cluster_name}",
                kind="host",
                roles=[role],
                cluster=self.cluster_name,
                host_uuid=host_uuid,
                nodename=nodename,
            ),
            ttl=HOST_CERT_TTL,
            dns_names=dns,
            ip_addresses=ips,
        )
        return {
            "cluster": self.cluster_name,
            "ssh_cert": ssh_cert,
            "tls_cert": tls_cert.decode(),
            **_trusted(host, user),
        }

    # ------------------------------------------------------------------ users

    async def role_set(self, username: str) -> tuple[RoleSet, list[str]]:
        user = await self.users.get_user(username)
        roles = [await self.users.get_role(name) for name in user.roles]
        return RoleSet(roles, user.traits()), user.roles

    async def sign_user(
        self,
        username: str,
        ssh_public_key: str,
        tls_public_key: bytes | None,
        ttl: str | timedelta | None,
    ) -> UserCerts:
        """Short-lived user certs: logins and forwarding from the user's roles; the TTL (12 h by
        default) is capped by the roles' max_session_ttl."""
        role_set, role_names = await self.role_set(username)
        wanted = parse_duration(ttl) if isinstance(ttl, str) else (ttl or USER_CERT_TTL)
        if wanted <= timedelta(0):
            raise BadParameter("certificate TTL must be positive, such as --ttl=1h")
        cert_ttl = min(wanted, role_set.max_session_ttl())
        logins = role_set.logins()
        user_ca, host_ca = await self.get_ca(CAType.USER), await self.get_ca(CAType.HOST)
        ssh_cert = generate_user_ssh_cert(
            user_ca.active,
            ssh_public_key,
            username=username,
            logins=logins,
            roles=role_names,
            traits=(await self.users.get_user(username)).traits(),
            ttl=cert_ttl,
            permit_agent_forwarding=role_set.can_forward_agent(),
            permit_port_forwarding=role_set.can_port_forward(),
        )
        tls_cert = None
        if tls_public_key:
            tls_cert = generate_tls_identity_cert(
                user_ca.active,
                tls_public_key,
                TLSIdentity(name=username, kind="user", roles=role_names,
                            cluster=self.cluster_name, logins=logins),
                ttl=cert_ttl,
            ).decode()
        return UserCerts(
            username=username,
            cluster=self.cluster_name,
            ssh_cert=ssh_cert,
            roles=tuple(role_names),
            logins=tuple(logins),
            ttl_seconds=int(cert_ttl.total_seconds()),
            host_ca_certs=tuple(_certs(host_ca)),
            host_ca_keys=tuple(host_ca.trusted_ssh_public_keys()),
            user_ca_keys=tuple(user_ca.trusted_ssh_public_keys()),
            tls_cert=tls_cert,
        )

    async def login(
        self, request: LoginRequest, remote_addr: str
    ) -> UserCerts:
        """Password + TOTP login (through the proxy); audited either way."""
        name = request.user
        try:
            await self.users.authenticate(name, request.password, request.otp, remote_addr)
        except (AccessDenied, BadParameter, LimitExceeded) as exc:
            await self.audit.emit({"event": "user.login", "code": "T1000W", "success": False,
                                   "user": name[:128], "remote_addr": remote_addr, "reason": exc.message})
            raise
        result = await self.sign_user(
            name, request.ssh_public_key, request.tls_public_key.encode() or None, request.ttl,
        )
        await self.audit.emit({"event": "user.login", "code": "T1000I", "success": True,
                               "user": name, "remote_addr": remote_addr})
        return result

    async def sign_openssh_host(self, names: list[str], ssh_public_key: str, ttl: timedelta | None) -> str:
        """A host cert for an OpenSSH sshd node (``tctl auth sign --host``)."""
        if not names:
            raise BadParameter("--host needs at least one name: --host=node1.example.com,10.0.0.5")
        host = await self.get_ca(CAType.HOST)
        return generate_host_ssh_cert(
            host.active,
            ssh_public_key,
            host_uuid=str(uuidlib.uuid4()),
            nodename=names[0],
            cluster_name=self.cluster_name,
            role="Node",
            extra_principals=names[1:],
            ttl=ttl,
        )

    # ------------------------------------------------------------------ recordings and audit access

    async def store_recording(self, upload: RecordingUpload, server_id: str) -> dict[str, Any]:
        """Keep a node's recording (size and hash checked by the store); audit
        ``session.upload`` the first time, so a retried upload is a no-op."""
        record = await self.recordings.put(upload.session_id, upload.data, upload.sha256, upload.meta)
        if not record.get("duplicate"):
            meta = upload.meta
            await self.audit.emit({
                "event": "session.upload", "session_id": upload.session_id,
                "user": meta.get("user", ""), "login": meta.get("login", ""), "node": meta.get("node", ""),
                "server_id": server_id, "remote_addr": meta.get("remote_addr", ""),
                "size": record["size"], "sha256": record["sha256"],
            })
        return record

    async def authorize_user(
        self, identity: TLSIdentity, resource: str, verb: str, remote_addr: str = ""
    ) -> None:
        """Admins may; a user may when the roles in the certificate grant ``verb`` on
        ``resource`` (the preset ``auditor`` grants list and read on ``session`` and ``event``).
        Otherwise AccessDenied, and an ``access.denied`` audit event."""
        if identity.kind == "admin":
            return
        reason = ""
        if identity.kind != "user":
            reason = f"a {identity.kind} certificate cannot {verb} {resource}"
        else:
            try:
                roles = [await self.users.get_role(name) for name in identity.roles]
                RoleSet(roles).check_rule(resource, verb)
                return
            except (AccessDenied, NotFound) as exc:
                reason = exc.message
        await self.audit.emit({
            "event": "access.denied", "user": identity.name, "roles": list(identity.roles),
            "resource": resource, "verb": verb, "remote_addr": remote_addr, "reason": reason,
        })
        raise AccessDenied(
            f"user {identity.name} may not {verb} {_RESOURCE_NAMES.get(resource, resource)}: {reason}. "
            f"A role that allows {verb} on {resource!r}, such as the preset auditor role, grants it: "
            f"ask an administrator"
        )

    # ------------------------------------------------------------------ status

    async def status(self) -> dict[str, Any]:
        cas = []
        for ca_type in (CAType.HOST, CAType.USER):
            ca = await self.get_ca(ca_type)
            cas.append(
                {
                    "type": ca_type.value,
                    "created": ca.active.created.isoformat(),
                    "rotation": rotation_view(ca),
                }
            )
        return {
            "cluster": self.cluster_name,
            "version": __version__,
            "ca_pins": await self.ca_pins(),
            "cas": cas,
        }


def _printable(text: str) -> str:
    """``text`` for a log line: control characters escaped, at most 80 characters."""
    return text.encode("unicode_escape").decode("ascii")[:80]


def check_ssh_public_key(text: str) -> None:
    try:
        serialization.load_ssh_public_key(text.strip().encode())
    except (ValueError, TypeError, UnsupportedAlgorithm, UnicodeEncodeError):
        raise BadParameter(
            "ssh_public_key: not an SSH public key; expected the authorized_keys form 'ssh-ed25519 AAAA...'"
        ) from None


def _own_names(host_uuid: str, nodename: str, cluster: str) -> list[str]:
    """The names that are a host's by its identity: UUID, nodename and their cluster forms."""
    return list(dict.fromkeys((host_uuid, f"{host_uuid}.{cluster}", nodename, f"{nodename}.{cluster}")))


def _split_names(names: list[str]) -> tuple[list[str], list[str]]:
    """Split host names and IP addresses (``host:port`` forms lose the port)."""
    dns: list[str] = []
    ips: list[str] = []
    for raw in names:
        name = split_host(raw)
        if not name:
            continue
        try:
            ip = str(ipaddress.ip_address(name))
            if ip not in ips:
                ips.append(ip)
        except ValueError:
            if name not in dns:
                dns.append(name)
    return dns, ips


def _certs(ca: CertAuthority) -> list[str]:
    return [c.decode() for c in ca.trusted_tls_certs()]


def _trusted(host: CertAuthority, user: CertAuthority) -> dict[str, list[str]]:
    """What a certificate holder is told to trust (both keys of a CA while it rotates): the host
    CA certs (TLS) and keys (SSH known_hosts), and the user CA keys (SSH)."""
    return {
        "host_ca_certs": _certs(host),
        "host_ca_keys": host.trusted_ssh_public_keys(),
        "user_ca_keys": user.trusted_ssh_public_keys(),
    }
