"""Output shared by tctl and tsh: aligned tables, JSON, and UTC times as the reference prints them."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import click

from teleport_runtime.api.names import TUNNEL_ADDR_LABEL


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain text table with a dashed rule under the headers, as tctl and tsh print them."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(str(c))) for w, c in zip(widths, row, strict=True)]
    lines = [
        " ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
        for cells in [list(headers), ["-" * w for w in widths], *rows]
    ]
    return "\n".join(lines)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def echo_listing(
    records: list[dict[str, Any]], fmt: str, headers: Sequence[str], row: Callable[[dict[str, Any]], Sequence[str]]
) -> None:
    """``--format=json``: the records as they came; text: a table with one ``row(record)`` each."""
    if fmt == "json":
        echo_json(records)
    else:
        click.echo(table(headers, [row(r) for r in records]))


def node_address(record: dict[str, Any]) -> str:
    """A node's address column: its address, or ``⟵ Tunnel`` for a node reached through its
    reverse tunnel (its JSON says ``"tunnel": true`` and an empty ``addr``)."""
    return TUNNEL_ADDR_LABEL if record.get("tunnel") else str(record.get("addr") or "")


def format_expiry(value: str | None) -> str:
    """``25 Sep 18 00:21 UTC``; static tokens print ``never``."""
    if not value:
        return "never"
    return datetime.fromisoformat(value).astimezone(UTC).strftime("%d %b %y %H:%M UTC")


def format_labels(labels: dict[str, str]) -> str:
    return ",".join(f"{k}:{v}" for k, v in sorted(labels.items()))


def humanize_ttl(seconds: float) -> str:
    """``5 minutes``, ``1 hour``, ``30 seconds``: rounded to the nearest unit."""
    seconds = max(0, round(seconds))
    for unit, size in (("hour", 3600), ("minute", 60)):
        if (seconds >= size and seconds % size == 0) or seconds >= 2 * size:
            count = round(seconds / size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"
