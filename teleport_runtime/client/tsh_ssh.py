"""tsh's SSH side (asyncssh): through the proxy to nodes, commands, shells, forwarding, SFTP.

Every connection goes to the proxy first (the user certificate, the proxy verified by the
cluster's host CA) and then to the node over a ``direct-tcpip`` channel (asyncssh ``tunnel=``),
the node verified by the host CA for the name the user typed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes.util
import os
import select
import signal
import termios
import threading
import tty
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from teleport_runtime.client.tsh_profile import Profile
from teleport_runtime.errors import AccessDenied, BadParameter, ConnectionProblem
from teleport_runtime.netaddr import format_host_port, split_fields

# On import, asyncssh looks for liboqs (for the sntrup761 hybrid key exchange) with
# ctypes.util.find_library, which runs ldconfig and then gcc: 25-40 ms of every tsh ssh/scp.
# tsh does not need it: our proxy and nodes offer mlkem768x25519, the post-quantum hybrid
# asyncssh takes from cryptography, and curve25519 otherwise. Only the liboqs lookup is skipped,
# and only while asyncssh is imported.
_find_library = ctypes.util.find_library
ctypes.util.find_library = lambda name: None if name in ("oqs", "liboqs") else _find_library(name)
try:
    import asyncssh
finally:
    ctypes.util.find_library = _find_library

CHUNK = 256 * 1024
#: AES-GCM first (AES instructions make it the cheapest per byte; tsh encrypts twice, once per
#: hop), then asyncssh's default ChaCha20-Poly1305 for peers without it.
CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com"]
NODE_PORT = 3022
CONNECT_TIMEOUT = 30.0
#: Exit status when the remote side ended without one (killed by a signal, connection lost).
NO_EXIT_STATUS = 255


@dataclass
class Credentials:
    """The stored key, certificate and trusted host CAs of a profile, ready for asyncssh."""

    key: asyncssh.SSHKey
    cert: asyncssh.SSHCertificate
    host_cas: list[asyncssh.SSHKey]

    @classmethod
    def load(cls, profile: Profile) -> Credentials:
        try:
            key = asyncssh.read_private_key(str(profile.key_path))
            cert = asyncssh.read_certificate(str(profile.cert_path))
        except (OSError, asyncssh.KeyImportError) as exc:
            raise BadParameter(
                f"cannot read your key or certificate ({exc}): run "
                f"`tsh login --proxy={profile.web_addr} --user={profile.user}`"
            ) from None
        host_cas = [asyncssh.import_public_key(k) for k in profile.host_ca_keys()]
        if not host_cas:
            raise BadParameter(
                f"no trusted host CA for cluster {profile.cluster} in {profile.known_hosts_path}: "
                f"run `tsh login --proxy={profile.web_addr} --user={profile.user}`"
            )
        return cls(key, cert, host_cas)

    def known_hosts(self) -> tuple[list[asyncssh.SSHKey], list[asyncssh.SSHKey], list[asyncssh.SSHKey]]:
        return ([], list(self.host_cas), [])

    def trust_host_cas(self, keys: list[str]) -> None:
        """Verify hosts with these host CA keys from now on (connections made after the call)."""
        self.host_cas = [asyncssh.import_public_key(k) for k in keys]


class HostNotVerified(AccessDenied):
    """The proxy or node presented no host certificate tsh can verify with its trusted host CAs
    for the name it dialled (an unknown CA, or a name the certificate does not list)."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.DisconnectError):
        return exc.reason
    if isinstance(exc, asyncssh.ChannelOpenError):
        return exc.reason
    return str(exc) or type(exc).__name__


async def _connect(
    host: str, port: int, username: str, creds: Credentials, **options: Any
) -> asyncssh.SSHClientConnection:
    """One hop with the user's certificate, verified against the cluster's host CAs only (no
    ssh_config, publickey auth, the preferred ciphers), within CONNECT_TIMEOUT."""
    return await asyncio.wait_for(
        asyncssh.connect(
            host,
            port,
            username=username,
            client_keys=[(creds.key, creds.cert)],
            known_hosts=creds.known_hosts(),
            config=[],
            preferred_auth="publickey",
            encryption_algs=CIPHERS,
            keepalive_interval=30,
            **options,
        ),
        CONNECT_TIMEOUT,
    )


async def connect_proxy(profile: Profile, creds: Credentials) -> asyncssh.SSHClientConnection:
    """The SSH connection to the proxy (the jump hop)."""
    try:
        return await _connect(profile.ssh_host, profile.ssh_port, profile.user, creds, agent_path=None)
    except asyncssh.HostKeyNotVerifiable as exc:
        raise HostNotVerified(
            f"the proxy at {profile.ssh_addr} did not present a host certificate from cluster "
            f"{profile.cluster} valid for {profile.ssh_host!r} ({exc.reason}); ask the admin to add "
            f"{profile.ssh_host} to proxy_service.public_addr / ssh_public_addr"
        ) from None
    except asyncssh.PermissionDenied:
        raise AccessDenied(
            f"the proxy at {profile.ssh_addr} refused your certificate: it may have expired or the "
            f"cluster's user CA changed; run `tsh login --proxy={profile.web_addr} --user={profile.user}`"
        ) from None
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise ConnectionProblem(f"cannot connect to the proxy at {profile.ssh_addr}: {_describe(exc)}") from None


class _BannerClient(asyncssh.SSHClient):
    """Keeps the authentication banner: a proxy terminating SSH for an OpenSSH node explains a
    refusal (roles, the node's host certificate) in one."""

    def __init__(self) -> None:
        self.banner = ""

    def auth_banner_received(self, msg: str, lang: str) -> None:
        self.banner += msg


async def connect_node(
    proxy: asyncssh.SSHClientConnection,
    profile: Profile,
    creds: Credentials,
    login: str,
    host: str,
    port: int = NODE_PORT,
    *,
    agent_forwarding: bool = False,
    display: str | None = None,
) -> asyncssh.SSHClientConnection:
    """An SSH connection to ``host`` through the proxy, as ``login``."""
    agent_path = None
    if agent_forwarding:
        agent_path = os.environ.get("SSH_AUTH_SOCK")
        if not agent_path:
            raise BadParameter("-A forwards your ssh-agent, but none is running (SSH_AUTH_SOCK is not set)")
    client = _BannerClient()
    try:
        return await _connect(
            host, port, login, creds, tunnel=proxy, agent_path=agent_path, agent_forwarding=agent_forwarding,
            client_factory=lambda: client,
        )
    except asyncssh.ChannelOpenError as exc:
        raise ConnectionProblem(f"cannot reach {host}: {exc.reason}") from None
    except asyncssh.HostKeyNotVerifiable as exc:
        raise HostNotVerified(
            f"{host} did not present a host certificate from cluster {profile.cluster} valid for "
            f"{host!r} ({exc.reason}); connect by the node's name or UUID as `tsh ls` shows it"
        ) from None
    except asyncssh.PermissionDenied:
        if client.banner.strip():
            said = client.banner.strip().removeprefix("teleport: ")
            raise AccessDenied(f"access denied to {login}@{host}: {said}") from None
        logins = cert_logins(creds)
        hint = (
            f"your certificate allows the logins {', '.join(logins)}"
            if logins else "your certificate allows no logins"
        )
        raise AccessDenied(
            f"access denied to {login}@{host}: the node refused the login ({hint}; your roles may not "
            f"allow {login!r} on this node, or the account does not exist there)"
        ) from None
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise ConnectionProblem(f"cannot connect to {host}: {_describe(exc)}") from None


def cert_logins(creds: Credentials) -> list[str]:
    principals = getattr(creds.cert, "principals", ()) or ()
    return [p for p in principals if not p.startswith("-teleport-nologin-")]


# ---------------------------------------------------------------------------- local I/O


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:  # someone made the shared descriptor non-blocking
            select.select([], [fd], [])
            continue
        view = view[written:]


class StdinPump:
    """Reads local stdin in a daemon thread (it works for terminals, pipes, files and
    /dev/null alike, and never puts the shared descriptor in non-blocking mode) and feeds
    the remote process; EOF is passed on."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int = 0) -> None:
        self.loop = loop
        self.fd = fd
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=16)
        self._thread = threading.Thread(target=self._read, name="tsh-stdin", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.fd, CHUNK)
            except OSError:
                data = b""
            fut = asyncio.run_coroutine_threadsafe(self.queue.put(data), self.loop)
            try:
                fut.result()
            except (Exception, asyncio.CancelledError):  # the loop is gone: tsh is exiting
                return
            if not data:
                return

    async def feed(self, writer: asyncssh.SSHWriter[bytes]) -> None:
        while True:
            data = await self.queue.get()
            if not data:
                with contextlib.suppress(Exception):
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()


async def _drain_to(reader: asyncssh.SSHReader[bytes], fd: int, prefix: bytes = b"") -> None:
    """Copy a remote stream to a local descriptor (optionally prefixing each line)."""
    pending = b""
    while True:
        data = await reader.read(CHUNK)
        if not data:
            break
        if prefix:
            pending += data
            *lines, pending = pending.split(b"\n")
            if lines:
                _write_all(fd, b"".join(prefix + line + b"\n" for line in lines))
        else:
            _write_all(fd, data)
    if prefix and pending:
        _write_all(fd, prefix + pending + b"\n")


def _exit_code(process: asyncssh.SSHClientProcess[bytes]) -> int:
    status = process.exit_status
    if status is None or status < 0:
        return NO_EXIT_STATUS
    return int(status)


async def run_command(
    conn: asyncssh.SSHClientConnection,
    command: str | None,
    *,
    pty: bool,
    stdin: bool = True,
    prefix: bytes = b"",
) -> int:
    """Run ``command`` (a shell when None), streaming stdin/stdout/stderr; returns the remote
    exit status. With ``pty`` the local terminal is put in raw mode (restored on exit) and
    window-size changes are sent to the node."""
    loop = asyncio.get_running_loop()
    term_type = term_size = None
    local_tty = pty and os.isatty(0)
    if pty:
        term_type = os.environ.get("TERM") or "xterm"
        term_size = _terminal_size()
    try:
        process = await conn.create_process(
            command,
            term_type=term_type,
            term_size=term_size,
            request_pty="force" if pty else False,
            encoding=None,
            env=_forwarded_env(),
        )
    except asyncssh.ChannelOpenError as exc:
        raise ConnectionProblem(f"the node refused the session: {exc.reason}") from None
    saved: list[Any] | None = None
    resize: Callable[[], None] | None = None
    if local_tty:
        saved = termios.tcgetattr(0)
        tty.setraw(0)

        def resize() -> None:
            size = _terminal_size()
            if size:
                process.change_terminal_size(*size)

        loop.add_signal_handler(signal.SIGWINCH, resize)
    pump_task = None
    try:
        if stdin:
            pump = StdinPump(loop)
            pump.start()
            pump_task = asyncio.ensure_future(pump.feed(process.stdin))
        else:
            process.stdin.write_eof()
        await asyncio.gather(
            _drain_to(process.stdout, 1, prefix),
            _drain_to(process.stderr, 2, prefix),
        )
        await process.wait_closed()
    finally:
        if pump_task is not None:
            pump_task.cancel()
            await asyncio.gather(pump_task, return_exceptions=True)
        if resize is not None:
            loop.remove_signal_handler(signal.SIGWINCH)
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
    return _exit_code(process)


def _terminal_size() -> tuple[int, int, int, int] | None:
    for fd in (0, 1, 2):
        try:
            size = os.get_terminal_size(fd)
        except OSError:
            continue
        return (size.columns, size.lines, 0, 0)
    return (80, 24, 0, 0)


def _forwarded_env() -> dict[str, str]:
    """Locale variables, like OpenSSH's default SendEnv."""
    return {k: v for k, v in os.environ.items() if k in ("LANG", "LANGUAGE") or k.startswith("LC_")}


async def local_forward(conn: asyncssh.SSHClientConnection, spec: str) -> asyncssh.SSHListener:
    """``-L [BIND:]LPORT:HOST:RPORT``: listen locally, forward through the node."""
    parts = split_fields(spec) or []
    if len(parts) == 3:
        bind, (lport, host, rport) = "127.0.0.1", parts
    elif len(parts) == 4:
        bind, lport, host, rport = parts
    else:
        raise BadParameter(
            f"-L {spec}: expected LPORT:HOST:RPORT or BIND:LPORT:HOST:RPORT (an IPv6 host in brackets, "
            "such as 8080:[::1]:80)"
        )
    try:
        return await conn.forward_local_port(bind, int(lport), host, int(rport))
    except ValueError:
        raise BadParameter(f"-L {spec}: ports must be numbers") from None
    except asyncssh.ChannelOpenError as exc:
        raise AccessDenied(f"-L {spec}: port forwarding refused: {exc.reason}") from None
    except OSError as exc:
        where = format_host_port(bind, int(lport))
        raise BadParameter(f"-L {spec}: cannot listen on {where}: {exc.strerror}") from None


async def close_all(*conns: asyncssh.SSHClientConnection | None) -> None:
    for conn in conns:
        if conn is not None:
            conn.close()
            with contextlib.suppress(Exception):
                await conn.wait_closed()

