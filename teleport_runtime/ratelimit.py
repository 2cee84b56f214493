"""Request rate limits per client address: a token bucket per source, with bounded memory.

Each source has a bucket of ``burst`` tokens refilled at ``rate`` per second; a request takes
one (``take``), a refused attempt may cost more (``charge``). At most ``max_sources`` buckets are
kept: the least recently used goes first (a bucket not used for ``burst / rate`` seconds is full
again, so forgetting it changes nothing for that source). IPv6 sources are counted per /64, which
is what one site holds.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict

from teleport_runtime.errors import LimitExceeded


class RateLimited(LimitExceeded):
    """A request refused for rate; ``retry_after`` (whole seconds) is the Retry-After header;
    ``first``: the first refusal since this source's last admitted request (callers audit that
    one, so a flood does not turn into a flood of audit writes)."""

    def __init__(self, message: str, retry_after: int, first: bool) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.first = first


def source_key(address: str) -> str:
    """What a source is counted as: its IPv4 address, its IPv6 /64, or the text itself."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6 and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip.ipv4_mapped or ip) if ip.version == 6 else str(ip)


class TokenBuckets:
    """Token buckets keyed by source address."""

    def __init__(self, *, rate: float, burst: float, max_sources: int = 10_000, what: str = "requests") -> None:
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self.what = what
        #: source -> (tokens, monotonic time of that count, refused since the last admitted)
        self._buckets: OrderedDict[str, tuple[float, float, bool]] = OrderedDict()

    def _level(self, key: str, now: float) -> float:
        tokens, at, _ = self._buckets.get(key, (self.burst, now, False))
        return min(self.burst, tokens + (now - at) * self.rate)

    def _set(self, key: str, tokens: float, now: float, refused: bool = False) -> None:
        self._buckets[key] = (tokens, now, refused)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)

    def take(self, address: str) -> None:
        """Take one token for ``address``; RateLimited (429) when its bucket is empty."""
        key, now = source_key(address), time.monotonic()
        tokens = self._level(key, now)
        if tokens < 1:
            wait = max(1, math.ceil((1 - tokens) / self.rate))
            first = not self._buckets.get(key, (0.0, 0.0, False))[2]
            self._set(key, tokens, now, refused=True)
            raise RateLimited(
                f"too many {self.what} from {address}: at most {self.burst:g} at once and "
                f"{self.rate:g} per second after that; retry in {wait}s", wait, first,
            )
        self._set(key, tokens - 1, now)

    def charge(self, address: str, cost: float) -> None:
        """Take ``cost`` more tokens (down to a debt of one burst) for a refused attempt."""
        key, now = source_key(address), time.monotonic()
        self._set(key, max(-self.burst, self._level(key, now) - cost), now)

    def __len__(self) -> int:
        return len(self._buckets)
