"""3. Concurrency: N interactive sessions (a PTY and a shell each) held at once through one proxy,
by asyncssh clients in this process: one SSH connection to the jump hop per session and one
tunnelled through it to the node. The same N through the OpenSSH jump host to sshd.

Per N: sessions that failed to open or to answer; memory per session (RSS of our proxy and node
daemons, and PSS of each side's whole process tree, shells included, against the sshd trees);
latency of one more connection (OpenSSH client, ``true``) while the N are held.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import asyncssh

from bench.env import CLUSTER, NODE, OpenSSH, OurCluster, clean_env, rss_bytes, tree_pss
from bench.figures import Figure, median, timed

SECTION = "concurrency"
#: Sessions being set up at once (the rest wait their turn): below the proxy's and the node's cap
#: on unauthenticated connections from one address (teleport_runtime/sshserver.py, 10).
SETUP_PARALLELISM = 8
#: Bound on setting up one session, and on the whole set-up of N.
SESSION_TIMEOUT = 60.0
MiB = 1024 * 1024


@dataclass
class Route:
    """How to reach the target: the jump hop, the target behind it, credentials."""

    jump: tuple[str, int]
    target: tuple[str, int]
    client_keys: Any
    known_hosts: str


async def _open_session(route: Route, index: int, stack: contextlib.AsyncExitStack) -> None:
    opts = {"username": "root", "client_keys": route.client_keys, "known_hosts": route.known_hosts,
            "agent_path": None}
    outer = await asyncssh.connect(*route.jump, **opts)
    stack.push_async_callback(_close, outer)
    inner = await outer.connect_ssh(*route.target, **opts)
    stack.push_async_callback(_close, inner)
    proc = await inner.create_process(term_type="xterm", term_size=(80, 24), encoding="utf-8")
    stack.callback(proc.close)
    # The marker is not in the typed line the terminal echoes back ('@%s@' vs @7@).
    proc.stdin.write(f"printf '@%s@\\n' {index}\n")
    await proc.stdout.readuntil(f"@{index}@")


async def _close(conn: asyncssh.SSHClientConnection) -> None:
    conn.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(conn.wait_closed(), 5)


async def _hold(route: Route, count: int, measure) -> tuple[int, float, Any]:
    """Open ``count`` sessions, call ``measure()`` in a thread while they are held, close them."""
    limit = asyncio.Semaphore(SETUP_PARALLELISM)
    failures = 0
    errors: list[str] = []
    async with contextlib.AsyncExitStack() as stack:

        async def one(i: int) -> None:
            nonlocal failures
            async with limit:
                try:
                    await asyncio.wait_for(_open_session(route, i, stack), SESSION_TIMEOUT)
                except (OSError, asyncssh.Error, TimeoutError) as exc:
                    failures += 1
                    if len(errors) < 5:
                        errors.append(repr(exc))

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(count)))
        setup = time.perf_counter() - start
        measured = await asyncio.to_thread(measure)
    if errors:
        measured["errors"] = errors
    return failures, setup, measured


def _latency(argv: list[str], env: dict[str, str], runs: int) -> float:
    return median([timed(argv, env) for _ in range(runs)]) * 1000


def run(openssh: OpenSSH, ours: OurCluster, counts: list[int], latency_runs: int
        ) -> tuple[list[Figure], dict[str, Any]]:
    files = ours.profile_files()
    key = asyncssh.read_private_key(files["key"])
    cert = asyncssh.read_certificate(files["cert"])
    assert ours.node is not None and ours.proxy is not None
    ours_route = Route((ours.proxy_ip, ours.proxy_ssh_port), (f"{NODE}.{CLUSTER}", 3022),
                       [(key, cert)], str(files["known_hosts"]))
    ref_route = Route(openssh.jump, openssh.target, [str(openssh.user_key)], str(openssh.root / "known_hosts"))
    proxy_pid, node_pid = ours.proxy.daemon.pid, ours.node.daemon.pid

    def ours_memory() -> dict[str, float]:
        return {"proxy_rss": rss_bytes(proxy_pid), "node_rss": rss_bytes(node_pid),
                "proxy_pss": tree_pss(proxy_pid), "node_pss": tree_pss(node_pid)}

    def ref_memory() -> dict[str, float]:
        return {"jump_pss": tree_pss(openssh.pids["jump"]), "target_pss": tree_pss(openssh.pids["target"])}

    ours_cmd = ([*ours.ssh(), "true"], ours.env())
    ref_cmd = ([*openssh.ssh(), "true"], clean_env())
    figures: list[Figure] = []
    details: dict[str, Any] = {}
    for n in counts:
        idle_ours, idle_ref = ours_memory(), ref_memory()

        def measure_ours() -> dict[str, Any]:
            return {"memory": ours_memory(), "latency_ms": _latency(*ours_cmd, latency_runs)}

        def measure_ref() -> dict[str, Any]:
            return {"memory": ref_memory(), "latency_ms": _latency(*ref_cmd, latency_runs)}

        ours_fail, ours_setup, ours_held = asyncio.run(_hold(ours_route, n, measure_ours))
        ref_fail, ref_setup, ref_held = asyncio.run(_hold(ref_route, n, measure_ref))
        per = {k: (ours_held["memory"][k] - idle_ours[k]) / n / MiB for k in idle_ours}
        ref_per = {k: (ref_held["memory"][k] - idle_ref[k]) / n / MiB for k in idle_ref}
        details[str(n)] = {
            "ours": {"failures": ours_fail, "setup_s": ours_setup, "idle": idle_ours, **ours_held,
                     "per_session_mib": per},
            "openssh": {"failures": ref_fail, "setup_s": ref_setup, "idle": idle_ref, **ref_held,
                        "per_session_mib": ref_per},
        }
        figures += [
            Figure(SECTION, f"{n} sessions: failures", ours_fail, "sessions", ref_fail,
                   f"OpenSSH jump host: {ref_fail} failed", "lower", 0, target_is_ratio=False),
            Figure(SECTION, f"{n} sessions: proxy PSS per session", per["proxy_pss"], "MiB",
                   ref_per["jump_pss"], f"sshd jump host tree ({ref_per['jump_pss']:.2f} MiB)", "lower",
                   note=f"proxy RSS {per['proxy_rss']:.3f} MiB/session"),
            Figure(SECTION, f"{n} sessions: node PSS per session (with shells)", per["node_pss"], "MiB",
                   ref_per["target_pss"], f"sshd target tree ({ref_per['target_pss']:.2f} MiB)", "lower",
                   note=f"node daemon RSS {per['node_rss']:.3f} MiB/session"),
            Figure(SECTION, f"{n} sessions: new connection latency under load", ours_held["latency_ms"], "ms",
                   ref_held["latency_ms"], f"OpenSSH jump host under the same load ({ref_held['latency_ms']:.0f} ms)",
                   "lower", 1.0),
            Figure(SECTION, f"{n} sessions: set-up time of all sessions", ours_setup, "s", ref_setup,
                   f"OpenSSH jump host ({ref_setup:.1f} s)", "lower"),
        ]
    return figures, details
