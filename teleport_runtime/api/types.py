"""The bodies the auth API takes and returns, one dataclass each, with their JSON form
(:class:`~teleport_runtime.api.wire.Message`). A request class declares the fields it accepts
(``FIELDS``): types, required fields and sizes are checked where a request enters, before any
handler or service code sees it. Deeper rules (a role's spec, a token's characters, a
duration's syntax) stay with the service that owns them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from teleport_runtime.api.wire import Document, Field, Message

_KEY = Field("string", example="the PEM or OpenSSH public key", max_len=8192, ascii=True)
_SSH_KEY = Field("string", required=True, example="an OpenSSH public key", max_len=8192, ascii=True)
_TLS_KEY = Field("string", required=True, example="a PEM public key", max_len=8192, ascii=True)
_ADDRESSES = Field("strings", example='["10.0.0.5", "node1.example.com"]', max_len=256, max_items=64)
_NAME = Field("string", example='"alice"', max_len=256)
_NAMES = Field("strings", example='["access", "auditor"]', max_len=256, max_items=256)
_SECRET = Field("string", max_len=1024)
_OTP = Field("string", example='"123456"', max_len=64)
_TTL = Field("string", example='"8h"', max_len=64)


# ---------------------------------------------------------------------- CAs and host identities


@dataclass(frozen=True)
class PublicCAs(Message):
    """What anyone may see (``GET`` CA, no client certificate): the CA certs and public keys, for
    pinning and trust. Both keys of a CA are listed while it rotates."""

    cluster: str = ""
    host_ca_certs: tuple[str, ...] = ()
    host_ca_keys: tuple[str, ...] = ()
    user_ca_keys: tuple[str, ...] = ()
    user_ca_certs: tuple[str, ...] = ()


@dataclass(frozen=True)
class JoinRequest(Message):
    """What a joining host sends: the token, the role it asks for and its public keys."""

    FIELDS: ClassVar = {
        "token": Field("string", required=True, example="the value `tctl nodes add` printed", max_len=1024),
        "role": Field("string", required=True, example='"node" or "proxy"', max_len=32),
        "host_uuid": Field("string", required=True, example="a UUID", max_len=256),
        "nodename": Field("string", required=True, example='"node1"', max_len=256),
        "ssh_public_key": _SSH_KEY,
        "tls_public_key": _TLS_KEY,
        "addresses": _ADDRESSES,
    }

    token: str
    role: str
    host_uuid: str
    nodename: str
    ssh_public_key: str
    tls_public_key: bytes
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReregisterRequest(Message):
    """A joined host's new keys; who it is comes from its certificate, never from the body."""

    FIELDS: ClassVar = {"ssh_public_key": _SSH_KEY, "tls_public_key": _TLS_KEY, "addresses": _ADDRESSES}

    ssh_public_key: str
    tls_public_key: bytes
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class IssuedIdentity(Message):
    """A host's certificates (at join and re-registration) and what it is told to trust."""

    cluster: str
    ssh_cert: str
    tls_cert: str
    host_ca_certs: tuple[str, ...] = ()
    host_ca_keys: tuple[str, ...] = ()
    user_ca_keys: tuple[str, ...] = ()


# ---------------------------------------------------------------------- presence


@dataclass(frozen=True)
class HeartbeatReport(Message):
    """An agent's report of itself. ``rotation``: the CA rotation phases it applied, any shape
    (presence reads one it does not understand as standby)."""

    FIELDS: ClassVar = {
        "hostname": _NAME,
        "addr": Field("string", example='"10.0.0.5:3022"', max_len=512),
        "labels": Field("labels", example='{"env": "prod"}', max_len=1024),
        "cmd_labels": Field("labels", example='{"arch": "x86_64"}', max_len=1024),
        "version": Field("string", max_len=128),
        "web_addr": Field("string", example='"proxy.example.com:3080"', max_len=512),
        "ssh_addr": Field("string", example='"proxy.example.com:3023"', max_len=512),
    }

    hostname: str = ""
    addr: str = ""
    labels: dict[str, Any] = field(default_factory=dict)
    cmd_labels: dict[str, Any] = field(default_factory=dict)
    rotation: Any = None
    version: str = ""
    web_addr: str = ""
    ssh_addr: str = ""


@dataclass(frozen=True)
class HeartbeatAnswer(Message):
    """When to beat next, and the cluster settings agents follow."""

    heartbeat_interval: float = 5.0
    session_recording: str | None = None
    OMIT_NONE: ClassVar = frozenset({"session_recording"})


@dataclass(frozen=True)
class RotationView(Message):
    """A CA's rotation state, as ``tctl status``, the API and agents see it."""

    state: str = "standby"
    phase: str = "standby"
    mode: str = ""
    id: str = ""
    current_id: str | None = None
    started: str | None = None
    grace_period: Any = None
    schedule: dict[str, Any] = field(default_factory=dict)
    phase_changed: str | None = None
    last_rotated: str | None = None


@dataclass(frozen=True)
class NodeRecord(Message):
    """A host's presence record (a node or a proxy), from its last heartbeat."""

    id: str
    hostname: str
    addr: str = ""
    static_labels: dict[str, str] = field(default_factory=dict)
    command_labels: dict[str, str] = field(default_factory=dict)
    roles: tuple[str, ...] = ()
    rotation: dict[str, dict[str, str]] = field(default_factory=dict)
    version: str = ""
    web_addr: str = ""
    ssh_addr: str = ""
    last_heartbeat: str = ""
    expires: str = ""
    #: Static and command labels merged (command labels win), as listed.
    labels: dict[str, str] = field(default_factory=dict)
    #: ``teleport`` (a joined node service) or ``openssh`` (a registered sshd, no heartbeat).
    sub_kind: str = "teleport"


@dataclass(frozen=True)
class HostRemoved(Message):
    """``tctl nodes rm``: the host removed and how many of its keys are now locked."""

    removed: str
    nodename: str
    locked_keys: int = 0
    all_keys: bool = False
    #: ``openssh``: a registered sshd, deleted (no certificate of ours to lock).
    sub_kind: str = "teleport"


@dataclass(frozen=True)
class AuthorityState(Message):
    """What agents follow CA rotations with: both CAs' rotation views, the public CA material,
    the host CA cert that signs now (``signing["host_ca_cert"]``), and a ``revision`` that
    changes whenever either CA record changes (the watch compares it)."""

    revision: str
    rotation: dict[str, RotationView]
    cas: PublicCAs
    signing: dict[str, str]


@dataclass(frozen=True)
class RotateRequest(Message):
    FIELDS: ClassVar = {
        "mode": Field("string", example='"manual" or "auto"', max_len=32),
        "phase": Field("string", example='"init"', max_len=32),
        "grace_period": Field("duration", example='"30h"'),
    }

    mode: str = "auto"
    phase: str | None = None
    grace_period: str | int | float | None = None


@dataclass(frozen=True)
class CAStatus(Message):
    type: str
    created: str
    rotation: RotationView


@dataclass(frozen=True)
class ClusterStatus(Message):
    """``tctl status``."""

    cluster: str
    version: str
    ca_pins: tuple[str, ...]
    cas: tuple[CAStatus, ...]


# ---------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class TokenRequest(Message):
    FIELDS: ClassVar = {
        "ttl": Field("duration", example='"5m"'),
        "roles": Field("strings", example='["node", "proxy"]', max_len=32, max_items=8),
        "token": Field("string", example="a value of letters and digits", max_len=1024),
    }

    roles: tuple[str, ...] = ("node",)
    ttl: str | int | float | None = None
    token: str | None = None


@dataclass(frozen=True)
class TokenRecord(Message):
    """A join token; ``expires`` None for a static one (from the configuration)."""

    token: str
    roles: tuple[str, ...]
    expires: str | None = None
    static: bool = False


@dataclass(frozen=True)
class TokenCreated(Message):
    """A new token, with what a joining host needs besides it."""

    token: str
    roles: tuple[str, ...]
    expires: str | None = None
    static: bool = False
    ca_pins: tuple[str, ...] = ()
    auth_server: str = ""


@dataclass(frozen=True)
class Deleted(Message):
    """What a delete answers: the name of what is gone."""

    deleted: str


# ---------------------------------------------------------------------- roles and users


@dataclass(frozen=True)
class RoleUpsert(Message):
    FIELDS: ClassVar = {
        "role": Field("object", required=True, example="a role resource {kind: role, version: v1, ...}"),
        "force": Field("bool"),
    }

    role: dict[str, Any]
    force: bool = False


@dataclass(frozen=True)
class RoleSaved(Message):
    name: str
    existed: bool


@dataclass(frozen=True)
class UserAdd(Message):
    FIELDS: ClassVar = {
        "name": Field("string", required=True, example='"alice"', max_len=256),
        "roles": _NAMES, "logins": _NAMES,
    }

    name: str
    roles: tuple[str, ...] = ()
    logins: tuple[str, ...] = ()


@dataclass(frozen=True)
class UserUpdate(Message):
    """Each field given replaces the user's; None leaves it."""

    FIELDS: ClassVar = {"roles": _NAMES, "logins": _NAMES}

    roles: tuple[str, ...] | None = None
    logins: tuple[str, ...] | None = None


@dataclass(frozen=True)
class UserRecord(Message):
    """A user as ``tctl users ls`` shows it (no secrets)."""

    name: str
    roles: tuple[str, ...] = ()
    logins: tuple[str, ...] = ()
    status: str = ""
    created: str = ""


@dataclass(frozen=True)
class SignupToken(Message):
    """``tctl users add|reset``: the token the user signs up with."""

    user: str
    token: str
    expires: str


@dataclass(frozen=True)
class SignupInfo(Message):
    """What the sign-up page shows: the user and the TOTP secret to enrol, as a URI."""

    user: str
    otpauth_uri: str
    expires: str


@dataclass(frozen=True)
class SignupRequest(Message):
    FIELDS: ClassVar = {
        "token": Field("string", example="the token of the invitation", max_len=1024),
        "password": _SECRET, "otp": _OTP,
    }

    token: str = ""
    password: str = ""
    otp: str = ""


@dataclass(frozen=True)
class SignupDone(Message):
    user: str


@dataclass(frozen=True)
class LoginRequest(Message):
    """Password and TOTP, and the keys to sign (through the proxy)."""

    FIELDS: ClassVar = {
        "user": _NAME, "password": _SECRET, "otp": _OTP,
        "ssh_public_key": _KEY, "tls_public_key": _KEY, "ttl": _TTL,
        "remote_addr": Field("string", max_len=512),
    }

    user: str = ""
    password: str = ""
    otp: str = ""
    ssh_public_key: str = ""
    tls_public_key: str = ""
    ttl: str | None = None


@dataclass(frozen=True)
class UserCertRequest(Message):
    """``tctl auth sign --user``."""

    FIELDS: ClassVar = {"user": _NAME, "ssh_public_key": _KEY, "tls_public_key": _KEY, "ttl": _TTL}

    user: str = ""
    ssh_public_key: str = ""
    tls_public_key: str = ""
    ttl: str | None = None


@dataclass(frozen=True)
class UserCerts(Message):
    """A user's short-lived certificates and what to trust; ``tls_cert`` only when a TLS key
    was sent."""

    username: str
    cluster: str
    ssh_cert: str
    roles: tuple[str, ...] = ()
    logins: tuple[str, ...] = ()
    ttl_seconds: int = 0
    host_ca_certs: tuple[str, ...] = ()
    host_ca_keys: tuple[str, ...] = ()
    user_ca_keys: tuple[str, ...] = ()
    tls_cert: str | None = None
    OMIT_NONE: ClassVar = frozenset({"tls_cert"})


@dataclass(frozen=True)
class HostCertRequest(Message):
    """``tctl auth sign --host``: a host certificate for an OpenSSH node."""

    FIELDS: ClassVar = {
        "names": Field("strings", example='["host.example.com"]', max_len=256, max_items=64),
        "ssh_public_key": _KEY,
        "ttl": Field("duration", example='"24h"'),
    }

    names: tuple[str, ...] = ()
    ssh_public_key: str = ""
    ttl: str | int | float | None = None


@dataclass(frozen=True)
class HostCert(Message):
    ssh_cert: str


@dataclass(frozen=True)
class NodeUpsert(Message):
    """``tctl create`` of an OpenSSH node resource (``kind: node``, ``sub_kind: openssh``)."""

    FIELDS: ClassVar = {
        "resource": Field("object", required=True,
                          example="{kind: node, sub_kind: openssh, version: v2, metadata: {name}, spec: {addr}}"),
        "force": Field("bool"),
    }

    resource: dict[str, Any]
    force: bool = False


@dataclass(frozen=True)
class NodeSaved(Message):
    """The stored resource and ``created``, ``updated`` or ``unchanged``."""

    name: str
    result: str
    resource: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TargetHostCertRequest(Message):
    """A proxy terminating SSH for a registered node asks for a host certificate naming it."""

    FIELDS: ClassVar = {
        "node": Field("string", required=True, example='"web1"', max_len=253),
        "ssh_public_key": _SSH_KEY,
    }

    node: str
    ssh_public_key: str


@dataclass(frozen=True)
class SessionCertRequest(Message):
    """A proxy asks for the certificate of one session to an OpenSSH node: for the user whose
    certificate it holds (``user_ssh_cert``, checked again), one ``login``, one ``node``."""

    FIELDS: ClassVar = {
        "user_ssh_cert": Field("string", required=True, example='"ssh-ed25519-cert-v01@openssh.com AAAA..."',
                               max_len=16384),
        "login": Field("string", required=True, example='"root"', max_len=256),
        "node": Field("string", required=True, example='"web1"', max_len=253),
        "ssh_public_key": _SSH_KEY,
    }

    user_ssh_cert: str
    login: str
    node: str
    ssh_public_key: str


@dataclass(frozen=True)
class SessionCert(Message):
    ssh_cert: str
    ttl_seconds: int
    source_addresses: tuple[str, ...] = ()


# ---------------------------------------------------------------------- audit, recordings, sessions


@dataclass(frozen=True)
class AuditEvent(Document):
    """An audit event: ``event`` (the type) and the fields of its kind. Agents send theirs
    (checked by what their role may write, ``auth/audit.py``); the log answers with ``id``,
    ``time`` and ``code`` added."""

    FIELDS: ClassVar = {
        "event": Field("string", required=True, example='"session.start"', max_len=128),
        "id": Field("string", example="16 to 64 hex digits", max_len=64),
        "time": Field("string", example="an ISO 8601 time", max_len=64),
        "code": Field("string", example='"T2000I"', max_len=32),
    }

    fields: dict[str, Any]

    @property
    def event(self) -> str:
        return str(self.fields.get("event") or "")


@dataclass(frozen=True)
class RecordingMeta(Document):
    """A stored recording's metadata: the session fields of the cast's header (user, login,
    node, server_id...), the end fields of the node's manifest, ``size``, ``sha256``; with
    ``data_b64`` when downloaded as JSON."""

    fields: dict[str, Any]

    @property
    def session_id(self) -> str:
        return str(self.fields.get("session_id") or "")


@dataclass(frozen=True)
class RecordingStored(Message):
    """What an upload answers; ``duplicate`` for a retried upload of the same recording."""

    session_id: str
    size: int | None = None
    sha256: str | None = None
    stored_at: str | None = None
    duplicate: bool | None = None


@dataclass(frozen=True)
class StreamAppended(Message):
    session_id: str
    size: int


@dataclass(frozen=True)
class ActiveSession(Document):
    """A session in progress: ``id``, the node's fields (user, login, node...), ``server_id``,
    ``started``, ``expires``."""

    FIELDS: ClassVar = {
        "id": Field("string", example="the session UUID", max_len=128),
        "session_id": Field("string", example="the session UUID", max_len=128),
    }

    fields: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.fields.get("id") or self.fields.get("session_id") or "")


@dataclass(frozen=True)
class SessionEnded(Message):
    ended: str


@dataclass(frozen=True)
class RoleResource(Document):
    """A role as stored and edited (``{kind: role, version, metadata: {name}, spec}``); its rules
    are :func:`teleport_runtime.rbac.parse_role`'s to check."""

    fields: dict[str, Any]

    @property
    def name(self) -> str:
        metadata = self.fields.get("metadata")
        return str(metadata.get("name") or "") if isinstance(metadata, dict) else ""
