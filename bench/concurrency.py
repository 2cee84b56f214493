"""3. Concurrency: N interactive sessions (a PTY and a shell each) held at once through one proxy,
by asyncssh clients in this process: one SSH connection to the jump hop per session and one
tunnelled through it to the node. The same N through the OpenSSH jump host to sshd.

Per N: sessions that failed to open or to answer; memory per session (RSS of our proxy and node
daemons, and PSS of each side's whole process tree, shells included, against the sshd trees);
latency of one more connection (OpenSSH client, ``true``) while the N are held.

Open files: a held session costs one socket in this process (the node connection is a channel
inside the proxy connection), two at the proxy (client and node) and, at the node, its socket
the terminal's master (read and write ends) and the recording's file. Every process here and every
daemon runs with the soft limit raised to the hard one (20000 on the machine the issue names): the
load generator and the proxy stay in one process each up to about 9000 sessions, and the sessions
are spread over as many node processes as their open files need (two at 5000: ``node1``,
``node2``, every other session to each). The open descriptors per process while the N are held
are recorded, and a count that would not fit is refused before it starts.

The sshd reference forks two processes per session plus the shell (about 4 MiB of PSS per
session); it is held at the same N only when the machine has the memory for it with room to
spare for the other work on it, and the figure says when it was not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from bench.env import CLUSTER, NODE, BenchError, OpenSSH, OurCluster, clean_env, rss_bytes, tree_pss, wait_until
from bench.figures import Figure, median, timed

SECTION = "concurrency"
#: Sessions being set up at once (the rest wait their turn): below the proxy's and the node's cap
#: on unauthenticated connections from one address (teleport_runtime/sshserver.py).
SETUP_PARALLELISM = 8
#: Bound on setting up one session, and on the whole set-up of N.
SESSION_TIMEOUT = 60.0
MiB = 1024 * 1024
#: Open files a held session costs, per process (see above; measured: the node's are its socket,
#: the terminal's master twice (read and write ends) and the recording's file), and what each
#: process keeps for itself.
FDS_PER_SESSION = {"load generator": 1, "proxy": 2, "node": 4}
FD_RESERVE = 1000
#: PSS of one session through the sshd pair (jump and target trees, measured at 1000: 3.8 MiB),
#: and the memory left to the machine's other work when holding them.
SSHD_MIB_PER_SESSION = 4
MEMORY_RESERVE_MIB = 4096


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_limit(pid: int) -> int:
    """The soft open-files limit of a running process."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise BenchError(f"no open-files limit in /proc/{pid}/limits")


def check_fd_room(sessions: dict[str, tuple[str, int, int]]) -> None:
    """Refuse a count that would run a process out of descriptors (a failure of the bench, not of
    the proxy). ``sessions``: process name -> (role, pid, sessions it will hold)."""
    for name, (role, pid, count) in sessions.items():
        need = open_fds(pid) + count * FDS_PER_SESSION[role] + FD_RESERVE
        if need > fd_limit(pid):
            raise BenchError(f"{count} sessions need about {need} open files in the {name} (pid {pid}), "
                             f"above its limit of {fd_limit(pid)}: hold fewer, or spread them over more processes")


def nodes_needed(count: int, limit: int) -> int:
    """Node processes to spread ``count`` sessions over, within ``limit`` open files each."""
    return max(1, math.ceil(count * FDS_PER_SESSION["node"] / (limit - FD_RESERVE - 100)))


def _start_node(ours: OurCluster, name: str) -> int:
    """One more node in the cluster (its own process); its pid once ``tsh ls`` lists it."""
    assert ours.cluster is not None
    token = ours.cluster.add_token(roles="node", ttl="30m")["token"]
    node = ours.cluster.start_node(name, token=token, pins=(ours.cluster.pin(),))

    def listed() -> bool:
        return name in {n["hostname"] for n in json.loads(ours.tsh("ls", "--format=json"))}

    wait_until(listed, f"tsh ls to list {name}")
    return node.daemon.pid


def memory_available_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 0


@dataclass
class Route:
    """How to reach the target: the jump hop, the target behind it, credentials."""

    jump: tuple[str, int]
    targets: list[tuple[str, int]]  # session i goes to targets[i % len(targets)]
    client_keys: Any
    known_hosts: str


async def _open_session(route: Route, index: int, stack: contextlib.AsyncExitStack) -> None:
    opts = {"username": "root", "client_keys": route.client_keys, "known_hosts": route.known_hosts,
            "agent_path": None}
    outer = await asyncssh.connect(*route.jump, **opts)
    stack.push_async_callback(_close, outer)
    inner = await outer.connect_ssh(*route.targets[index % len(route.targets)], **opts)
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
                # IncompleteReadError: the session's output ended before its marker (the shell or
                # the channel went away): a failed session, counted, not the end of the run.
                except (OSError, asyncssh.Error, TimeoutError, asyncio.IncompleteReadError) as exc:
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
    ours_route = Route((ours.proxy_ip, ours.proxy_ssh_port), [(f"{NODE}.{CLUSTER}", 3022)],
                       [(key, cert)], str(files["known_hosts"]))
    ref_route = Route(openssh.jump, [openssh.target], [str(openssh.user_key)], str(openssh.root / "known_hosts"))
    proxy_pid = ours.proxy.daemon.pid
    node_pids = [ours.node.daemon.pid]

    def ours_memory() -> dict[str, float]:
        return {"proxy_rss": rss_bytes(proxy_pid), "node_rss": sum(rss_bytes(p) for p in node_pids),
                "proxy_pss": tree_pss(proxy_pid), "node_pss": sum(tree_pss(p) for p in node_pids)}

    def fds_now() -> dict[str, int]:
        return {"load generator": open_fds(here), "proxy": open_fds(proxy_pid),
                **{f"node{i + 1}": open_fds(pid) for i, pid in enumerate(node_pids)}}

    def ref_memory() -> dict[str, float]:
        return {"jump_pss": tree_pss(openssh.pids["jump"]), "target_pss": tree_pss(openssh.pids["target"])}

    ours_cmd = ([*ours.ssh(), "true"], ours.env())
    ref_cmd = ([*openssh.ssh(), "true"], clean_env())
    figures: list[Figure] = []
    details: dict[str, Any] = {}
    here = os.getpid()
    for n in counts:
        while len(node_pids) < nodes_needed(n, fd_limit(node_pids[0])):
            name = f"node{len(node_pids) + 1}"
            node_pids.append(_start_node(ours, name))
            ours_route.targets.append((f"{name}.{CLUSTER}", 3022))
        per_node = math.ceil(n / len(node_pids))
        check_fd_room({"load generator": ("load generator", here, n), "proxy": ("proxy", proxy_pid, n),
                       **{f"node{i + 1}": ("node", pid, per_node) for i, pid in enumerate(node_pids)}})
        idle_ours, idle_ref = ours_memory(), ref_memory()
        idle_fds = fds_now()

        def measure_ours() -> dict[str, Any]:
            return {"memory": ours_memory(), "latency_ms": _latency(*ours_cmd, latency_runs), "open_files": fds_now()}

        def measure_ref() -> dict[str, Any]:
            return {"memory": ref_memory(), "latency_ms": _latency(*ref_cmd, latency_runs)}

        ours_fail, ours_setup, ours_held = asyncio.run(_hold(ours_route, n, measure_ours))
        fds_per = {k: (ours_held["open_files"][k] - idle_fds[k]) / (per_node if k.startswith("node") else n)
                   for k in idle_fds}
        per = {k: (ours_held["memory"][k] - idle_ours[k]) / n / MiB for k in idle_ours}
        need, have = n * SSHD_MIB_PER_SESSION + MEMORY_RESERVE_MIB, memory_available_mib()
        ref: dict[str, Any]
        if need <= have:
            ref_fail, ref_setup, ref_held = asyncio.run(_hold(ref_route, n, measure_ref))
            ref_per = {k: (ref_held["memory"][k] - idle_ref[k]) / n / MiB for k in idle_ref}
            ref = {"failures": ref_fail, "setup_s": ref_setup, "idle": idle_ref, **ref_held,
                   "per_session_mib": ref_per}
        else:
            ref = {"skipped": f"needs about {need} MiB of memory with room for other work, {have} MiB available"}
        details[str(n)] = {
            "ours": {"failures": ours_fail, "setup_s": ours_setup, "idle": idle_ours, **ours_held,
                     "per_session_mib": per, "idle_open_files": idle_fds, "open_files_per_session": fds_per},
            "openssh": ref,
        }
        fd_note = ("open files per session held: " + ", ".join(f"{k} {v:.2f}" for k, v in fds_per.items())
                   + f"; {len(node_pids)} node process(es)")
        if "skipped" in ref:
            skipped = f"sshd jump host not held at {n}: {ref['skipped']}"
            figures += [
                Figure(SECTION, f"{n} sessions: failures", ours_fail, "sessions", better="lower", target=0,
                       target_is_ratio=False, note=f"{fd_note}; {skipped}"),
                Figure(SECTION, f"{n} sessions: proxy PSS per session", per["proxy_pss"], "MiB",
                       note=f"proxy RSS {per['proxy_rss']:.3f} MiB/session"),
                Figure(SECTION, f"{n} sessions: node PSS per session (with shells)", per["node_pss"], "MiB",
                       note=f"node daemon RSS {per['node_rss']:.3f} MiB/session"),
                Figure(SECTION, f"{n} sessions: new connection latency under load", ours_held["latency_ms"], "ms",
                       note="OpenSSH client through our proxy"),
                Figure(SECTION, f"{n} sessions: set-up time of all sessions", ours_setup, "s"),
            ]
            continue
        ref_per, ref_held, ref_fail, ref_setup = ref["per_session_mib"], ref, ref["failures"], ref["setup_s"]
        figures += [
            Figure(SECTION, f"{n} sessions: failures", ours_fail, "sessions", ref_fail,
                   f"OpenSSH jump host: {ref_fail} failed", "lower", 0, target_is_ratio=False, note=fd_note),
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
