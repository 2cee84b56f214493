"""``teleport``: start the daemon, write or check a configuration, print the version."""

from __future__ import annotations

import asyncio
import logging
import resource
import sys
from pathlib import Path

import click
import uvloop

from teleport_runtime import __version__, config
from teleport_runtime.daemon.process import TeleportProcess
from teleport_runtime.errors import TeleportError


def setup_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)-5s [%(name)s] %(message)s",
    )


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard limit, as the reference's runtime does at
    start: every agent holds a connection to the auth service, every session a few descriptors,
    and the usual soft limit (1024) would refuse connections long before memory runs out.
    Returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1048576)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            return soft
        return wanted
    return soft


def fail(message: str) -> None:
    click.echo(f"ERROR: {message}", err=True)
    sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Certificate-based SSH access: the auth, proxy and node services."""


@cli.command()
@click.option("-c", "--config", "config_path", help="Config file (default /etc/teleport.yaml if present).")
@click.option("--roles", help="Services to run: a list of auth, proxy, node.")
@click.option("--token", help="Join token, or the path of a file holding it (first join only).")
@click.option("--ca-pin", "ca_pins", multiple=True, help="sha256:... of the cluster's host CA; repeatable.")
@click.option("--auth-server", "auth_servers", multiple=True, help="Auth service address HOST:3025.")
@click.option("--nodename", help="Name this host registers with (default: hostname).")
@click.option("--labels", help="Static node labels: k=v,k2=v2.")
@click.option("--data-dir", help="Data directory (default /var/lib/teleport).")
@click.option("--diag-addr", help="Serve /healthz, /readyz, /metrics on this address.")
@click.option("--listen-ip", help="Bind every service to this IP.")
@click.option("-d", "--debug", is_flag=True, help="Debug logging.")
def start(
    config_path: str | None,
    roles: str | None,
    token: str | None,
    ca_pins: tuple[str, ...],
    auth_servers: tuple[str, ...],
    nodename: str | None,
    labels: str | None,
    data_dir: str | None,
    diag_addr: str | None,
    listen_ip: str | None,
    debug: bool,
) -> None:
    """Start the services this host runs."""
    try:
        cfg = config.load(config_path, check=False)  # apply_flags validates the result
        cfg = config.apply_flags(
            cfg,
            roles=roles,
            token=token,
            ca_pins=ca_pins,
            auth_servers=auth_servers,
            nodename=nodename,
            labels=labels,
            data_dir=data_dir,
            diag_addr=diag_addr,
            listen_ip=listen_ip,
        )
    except TeleportError as exc:
        fail(exc.message)
    setup_logging("DEBUG" if debug else cfg.log_severity)
    raise_open_files_limit()
    # uvloop: a TLS connection costs ~35 KiB instead of asyncio's ~280 KiB (its 256 KiB read
    # buffer, zero-filled), and handshakes and small requests take a third of the CPU. Not for
    # the node service: it starts login sessions as the user (subprocess user/group/extra_groups),
    # which uvloop's subprocess support does not offer.
    run = asyncio.run if "node" in cfg.roles else uvloop.run
    try:
        run(TeleportProcess(cfg).run())
    except TeleportError as exc:
        fail(exc.message)
    except OSError as exc:
        fail(f"{exc.strerror or exc}: {getattr(exc, 'filename', '') or ''} (is the port in use, or "
             "do you need root for the data dir?)")


@cli.command()
@click.option("--test", "test_path", help="Validate this config file and exit.")
@click.option("-o", "--output", help="Write the starter config here instead of stdout.")
def configure(test_path: str | None, output: str | None) -> None:
    """Print a commented starter config, or check one with --test FILE."""
    if test_path:
        try:
            cfg = config.load_config_file(test_path)
        except TeleportError as exc:
            fail(exc.message)
        click.echo(f"{test_path}: OK (services: {', '.join(cfg.roles)})")
        return
    if output:
        Path(output).write_text(config.STARTER_CONFIG)
        click.echo(f"wrote {output}")
    else:
        click.echo(config.STARTER_CONFIG, nl=False)


@cli.command()
def version() -> None:
    """Print the version."""
    click.echo(f"Teleport runtime v{__version__}")


def main() -> None:
    cli()
