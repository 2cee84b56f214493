"""``tctl``: cluster administration on the auth host, with the local admin identity the auth
service keeps in ``<data_dir>/admin``."""

from __future__ import annotations

import asyncio
import shlex
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import yaml

from teleport_runtime import config as configuration
from teleport_runtime.api.client import AuthClient
from teleport_runtime.api.types import (
    Deleted,
    HostCertRequest,
    NodeUpsert,
    RoleUpsert,
    RotateRequest,
    TokenRequest,
    UserAdd,
    UserCertRequest,
    UserUpdate,
)
from teleport_runtime.api.wire import Message
from teleport_runtime.ca import generate_ssh_keypair
from teleport_runtime.client.output import (
    echo_json,
    echo_listing,
    format_expiry,
    format_labels,
    humanize_ttl,
    node_address,
)
from teleport_runtime.durable import write_private
from teleport_runtime.durations import parse_duration
from teleport_runtime.errors import BadParameter, ConfigError, TeleportError
from teleport_runtime.identity import Identity
from teleport_runtime.rotation_phases import WALK, Phase, next_in_walk, phase_names

if TYPE_CHECKING:  # the backup commands import the backend when they run (tctl start-up)
    from teleport_runtime.backend import Backend, snapshot

T = TypeVar("T")
FORMATS = click.Choice(["text", "json"])


class Context:
    """Where the auth API is and who we are to it."""

    def __init__(self, config_path: str | None, auth_server: str | None, data_dir: str | None) -> None:
        self.config_path = config_path
        self.auth_server = auth_server
        self.data_dir = data_dir

    def client(self) -> AuthClient:
        cfg = configuration.load(self.config_path)
        if self.data_dir:
            cfg.data_dir = Path(self.data_dir)
        if self.auth_server:
            # Several auth servers, comma-separated: tried in turn (api/client.py).
            addresses = [configuration.parse_host_port(a.strip(), configuration.AUTH_PORT, "--auth-server")
                         for a in self.auth_server.split(",") if a.strip()]
        elif cfg.auth.enabled:
            addresses = [cfg.auth.listen_addr.dialable()]
        else:
            raise ConfigError(
                f"{cfg.source} does not enable auth_service: run tctl on the auth server, or pass "
                "--auth-server and --config of the auth server"
            )
        admin_dir = cfg.data_dir / "admin"
        if not Identity.exists(admin_dir):
            raise ConfigError(
                f"no admin identity in {admin_dir}: run tctl on the auth server as root after the "
                "auth service has started (or pass --data-dir / -c for its data dir)"
            )
        return AuthClient.for_identity(addresses, Identity.load(admin_dir))


def run(fn: Callable[..., Awaitable[T]]) -> Callable[..., T]:
    """Run an async command with an API client; errors become one line and exit status 1."""

    @wraps(fn)
    @click.pass_obj
    def wrapper(ctx: Context, *args: Any, **kwargs: Any) -> T:
        async def main() -> T:
            async with ctx.client() as client:
                return await fn(client, *args, **kwargs)

        try:
            return asyncio.run(main())
        except TeleportError as exc:
            click.echo(f"ERROR: {exc.message}", err=True)
            sys.exit(1)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config_path", help="The auth server's config file.")
@click.option("--auth-server", help="Auth API address, or several comma-separated (default: from the config).")
@click.option("--data-dir", help="The auth server's data dir (holds the admin identity).")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, auth_server: str | None, data_dir: str | None) -> None:
    """Administer the cluster."""
    ctx.obj = Context(config_path, auth_server, data_dir)


# ---------------------------------------------------------------------------- status


def rotation_text(ca: dict[str, Any]) -> str:
    rotation = ca["rotation"]
    if rotation.get("state") == "in_progress":
        text = f"rotation in progress (phase {rotation.get('phase')}, mode {rotation.get('mode')})"
        due = (rotation.get("schedule") or {})
        following = next_in_walk(str(rotation.get("phase")))
        if following and due.get(following.value):
            text += f", {following.value} {format_expiry(due[following.value])}"
        return text
    if rotation.get("last_rotated"):
        return f"rotated {format_expiry(rotation['last_rotated'])}"
    return "never updated"


@cli.command()
@click.option("--format", "fmt", type=FORMATS, default="text")
@run
async def status(client: AuthClient, fmt: str) -> None:
    """Cluster name, version, CA pin(s) and each CA's rotation state."""
    data = (await client.status()).to_json()
    if fmt == "json":
        echo_json(data)
        return
    rows = [("Cluster", data["cluster"]), ("Version", data["version"])]
    for ca in data["cas"]:
        rows.append((f"{ca['type'].capitalize()} CA", rotation_text(ca)))
    # During a host CA rotation both pins are valid: joining hosts pass every one (--ca-pin twice).
    rows += [("CA pin", pin) for pin in data["ca_pins"]]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key.ljust(width)}  {value}")


def _json(records: Sequence[Message]) -> list[dict[str, Any]]:
    """Records as ``--format=json`` and the tables print them: their JSON form."""
    return [record.to_json() for record in records]


# ---------------------------------------------------------------------------- tokens


def join_command(token: dict[str, Any], role: str) -> str:
    parts = ["teleport", "start", f"--roles={role}", f"--token={token['token']}"]
    parts += [f"--ca-pin={pin}" for pin in token["ca_pins"]]
    parts.append(f"--auth-server={token['auth_server']}")
    return shlex.join(parts)


async def _create_token(client: AuthClient, roles: list[str], ttl: str | None, value: str | None) -> dict[str, Any]:
    token = (await client.create_token(TokenRequest(roles=tuple(roles), ttl=ttl, token=value))).to_json()
    token["join_command"] = join_command(token, ",".join(token["roles"]))
    return token


def _print_invite(token: dict[str, Any]) -> None:
    expires = datetime.fromisoformat(token["expires"])
    ttl = humanize_ttl((expires - datetime.now(UTC)).total_seconds())
    click.echo(f"The invite token: {token['token']}")
    click.echo(f"This token will expire in {ttl} ({format_expiry(token['expires'])}).")
    click.echo()
    click.echo(f"Run this on the new {'/'.join(token['roles'])} host to join the cluster:")
    click.echo()
    click.echo(f"> {token['join_command']}")
    click.echo()
    click.echo("Please note:")
    click.echo()
    click.echo(f"  - This invitation token will expire in {ttl}")
    click.echo(f"  - {token['auth_server']} must be reachable from the new host")


def _roles(text: str) -> list[str]:
    return [r.strip().lower() for r in text.split(",") if r.strip()]


#: --value-file: a token value read from a file or stdin stays off the command line, which every
#: local user can read (ps, /proc/PID/cmdline).
VALUE_FILE = click.option("--value-file", metavar="PATH",
                          help="Read the token value from PATH (- for stdin) instead of the command line.")


def _token_value(value: str | None, value_file: str | None, flag: str) -> str | None:
    """The token value from ``flag`` or ``--value-file`` (one line; ``-`` reads stdin)."""
    if value_file is None:
        return value
    if value is not None:
        raise BadParameter(f"{flag} and --value-file both give the token value: use one of them")
    try:
        text = sys.stdin.read() if value_file == "-" else Path(value_file).read_text()
    except OSError as exc:
        raise BadParameter(f"cannot read --value-file {value_file}: {exc.strerror}") from exc
    text = text.removesuffix("\n").removesuffix("\r")
    if not text or "\n" in text:
        raise BadParameter(f"--value-file {value_file} must hold the token value on one line")
    return text


@cli.group()
def nodes() -> None:
    """Invite, list and remove nodes."""


@nodes.command("add")
@click.option("--roles", default="node", show_default=True, help="Roles the token admits: node,proxy.")
@click.option("--ttl", help="Token lifetime, such as 5m or 1h (default 30m).")
@click.option("--token", "value", help="Use this token value instead of a generated one.")
@VALUE_FILE
@click.option("--format", "fmt", type=FORMATS, default="text")
@run
async def nodes_add(client: AuthClient, roles: str, ttl: str | None, value: str | None, value_file: str | None,
                    fmt: str) -> None:
    """Create an invite token and print the command that joins a new node."""
    token = await _create_token(client, _roles(roles), ttl, _token_value(value, value_file, "--token"))
    echo_json(token) if fmt == "json" else _print_invite(token)


@nodes.command("ls")
@click.option("--format", "fmt", type=FORMATS, default="text")
@run
async def nodes_ls(client: AuthClient, fmt: str) -> None:
    """The nodes online in the cluster."""
    records = _json(await client.nodes())
    if any(n.get("sub_kind") == "openssh" for n in records):  # the Kind column only when it tells
        echo_listing(records, fmt, ["Node Name", "Node ID", "Address", "Kind", "Labels"],
                     lambda n: (n["hostname"], n["id"], node_address(n), n.get("sub_kind", "teleport"),
                                format_labels(n["labels"])))
        return
    echo_listing(records, fmt, ["Node Name", "Node ID", "Address", "Labels"],
                 lambda n: (n["hostname"], n["id"], node_address(n), format_labels(n["labels"])))


@nodes.command("rm")
@click.argument("name")
@run
async def nodes_rm(client: AuthClient, name: str) -> None:
    """Remove a node or proxy (by name or UUID) and revoke its certificate: the auth service
    refuses it and proxies stop routing to it. It may join again with a new token."""
    removed = await client.remove_node(name)
    if removed.sub_kind != "openssh":
        click.echo(f"Host {removed.nodename} ({removed.removed}) has been removed and its certificate locked")
    else:
        click.echo(f"Host {removed.nodename} ({removed.removed}) has been removed")


@cli.group()
def tokens() -> None:
    """Manage join tokens."""


@tokens.command("add")
@click.option("--type", "types", default="node", show_default=True, help="Roles: node, proxy or node,proxy.")
@click.option("--ttl", help="Token lifetime, such as 5m or 1h (default 30m).")
@click.option("--value", help="Use this token value instead of a generated one.")
@VALUE_FILE
@click.option("--format", "fmt", type=FORMATS, default="text")
@run
async def tokens_add(client: AuthClient, types: str, ttl: str | None, value: str | None, value_file: str | None,
                     fmt: str) -> None:
    """Create a join token."""
    token = await _create_token(client, _roles(types), ttl, _token_value(value, value_file, "--value"))
    echo_json(token) if fmt == "json" else _print_invite(token)


@tokens.command("ls")
@click.option("--format", "fmt", type=FORMATS, default="text")
@run
async def tokens_ls(client: AuthClient, fmt: str) -> None:
    """Tokens that have not expired; static ones expire "never"."""
    records = _json(await client.tokens())
    echo_listing(records, fmt, ["Token", "Type", "Expiry Time (UTC)"],
                 lambda t: (t["token"], ",".join(r.capitalize() for r in t["roles"]), format_expiry(t["expires"])))


async def _delete_token(client: AuthClient, token: str | None, value_file: str | None) -> None:
    value = _token_value(token, value_file, "TOKEN")
    if not value:
        raise BadParameter("name the token to revoke: tctl tokens rm TOKEN, or --value-file PATH (- for stdin)")
    await client.delete_token(value)
    click.echo(f"Token {value} has been deleted" if token else "The token has been deleted")


@tokens.command("rm")
@click.argument("token", required=False)
@VALUE_FILE
@run
async def tokens_rm(client: AuthClient, token: str | None, value_file: str | None) -> None:
    """Revoke a token."""
    await _delete_token(client, token, value_file)


@tokens.command("del")
@click.argument("token", required=False)
@VALUE_FILE
@run
async def tokens_del(client: AuthClient, token: str | None, value_file: str | None) -> None:
    """Revoke a token (same as rm)."""
    await _delete_token(client, token, value_file)


# ---------------------------------------------------------------------------- users


def _signup_text(result: dict[str, Any], proxy: str) -> str:
    return (
        f"User {result['user']!r} requires a password and a second factor. Share this command "
        f"with the user to complete the sign-up (valid until {format_expiry(result['expires'])}):\n\n"
        f"tsh signup --proxy={proxy} --token={result['token']}\n\n"
        f"or this link, to sign up in a web browser:\n\nhttps://{proxy}/web/signup#{result['token']}"
    )


async def _proxy_addr(client: AuthClient) -> str:
    for proxy in await client.proxies():
        if proxy.web_addr:
            return proxy.web_addr
    return "PROXY_HOST:3080"


def _csv(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [v.strip() for v in text.split(",") if v.strip()]


@cli.group()
def users() -> None:
    """Manage local users."""


@users.command("add")
@click.argument("name")
@click.option("--roles", required=True, help="Roles, such as access or access,auditor.")
@click.option("--logins", default="", help="OS logins the user may use: root,ubuntu.")
@click.option("--format", "fmt", type=FORMATS, default="text")
@run
async def users_add(client: AuthClient, name: str, roles: str, logins: str, fmt: str) -> None:
    """Create a user; prints a sign-up token for `tsh signup`."""
    added = await client.add_user(UserAdd(name=name, roles=tuple(_csv(roles) or ()), logins=tuple(_csv(logins) or ())))
    result = added.to_json()
    if fmt == "json":
        echo_json(result)
    else:
        click.echo(f"User {name!r} has been created.")
        click.echo(_signup_text(result, await _proxy_addr(client)))


@users.command("update")
@click.argument("name")
@click.option("--set-roles", help="Replace the user's roles.")
@click.option("--set-logins", help="Replace the user's OS logins.")
@click.option("--format", "fmt", type=FORMATS, default="text")
@run
async def users_update(
    client: AuthClient, name: str, set_roles: str | None, set_logins: str | None, fmt: str
) -> None:
    """Change a user's roles or logins."""
    new_roles, new_logins = _csv(set_roles), _csv(set_logins)
    update = UserUpdate(roles=None if new_roles is None else tuple(new_roles),
                        logins=None if new_logins is None else tuple(new_logins))
    user = (await client.update_user(name, update)).to_json()
    echo_json(user) if fmt == "json" else click.echo(f"User {name!r} has been updated")


@users.command("ls")
@click.option("--format", "fmt", type=FORMATS, default="text")
@run
async def users_ls(client: AuthClient, fmt: str) -> None:
    """List users."""
    records = _json(await client.users())
    echo_listing(records, fmt, ["User", "Roles", "Logins", "Status"],
                 lambda u: (u["name"], ",".join(u["roles"]), ",".join(u["logins"]), u["status"]))


@users.command("rm")
@click.argument("name")
@run
async def users_rm(client: AuthClient, name: str) -> None:
    """Delete a user."""
    await client.delete_user(name)
    click.echo(f"User {name!r} has been deleted")


@users.command("reset")
@click.argument("name")
@click.option("--format", "fmt", type=FORMATS, default="text")
@run
async def users_reset(client: AuthClient, name: str, fmt: str) -> None:
    """Clear a user's password and second factor and issue a new sign-up token."""
    result = (await client.reset_user(name)).to_json()
    echo_json(result) if fmt == "json" else click.echo(_signup_text(result, await _proxy_addr(client)))


# ---------------------------------------------------------------------------- resources

RESOURCE_FORMATS = click.Choice(["yaml", "json", "text"])


@cli.command()
@click.option("-f", "--force", is_flag=True, help="Overwrite a resource that exists.")
@click.argument("filename", type=click.Path(exists=True, dir_okay=False))
@run
async def create(client: AuthClient, force: bool, filename: str) -> None:
    """Create resources (roles, OpenSSH nodes) from a YAML file."""
    text = Path(filename).read_text()  # noqa: ASYNC240 - a CLI, nothing else runs on this loop
    try:
        documents = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as exc:
        raise ConfigError(f"{filename}: not valid YAML: {exc}") from None
    for doc in documents:
        kind = doc.get("kind") if isinstance(doc, dict) else None
        if kind == "node":
            node = await client.upsert_node(NodeUpsert(resource=doc, force=force))
            click.echo(f"node {node.name!r} has been {node.result}")
            continue
        if kind != "role":
            raise ConfigError(
                f"{filename}: unsupported resource kind {kind!r}: tctl create handles kind: role and "
                "kind: node (sub_kind: openssh) (users are created with `tctl users add`)"
            )
        saved = await client.upsert_role(RoleUpsert(role=doc, force=force))
        click.echo(f"role {saved.name!r} has been {'updated' if saved.existed else 'created'}")


@cli.command()
@click.argument("resource")
@click.option("--format", "fmt", type=RESOURCE_FORMATS, default="yaml")
@run
async def get(client: AuthClient, resource: str, fmt: str) -> None:
    """Print resources: roles, users, nodes, proxies, tokens (or role/NAME)."""
    kind, _, name = resource.partition("/")
    listings: dict[str, Callable[[], Awaitable[Sequence[Message]]]] = {
        "roles": client.roles, "role": client.roles, "users": client.users, "user": client.users,
        "nodes": client.nodes, "node": client.nodes, "proxies": client.proxies, "proxy": client.proxies,
        "tokens": client.tokens, "token": client.tokens}
    if kind not in listings:
        raise ConfigError(f"unknown resource {kind!r}: expected roles, users, nodes, proxies or tokens")
    records = [_resource_form(r) for r in _json(await listings[kind]())]
    if name:
        records = [r for r in records if name in (
            r.get("metadata", {}).get("name"), r.get("name"), r.get("hostname"), r.get("id"), r.get("token")
        )]
        if not records:
            raise ConfigError(f"{resource} not found")
    if fmt == "json":
        echo_json(records)
    else:
        click.echo(yaml.safe_dump_all(records, sort_keys=False), nl=False)


def _resource_form(record: dict[str, Any]) -> dict[str, Any]:
    """An OpenSSH node as the resource ``tctl create`` takes; other records as listed."""
    if record.get("sub_kind") != "openssh":
        return record
    return {"kind": "node", "sub_kind": "openssh", "version": "v2",
            "metadata": {"name": record["id"], "labels": record.get("labels") or {}},
            "spec": {"addr": record["addr"], "hostname": record["hostname"]}}


@cli.command()
@click.argument("resource")
@run
async def rm(client: AuthClient, resource: str) -> None:
    """Delete a resource: role/NAME, user/NAME, token/VALUE or node/NAME."""
    kind, _, name = resource.partition("/")
    if kind == "node" and name:  # a node service host is also locked, as by `tctl nodes rm`
        result = (await client.remove_node(name)).to_json()
        click.echo(f"node {result['removed']!r} has been deleted")
        return
    removals: dict[str, Callable[[str], Awaitable[Deleted]]] = {
        "role": client.delete_role, "user": client.delete_user, "token": client.delete_token}
    if kind not in removals or not name:
        raise ConfigError(
            f"cannot remove {resource!r}: expected role/NAME, user/NAME, token/VALUE or node/NAME")
    await removals[kind](name)
    click.echo(f"{kind} {name!r} has been deleted")


# ---------------------------------------------------------------------------- auth


@cli.group()
def auth() -> None:
    """Export CA keys and sign certificates for OpenSSH."""


@auth.command("export")
@click.option("--type", "ca_type", type=click.Choice(["user", "host"]), required=True)
@run
async def auth_export(client: AuthClient, ca_type: str) -> None:
    """user: lines for sshd's TrustedUserCAKeys; host: @cert-authority lines for known_hosts."""
    cas = await client.ca()
    cluster = cas.cluster
    for key in cas.user_ca_keys if ca_type == "user" else cas.host_ca_keys:
        click.echo(key if ca_type == "user" else f"@cert-authority {cluster},*.{cluster} {key}")


@auth.command("sign")
@click.option("--user", help="Sign a user certificate for this user.")
@click.option("--host", help="Sign a host certificate for these names (comma-separated).")
@click.option("--format", "fmt", type=click.Choice(["openssh"]), default="openssh")
@click.option("--out", required=True, help="Write the key to PATH and the cert to PATH-cert.pub.")
@click.option("--ttl", help="Certificate lifetime (user default 12h, capped by the roles).")
@run
async def auth_sign(
    client: AuthClient, user: str | None, host: str | None, fmt: str, out: str, ttl: str | None
) -> None:
    """Sign an OpenSSH key pair for automation (--user) or an OpenSSH sshd (--host)."""
    if bool(user) == bool(host):
        raise ConfigError("pass exactly one of --user=NAME or --host=NAMES")
    key, public = generate_ssh_keypair()
    if user:
        ssh_cert = (await client.sign_user(UserCertRequest(user=user, ssh_public_key=public, ttl=ttl))).ssh_cert
    else:
        names = tuple(_csv(host) or ())
        ssh_cert = (await client.sign_host(HostCertRequest(names=names, ssh_public_key=public, ttl=ttl))).ssh_cert
    path = Path(out)
    write_private(path, key)
    write_private(Path(f"{out}-cert.pub"), ssh_cert.strip() + "\n")
    Path(f"{out}.pub").write_text(public + "\n")  # noqa: ASYNC240 - a CLI
    click.echo(f"The credentials have been written to {out}, {out}-cert.pub")


ROTATION_PHASES = click.Choice([p.value for p in (*WALK, Phase.ROLLBACK)])


@auth.command("rotate")
@click.option("--type", "ca_type", type=click.Choice(["host", "user"]), required=True)
@click.option("--manual", is_flag=True, help="Drive the phases yourself with --phase.")
@click.option("--phase", type=ROTATION_PHASES, help="The phase to move to (manual mode, or rollback).")
@click.option("--grace-period", help="Auto mode: how long the old CA stays trusted (default 30h).")
@click.option("--format", "fmt", type=FORMATS, default="text")
@run
async def auth_rotate(
    client: AuthClient, ca_type: str, manual: bool, phase: str | None, grace_period: str | None, fmt: str
) -> None:
    """Rotate a CA: auto with a grace period, or manual phase by phase."""
    if manual and not phase:
        raise ConfigError(f"--manual needs --phase: {phase_names((*WALK, Phase.ROLLBACK))}")
    if manual and grace_period:
        raise ConfigError("--grace-period applies to auto mode only; drop it or drop --manual")
    view = (await client.rotate(
        ca_type, RotateRequest(mode="manual" if manual else "auto", phase=phase, grace_period=grace_period),
    )).to_json()
    if fmt == "json":
        echo_json(view)
    else:
        click.echo(f"{ca_type} CA: rotation phase {view['phase']} ({view.get('mode') or 'auto'})")


# ---------------------------------------------------------------------------- audit


@cli.group()
def audit() -> None:
    """Query the audit log."""


@audit.command("ls")
@click.option("--since", default="1h", show_default=True, help="How far back, such as 1h or 7d.")
@click.option("--type", "types", default="",
              help="Event types, comma-separated, such as user.login,session.end; `session.` matches every "
                   "session.* type.")
@click.option("--format", "fmt", type=FORMATS, default="text")
@run
async def audit_ls(client: AuthClient, since: str, types: str, fmt: str) -> None:
    """Audit events in a time range, oldest first: logins, sessions, commands, uploads, refusals."""
    parse_duration(since)  # a typo fails here, naming the option
    events = _json(await client.search_audit(since, types))
    echo_listing(
        events, fmt, ["Time (UTC)", "Event", "Code", "User", "Login", "Node", "Session", "Remote", "Details"],
        lambda e: (e["time"][:19].replace("T", " "), e["event"], e.get("code", ""), e.get("user", ""),
                   e.get("login", ""), e.get("node") or e.get("nodename") or e.get("server_id", ""),
                   e.get("session_id", ""), e.get("remote_addr", ""), _audit_details(e)),
    )


# ---------------------------------------------------------------------------- backup


def _run_on_backend(ctx: Context, fn: Callable[[Backend], Awaitable[T]]) -> T:
    """Run ``fn`` on the backend the config's ``teleport.storage`` names (not through the auth
    API: a restore happens before any auth server runs on the target); errors become one line."""

    from teleport_runtime.backend import open_backend

    async def main() -> T:
        cfg = configuration.load(ctx.config_path)
        backend = open_backend(cfg.storage, Path(ctx.data_dir) if ctx.data_dir else cfg.data_dir,
                               sweep_interval=None)
        try:
            return await fn(backend)
        finally:
            await backend.close()

    try:
        return asyncio.run(main())
    except TeleportError as exc:
        click.echo(f"ERROR: {exc.message}", err=True)
        sys.exit(1)


@cli.group()
def backup() -> None:
    """Back up cluster state, or restore it into an empty backend (run on the auth host, with
    its config: the storage it names is read or written directly)."""


@backup.command("create")
@click.argument("filename", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--with-audit", is_flag=True, help="Include the audit events kept in the backend.")
@click.pass_obj
def backup_create(ctx: Context, filename: Path, with_audit: bool) -> None:
    """Write a consistent snapshot of the cluster state (CAs with their private keys, users,
    roles, tokens, host bindings, locks) to FILENAME, mode 0600. Safe while the cluster runs."""
    from teleport_runtime.backend import snapshot

    async def take(backend: Backend) -> snapshot.Snapshot:
        return await snapshot.take(backend, with_audit=with_audit)

    snap = _run_on_backend(ctx, take)
    try:
        snapshot.write(filename, snap)
    except OSError as exc:
        click.echo(f"ERROR: cannot write {filename}: {exc.strerror or exc}", err=True)
        sys.exit(1)
    counts = ", ".join(f"{prefix} {n}" for prefix, n in snap.counts().items())
    click.echo(f"wrote {filename}: {len(snap.items)} items ({counts})")
    click.echo("It holds the CA private keys: keep it as safe as the database (mode 0600, encrypted at rest).")


@backup.command("restore")
@click.argument("filename", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True,
              help="Replace what the storage holds (stop every auth server on it first).")
@click.pass_obj
def backup_restore(ctx: Context, filename: Path, force: bool) -> None:
    """Restore FILENAME into the config's storage, which must be empty (or --force): start the
    auth server afterwards; the CA pin and every node's identity stay valid."""
    from teleport_runtime.backend import snapshot

    try:
        snap = snapshot.read(filename)
    except TeleportError as exc:
        click.echo(f"ERROR: {exc.message}", err=True)
        sys.exit(1)

    async def put(backend: Backend) -> int:
        return await snapshot.restore(backend, snap, replace=force)

    count = _run_on_backend(ctx, put)
    click.echo(f"restored {count} items from {filename} (taken {snap.created.isoformat()}); "
               "start the auth service now")


@auth.command("rekey")
@click.option("--new-key-file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The new key-encryption key (its first line seals).")
@click.pass_obj
def auth_rekey(ctx: Context, new_key_file: Path) -> None:
    """Re-seal every CA private key under a new key-encryption key while the cluster runs (on an
    auth host, with its config). First add the new key as a line of the configured key file on
    every auth server: they then open both keys."""
    from teleport_runtime.auth.service import reseal_cas
    from teleport_runtime.ca.keywrap import KEK_CONFIG_KEY, CACodec, kek_id, load_kek, load_keks

    try:
        cfg = configuration.load(ctx.config_path)
        current = cfg.auth.ca_key_encryption_key_file
        if current is None:
            raise ConfigError(
                f"{KEK_CONFIG_KEY} is not set in {cfg.source}: set it to the new key file on every auth server "
                "and restart them (the first one started seals the CA keys); rekey is for a cluster that has one"
            )
        new = load_kek(new_key_file)
        configured = load_keks(current)
        if kek_id(new) not in {kek_id(k) for k in configured}:
            raise ConfigError(
                f"the new key {kek_id(new)} is not in {current} ({KEK_CONFIG_KEY}): add it as a line of that file "
                f"on every auth server first (`cat {new_key_file} >> {current}`), so that they open records "
                "sealed with it, then run this again"
            )
    except TeleportError as exc:
        click.echo(f"ERROR: {exc.message}", err=True)
        sys.exit(1)
    codec = CACodec(new, older=configured)

    async def reseal(backend: Backend) -> list[str]:
        return await reseal_cas(backend, codec)

    done = _run_on_backend(ctx, reseal)
    click.echo(f"re-sealed {len(done)} CA record(s) ({', '.join(done) or 'none needed it'}) under "
               f"key-encryption key {kek_id(new)}")
    click.echo(f"Next: make it the first line of {current} on every auth server, run this command again "
               "(for a CA an auth server wrote meanwhile), then remove the old key's line.")


def _audit_details(event: dict[str, Any]) -> str:
    """What an enhanced recording or host user event was about, in a few words."""
    kind = event.get("event")
    if kind == "session.command":
        return " ".join(map(str, event.get("argv") or [event.get("path", "")]))[:80]
    if kind == "session.disk":
        return str(event.get("path", ""))[:80]
    if kind == "session.network":
        return f"-> {event.get('dst_addr')}:{event.get('dst_port')}"
    if kind == "host_user.rejected":
        return str(event.get("reason", ""))[:80]
    return ""


def main() -> None:
    cli()
