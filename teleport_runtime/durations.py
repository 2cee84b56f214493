"""The one duration grammar: ``30s``, ``5m``, ``12h``, ``1h30m``, ``90d``, ``2w``.

A duration is one or more ``<number><unit>`` parts written together (``1h30m``, ``1.5h``), the
units ``ms``, ``s``, ``m``, ``h``, ``d`` and ``w``, or a bare number of seconds (``45``); digits are
ASCII, no sign, no spaces between parts, at most :data:`MAX_DURATION`. The reference's Go-style
forms (``90s``, ``1h30m``) are all valid; ``d`` and ``w`` are the ones its configs add for CA ages
and TTLs. Config files, CLI flags, API bodies and the Ansible collection all read this grammar;
the collection's copy (``plugins/module_utils/durations.py``) is held to this one by
``tests/ansible/test_rules_match_runtime.py``.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

from teleport_runtime.errors import BadParameter

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d|w)")
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")
#: The longest duration anything in the cluster asks for (TTLs, grace periods, "since" windows):
#: far above any real use, and far below what timedelta and the certificate fields can hold.
MAX_DURATION = timedelta(days=100 * 365)
_EXPECTED = "expected a number with a unit, such as 30s, 5m, 12h or 1h30m"


def parse_duration(text: str | int | float) -> timedelta:
    """Parse ``text`` into a timedelta; a bare number means seconds.

    Raises BadParameter naming the value and the expected form: for anything but a string or a
    number, for negative, non-finite or absurdly long durations (at most ``MAX_DURATION``).
    """
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise BadParameter(f"invalid duration {text!r}: {_EXPECTED}")
    if isinstance(text, int | float):
        if not math.isfinite(text) or text < 0:
            raise BadParameter(f"invalid duration {text!r}: {_EXPECTED}")
        return _bounded(float(text), text)
    # Spaces around the value are forgiven (YAML, CLI flags); a newline or other control
    # character is not: a value is one line.
    value = text.strip(" \t")
    if _NUMBER.fullmatch(value):
        return _bounded(float(value), text)
    pos, total = 0, 0.0
    for match in _PART.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(value) or not value:
        raise BadParameter(f"invalid duration {text!r}: {_EXPECTED}")
    return _bounded(total, text)


def _bounded(seconds: float, text: object) -> timedelta:
    if not math.isfinite(seconds) or seconds > MAX_DURATION.total_seconds():
        raise BadParameter(
            f"invalid duration {text!r}: longer than {MAX_DURATION.days} days; {_EXPECTED}"
        )
    return timedelta(seconds=seconds)


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
