"""``tsh``: the user's client. Log in through the proxy, list nodes, and reach them over SSH.

Everything goes through the proxy: HTTPS (3080) for login, sign-up and listing nodes, SSH (3023)
as the jump hop to the nodes. Keys and certificates live under ``$TELEPORT_HOME`` (default
``~/.tsh``, see :mod:`teleport_runtime.client.tsh_profile`).
"""

from __future__ import annotations

import asyncio
import getpass
import os
import sys
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from teleport_runtime.client.output import echo_json, table
from teleport_runtime.client.tsh_recordings import PLAY_FORMATS
from teleport_runtime.errors import AccessDenied, BadParameter, NotFound, TeleportError

# Each command imports what it needs where it runs: asyncssh (about a third of tsh's start-up)
# only for the commands that speak SSH, pyotp and segno only for login and sign-up, the recording
# code (which brings aiohttp) only for the recording commands. tests/tsh/test_cli_units.py checks
# that importing this module loads none of them.
if TYPE_CHECKING:
    import pyotp

    from teleport_runtime.client.tsh_profile import Profile, ProfileStore
    from teleport_runtime.client.tsh_ssh import Credentials
    from teleport_runtime.client.tsh_trust import HostCARefresh
    from teleport_runtime.client.tsh_web import ProxyWebClient
    from teleport_runtime.config import HostPort

T = TypeVar("T")
OTP_STEP_SUFFIX = ".last-step"  # beside a TOTP secret file: the last one-time-code step used
FORMATS = click.Choice(["text", "json"])
INSECURE_WARNING = (
    "WARNING: --insecure: the proxy's identity is not verified; a man-in-the-middle could read your "
    "password and one-time code. Prefer --ca-pin=sha256:... (printed by `tctl status`)."
)


def fail(message: str, code: int = 1) -> None:
    click.echo(f"ERROR: {message}", err=True)
    sys.exit(code)


def run(fn: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Run an async command; errors become one ``ERROR:`` line on stderr and exit status 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return asyncio.run(fn(*args, **kwargs))
        except TeleportError as exc:
            fail(exc.message)
        except KeyboardInterrupt:
            click.echo("", err=True)
            sys.exit(130)
        raise AssertionError("unreachable")

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Log in to a cluster and reach its nodes through the proxy.

    \b
    First login (verify the proxy with the CA pin `tctl status` prints):
      tsh login --proxy=proxy.example.com:3080 --user=alice --ca-pin=sha256:...
    Then:
      tsh ls env=prod
      tsh ssh root@node1 uptime
      tsh scp -r ./dir root@node1:/tmp
      tsh config >> ~/.ssh/config   # OpenSSH through the proxy

    Keys and certificates are kept in ~/.tsh ($TELEPORT_HOME overrides it).
    """


# ---------------------------------------------------------------------------- helpers


def _store() -> ProfileStore:
    from teleport_runtime.client.tsh_profile import ProfileStore

    return ProfileStore()


def _read_secret_file(path: str, what: str) -> str:
    try:
        value = Path(path).read_text().rstrip("\r\n")
    except OSError as exc:
        raise BadParameter(f"cannot read the {what} file {path}: {exc.strerror}") from None
    if not value:
        raise BadParameter(f"the {what} file {path} is empty")
    return value


def _totp_from_file(path: str) -> str:
    """A fresh code for the TOTP secret in ``path`` (base32, or an otpauth:// URI)."""
    import pyotp

    secret = _read_secret_file(path, "OTP secret").strip()
    try:
        otp = pyotp.parse_uri(secret) if secret.startswith("otpauth://") else pyotp.TOTP(secret)
        if not isinstance(otp, pyotp.TOTP):  # a counter-based (HOTP) URI has no current code
            raise ValueError("it is an otpauth://hotp URI; the cluster uses time-based codes (otpauth://totp)")
        otp.now()
    except (ValueError, TypeError) as exc:
        raise BadParameter(f"{path} does not hold a TOTP secret (base32 or otpauth:// URI): {exc}") from None
    return _fresh_totp_code(otp, path)


def _fresh_totp_code(totp: pyotp.TOTP, secret_file: str) -> str:
    """A code not used yet with this secret: the auth service accepts each code once, and the
    codes of the current and the next 30 s step; when both were used, wait for the next step.
    The last step used is kept beside the secret file (``FILE.last-step``), so every tsh home
    that reads the same secret file takes turns."""
    from teleport_runtime.durable import write_private

    state = Path(secret_file + OTP_STEP_SUFFIX)
    try:
        last = int(state.read_text().strip() or 0)
    except (OSError, ValueError):
        last = 0
    current = int(time.time() // totp.interval)
    if last >= current + 1:
        wait = last * totp.interval - time.time() + 0.5
        click.echo(f"Waiting {wait:.0f}s for a one-time code not used yet...", err=True)
        time.sleep(max(wait, 0))
        current = int(time.time() // totp.interval)
    step = max(current, last + 1)
    try:
        write_private(state, f"{step}\n")
    except OSError as exc:  # a read-only place: the code still works, only once per step
        click.echo(f"WARNING: cannot record the one-time code step in {state}: {exc.strerror}", err=True)
    return str(totp.at(step * totp.interval))


def _proxy_addr(text: str) -> HostPort:
    from teleport_runtime.client.tsh_profile import DEFAULT_WEB_PORT
    from teleport_runtime.config import parse_host_port

    addr = parse_host_port(text, DEFAULT_WEB_PORT, "--proxy")
    if not addr.host:
        raise BadParameter("--proxy: expected HOST[:PORT], such as proxy.example.com:3080")
    return addr


async def _connect_web(
    addr: HostPort, pins: tuple[str, ...], insecure: bool
) -> tuple[ProxyWebClient, dict[str, Any]]:
    """A verified web client for ``addr`` and its ping answer (see tsh_web for the rules)."""
    from teleport_runtime.client.tsh_web import ProxyWebClient, first_contact, insecure_context, trusting_context

    if pins:
        ping, certs = await first_contact(addr, list(pins))
        return ProxyWebClient(addr, trusting_context(certs), str(ping.get("cluster") or "")), ping
    if insecure:
        click.echo(INSECURE_WARNING, err=True)
        client = ProxyWebClient(addr, insecure_context(), verify_proxy=False)
        return client, await client.get("/webapi/ping")
    stored = _store().trusted_cas(addr.host)
    if stored is None:
        raise AccessDenied(
            f"first contact with the proxy {addr}: tsh cannot verify it yet. Pass "
            f"--ca-pin=sha256:... (the pin `tctl status` prints on the auth server) to verify it, "
            f"or --insecure to skip the check (man-in-the-middle risk)"
        )
    cluster, certs = stored
    client = ProxyWebClient(addr, trusting_context(certs), cluster)
    return client, await client.get("/webapi/ping")


def _user_web_client(profile: Profile) -> ProxyWebClient:
    from teleport_runtime.client.tsh_web import ProxyWebClient, trusting_context

    try:
        cert, key = profile.x509_path.read_bytes(), profile.x509_key_path.read_bytes()
    except FileNotFoundError:
        raise NotFound(
            f"no X.509 certificate for {profile.user}: run "
            f"`tsh login --proxy={profile.web_addr} --user={profile.user}`"
        ) from None
    ctx = trusting_context(profile.host_ca_certs(), cert, key)
    return ProxyWebClient(profile.web_addr, ctx, profile.cluster)


def _refresh_now(profile: Profile) -> None:
    """Keep the trusted host CAs current (tsh_trust) for a command that does not connect
    anywhere itself; warns when the proxy is no longer verifiable."""
    from teleport_runtime.client.tsh_trust import refresh_host_cas, untrusted_warning

    warning = untrusted_warning(profile, refresh_host_cas(_store(), profile))
    if warning:
        click.echo(warning, err=True)


def _start_refresh(profile: Profile) -> HostCARefresh:
    """Start keeping the trusted host CAs current beside an SSH command (tsh_trust), before the
    SSH code is imported: the ping's TLS round trip to the proxy overlaps with that import (about
    a third of the command's time) instead of with the SSH handshakes. The caller sets
    ``on_learned`` once its credentials are loaded, before its first ``await``: the answer is
    handled on the event loop, so not before then."""
    from teleport_runtime.client.tsh_trust import HostCARefresh

    return HostCARefresh(_store(), profile).start()


def _active_profile() -> Profile:
    """The current profile with an unexpired certificate; AccessDenied naming the fix otherwise."""
    profile = _store().load()
    expires = profile.expires()
    if expires is not None and expires <= datetime.now(UTC):
        raise AccessDenied(
            f"your certificate for {profile.user}@{profile.proxy_host} expired at "
            f"{_format_time(expires)}: run `tsh login --proxy={profile.web_addr} --user={profile.user}`"
        )
    return profile


def _format_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _status_lines(profile: Profile) -> tuple[list[str], bool]:
    from teleport_runtime.durations import format_duration

    info = profile.cert_info()
    now = datetime.now(UTC)
    expired = info.valid_before is not None and info.valid_before <= now
    if info.valid_before is None:
        valid = "never expires"
    elif expired:
        valid = f"{_format_time(info.valid_before)} [EXPIRED]"
    else:
        left = info.valid_before - now
        valid = f"{_format_time(info.valid_before)} [valid for {format_duration(left)}]"
    rows = [
        ("Proxy:", f"{profile.web_addr}"),
        ("User:", profile.user),
        ("Cluster:", profile.cluster),
        ("Roles:", ", ".join(info.roles) or "none"),
        ("Logins:", ", ".join(info.logins) or "none"),
        ("Valid until:", valid),
    ]
    lines = [f"{'>' if i == 0 else ' '} {k:<13} {v}" for i, (k, v) in enumerate(rows)]
    return lines, expired


def _status_json(profile: Profile) -> dict[str, Any]:
    info = profile.cert_info()
    return {
        "proxy": str(profile.web_addr),
        "ssh_proxy": str(profile.ssh_addr),
        "user": profile.user,
        "cluster": profile.cluster,
        "roles": info.roles,
        "logins": info.logins,
        "valid_until": info.valid_before.isoformat() if info.valid_before else None,
        "expired": bool(info.valid_before and info.valid_before <= datetime.now(UTC)),
    }


# ---------------------------------------------------------------------------- login / logout


@cli.command()
@click.option("--proxy", "proxy", required=True, help="The proxy's web address HOST[:3080].")
@click.option("--user", default=lambda: getpass.getuser(), show_default="local user name",
              help="Your Teleport user name.")
@click.option("--ttl", help="Certificate lifetime such as 8h (default 12h, capped by your roles).")
@click.option("--ca-pin", "ca_pins", multiple=True,
              help="sha256:... pin of the cluster's host CA (`tctl status`); verifies the proxy on "
                   "first contact. Repeatable (during a CA rotation).")
@click.option("--insecure", is_flag=True, help="Do not verify the proxy (first contact without a pin).")
@click.option("--password-file", type=click.Path(dir_okay=False),
              help="Read the password from this file instead of prompting (automation).")
@click.option("--otp-secret-file", type=click.Path(dir_okay=False),
              help="Compute the one-time code from the TOTP secret in this file (base32 or otpauth:// "
                   "URI, as `tsh signup --otp-secret-out` writes it) instead of prompting.")
@run
async def login(proxy: str, user: str, ttl: str | None, ca_pins: tuple[str, ...], insecure: bool,
                password_file: str | None, otp_secret_file: str | None) -> None:
    """Log in with password and one-time code; keeps a key and certificates in ~/.tsh.

    \b
    Interactive: prompts for the password and the code from your authenticator app.
    Non-interactive (scripts, CI):
      tsh login --proxy=HOST:3080 --user=NAME --password-file=FILE --otp-secret-file=FILE
    On the first login to a proxy, pass --ca-pin (or --insecure); later logins verify the proxy
    against the cluster CA stored then.
    """
    from teleport_runtime.ca import generate_ssh_keypair, generate_tls_keypair, parse_user_ssh_cert
    from teleport_runtime.client.tsh_profile import Profile
    from teleport_runtime.durations import parse_duration

    addr = _proxy_addr(proxy)
    if ttl:
        parse_duration(ttl)  # fail early on a typo
    client, ping = await _connect_web(addr, ca_pins, insecure)
    cluster = str(ping.get("cluster") or "")
    if not cluster:
        raise BadParameter(f"{addr} did not answer like a Teleport proxy (no cluster in /webapi/ping)")
    if password_file:
        password = _read_secret_file(password_file, "password")
    else:
        password = getpass.getpass(f"Enter password for Teleport user {user}: ")
    otp = _totp_from_file(otp_secret_file) if otp_secret_file else click.prompt("Enter your OTP token", err=True)
    ssh_key, ssh_public = generate_ssh_keypair()
    tls_key, tls_public = generate_tls_keypair()
    answer = await client.post(
        "/webapi/login",
        {"user": user, "password": password, "otp": str(otp).strip(), "ssh_public_key": ssh_public,
         "tls_public_key": tls_public.decode(), "ttl": ttl},
    )
    ssh_cert = str(answer.get("ssh_cert") or "")
    tls_cert = str(answer.get("tls_cert") or "")
    if not ssh_cert or not tls_cert:
        raise BadParameter("the proxy's login answer has no certificates: is the auth service up to date?")
    info = parse_user_ssh_cert(ssh_cert, answer.get("user_ca_keys") or None)
    if info.public_key.split()[:2] != ssh_public.split()[:2]:
        raise AccessDenied("the certificate the proxy returned is not for the key tsh sent")
    ssh_host, ssh_port = _ssh_proxy_addr(ping, addr)
    profile = Profile(
        proxy_host=addr.host, web_port=addr.port, ssh_host=ssh_host, ssh_port=ssh_port,
        user=str(answer.get("username") or user), cluster=str(answer.get("cluster") or cluster),
        home=_store().home,
    )
    _store().save_login(
        profile,
        ssh_key=ssh_key, ssh_public_key=ssh_public, ssh_cert=ssh_cert,
        tls_key=tls_key, tls_cert=tls_cert,
        host_ca_certs=list(answer.get("host_ca_certs") or ping.get("host_ca_certs") or []),
        host_ca_keys=list(answer.get("host_ca_keys") or []),
    )
    lines, _ = _status_lines(profile)
    click.echo("\n".join(lines))


def _ssh_proxy_addr(ping: dict[str, Any], web: HostPort) -> tuple[str, int]:
    """Where the proxy's SSH listener is, from the ping answer (a wildcard host: the web host)."""
    from teleport_runtime.client.tsh_profile import DEFAULT_SSH_PORT
    from teleport_runtime.netaddr import is_wildcard, parse_host_port

    text = str((ping.get("proxy") or {}).get("ssh_addr") or "")
    if not text:
        return web.host, DEFAULT_SSH_PORT
    addr = parse_host_port(text, DEFAULT_SSH_PORT, "proxy ssh_addr")
    host = web.host if is_wildcard(addr.host) else addr.host
    return host, addr.port


@cli.command()
@click.option("--proxy", help="Log out of this proxy only (default: every profile).")
def logout(proxy: str | None) -> None:
    """Delete your keys and certificates (the trusted cluster CA stays)."""
    try:
        host = _proxy_addr(proxy).host if proxy else None
        removed = _store().logout(host)
    except TeleportError as exc:
        fail(exc.message)
    if not removed:
        click.echo("Not logged in.")
    for profile in removed:
        click.echo(f"Logged out {profile.user} from {profile.proxy_host}.")


@cli.command()
@click.option("--format", "fmt", type=FORMATS, default="text", show_default=True)
def status(fmt: str) -> None:
    """Show who you are logged in as; exits 1 when not logged in or the certificate expired."""
    try:
        profile = _store().load()
        _refresh_now(profile)
        if fmt == "json":
            data = _status_json(profile)
            echo_json(data)
            expired = data["expired"]
        else:
            lines, expired = _status_lines(profile)
            click.echo("\n".join(lines))
    except TeleportError as exc:
        fail(exc.message)
    if expired:
        fail(f"the certificate has expired: run `tsh login --proxy={profile.web_addr} --user={profile.user}`")


# ---------------------------------------------------------------------------- signup


@cli.command()
@click.option("--proxy", "proxy", required=True, help="The proxy's web address HOST[:3080].")
@click.option("--token", required=True, help="The sign-up token from `tctl users add`.")
@click.option("--ca-pin", "ca_pins", multiple=True, help="sha256:... pin of the cluster's host CA.")
@click.option("--insecure", is_flag=True, help="Do not verify the proxy (first contact without a pin).")
@click.option("--password-file", type=click.Path(dir_okay=False),
              help="Read the new password from this file instead of prompting (automation).")
@click.option("--otp-secret-out", type=click.Path(dir_okay=False),
              help="Write the TOTP secret to this file (mode 0600) and confirm with a computed code, "
                   "instead of showing a QR code and prompting for a code; use it with "
                   "`tsh login --otp-secret-file`.")
@run
async def signup(proxy: str, token: str, ca_pins: tuple[str, ...], insecure: bool,
                 password_file: str | None, otp_secret_out: str | None) -> None:
    """Accept an invitation: set your password and enrol a TOTP authenticator.

    \b
    Interactive: shows the otpauth:// URI and a QR code for your authenticator app, asks for
    the password twice and a code. With --otp-secret-out the secret goes to a file instead.
    Non-interactive:
      tsh signup --proxy=HOST:3080 --token=TOKEN --password-file=FILE --otp-secret-out=FILE
    """
    import pyotp
    import segno

    from teleport_runtime.durable import write_private
    from teleport_runtime.urlpath import api_path

    addr = _proxy_addr(proxy)
    client, _ping = await _connect_web(addr, ca_pins, insecure)
    info = await client.get(api_path("/webapi/signup/{token}", token=token))
    user, uri = str(info.get("user") or ""), str(info.get("otpauth_uri") or "")
    try:
        totp = pyotp.parse_uri(uri)
    except (ValueError, TypeError):
        raise BadParameter("the proxy's sign-up answer has no valid otpauth:// URI") from None
    if not isinstance(totp, pyotp.TOTP):
        raise BadParameter("the proxy's sign-up answer is not a time-based otpauth://totp URI")
    if not otp_secret_out:
        click.echo(f"Signing up as {user}. Scan this QR code with your authenticator app:")
        segno.make(uri).terminal(compact=True)
        click.echo(f"or enter this URI: {uri}")
    if password_file:
        password = _read_secret_file(password_file, "password")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Confirm password: ") != password:
            raise BadParameter("the passwords do not match; run tsh signup again")
    if otp_secret_out:
        code = _fresh_totp_code(totp, otp_secret_out)
    else:
        code = click.prompt("One-time code from your authenticator", err=True)
    await client.post("/webapi/signup", {"token": token, "password": password, "otp": str(code).strip()})
    if otp_secret_out:
        write_private(Path(otp_secret_out), str(totp.secret) + "\n")
    pins = "".join(f" --ca-pin={pin}" for pin in ca_pins)
    click.echo(f"User {user} is ready. Log in with: tsh login --proxy={addr} --user={user}{pins}")


# ---------------------------------------------------------------------------- ls / config


def _parse_selector(args: tuple[str, ...] | list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for arg in args:
        for pair in filter(None, (p.strip() for p in arg.split(","))):
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise BadParameter(f"{pair!r} is not a label selector: expected key=value")
            labels[key.strip()] = value.strip()
    return labels


def _matches(node: dict[str, Any], selector: dict[str, str]) -> bool:
    labels = node.get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


async def _nodes(profile: Profile, selector: dict[str, str]) -> list[dict[str, Any]]:
    from teleport_runtime.client.tsh_trust import rotation_missed
    from teleport_runtime.client.tsh_web import UntrustedProxy

    try:
        nodes = await _user_web_client(profile).get("/webapi/nodes")
    except UntrustedProxy:
        raise rotation_missed(profile) from None
    return [n for n in nodes or [] if _matches(n, selector)]


@cli.command(name="ls")
@click.argument("labels", nargs=-1)
@click.option("--format", "fmt", type=FORMATS, default="text", show_default=True)
@run
async def ls(labels: tuple[str, ...], fmt: str) -> None:
    """List the nodes you can reach, optionally only those with labels k=v."""
    from teleport_runtime.client.tsh_trust import HostCARefresh

    profile = _active_profile()
    refresh = HostCARefresh(_store(), profile).start()
    try:
        nodes = await _nodes(profile, _parse_selector(labels))
    finally:
        await refresh.outcome()
    if fmt == "json":
        echo_json([{"id": n["id"], "hostname": n["hostname"], "addr": n["addr"], "labels": n.get("labels") or {},
                    "sub_kind": n.get("sub_kind") or "teleport"} for n in nodes])
        return
    kinds = any(n.get("sub_kind") == "openssh" for n in nodes)  # the Kind column only when it tells
    rows = [
        [n["hostname"], n["addr"], *([n.get("sub_kind") or "teleport"] if kinds else []),
         ",".join(f"{k}={v}" for k, v in sorted((n.get("labels") or {}).items()))]
        for n in nodes
    ]
    click.echo(table(["Node Name", "Address", *(["Kind"] if kinds else []), "Labels"], rows))


@cli.command()
def config() -> None:
    """Print an OpenSSH client config for the cluster (append it to ~/.ssh/config, or use
    `ssh -F FILE node1.CLUSTER`).

    OpenSSH then trusts the host CAs in tsh's known_hosts, which every tsh command keeps
    current: run tsh now and then (any command) and OpenSSH follows a host CA rotation."""
    from teleport_runtime.client.tsh_profile import ssh_config

    try:
        profile = _store().load()
    except TeleportError as exc:
        fail(exc.message)
    _refresh_now(profile)
    click.echo(ssh_config(profile), nl=False)


# ---------------------------------------------------------------------------- ssh


def _split_destination(dest: str, login: str | None) -> tuple[str, str]:
    user, sep, host = dest.rpartition("@")
    if not sep:
        user, host = "", dest
    if not host:
        raise BadParameter(f"{dest!r}: expected [LOGIN@]NODE")
    return (user or login or getpass.getuser()), host


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("-p", "--port", type=int, default=None, help="The node's SSH port (default 3022).")
@click.option("-l", "--login", help="OS login on the node (default: LOGIN@ or your local user name).")
@click.option("-L", "forwards", multiple=True, metavar="[BIND:]LPORT:HOST:RPORT",
              help="Forward a local port to HOST:RPORT through the node. Repeatable.")
@click.option("-A", "forward_agent", is_flag=True, help="Forward your ssh-agent to the node.")
@click.option("-t", "force_tty", is_flag=True, help="Allocate a terminal even with a command.")
@click.option("-T", "no_tty", is_flag=True, help="Never allocate a terminal.")
@click.argument("destination")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@run
async def ssh(port: int | None, login: str | None, forwards: tuple[str, ...], forward_agent: bool,
              force_tty: bool, no_tty: bool, destination: str, command: tuple[str, ...]) -> None:
    """Run COMMAND on NODE, or open a shell, through the proxy.

    \b
    NODE is a node name, UUID or address as `tsh ls` shows it, or a label selector
    (k=v[,k2=v2]) to run COMMAND on every matching node.
    The remote exit status becomes tsh's exit status.
    """
    profile = _active_profile()
    user, host = _split_destination(destination, login)
    cmd = " ".join(command) if command else None
    refresh = _start_refresh(profile)
    try:
        from teleport_runtime.client.tsh_ssh import NODE_PORT, Credentials

        creds = Credentials.load(profile)
        refresh.on_learned = creds.trust_host_cas
        if "=" in host:
            code = await _ssh_selector(profile, creds, refresh, user, host, cmd, port)
        else:
            pty = bool(force_tty or (cmd is None and not no_tty and os.isatty(0)))
            if no_tty:
                pty = False
            code = await _ssh_one(profile, creds, refresh, user, host, port or NODE_PORT, cmd, pty, forwards,
                                  forward_agent)
    finally:
        await refresh.outcome()
    sys.exit(code)


async def _ssh_one(profile: Profile, creds: Credentials, refresh: HostCARefresh, login: str, host: str, port: int,
                   cmd: str | None, pty: bool, forwards: tuple[str, ...], forward_agent: bool) -> int:
    from teleport_runtime.client.tsh_ssh import close_all, connect_node, connect_proxy, local_forward, run_command

    proxy = node = None
    try:
        proxy = await refresh.verified(lambda: connect_proxy(profile, creds))
        node = await refresh.verified(
            lambda: connect_node(proxy, profile, creds, login, host, port, agent_forwarding=forward_agent)
        )
        for spec in forwards:
            await local_forward(node, spec)
        return await run_command(node, cmd, pty=pty)
    finally:
        await close_all(node, proxy)


async def _ssh_selector(profile: Profile, creds: Credentials, refresh: HostCARefresh, login: str,
                        selector_text: str, cmd: str | None, port: int | None) -> int:
    from teleport_runtime.client.tsh_ssh import NODE_PORT, close_all, connect_node, connect_proxy, run_command

    if cmd is None:
        raise BadParameter(f"{selector_text}: a label selector runs a command on every match; give a COMMAND")
    selector = _parse_selector([selector_text])
    nodes = await _nodes(profile, selector)
    if not nodes:
        raise NotFound(f"no node you can reach matches {selector_text}; see `tsh ls`")
    proxy = await refresh.verified(lambda: connect_proxy(profile, creds))
    limit = asyncio.Semaphore(16)

    async def one(node: dict[str, Any]) -> tuple[str, int | str]:
        async with limit:
            conn = None
            try:
                conn = await refresh.verified(
                    lambda: connect_node(proxy, profile, creds, login, node["id"], port or NODE_PORT)
                )
                code = await run_command(conn, cmd, pty=False, stdin=False,
                                         prefix=f"[{node['hostname']}] ".encode())
                return node["hostname"], code
            except TeleportError as exc:
                return node["hostname"], exc.message
            finally:
                await close_all(conn)

    try:
        results = await asyncio.gather(*(one(n) for n in nodes))
    finally:
        await close_all(proxy)
    failed = 0
    for name, result in results:
        if result != 0:
            failed += 1
            reason = f"exit status {result}" if isinstance(result, int) else result
            click.echo(f"ERROR: {name}: {reason}", err=True)
    return 1 if failed else 0


# ---------------------------------------------------------------------------- scp


@cli.command()
@click.option("-r", "--recursive", is_flag=True, help="Copy directories recursively.")
@click.option("-p", "--preserve", is_flag=True, help="Preserve modification times and modes.")
@click.option("-P", "--port", type=int, default=None, help="The node's SSH port (default 3022).")
@click.option("-l", "--login", help="OS login on the node (default: LOGIN@ or your local user name).")
@click.argument("paths", nargs=-1, required=True)
@run
async def scp(recursive: bool, preserve: bool, port: int | None, login: str | None, paths: tuple[str, ...]) -> None:
    """Copy files to or from a node: SRC... DEST, with [LOGIN@]NODE:PATH on the remote side."""
    from teleport_runtime.client.tsh_scp import check_local_sources, plan_copy, run_copy

    plan = plan_copy(list(paths))
    check_local_sources(plan, recursive)
    profile = _active_profile()
    remote = plan.remote
    assert remote.host is not None
    host = remote.host
    user = remote.login or login or getpass.getuser()
    refresh = _start_refresh(profile)
    proxy = node = None
    try:
        from teleport_runtime.client.tsh_ssh import NODE_PORT, Credentials, close_all, connect_node, connect_proxy

        creds = Credentials.load(profile)
        refresh.on_learned = creds.trust_host_cas
        proxy = await refresh.verified(lambda: connect_proxy(profile, creds))
        node = await refresh.verified(lambda: connect_node(proxy, profile, creds, user, host, port or NODE_PORT))
        await run_copy(node, plan, recursive=recursive, preserve=preserve)
    finally:
        await close_all(node, proxy)
        await refresh.outcome()


# ---------------------------------------------------------------------------- recordings, sessions


@cli.group()
def recordings() -> None:
    """Recorded sessions (needs a role that allows reading them, such as auditor)."""


@recordings.command(name="ls")
@click.option("--since", help="Only sessions started since then: a duration such as 24h, or an ISO 8601 time.")
@click.option("--format", "fmt", type=FORMATS, default="text", show_default=True)
@run
async def recordings_ls(since: str | None, fmt: str) -> None:
    """List the recorded sessions, oldest first."""
    from teleport_runtime.client.tsh_recordings import list_recordings, recordings_table

    records = await list_recordings(_user_web_client(_active_profile()), since)
    if fmt == "json":
        echo_json(records)
    else:
        click.echo(recordings_table(records))


@cli.command()
@click.argument("session_id")
@click.option("--speed", default="1x", show_default=True, help="Playback speed such as 2x or 0.5x.")
@click.option("--skip-idle-time", "skip_idle", is_flag=True, help="Cut every pause to at most one second.")
@click.option("--format", "fmt", type=click.Choice(PLAY_FORMATS), default="pty", show_default=True,
              help="pty: replay in this terminal; json: the events as JSON; asciicast: the asciicast v2 "
                   "file (asciinema play/cat open it).")
@run
async def play(session_id: str, speed: str, skip_idle: bool, fmt: str) -> None:
    """Replay a recorded session (SESSION_ID as `tsh recordings ls` shows it)."""
    from teleport_runtime.client.tsh_recordings import fetch_recording, play_recording
    from teleport_runtime.recording import parse_speed

    parse_speed(speed)  # a typo fails before anything is fetched
    data = await fetch_recording(_user_web_client(_active_profile()), session_id)
    await play_recording(data, sys.stdout.buffer, fmt, speed, skip_idle)


@cli.group()
def sessions() -> None:
    """Sessions in progress in the cluster."""


@sessions.command(name="ls")
@click.option("--format", "fmt", type=FORMATS, default="text", show_default=True)
@run
async def sessions_ls(fmt: str) -> None:
    """List the interactive sessions in progress: who, where, since when."""
    from teleport_runtime.client.tsh_recordings import list_sessions, sessions_table

    active = await list_sessions(_user_web_client(_active_profile()))
    if fmt == "json":
        echo_json(active)
    else:
        click.echo(sessions_table(active))


def main() -> None:
    """Entry point: usage mistakes and stray errors become one ``ERROR:`` line and exit 1 too.
    The process ends as soon as the command is done (:func:`_exit_now`)."""
    try:
        _main()
    except SystemExit as exc:
        _exit_now(exc.code)


def _main() -> None:
    try:
        code = cli.main(prog_name="tsh", standalone_mode=False)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else "tsh"
        fail(f"{exc.format_message()} (see `{where} --help`)")
    except click.ClickException as exc:
        fail(exc.format_message())
    except click.Abort:
        fail("aborted")
    except Exception as exc:
        # An asyncssh error the command handlers did not translate (asyncssh is loaded only by
        # the commands that use it).
        asyncssh = sys.modules.get("asyncssh")
        if asyncssh is None or not isinstance(exc, asyncssh.Error):
            raise
        fail(str(exc.reason))
    sys.exit(code if isinstance(code, int) else 0)


def _exit_now(status: object) -> NoReturn:
    """Exit with ``status`` (as ``sys.exit`` takes it) without the interpreter's shutdown.

    Tearing down the modules an SSH command loads (asyncssh, cryptography, asyncio) costs
    50-70 ms of CPU after every command, and nothing is left to do by then: the command has
    written its files, closed its connections and restored the terminal, and ``asyncio.run``
    has closed the event loop; the threads still alive are the daemon threads (stdin pump,
    host CA refresh) and idle executor workers. Only the output buffers are flushed."""
    if status is None:
        code = 0
    elif isinstance(status, int):
        code = status
    else:
        print(status, file=sys.stderr)
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        code = code or 120  # output that could not be written: the status Python's own exit uses
    os._exit(code)
