"""Durations as the reference writes them: ``30s``, ``5m``, ``12h``, ``1h30m``, ``90d``."""

from __future__ import annotations

import re
from datetime import timedelta

from teleport_runtime.errors import BadParameter

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(text: str | int | float) -> timedelta:
    """Parse ``text`` into a timedelta; a bare number means seconds.

    Raises BadParameter naming the value and the expected form.
    """
    if isinstance(text, int | float):
        return timedelta(seconds=text)
    value = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        return timedelta(seconds=float(value))
    pos, total = 0, 0.0
    for match in _PART.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(value) or not value:
        raise BadParameter(
            f"invalid duration {text!r}: expected a number with a unit, such as 30s, 5m, 12h or 1h30m"
        )
    return timedelta(seconds=total)


def format_duration(delta: timedelta) -> str:
    """The shortest ``1h30m``-style text for ``delta`` (whole seconds)."""
    seconds = int(delta.total_seconds())
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
