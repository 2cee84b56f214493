"""8. Reverse tunnels: a tunnel node beside a standard node, and many tunnels held by one proxy.

Latency and throughput: a node in reverse tunnel mode (``teleport start --roles=node
--auth-server=PROXY_WEB``: it joins through the proxy and binds no port) is added to the bench
cluster beside the standard node. ``true`` (median of N, interleaved) and stdin -> ``cat`` (best
of the runs) with OpenSSH through the proxy (the config ``tsh config`` prints) and with ``tsh
ssh`` to each node, against the OpenSSH jump host in the same run.

Scale: a proxy of its own (``tproxy``) and N simulated tunnel nodes in this process, each the
real agent (:class:`~teleport_runtime.agent.tunnel.TunnelAgent`: SSH to the proxy's tunnel
address, host certificate authentication, the forwarding request, keep-alives, reconnect with
back-off and jitter) with its own host certificate from the host CA (its own host UUID; the
nodes share one key pair, which changes nothing on the proxy's side). Figures: the proxy's memory
(PSS) per tunnel held, and the time until every node holds its tunnel again after the proxy is
killed and restarted (from the kill, and from the new proxy's readiness). No OpenSSH peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import time
import uuid as uuidlib
from datetime import timedelta
from typing import Any

from bench.authscale import _host_ca
from bench.env import CLUSTER, TSH, BenchError, OpenSSH, OurCluster, clean_env, pss_bytes, wait_until
from bench.figures import Figure, interleaved, median, timed
from bench.throughput import MiB, make_file
from teleport_runtime.agent.tunnel import TunnelAgent
from teleport_runtime.ca import generate_ssh_keypair, generate_tls_keypair
from teleport_runtime.ca.ssh import generate_host_ssh_cert
from teleport_runtime.config import HostPort
from teleport_runtime.identity import Identity
from tests.conftest import TELEPORT, Node

SECTION = "tunnel"
TUNNEL_NODE = "tnode"
#: Agents dialling at once while the tunnels come up the first time (the reconnect after a
#: restart is not paced: every agent's own back-off decides, as in a real fleet).
DIAL_IN_FLIGHT = 32
#: Bound on all N tunnels coming up (first time, or after the restart).
HOLD_TIMEOUT = 900.0


# ---------------------------------------------------------------------------- tunnel node vs standard node


def _start_tunnel_node(ours: OurCluster) -> Node:
    assert ours.cluster is not None
    token = ours.cluster.add_token(roles="node", ttl="30m")["token"]
    node = ours.cluster.start_node(
        TUNNEL_NODE,
        [TELEPORT, "start", "--roles=node", f"--token={token}", f"--ca-pin={ours.cluster.pin()}",
         f"--auth-server={ours.web}"],
    )

    def listed() -> bool:
        out = subprocess.run([TSH, "ls", "--format=json"], env=ours.env(), capture_output=True, text=True)
        return out.returncode == 0 and TUNNEL_NODE in {n["hostname"] for n in json.loads(out.stdout)}

    wait_until(listed, "tsh ls to list the tunnel node", timeout=120)
    return node


def _ssh(ours: OurCluster, node: str) -> list[str]:
    return ["ssh", "-F", str(ours.config), "-o", "BatchMode=yes", f"root@{node}.{CLUSTER}"]


def _sessions(openssh: OpenSSH, ours: OurCluster, runs: int, size: int, workdir: Any) -> tuple[list[Figure], dict]:
    node = ours.node.name if ours.node is not None else "node1"
    commands = {
        "openssh_jump": ([*openssh.ssh(), "true"], clean_env()),
        "openssh_standard": ([*_ssh(ours, node), "true"], ours.env()),
        "openssh_tunnel": ([*_ssh(ours, TUNNEL_NODE), "true"], ours.env()),
        "tsh_standard": ([TSH, "ssh", f"root@{node}", "true"], ours.env()),
        "tsh_tunnel": ([TSH, "ssh", f"root@{TUNNEL_NODE}", "true"], ours.env()),
    }
    times = interleaved(commands, runs)
    ms = {name: median(values) * 1000 for name, values in times.items()}
    ref = ms["openssh_jump"]
    ref_name = f"OpenSSH -> sshd jump host -> sshd ({ref:.0f} ms)"
    figures = [
        Figure(SECTION, "latency, OpenSSH -> proxy -> standard node", ms["openssh_standard"], "ms", ref, ref_name,
               "lower"),
        Figure(SECTION, "latency, OpenSSH -> proxy -> tunnel node", ms["openssh_tunnel"], "ms", ref, ref_name,
               "lower"),
        Figure(SECTION, "latency, tsh ssh -> proxy -> standard node", ms["tsh_standard"], "ms", ref, ref_name,
               "lower"),
        Figure(SECTION, "latency, tsh ssh -> proxy -> tunnel node", ms["tsh_tunnel"], "ms", ref, ref_name,
               "lower"),
    ]
    data = make_file(workdir / "tunnel-payload.bin", size)
    cat = "cat > /dev/null"
    cases = {
        "openssh_jump": ([*openssh.ssh(), cat], clean_env()),
        "openssh_standard": ([*_ssh(ours, node), cat], ours.env()),
        "openssh_tunnel": ([*_ssh(ours, TUNNEL_NODE), cat], ours.env()),
    }
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    try:
        for _ in range(max(2, runs // 10)):
            for name, (argv, env) in cases.items():
                with open(data, "rb") as stdin:
                    seconds[name].append(timed(argv, env, stdin))
    finally:
        data.unlink()
    rate = {name: size / MiB / min(values) for name, values in seconds.items()}
    stdin_ref = f"OpenSSH via sshd jump host ({rate['openssh_jump']:.0f} MiB/s)"
    mib = size // MiB
    figures += [
        Figure(SECTION, f"{mib} MiB stdin -> cat, OpenSSH via proxy, standard node", rate["openssh_standard"],
               "MiB/s", rate["openssh_jump"], stdin_ref, "higher"),
        Figure(SECTION, f"{mib} MiB stdin -> cat, OpenSSH via proxy, tunnel node", rate["openssh_tunnel"],
               "MiB/s", rate["openssh_jump"], stdin_ref, "higher"),
    ]
    return figures, {"latency_seconds": times, "latency_median_ms": ms, "throughput_seconds": seconds,
                     "throughput_mib_per_s": rate, "bytes": size}


# ---------------------------------------------------------------------------- many tunnels, one proxy


def _identities(ours: OurCluster, count: int) -> list[tuple[str, Identity]]:
    """``count`` node identities signed by the cluster's host CA (read next to the running auth
    service, as the auth scale section does); one shared key pair."""
    assert ours.cluster is not None
    ca = _host_ca(ours.cluster)
    ssh_key, ssh_public = generate_ssh_keypair()
    tls_key, _ = generate_tls_keypair()
    ca_certs = ca.trusted_tls_certs()
    host_ca_keys = ca.trusted_ssh_public_keys()
    out = []
    for i in range(count):
        host_uuid = str(uuidlib.uuid4())
        cert = generate_host_ssh_cert(ca.active, ssh_public, host_uuid=host_uuid, nodename=f"sim-{i}",
                                      cluster_name=CLUSTER, role="Node", ttl=timedelta(hours=2))
        out.append((host_uuid, Identity(tls_key=tls_key, tls_cert=b"", ca_certs=list(ca_certs), ssh_key=ssh_key,
                                        ssh_cert=cert, host_ca_keys=list(host_ca_keys))))
    return out


async def _never_connect(sock: Any, _orig: tuple[str, int]) -> None:
    sock.close()  # nobody opens sessions to the simulated nodes


async def _no_proxies() -> set[str]:
    return set()  # one proxy: the agent holds one tunnel, to whichever proxy answers


async def _held(agents: list[TunnelAgent]) -> None:
    """Until every agent holds a tunnel (bounded by HOLD_TIMEOUT)."""
    async with asyncio.timeout(HOLD_TIMEOUT):
        await asyncio.gather(*(a.connected.wait() for a in agents))


async def _scale(ours: OurCluster, count: int) -> tuple[list[Figure], dict[str, Any]]:
    assert ours.cluster is not None
    token = ours.cluster.add_token(roles="proxy", ttl="30m")["token"]
    proxy, web = ours.cluster.start_proxy(token, name="tproxy")
    argv = [TELEPORT, "start", "--roles=proxy", f"--token={token}", f"--ca-pin={ours.cluster.pin()}",
            f"--auth-server={ours.cluster.addr}"]
    assert proxy.daemon is not None
    await asyncio.sleep(2)
    idle = pss_bytes(proxy.daemon.pid)
    identities = await asyncio.to_thread(_identities, ours, count)
    host, port = web.rsplit(":", 1)
    agents = [
        TunnelAgent(identity=lambda i=identity: i, cluster=CLUSTER, host_uuid=host_uuid,
                    proxy=HostPort(host, int(port)), accept=_never_connect, proxies=_no_proxies)
        for host_uuid, identity in identities
    ]
    # The agents log every failed dial and reconnect; thousands of lines would drown the report.
    logging.getLogger("teleport.tunnel").setLevel(logging.ERROR)
    try:
        started = time.monotonic()
        gate = asyncio.Semaphore(DIAL_IN_FLIGHT)

        async def start(agent: TunnelAgent) -> None:
            async with gate:
                await agent.start()
                async with asyncio.timeout(HOLD_TIMEOUT):
                    await agent.connected.wait()

        await asyncio.gather(*(start(a) for a in agents))
        first = time.monotonic() - started
        await asyncio.sleep(5)  # settle (keep-alive timers, buffers)
        holding = pss_bytes(proxy.daemon.pid)
        per_tunnel = (holding - idle) / count
        # Restart: kill the proxy, start it again; the agents reconnect on their own.
        killed = time.monotonic()
        proxy.kill()
        await asyncio.sleep(0.5)
        await asyncio.to_thread(proxy.start, argv)
        ready = time.monotonic()
        await _held(agents)
        back = time.monotonic()
    finally:
        await asyncio.gather(*(a.stop() for a in agents), return_exceptions=True)
        with contextlib.suppress(Exception):
            proxy.kill()
    figures = [
        Figure(SECTION, f"proxy memory per tunnel ({count} tunnel nodes)", per_tunnel / 1024, "KiB",
               note=f"proxy PSS {idle / MiB:.0f} MiB idle, {holding / MiB:.0f} MiB holding {count} tunnels"),
        Figure(SECTION, f"all {count} tunnels back after a proxy restart (from the kill)", back - killed, "s",
               note=f"{back - ready:.1f} s after the new proxy was ready; first connection of all: {first:.1f} s "
                    f"({DIAL_IN_FLIGHT} dialling at once)"),
    ]
    return figures, {"count": count, "pss_idle": idle, "pss_holding": holding, "per_tunnel_bytes": per_tunnel,
                     "first_up_s": first, "restart_from_kill_s": back - killed, "restart_from_ready_s": back - ready}


def run(openssh: OpenSSH, ours: OurCluster, runs: int, size: int, counts: list[int], workdir: Any
        ) -> tuple[list[Figure], dict[str, Any]]:
    node = _start_tunnel_node(ours)
    try:
        figures, details = _sessions(openssh, ours, runs, size, workdir)
    finally:
        node.kill()
    scale = {}
    for count in counts:
        got = asyncio.run(_scale(ours, count))
        figures += got[0]
        scale[str(count)] = got[1]
    if not figures:
        raise BenchError("no figures")
    return figures, {**details, "scale": scale}
