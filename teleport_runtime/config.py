"""The one configuration loader: ``teleport.yaml`` plus command-line flags -> a validated Config.

Every error names the file, the key and the expected value, so ``teleport configure --test FILE``
and ``teleport start`` fail before anything starts.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from teleport_runtime.ca.pin import normalize_pin
from teleport_runtime.durations import parse_duration
from teleport_runtime.errors import BadParameter, ConfigError
from teleport_runtime.names import check_host_name

# Addresses live in netaddr; these names stay importable from here for the modules that load a Config.
from teleport_runtime.netaddr import EVERY_IPV4
from teleport_runtime.netaddr import HostPort as HostPort
from teleport_runtime.netaddr import is_ipv6 as is_ipv6
from teleport_runtime.netaddr import parse_host_port as parse_host_port

DEFAULT_CONFIG_PATH = "/etc/teleport.yaml"
DEFAULT_DATA_DIR = "/var/lib/teleport"
AUTH_PORT = 3025
NODE_SSH_PORT = 3022
PROXY_SSH_PORT = 3023
PROXY_WEB_PORT = 3080
DEFAULT_PRESENCE_TTL = timedelta(minutes=10)
#: SSH flow control for session data and the proxy's channels to nodes: a receive window and a
#: largest data packet above asyncssh's defaults (2 MiB, 32 KiB), since each packet costs a fixed
#: Python overhead on every hop. The proxy's channels take a packet of the node's size plus its
#: SSH framing (``SSH_PACKET_FRAMING``), so that a tsh connection to a node, which travels inside
#: a proxy channel, is not split into a full packet and a tiny one at the proxy.
SSH_WINDOW = 4 * 1024 * 1024
SSH_MAX_PACKET = 64 * 1024
SSH_PACKET_FRAMING = 1024
TOKEN_ROLES = ("auth", "proxy", "node")
SERVICE_ROLES = ("auth", "proxy", "node")
RECORDING_MODES = ("node", "node-sync", "proxy", "proxy-sync", "off")
#: Shortest static join token: a static token never expires, so it must not be guessable.
MIN_STATIC_TOKEN = 16
LABEL_KEY = re.compile(r"[a-zA-Z0-9/.\-_]+")

_KNOWN_KEYS: dict[str, set[str]] = {
    "": {"version", "teleport", "auth_service", "ssh_service", "proxy_service"},
    "teleport": {
        "nodename", "data_dir", "auth_token", "ca_pin", "auth_servers", "auth_server",
        "diag_addr", "log", "storage", "advertise_ip",
    },
    "auth_service": {
        "enabled", "listen_addr", "cluster_name", "public_addr", "tokens",
        "session_recording", "presence_ttl", "ca_key_encryption_key_file",
    },
    "ssh_service": {"enabled", "listen_addr", "public_addr", "labels", "commands", "enhanced_recording"},
    "proxy_service": {
        "enabled", "listen_addr", "web_listen_addr", "public_addr", "ssh_public_addr",
    },
}


#: Bound on an enhanced recording ring buffer (pages): 256 MiB.
MAX_BUFFER_PAGES = 65536


@dataclass(frozen=True)
class EnhancedRecordingConfig:
    """``ssh_service.enhanced_recording`` (BPF enhanced session recording, node/bpf.py): buffer
    sizes are in pages (4 KiB)."""

    enabled: bool = False
    command_buffer_size: int = 8
    disk_buffer_size: int = 128
    network_buffer_size: int = 8


def parse_enhanced_recording(value: Any, where: str = "ssh_service.enhanced_recording") -> EnhancedRecordingConfig:
    """Validate ``ssh_service.enhanced_recording`` (None: off, the defaults)."""
    if value is None:
        return EnhancedRecordingConfig()
    if not isinstance(value, dict):
        raise BadParameter(f"{where}: expected a mapping such as {{enabled: true, command_buffer_size: 8}}")
    known = ("enabled", "command_buffer_size", "disk_buffer_size", "network_buffer_size")
    for key in value:
        if key not in known:
            raise BadParameter(f"{where}: unknown field {key!r}: expected one of {', '.join(known)}")
    enabled = value.get("enabled", False)
    if not isinstance(enabled, bool):
        raise BadParameter(f"{where}.enabled: expected true or false, got {enabled!r}")
    defaults = EnhancedRecordingConfig()
    sizes: dict[str, int] = {}
    for key in known[1:]:
        pages = value.get(key, getattr(defaults, key))
        if (isinstance(pages, bool) or not isinstance(pages, int) or pages < 1 or pages > MAX_BUFFER_PAGES
                or pages & (pages - 1)):
            raise BadParameter(
                f"{where}.{key}: expected a number of 4 KiB pages that is a power of two from 1 to "
                f"{MAX_BUFFER_PAGES} (such as {getattr(defaults, key)}), got {pages!r}"
            )
        sizes[key] = pages
    return EnhancedRecordingConfig(enabled=enabled, **sizes)


@dataclass(frozen=True)
class StaticToken:
    """A token from ``auth_service.tokens``: never expires."""

    roles: tuple[str, ...]
    value: str


@dataclass(frozen=True)
class CommandLabel:
    """A dynamic label: ``command`` run without a shell every ``period``; value = trimmed stdout."""

    name: str
    command: tuple[str, ...]
    period: timedelta


@dataclass
class AuthConfig:
    enabled: bool = False
    listen_addr: HostPort = field(default_factory=lambda: HostPort(EVERY_IPV4, AUTH_PORT))
    cluster_name: str = ""
    public_addr: list[str] = field(default_factory=list)
    static_tokens: list[StaticToken] = field(default_factory=list)
    session_recording: str = "node"
    presence_ttl: timedelta = DEFAULT_PRESENCE_TTL
    #: The key-encryption key for the CA private keys in the backend (teleport_runtime/ca/keywrap.py).
    ca_key_encryption_key_file: Path | None = None


@dataclass
class SSHConfig:
    enabled: bool = False
    listen_addr: HostPort = field(default_factory=lambda: HostPort(EVERY_IPV4, NODE_SSH_PORT))
    public_addr: HostPort | None = None
    labels: dict[str, str] = field(default_factory=dict)
    commands: list[CommandLabel] = field(default_factory=list)
    enhanced_recording: EnhancedRecordingConfig = field(default_factory=EnhancedRecordingConfig)


@dataclass
class ProxyConfig:
    enabled: bool = False
    listen_addr: HostPort = field(default_factory=lambda: HostPort(EVERY_IPV4, PROXY_SSH_PORT))
    web_listen_addr: HostPort = field(
        default_factory=lambda: HostPort(EVERY_IPV4, PROXY_WEB_PORT)
    )
    public_addr: HostPort | None = None
    ssh_public_addr: HostPort | None = None


@dataclass
class Config:
    """Everything ``teleport start`` needs, validated."""

    nodename: str = field(default_factory=socket.gethostname)
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    auth_token: str | None = None
    ca_pins: list[str] = field(default_factory=list)
    auth_servers: list[HostPort] = field(default_factory=list)
    diag_addr: HostPort | None = None
    advertise_ip: str | None = None
    log_severity: str = "INFO"
    storage: dict[str, Any] = field(default_factory=lambda: {"type": "sqlite"})
    auth: AuthConfig = field(default_factory=AuthConfig)
    ssh: SSHConfig = field(default_factory=SSHConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    source: str = "command line"

    @property
    def roles(self) -> list[str]:
        """The services this process runs, in start order."""
        return [
            name
            for name, svc in (("auth", self.auth), ("proxy", self.proxy), ("node", self.ssh))
            if svc.enabled
        ]

    def auth_addresses(self) -> list[HostPort]:
        """Where this host's agents and tctl reach the auth API."""
        if self.auth_servers:
            return self.auth_servers
        if self.auth.enabled:
            return [self.auth.listen_addr.dialable()]
        return []


def _yaml_type(value: Any) -> str:
    return {dict: "a mapping", list: "a list", bool: "a boolean", type(None): "nothing"}.get(
        type(value), type(value).__name__
    )


class _Reader:
    """Walks the YAML tree, remembering the path so errors name the key and the file."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {problem}")

    def section(self, data: dict[str, Any], key: str) -> dict[str, Any]:
        value = data.get(key) or {}
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a mapping, got {type(value).__name__}")
        self.check_keys(value, key)
        return value

    def check_keys(self, data: dict[str, Any], section: str) -> None:
        known = _KNOWN_KEYS[section]
        for key in data:
            if key not in known:
                where = f"{section}.{key}" if section else str(key)
                raise self.fail(where, f"unknown key; expected one of: {', '.join(sorted(known))}")

    def boolean(self, data: dict[str, Any], key: str, where: str, default: bool) -> bool:
        value = data.get(key, default)
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("yes", "no", "true", "false"):
            return value.lower() in ("yes", "true")
        raise self.fail(f"{where}.{key}", f"expected true or false, got {value!r}")

    def addr(self, value: Any, where: str, default_port: int) -> HostPort:
        try:
            return parse_host_port(str(value), default_port, where)
        except BadParameter as exc:
            raise self.fail(where, exc.message) from exc

    def duration(self, value: Any, where: str) -> timedelta:
        try:
            return parse_duration(value)
        except BadParameter as exc:
            raise self.fail(where, exc.message) from exc

    def string(self, value: Any, where: str, example: str) -> str:
        """A one-line scalar (numbers are written as text, as YAML users expect)."""
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.fail(where, f"expected a string such as {example}, got {_yaml_type(value)}")
        text = str(value)
        if not text.strip() or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
            raise self.fail(where, f"expected a string such as {example} on one line, got {text!r}")
        return text

    def string_list(self, value: Any, where: str) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise self.fail(where, "expected a string or a list of strings")


def parse_labels(text: str, where: str = "--labels") -> dict[str, str]:
    """``k=v,k2=v2`` -> dict; raises BadParameter naming the bad pair."""
    labels: dict[str, str] = {}
    # Spaces around pairs are forgiven; other whitespace (a newline) is refused with the value.
    for pair in filter(None, (p.strip(" ") for p in text.split(","))):
        key, sep, value = pair.partition("=")
        if not sep:
            raise BadParameter(f"{where}: {pair!r} is not key=value, such as env=prod,role=db")
        key = key.strip(" ")
        if key in labels:
            raise BadParameter(f"{where}: label {key!r} is given twice in {text!r}")
        labels[key] = value.strip(" ")
    validate_labels(labels, where)
    return labels


#: The longest label key and value (node listings print them; heartbeats carry them).
MAX_LABEL_LENGTH = 256


def validate_labels(labels: dict[str, Any], where: str) -> dict[str, str]:
    """Check label keys and values; returns the labels with string values (numbers and booleans
    as text, nothing as an empty value)."""
    out = {}
    for key, value in labels.items():
        if not isinstance(key, str) or len(key) > MAX_LABEL_LENGTH or not LABEL_KEY.fullmatch(key):
            raise BadParameter(
                f"{where}: invalid label key {key!r}: use up to {MAX_LABEL_LENGTH} letters, digits and / . - _"
            )
        if isinstance(value, dict | list):
            raise BadParameter(f"{where}: label {key!r} has a {type(value).__name__} as its value: use a string")
        text = "" if value is None else str(value)
        if len(text) > MAX_LABEL_LENGTH or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
            raise BadParameter(
                f"{where}: label {key!r} has an invalid value {text[:40]!r}: use up to "
                f"{MAX_LABEL_LENGTH} characters on one line"
            )
        out[key] = text
    return out


def validate_pin(pin: str, where: str = "--ca-pin") -> str:
    """Normalise and check a CA pin's syntax."""
    try:
        return normalize_pin(pin)
    except BadParameter:
        raise BadParameter(
            f"{where}: invalid CA pin {pin!r}: expected sha256:<64 hex digits> "
            "as printed by `tctl status` on the auth server"
        ) from None


def read_token(value: str, where: str) -> str:
    """A token value, or the contents of the file it names (an absolute path)."""
    if value.startswith("/"):
        try:
            content = Path(value).read_text().strip()
        except OSError as exc:
            raise BadParameter(f"{where}: cannot read token file {value}: {exc.strerror}") from exc
        except (ValueError, UnicodeError) as exc:  # a NUL in the path, a binary file
            raise BadParameter(f"{where}: cannot read token file {value!r}: {exc}") from exc
        if not content:
            raise BadParameter(f"{where}: token file {value} is empty")
        return content
    return value.strip()


def parse_static_token(spec: str, where: str) -> StaticToken:
    """``"proxy,node:secret-value"`` or ``"auth:/path/to/tokenfile"``."""
    roles_text, sep, value = spec.partition(":")
    if not sep or not value:
        raise BadParameter(f"{where}: {spec!r}: expected \"role[,role]:value-or-/path\"")
    roles = tuple(r.strip().lower() for r in roles_text.split(",") if r.strip())
    for role in roles:
        if role not in TOKEN_ROLES:
            raise BadParameter(
                f"{where}: unknown role {role!r} in {spec!r}; expected one of {', '.join(TOKEN_ROLES)}"
            )
    return StaticToken(roles=roles, value=read_token(value, where))


def load_config_file(path: str | Path, check: bool = True) -> Config:
    """Read and validate a teleport.yaml. ``check=False`` skips the cross-field checks, for
    callers that apply command-line flags (such as ``--auth-server``) and validate after."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {source}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    return config_from_dict(data, source, check)


def config_from_dict(
    data: dict[str, Any], source: str = "config", check: bool = True
) -> Config:
    """Validate a parsed teleport.yaml mapping."""
    r = _Reader(source)
    r.check_keys(data, "")
    version = data.get("version", "v1")
    if version not in ("v1", "v2", "v3"):
        raise r.fail("version", f"unsupported version {version!r}; expected v1")
    cfg = Config(source=source)
    tp = r.section(data, "teleport")
    try:
        if "nodename" in tp:
            cfg.nodename = r.string(tp["nodename"], "teleport.nodename", "node1")
        if "data_dir" in tp:
            cfg.data_dir = Path(r.string(tp["data_dir"], "teleport.data_dir", "/var/lib/teleport"))
        if tp.get("auth_token"):
            cfg.auth_token = read_token(
                r.string(tp["auth_token"], "teleport.auth_token", "a token or /path/to/token.file"),
                "teleport.auth_token",
            )
        cfg.ca_pins = [
            validate_pin(p, "teleport.ca_pin")
            for p in r.string_list(tp.get("ca_pin"), "teleport.ca_pin")
        ]
        servers = r.string_list(tp.get("auth_servers"), "teleport.auth_servers")
        servers += r.string_list(tp.get("auth_server"), "teleport.auth_server")
        cfg.auth_servers = [r.addr(s, "teleport.auth_servers", AUTH_PORT) for s in servers]
        if tp.get("diag_addr"):
            cfg.diag_addr = r.addr(tp["diag_addr"], "teleport.diag_addr", 3000)
        if tp.get("advertise_ip"):
            cfg.advertise_ip = r.string(tp["advertise_ip"], "teleport.advertise_ip", "10.0.0.5")
            try:
                ipaddress.ip_address(cfg.advertise_ip)
            except ValueError:
                raise r.fail(
                    "teleport.advertise_ip", f"{cfg.advertise_ip!r} is not an IP address such as 10.0.0.5"
                ) from None
        log = tp.get("log") or {}
        if not isinstance(log, dict):
            raise r.fail("teleport.log", "expected a mapping with output and severity")
        severity = r.string(log.get("severity", "INFO"), "teleport.log.severity", "INFO").upper()
        if severity not in ("DEBUG", "INFO", "WARN", "WARNING", "ERROR"):
            raise r.fail("teleport.log.severity", f"{severity!r}: expected DEBUG, INFO, WARN or ERROR")
        cfg.log_severity = "WARNING" if severity == "WARN" else severity
        storage = tp.get("storage") or {"type": "sqlite"}
        if not isinstance(storage, dict):
            raise r.fail("teleport.storage", "expected a mapping such as {type: sqlite}")
        # sqlite (default) or postgresql: the backend package owns the rules (imported here: tsh
        # reads this module and needs none of it)
        from teleport_runtime.backend import check_storage_config

        try:
            cfg.storage = check_storage_config(storage)
        except ConfigError as exc:
            raise ConfigError(f"{r.source}: {exc.message}") from None

        sections = [k for k in ("auth_service", "ssh_service", "proxy_service") if k in data]
        all_on = not sections  # a file with no service sections runs all three

        auth = r.section(data, "auth_service")
        cfg.auth.enabled = r.boolean(auth, "enabled", "auth_service", all_on or bool(auth))
        if "listen_addr" in auth:
            cfg.auth.listen_addr = r.addr(auth["listen_addr"], "auth_service.listen_addr", AUTH_PORT)
        if auth.get("cluster_name"):
            cfg.auth.cluster_name = r.string(auth["cluster_name"], "auth_service.cluster_name", "example.com")
        cfg.auth.public_addr = r.string_list(auth.get("public_addr"), "auth_service.public_addr")
        for index, public in enumerate(cfg.auth.public_addr):  # each a host or host:port
            r.addr(public, f"auth_service.public_addr[{index}]", AUTH_PORT)
        cfg.auth.static_tokens = [
            parse_static_token(t, "auth_service.tokens")
            for t in r.string_list(auth.get("tokens"), "auth_service.tokens")
        ]
        mode = r.string(auth.get("session_recording", "node"), "auth_service.session_recording", "node")
        if mode not in RECORDING_MODES:
            raise r.fail(
                "auth_service.session_recording",
                f"{mode!r}: expected one of {', '.join(RECORDING_MODES)}",
            )
        cfg.auth.session_recording = mode
        if "presence_ttl" in auth:
            cfg.auth.presence_ttl = r.duration(auth["presence_ttl"], "auth_service.presence_ttl")
        if auth.get("ca_key_encryption_key_file"):
            cfg.auth.ca_key_encryption_key_file = Path(r.string(
                auth["ca_key_encryption_key_file"], "auth_service.ca_key_encryption_key_file",
                "/etc/teleport/ca-kek"))

        ssh = r.section(data, "ssh_service")
        cfg.ssh.enabled = r.boolean(ssh, "enabled", "ssh_service", all_on or bool(ssh))
        if "listen_addr" in ssh:
            cfg.ssh.listen_addr = r.addr(ssh["listen_addr"], "ssh_service.listen_addr", NODE_SSH_PORT)
        if ssh.get("public_addr"):
            cfg.ssh.public_addr = r.addr(ssh["public_addr"], "ssh_service.public_addr", NODE_SSH_PORT)
        labels = ssh.get("labels") or {}
        if not isinstance(labels, dict):
            raise r.fail("ssh_service.labels", "expected a mapping of label keys to values")
        cfg.ssh.labels = validate_labels(labels, "ssh_service.labels")
        cfg.ssh.commands = _command_labels(r, ssh.get("commands") or [])
        cfg.ssh.enhanced_recording = parse_enhanced_recording(ssh.get("enhanced_recording"))

        proxy = r.section(data, "proxy_service")
        cfg.proxy.enabled = r.boolean(proxy, "enabled", "proxy_service", all_on or bool(proxy))
        if "listen_addr" in proxy:
            cfg.proxy.listen_addr = r.addr(
                proxy["listen_addr"], "proxy_service.listen_addr", PROXY_SSH_PORT
            )
        if "web_listen_addr" in proxy:
            cfg.proxy.web_listen_addr = r.addr(
                proxy["web_listen_addr"], "proxy_service.web_listen_addr", PROXY_WEB_PORT
            )
        if proxy.get("public_addr"):
            cfg.proxy.public_addr = r.addr(
                proxy["public_addr"], "proxy_service.public_addr", PROXY_WEB_PORT
            )
        if proxy.get("ssh_public_addr"):
            cfg.proxy.ssh_public_addr = r.addr(
                proxy["ssh_public_addr"], "proxy_service.ssh_public_addr", PROXY_SSH_PORT
            )
    except BadParameter as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{source}: {exc.message}") from exc
    if check:
        validate(cfg)
    return cfg


def _command_labels(r: _Reader, items: Any) -> list[CommandLabel]:
    if not isinstance(items, list):
        raise r.fail("ssh_service.commands", "expected a list of {name, command, period}")
    out = []
    for i, item in enumerate(items):
        where = f"ssh_service.commands[{i}]"
        if not isinstance(item, dict) or not item.get("name") or not item.get("command"):
            raise r.fail(where, "expected {name: NAME, command: [prog, args...], period: 1h}")
        name = r.string(item["name"], f"{where}.name", "arch")
        try:
            validate_labels({name: ""}, f"{where}.name")
        except BadParameter as exc:
            raise r.fail(f"{where}.name", exc.message) from exc
        command = item["command"]
        if isinstance(command, str):
            command = command.split()
        if not isinstance(command, list) or not command:
            raise r.fail(f"{where}.command", "expected a list: [program, arg, ...] (no shell)")
        period = r.duration(item.get("period", "1h"), f"{where}.period")
        out.append(
            CommandLabel(
                name=name,
                command=tuple(str(c) for c in command),
                period=max(period, timedelta(seconds=1)),  # floored to 1 s as in the reference
            )
        )
    return out


def validate(cfg: Config) -> None:
    """Cross-field checks that apply whatever the source."""
    if not cfg.roles:
        raise ConfigError(
            f"{cfg.source}: no service is enabled; enable auth_service, proxy_service or "
            "ssh_service, or pass --roles=node,proxy,auth"
        )
    if not cfg.auth.enabled and not cfg.auth_servers:
        raise ConfigError(
            f"{cfg.source}: teleport.auth_servers is empty: a {'/'.join(cfg.roles)} service must "
            "know where the auth service is (--auth-server=HOST:3025)"
        )
    if cfg.auth.presence_ttl < timedelta(seconds=1):
        raise ConfigError(f"{cfg.source}: auth_service.presence_ttl must be at least 1s")
    try:
        check_host_name(cfg.nodename, "teleport.nodename")
    except BadParameter as exc:
        raise ConfigError(f"{cfg.source}: {exc.message} (or pass --nodename=NAME)") from None
    for token in cfg.auth.static_tokens:
        if len(token.value) < MIN_STATIC_TOKEN:
            roles = ",".join(token.roles)
            raise ConfigError(
                f"{cfg.source}: auth_service.tokens: the static {roles} token is {len(token.value)} "
                f"characters long; a static token never expires and must have at least "
                f"{MIN_STATIC_TOKEN}: use a longer random value (such as `openssl rand -hex 16`), "
                f"best in the file form \"{roles}:/path/to/tokenfile\" that keeps it out of the config"
            )


def apply_flags(
    cfg: Config,
    *,
    roles: str | None = None,
    token: str | None = None,
    ca_pins: tuple[str, ...] = (),
    auth_servers: tuple[str, ...] = (),
    nodename: str | None = None,
    labels: str | None = None,
    data_dir: str | None = None,
    diag_addr: str | None = None,
    listen_ip: str | None = None,
) -> Config:
    """Command-line flags override the file, as in the reference."""
    source = cfg.source
    try:
        if roles is not None:
            wanted = [r.strip().lower() for r in roles.split(",") if r.strip()]
            for role in wanted:
                if role not in SERVICE_ROLES:
                    raise BadParameter(
                        f"--roles: unknown role {role!r}; expected a list of auth, proxy, node"
                    )
            cfg.auth.enabled = "auth" in wanted
            cfg.proxy.enabled = "proxy" in wanted
            cfg.ssh.enabled = "node" in wanted
        if token:
            cfg.auth_token = read_token(token, "--token")
        if ca_pins:
            cfg.ca_pins = [validate_pin(p) for p in ca_pins]
        if auth_servers:
            cfg.auth_servers = [parse_host_port(a, AUTH_PORT, "--auth-server") for a in auth_servers]
        if nodename:
            cfg.nodename = nodename
        if labels:
            cfg.ssh.labels.update(parse_labels(labels))
        if data_dir:
            cfg.data_dir = Path(data_dir)
        if diag_addr:
            cfg.diag_addr = parse_host_port(diag_addr, 3000, "--diag-addr")
        if listen_ip:
            ipaddress.ip_address(listen_ip)
            cfg.advertise_ip = cfg.advertise_ip or listen_ip
            cfg.auth.listen_addr = HostPort(listen_ip, cfg.auth.listen_addr.port)
            cfg.ssh.listen_addr = HostPort(listen_ip, cfg.ssh.listen_addr.port)
            cfg.proxy.listen_addr = HostPort(listen_ip, cfg.proxy.listen_addr.port)
            cfg.proxy.web_listen_addr = HostPort(listen_ip, cfg.proxy.web_listen_addr.port)
    except ValueError as exc:
        raise ConfigError(f"--listen-ip: {exc}") from exc
    except BadParameter as exc:
        raise ConfigError(exc.message) from exc
    cfg.source = source
    validate(cfg)
    return cfg


def default_config() -> Config:
    """The embedded default: all three services on this host (``teleport start`` alone)."""
    cfg = Config(source="defaults")
    cfg.auth.enabled = cfg.ssh.enabled = cfg.proxy.enabled = True
    return cfg


def load(path: str | None, check: bool = True) -> Config:
    """Load ``path``, or /etc/teleport.yaml when it exists, or the embedded default.

    ``check=False``: leave the cross-field checks to :func:`apply_flags` (``teleport start``,
    where ``--auth-server`` or ``--roles`` may complete a file that is not valid alone)."""
    if path:
        return load_config_file(path, check)
    if os.path.exists(DEFAULT_CONFIG_PATH):
        return load_config_file(DEFAULT_CONFIG_PATH, check)
    return default_config()


STARTER_CONFIG = """\
# teleport.yaml: a starter configuration. Every key is optional; defaults are shown.
version: v1
teleport:
  # nodename: the name this host registers with (default: its hostname)
  data_dir: /var/lib/teleport
  # First join only (nodes and proxies): a token value or a file holding it,
  # the CA pin printed by `tctl status`, and where the auth service listens.
  # auth_token: /var/lib/teleport/token
  # ca_pin: sha256:...
  # auth_servers: ["auth.example.com:3025"]
  diag_addr: 127.0.0.1:3000       # /healthz, /readyz, /metrics
  log:
    output: stderr
    severity: INFO
  storage:
    type: sqlite                  # <data_dir>/backend/sqlite.db
    # type: postgresql            # several auth servers on one database:
    # conn_string: postgresql://teleport@db.example.com:5432/teleport_backend?sslmode=verify-full&pool_max_conns=20
    # audit_events_uri: ["postgresql://teleport@db.example.com:5432/teleport_audit?sslmode=verify-full"]

auth_service:
  enabled: true
  listen_addr: 0.0.0.0:3025
  # cluster_name: example.com     # default: this host's hostname; cannot change later
  # tokens: ["proxy,node:a-long-random-secret-value", "auth:/path/to/tokenfile"]  # 16+ characters
  session_recording: node         # node | node-sync | proxy | proxy-sync | off
  presence_ttl: 10m
  # ca_key_encryption_key_file: /etc/teleport/ca-kek  # seals the CA keys in the backend; same file on every auth server

ssh_service:
  enabled: true
  listen_addr: 0.0.0.0:3022
  labels:
    env: example
  commands:
    - name: arch
      command: [uname, -m]
      period: 1h

proxy_service:
  enabled: true
  listen_addr: 0.0.0.0:3023       # SSH
  web_listen_addr: 0.0.0.0:3080   # HTTPS: login, discovery
  # public_addr: proxy.example.com:3080
"""
