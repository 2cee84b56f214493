"""``tsh``: the user's client (login, ls, ssh, scp, config). Built with the SSH access path."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Log in to a cluster and reach its nodes through the proxy."""


def main() -> None:
    cli()
