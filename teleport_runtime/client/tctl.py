"""``tctl``: cluster administration on the auth host, with the local admin identity the auth
service keeps in ``<data_dir>/admin``."""

from __future__ import annotations

import asyncio
import shlex
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from teleport_runtime import config as configuration
from teleport_runtime.agent.client import AuthClient
from teleport_runtime.agent.identity import Identity
from teleport_runtime.client.output import (
    echo_json,
    format_expiry,
    format_labels,
    humanize_ttl,
    table,
)
from teleport_runtime.errors import ConfigError, TeleportError

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
            addresses = [configuration.parse_host_port(self.auth_server, configuration.AUTH_PORT)]
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
@click.option("--auth-server", help="Auth API address (default: from the config, 127.0.0.1:3025).")
@click.option("--data-dir", help="The auth server's data dir (holds the admin identity).")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, auth_server: str | None, data_dir: str | None) -> None:
    """Administer the cluster."""
    ctx.obj = Context(config_path, auth_server, data_dir)


# ---------------------------------------------------------------------------- status


def rotation_text(ca: dict[str, Any]) -> str:
    rotation = ca["rotation"]
    if rotation.get("state") == "in_progress":
        return f"rotation in progress (phase {rotation.get('phase')}, mode {rotation.get('mode')})"
    if rotation.get("last_rotated"):
        return f"rotated {format_expiry(rotation['last_rotated'])}"
    return "never updated"


@cli.command()
@click.option("--format", "fmt", type=FORMATS, default="text")
@run
async def status(client: AuthClient, fmt: str) -> None:
    """Cluster name, version, CA pin(s) and each CA's rotation state."""
    data = await client.get("/v1/status")
    if fmt == "json":
        echo_json(data)
        return
    rows = [("Cluster", data["cluster"]), ("Version", data["version"])]
    for ca in data["cas"]:
        rows.append((f"{ca['type'].capitalize()} CA", rotation_text(ca)))
    rows += [("CA pin", pin) for pin in data["ca_pins"]]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key.ljust(width)}  {value}")


# ---------------------------------------------------------------------------- tokens


def join_command(token: dict[str, Any], role: str) -> str:
    parts = ["teleport", "start", f"--roles={role}", f"--token={token['token']}"]
    parts += [f"--ca-pin={pin}" for pin in token["ca_pins"]]
    parts.append(f"--auth-server={token['auth_server']}")
    return shlex.join(parts)


async def _create_token(client: AuthClient, roles: list[str], ttl: str | None, value: str | None) -> dict[str, Any]:
    token = await client.post("/v1/tokens", {"roles": roles, "ttl": ttl, "token": value})
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


@cli.group()
def nodes() -> None:
    """Invite and list nodes."""


@nodes.command("add")
@click.option("--roles", default="node", show_default=True, help="Roles the token admits: node,proxy.")
@click.option("--ttl", help="Token lifetime, such as 5m or 1h (default 30m).")
@click.option("--token", "value", help="Use this token value instead of a generated one.")
@click.option("--format", "fmt", type=FORMATS, default="text")
@run
async def nodes_add(client: AuthClient, roles: str, ttl: str | None, value: str | None, fmt: str) -> None:
    """Create an invite token and print the command that joins a new node."""
    token = await _create_token(client, _roles(roles), ttl, value)
    echo_json(token) if fmt == "json" else _print_invite(token)


@nodes.command("ls")
@click.option("--format", "fmt", type=FORMATS, default="text")
@run
async def nodes_ls(client: AuthClient, fmt: str) -> None:
    """The nodes online in the cluster."""
    records = await client.get("/v1/nodes")
    if fmt == "json":
        echo_json(records)
        return
    rows = [(n["hostname"], n["id"], n["addr"], format_labels(n["labels"])) for n in records]
    click.echo(table(["Node Name", "Node ID", "Address", "Labels"], rows))


@cli.group()
def tokens() -> None:
    """Manage join tokens."""


@tokens.command("add")
@click.option("--type", "types", default="node", show_default=True, help="Roles: node, proxy or node,proxy.")
@click.option("--ttl", help="Token lifetime, such as 5m or 1h (default 30m).")
@click.option("--value", help="Use this token value instead of a generated one.")
@click.option("--format", "fmt", type=FORMATS, default="text")
@run
async def tokens_add(client: AuthClient, types: str, ttl: str | None, value: str | None, fmt: str) -> None:
    """Create a join token."""
    token = await _create_token(client, _roles(types), ttl, value)
    echo_json(token) if fmt == "json" else _print_invite(token)


@tokens.command("ls")
@click.option("--format", "fmt", type=FORMATS, default="text")
@run
async def tokens_ls(client: AuthClient, fmt: str) -> None:
    """Tokens that have not expired; static ones expire "never"."""
    records = await client.get("/v1/tokens")
    if fmt == "json":
        echo_json(records)
        return
    rows = [
        (t["token"], ",".join(r.capitalize() for r in t["roles"]), format_expiry(t["expires"]))
        for t in records
    ]
    click.echo(table(["Token", "Type", "Expiry Time (UTC)"], rows))


async def _delete_token(client: AuthClient, token: str) -> None:
    await client.delete(f"/v1/tokens/{token}")
    click.echo(f"Token {token} has been deleted")


@tokens.command("rm")
@click.argument("token")
@run
async def tokens_rm(client: AuthClient, token: str) -> None:
    """Revoke a token."""
    await _delete_token(client, token)


@tokens.command("del")
@click.argument("token")
@run
async def tokens_del(client: AuthClient, token: str) -> None:
    """Revoke a token (same as rm)."""
    await _delete_token(client, token)


def main() -> None:
    cli()
