# -*- coding: utf-8 -*-
# Copyright: teleport-access maintainers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The runtime's duration grammar (``teleport_runtime/durations.py``), for modules that run on
hosts without the runtime: ``30s``, ``5m``, ``1h30m``, ``90d``, ``2w`` or a bare number of seconds.

Kept to the runtime's rule by ``tests/ansible/test_rules_match_runtime.py``: change both together.
"""

from __future__ import annotations

import math
import re

UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d|w)")
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")
#: The runtime's MAX_DURATION (100 years).
MAX_SECONDS = 100 * 365 * 86400
EXPECTED = "expected a number with a unit, such as 30s, 5m, 12h or 1h30m"


def duration_seconds(value):
    """Seconds (a float) in ``value``, or None when it is not a duration the runtime accepts."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        # Spaces around the value are forgiven, as the runtime does; a newline is not.
        text = value.strip(" \t")
        if _NUMBER.fullmatch(text):
            seconds = float(text)
        else:
            pos, seconds = 0, 0.0
            for match in _PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * UNIT_SECONDS[match.group(2)]
                pos = match.end()
            if not text or pos != len(text):
                return None
    else:
        return None
    if not math.isfinite(seconds) or seconds < 0 or seconds > MAX_SECONDS:
        return None
    return seconds
