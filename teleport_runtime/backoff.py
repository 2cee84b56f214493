"""How long the node's background senders (audit events, recordings) wait before trying again."""

from __future__ import annotations

import random

from teleport_runtime.errors import BadParameter

_rng = random.SystemRandom()


class Backoff:
    """Exponential backoff: ``min_delay * 2**(n-1)`` seconds after the n-th failure in a row,
    capped at ``max_delay``, times a jitter in [0.8, 1]. BadParameter unless
    ``0 < min_delay <= max_delay``."""

    def __init__(self, min_delay: float, max_delay: float) -> None:
        if min_delay <= 0 or max_delay < min_delay:
            raise BadParameter("backoff must satisfy 0 < min_backoff <= max_backoff")
        self.min_delay = min_delay
        self.max_delay = max_delay

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failures in a row (at least 1)."""
        delay = min(self.max_delay, self.min_delay * 2.0 ** min(failures - 1, 32))
        return delay * _rng.uniform(0.8, 1.0)
