"""6. Login timing: a failed login (``POST /webapi/login`` through the proxy) for a user who does
not exist vs one who does, interleaved in the same run. A ratio near 1 means the answer's timing
does not tell an attacker which user names exist (the auth service checks a dummy bcrypt hash
for unknown users). No target: the figure is for reading, not a gate.

Each attempt comes from its own loopback source address, so the per-(user, source) back-off of
failed logins never answers one of them early.
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
from typing import Any

from bench.env import BenchError, OurCluster
from bench.figures import Figure, median

SECTION = "login"
#: The existing user of the bench cluster and a name no one has.
KNOWN, UNKNOWN = "bench", "nobody-bench"
#: Each attempt's source address: 127.77.<run // 250>.<run % 250 + 1>.
SOURCE_PREFIX = "127.77"


def _source(n: int) -> str:
    return f"{SOURCE_PREFIX}.{n // 250}.{n % 250 + 1}"


def attempt(web: str, user: str, source: str) -> float:
    """Seconds of one failed login of ``user`` from ``source`` (BenchError unless it is refused
    as a wrong password)."""
    host, _, port = web.rpartition(":")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # timing only: nothing secret is sent or learned
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, source_address=(source, 0), timeout=60)
    body = json.dumps({"user": user, "password": "not the password", "otp": "000000"})
    try:
        conn.connect()  # the TLS handshake is not part of the figure
        start = time.perf_counter()
        conn.request("POST", "/webapi/login", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        elapsed = time.perf_counter() - start
    finally:
        conn.close()
    if resp.status != 403:
        raise BenchError(f"a failed login of {user!r} answered HTTP {resp.status}, expected 403")
    return elapsed


def run(ours: OurCluster, runs: int) -> tuple[list[Figure], dict[str, Any]]:
    times: dict[str, list[float]] = {KNOWN: [], UNKNOWN: []}
    n = 0
    for i in range(runs + 1):  # the first round warms up
        for user in (UNKNOWN, KNOWN):
            elapsed = attempt(ours.web, user, _source(n))
            n += 1
            if i:
                times[user].append(elapsed)
    ms = {user: median(values) * 1000 for user, values in times.items()}
    figure = Figure(
        SECTION, "failed login, unknown user", ms[UNKNOWN], "ms", ms[KNOWN],
        f"failed login, existing user ({ms[KNOWN]:.0f} ms)", "lower",
        note="near 1.0x: the timing does not tell which users exist",
    )
    return [figure], {"runs": runs, "ms": {u: [v * 1000 for v in values] for u, values in times.items()}}
